"""Issue 26: fan-out to several downloads by central's routes, and several uploads side by side, on the
real relay (RabbitMQ, sshd, rsync; every download signs receipts with its own key).

Two uploads (upload, lab-b) and three downloads (download, archive, group). Central's rules send some
entries to one download, some to two, some to all three; `group` is stopped for the whole run and
started at the end; both uploads send a `same.all` of their own; every agent is killed (SIGKILL)
once during the run. What a user checks: every entry is at exactly its destinations with its md5,
each cleanup script ran once per entry, upload's only after the last destination had it (not while
`group` was away), and central holds nothing once the last destination fetched.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from support.faultkit import recorder, script_runs
from support.relay_helpers import place

from synkler import receipts
from synkler.hops.checksum import md5_entry

# Seconds for a wait that spans an agent's start (a cold Python start took 14 s at load 20, with
# five agents starting at once) and the hops after it.
STARTS = 120
UPLOADS = ("upload", "lab-b")
DOWNLOADS = ("download", "archive", "group")
ALL = list(DOWNLOADS)
ROUTES = [
    {"name": "*.all", "to": ALL},
    {"name": "*.two", "to": ["download", "archive"]},
    {"from": "lab-b", "name": "*.grp", "to": ["group"]},
    {"to": ["download"]},  # the default
]
# (upload, name) -> its destinations, as the rules above decide
FIRST = {
    ("upload", "a.one"): ["download"],
    ("upload", "b.two"): ["download", "archive"],
    ("upload", "c.all"): ALL,
    ("upload", "same.all"): ALL,
    ("lab-b", "g.grp"): ["group"],
    ("lab-b", "d.two"): ["download", "archive"],
}
LATER = {("lab-b", "same.all"): ALL}  # the same name from the other upload, placed after the kills


def _relay(make_relay):
    work = make_relay.next_dir()
    work.mkdir(parents=True, exist_ok=True)
    pinned, settings = {}, {}
    for name in DOWNLOADS:
        key = receipts.new_key()
        key_file = work / f"{name}.key"
        key_file.write_bytes(receipts.private_bytes(key))
        key_file.chmod(0o600)
        pinned[name] = receipts.public_text(key)
        settings[name] = {
            "receipt_key": str(key_file),
            "cleanup_script": recorder(work / f"cleanup-{name}.log"),
        }
    for name in UPLOADS:
        settings[name] = {
            "settle_seconds": 0.3,
            "download_public_key": pinned,
            "cleanup_script": recorder(work / f"cleanup-{name}.log"),
        }
    notices = work / "notices.log"
    told = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')"
    alerts = {
        "command": {"argv": [sys.executable, "-c", told, str(notices)]},
        "stuck_minutes": 0.1,  # 6 s: group's entries are told, the others are delivered sooner
        "check_seconds": 1,
        "group_seconds": 0,
    }
    settings["central"] = {
        "routes": ROUTES,
        "download_public_key": pinned,
        "keep_minutes": 0.02,
        "alerts": alerts,
        "metrics_textfile": str(work / "central.prom"),
    }
    extra = {"lab-b": "upload", "archive": "download", "group": "download"}
    return make_relay(settings, extra=extra, verbose=False), work


def _states(relay, key: str) -> dict[str, str]:
    return {e.name: e.state for e in relay.entries(key)}


def _md5s_in(directory: Path) -> list[str]:
    """The md5 of every entry in a download's file_dir (not its dot-named staging place)."""
    return sorted(md5_entry(directory / n) for n in os.listdir(directory) if not n.startswith("."))


def _stored(relay) -> list[str]:
    return os.listdir(relay.dirs["central"] / relay.instance / "stored")


