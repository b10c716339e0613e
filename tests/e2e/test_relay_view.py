"""`synkler status --relay`: the whole relay seen from any of its hosts, through the broker only.

Three real agents, RabbitMQ, sshd and rsync, as in test_relay.py. The view is read as a user
would, by running the command with each role's configuration.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pexpect
from support.relay_helpers import TOOLS, deliver, place, started, write_random

from synkler.broker.amqp import Broker
from synkler.cli.relay import collect
from synkler.config import load_config
from synkler.errors import BrokerError
from synkler.hops.checksum import md5_entry

ROLES = ("upload", "central", "download")
STATUSES = {"running", "stopped", "silent", "never seen"}


def view_of(relay, role: str, *extra: str) -> dict:
    out = subprocess.run(
        relay.command(role, "status", "--relay", "--json", *extra), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    check_schema(view)
    return view


def text_of(relay, role: str) -> str:
    out = subprocess.run(relay.command(role, "status", "--relay"), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def agents(view: dict) -> dict[str, dict]:
    return {a["name"]: a for a in view["agents"]}


def place_of(view: dict, name: str, role: str) -> dict | None:
    for e in view["entries"]:
        if e["name"] == name:
            return e["roles"].get(role)
    return None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_schema(view: dict) -> None:
    """The JSON view as docs/status.md ("The JSON view") documents it (version 1)."""
    assert view["kind"] == "synkler-relay-view" and view["v"] == 1
    assert isinstance(view["instance"], str) and _number(view["at"])
    assert isinstance(view["verdict"], str) and view["verdict"]
    assert isinstance(view["problems"], list) and all(isinstance(p, str) for p in view["problems"])
    assert view["seen_from"] is None or set(view["seen_from"]) == {"role", "agent"}
    assert isinstance(view["finished_listed"], int)
    for a in view["agents"]:
        assert a["role"] in ROLES and isinstance(a["name"], str) and a["status"] in STATUSES
        assert a["heard"] is None or _number(a["heard"])
        assert a["queue"] is None or set(a["queue"]) == {"messages", "consumers"}
        if a["status"] != "never seen":
            for key in ("host", "version"):
                assert isinstance(a[key], str), key
            for key in ("pid", "unfinished", "outbox", "transfers", "hashes", "left_out"):
                assert isinstance(a[key], int), key
            assert isinstance(a["counts"], dict)
            assert a["disk"] is None or {"free", "total", "reserve"} <= set(a["disk"])
    for e in view["entries"]:
        assert len(e["id"]) == 32 and isinstance(e["name"], str) and isinstance(e["size"], int)
        assert isinstance(e["finished"], bool) and _number(e["created"]) and _number(e["updated"])
        for role, p in e["roles"].items():
            assert role in ROLES
            assert {"agent", "state", "attempt", "tries", "retry_at", "reason"} <= set(p)
            if "progress" in p:
                assert p["progress"]["what"] in ("push", "pull", "md5")
                assert {"done", "total", "rate", "eta", "started"} <= set(p["progress"])
    assert isinstance(view["broker"]["queues"], list)
    assert view["broker"]["dead_letters"] is None or isinstance(view["broker"]["dead_letters"], int)


def all_running(view: dict) -> bool:
    return {n: a["status"] for n, a in agents(view).items()} == dict.fromkeys(ROLES, "running")


def test_the_relay_view_from_each_host_shows_every_agent_and_where_a_slow_entry_is(make_relay, sshd):
    # KiB/s: 12 MiB take about 30 s to push and 25 s to pull: time for a few `status --relay` on a
    # busy machine, each a new process (a pull of 12 s was over before one came back at a load of 40).
    slow = [*sshd.rsync_opts(), "--bwlimit=400"]
    relay = make_relay(
        upload={"rsync_opts": slow}, download={"rsync_opts": [*sshd.rsync_opts(), "--bwlimit=500"]}
    )
    started(relay)
    relay.wait_for("every agent to report", lambda: all_running(view_of(relay, "download")), 30)
    for role in ROLES:
        view = view_of(relay, role)
        assert all_running(view), (role, view["agents"])
        assert view["seen_from"] == {"role": role, "agent": role}
        a = agents(view)["central"]
        assert a["queue"] == {"messages": 0, "consumers": 1} and a["host"] and a["pid"]
    write_random(relay.workdir / "big.bin", 12 << 20)
    md5 = md5_entry(relay.workdir / "big.bin")
    os.rename(relay.workdir / "big.bin", relay.dirs["upload"] / "big.bin")

    def arriving(role: str, at: str, what: str) -> bool:
        place = place_of(view_of(relay, role), "big.bin", at)
        return bool(place and place.get("progress", {}).get("what") == what and place["progress"]["done"] > 0)

    relay.wait_for(
        "bytes arriving at central, seen from upload", lambda: arriving("upload", "central", "push"), 30
    )

    # Each agent reports every 5 s: upload's report may not yet say what central's does.
    def both_say_uploading() -> bool:
        view = view_of(relay, "download")
        places = [place_of(view, "big.bin", at) for at in ("upload", "central")]
        return all(p is not None and p["state"] == "uploading" for p in places)

    relay.wait_for("upload and central to report big.bin uploading", both_say_uploading, 15)
    view = view_of(relay, "download")
    assert "all flowing: 1 entry in flight" in view["verdict"]
    text = text_of(relay, "central")
    assert "big.bin" in text and "uploading (" in text and " of 12.6 MB" in text, text

    relay.wait_for(
        "bytes arriving at download, seen from central", lambda: arriving("central", "download", "pull"), 40
    )
    assert place_of(view_of(relay, "upload"), "big.bin", "central")["state"] == "downloading"
    deliver(relay, {"big.bin": md5}, timeout=60)
    relay.wait_for(
        "the view to see it delivered",
        lambda: view_of(relay, "upload")["verdict"] == "all flowing, nothing in flight",
        20,
    )
    view = view_of(relay, "upload")
    e = next(e for e in view["entries"] if e["name"] == "big.bin")
    assert e["finished"] and {r: p["state"] for r, p in e["roles"].items()} == {
        "upload": "done",
        "central": "delivered",
        "download": "done",
    }
    # With -v, a transfer of more than a few seconds logs how far it got.
    assert "big.bin: arriving from upload: " in relay.log_path("central").read_text()
    assert "big.bin: pulling from central: " in relay.log_path("download").read_text()


FINISHED_AT = {"upload": "done", "central": "delivered", "download": "done"}


def test_each_agent_reports_a_delivery_within_a_second_of_its_own_change(make_relay):
    # The reports go every 5 s; a change of an agent's counts is reported PROMPT (0.5 s) after its
    # last report at the latest. Measured on the agents' own clocks (the report's time against the
    # entry's last change in that agent's database), so a slow reader cannot make it flake.
    relay = make_relay()
    started(relay)
    cfg = load_config(relay.configs["download"], check_dirs=False)
    relay.wait_for("every agent to report", lambda: all_running(collect(cfg)), 30)
    for name in ("one.txt", "two.txt", "three.txt"):
        place(relay.dirs["upload"], name, name.encode() * 100)
        seen: dict[str, float] = {}  # role -> time of the first report showing it finished there

        def reported_everywhere(name: str = name, seen: dict[str, float] = seen) -> bool:
            view = collect(cfg)
            entry = next((e for e in view["entries"] if e["name"] == name), None)
            for role, at in (entry or {}).get("roles", {}).items():
                if at["state"] == FINISHED_AT[role]:
                    seen.setdefault(role, agents(view)[role]["heard"])
            return len(seen) == 3

        relay.wait_for(f"the view to show {name} finished at every role", reported_everywhere, 30)
        for role in ROLES:
            [changed] = [e.updated for e in relay.entries(role) if e.name == name]
            assert seen[role] - changed < 1.0, (name, role, seen[role] - changed)
    # And the command shows it so, at once.
    assert view_of(relay, "upload")["verdict"] == "all flowing, nothing in flight"


def test_entries_an_operator_forgot_are_finished_in_the_view_not_in_flight(make_relay):
    # Download's rsync copies only small files and then fails as a cut link does: the two
    # directories wait at download, in flight, until the operator forgets them.
    relay = make_relay()
    stalling = shlex.join([sys.executable, str(TOOLS / "stalling_rsync.py")])
    relay.write_config("download", {"rsync": stalling, "retry_max_seconds": 1})
    names = ("run-1", "run-2")
    for name in names:
        tree = relay.workdir / name
        tree.mkdir()
        (tree / "big.bin").write_bytes(os.urandom(200_000))
        os.rename(tree, relay.dirs["upload"] / name)
    started(relay)

    def in_flight(view: dict) -> list[str]:
        return sorted(e["name"] for e in view["entries"] if not e["finished"])

    relay.wait_for(
        "both in flight in the view", lambda: in_flight(view_of(relay, "upload")) == list(names), 30
    )
    # The view may hear of them from central before download has stored them: forget them
    # at download once download holds both.
    relay.wait_for("download to hold both", lambda: len(relay.entries("download")) == 2, 30)
    for entry in relay.entries("download"):
        done = subprocess.run(relay.command("download", "forget", entry.id), capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    relay.wait_for(
        "every role to forget them",
        lambda: all(sorted(relay.states(r).values()) == ["forgotten"] * 2 for r in ROLES),
    )
    # The agents report every 5 s: wait for the reports written after the forget.
    relay.wait_for(
        "the view to see them forgotten",
        lambda: all(
            place_of(view_of(relay, "central"), n, r)["state"] == "forgotten" for n in names for r in ROLES
        ),
        20,
    )
    for role in ROLES:
        view = view_of(relay, role)
        assert in_flight(view) == [] and view["verdict"] == "all flowing, nothing in flight", view["verdict"]
        assert [(a["unfinished"], a["oldest"]) for a in view["agents"]] == [(0, None)] * 3
        assert sorted(e["name"] for e in view["entries"] if e["finished"]) == list(names)
    text = text_of(relay, "upload")
    assert "all flowing, nothing in flight" in text and "0 unfinished entries" in text, text


def test_a_stopped_download_shows_as_stopped_and_a_killed_one_as_silent(make_relay):
    relay = make_relay()
    started(relay)
    relay.wait_for("every agent to report", lambda: all_running(view_of(relay, "upload")), 30)
    relay.stop("download")
    view = view_of(relay, "central")
    down = agents(view)["download"]
    assert down["status"] == "stopped" and down["queue"]["consumers"] == 0
    assert view["verdict"].startswith("download stopped ")
    (relay.dirs["upload"] / "waits.txt").write_bytes(b"for download")
    relay.wait_for(
        "the entry to wait for download",
        lambda: (
            "download stopped" in (v := view_of(relay, "upload"))["verdict"]
            and ": 1 entry waits for it" in v["verdict"]
        ),
        30,
    )
    assert "download stopped" in text_of(relay, "upload").splitlines()[0]

    started(relay, "download")
    relay.wait_for(
        "download back", lambda: agents(view_of(relay, "upload"))["download"]["status"] == "running", 30
    )
    relay.kill("download")  # no last report: it only falls silent
    relay.wait_for(
        "download to fall silent",
        lambda: agents(view_of(relay, "upload"))["download"]["status"] == "silent",
        40,
        interval=1,
    )
    assert "download silent for " in view_of(relay, "central")["verdict"]


def test_an_instance_id_mistyped_on_upload_shows_central_and_download_as_never_seen(make_relay, broker):
    relay = make_relay()
    typo = relay.instance + "-typo"
    relay.write_config("upload", {"id": typo})
    started(relay)
    try:
        (relay.dirs["upload"] / "lost.txt").write_bytes(b"offered to nobody")
        relay.wait_for(
            "upload to report its offer",
            lambda: (
                (place_of(view_of(relay, "upload"), "lost.txt", "upload") or {}).get("state") == "offered"
            ),
            30,
        )
        view = view_of(relay, "upload")
        status = {n: a["status"] for n, a in agents(view).items()}
        assert status == {"upload": "running", "central": "never seen", "download": "never seen"}
        assert "central and download never seen under instance" in view["verdict"]
        assert agents(view)["central"]["queue"] == {"messages": 1, "consumers": 0}
        # Seen from central (the right id), it is upload that was never seen.
        assert agents(view_of(relay, "central"))["upload"]["status"] == "never seen"
    finally:
        relay.stop()
        try:
            admin = Broker(relay.broker, typo, "admin")
            admin.connect(consume=False)
            admin.delete_instance(list(ROLES))
            admin.close()
        except BrokerError:
            pass


def test_watch_redraws_the_view_on_a_terminal_and_ctrl_c_quits_with_status_0(make_relay):
    relay = make_relay()
    started(relay)
    relay.wait_for("every agent to report", lambda: all_running(view_of(relay, "upload")), 30)
    cmd = relay.command("central", "status", "--relay", "--watch")
    child = pexpect.spawn(cmd[0], cmd[1:], dimensions=(40, 200), encoding="utf-8", timeout=20)
    try:
        child.expect("all flowing, nothing in flight")
        child.expect("download +download .* running")
        (relay.dirs["upload"] / "seen.txt").write_bytes(b"on screen")
        child.expect("seen.txt")  # a redraw shows what came since
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, (child.exitstatus, child.signalstatus)


def test_the_relay_view_says_so_when_the_broker_cannot_be_reached(tmp_path):
    conf = tmp_path / "synkler.conf"
    conf.write_text(
        f"mode: central\nid: nobroker\nfile_dir: {tmp_path}\nsynkler_server: 127.0.0.1\nbroker_port: 1\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "synkler", "-c", str(conf), "status", "--relay"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 3 and "cannot use broker 127.0.0.1:1" in out.stderr