def test_entries_reach_exactly_their_destinations_and_clean_up_after_the_last(make_relay):
    relay, work = _relay(make_relay)
    md5s: dict[tuple[str, str], str] = {}

    def put(entries: dict[tuple[str, str], list[str]]) -> None:
        for up, name in entries:
            md5s[up, name] = place(relay.dirs[up], name, f"{up}:{name}\n".encode() * 50)

    relay.start("central", "download", "archive", *UPLOADS)  # group stays away
    put(FIRST)
    # Kill each running agent once while entries are on their way.
    relay.wait_for("central admits", lambda: len(relay.entries("central")) >= 2, STARTS)
    relay.kill("central")
    relay.start("central")
    for key in ("download", "archive"):
        relay.wait_for(f"{key} gets an entry", lambda key=key: relay.entries(key), STARTS)
        relay.kill(key)
        relay.start(key)
    for key in UPLOADS:
        pushed = lambda key=key: "sent" in _states(relay, key).values()  # noqa: E731
        relay.wait_for(f"{key}'s entries pushed", pushed, STARTS)
        relay.kill(key)
        relay.start(key)
    put(LATER)
    everything = {**FIRST, **LATER}
    without_group = {k for k, to in everything.items() if "group" not in to}
    with_group = set(everything) - without_group

    def at_both_without_group() -> bool:
        return all(_states(relay, up).get(name) == "done" for up, name in without_group) and all(
            len(relay.entries(d)) == sum(d in to for to in everything.values())
            and set(_states(relay, d).values()) == {"done"}
            for d in ("download", "archive")
        )

    relay.wait_for("every destination but group has its entries", at_both_without_group, 60)
    # group is away: its entries stay at central and at upload, the others went their way.
    for up in UPLOADS:
        cleaned = {name for name, _ in script_runs(work / f"cleanup-{up}.log")}
        assert cleaned == {name for u, name in without_group if u == up}, up
        for u, name in with_group:
            if u == up:
                assert _states(relay, up)[name] == "sent", (up, name)
    relay.wait_for(
        "central keeps only what group has not fetched", lambda: len(_stored(relay)) == len(with_group), 30
    )
    central = collections.Counter(e.state for e in relay.entries("central"))
    assert central["downloading"] == len(with_group), central
    # `synkler status` at central and at upload: where each entry stands at each destination.
    for key in ("central", "upload"):
        shown = subprocess.run(relay.command(key, "status"), capture_output=True, text=True, timeout=60)
        line = next(x for x in shown.stdout.splitlines() if " c.all " in x)
        group = "fetching" if key == "central" else "routed"  # asked to fetch; no receipt from it yet
        assert f"to archive fetched, download fetched, group {group}" in line, shown.stdout
    relay_view = relay.command("lab-b", "status", "--relay")
    view = subprocess.run(relay_view, capture_output=True, text=True, timeout=60)
    assert "    to: archive fetched, download fetched, group fetching" in view.stdout, view.stdout
    assert "'group'" in view.stdout, view.stdout  # its row in the agents' table: away
    # The metrics count the entries per destination and state.
    prom = work / "central.prom"
    fetching = re.compile(
        r'^synkler_destination_entries\{[^}]*destination="group"[^}]*state="fetching"[^}]*\} (\S+)$', re.M
    )

    def fetching_at_group() -> float:
        found = fetching.search(prom.read_text()) if prom.exists() else None
        return float(found.group(1)) if found else -1.0

    relay.wait_for("the metrics count group's entries", lambda: fetching_at_group() == len(with_group), 30)
    # Told per destination: the stuck entries at group name group.
    said = lambda: (work / "notices.log").read_text() if (work / "notices.log").exists() else ""  # noqa: E731
    relay.wait_for("group's entries told stuck", lambda: "not delivered to group" in said(), 30)
    notices = [n for line in said().splitlines() for n in json.loads(line)["notices"]]
    at_group = {n["details"]["name"] for n in notices if n["details"].get("destination") == "group"}
    assert at_group <= {name for _, name in with_group}, at_group

    relay.start("group")
    relay.wait_for("group gets an entry", lambda: relay.entries("group"), STARTS)
    relay.kill("group")
    relay.start("group")

    def all_done() -> bool:
        return all(_states(relay, up).get(name) == "done" for up, name in everything) and all(
            set(_states(relay, d).values()) == {"done"} for d in DOWNLOADS
        )

    relay.wait_for("every entry done at every end", all_done, 60)
    relay.wait_for("central empties after the last fetch", lambda: _stored(relay) == [], 30)

    for dest in DOWNLOADS:  # exactly its entries, each with its md5, each cleaned up once
        wanted = sorted(md5 for k, md5 in md5s.items() if dest in everything[k])
        assert _md5s_in(relay.dirs[dest]) == wanted, dest
        runs = script_runs(work / f"cleanup-{dest}.log")
        assert sorted(md5 for _, md5 in runs) == wanted, dest
    for up in UPLOADS:  # once per entry, on the content that was delivered
        runs = script_runs(work / f"cleanup-{up}.log")
        assert sorted(runs) == sorted((name, md5s[u, name]) for u, name in everything if u == up), up
    assert {e.state for e in relay.entries("central")} <= {"delivered", "expired"}


def test_an_operator_forgets_an_absent_destination_and_upload_cleans_up_after_the_others(make_relay):
    """A download gone for good: `synkler forget ENTRY --to archive` on central, and the entry is
    delivered (upload's cleanup runs once), while archive never got it."""
    work = make_relay.next_dir()
    settings = {
        "upload": {"settle_seconds": 0.3, "cleanup_script": recorder(work / "cleanup-upload.log")},
        "central": {"routes": [{"to": ["download", "archive"]}], "keep_minutes": 0.02},
    }
    relay = make_relay(settings, extra={"archive": "download"}, verbose=False)
    relay.start("central", "download", "upload")  # archive stays away
    md5 = place(relay.dirs["upload"], "data.bin", b"x" * 1000)
    relay.wait_for("download has it", lambda: _states(relay, "download").get("data.bin") == "done", STARTS)
    assert _states(relay, "upload")["data.bin"] == "sent" and script_runs(work / "cleanup-upload.log") == []
    forgot = subprocess.run(
        relay.command("central", "forget", "data.bin", "--to", "archive"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert forgot.returncode == 0 and "every other destination has it: delivered" in forgot.stdout, forgot
    relay.wait_for("upload cleans up", lambda: _states(relay, "upload")["data.bin"] == "done", 60)
    assert script_runs(work / "cleanup-upload.log") == [("data.bin", md5)]
    relay.wait_for("central empties", lambda: _stored(relay) == [], 30)
    assert os.listdir(relay.dirs["archive"]) == []
