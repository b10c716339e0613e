"""An operator's commands, `synkler retry`, `forget` and `resend`, against three real agents, RabbitMQ,
sshd and rsync, while the agents run.

Each test checks what a user would: the bytes and md5 at download, how often each cleanup script
ran, the state at every role, and that nothing is left in the staging places.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.relay_helpers import TOOLS, assert_clean, place, tree_listing

from synkler.devkit.localrelay import ROLES
from synkler.hops.checksum import md5_entry

RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
FLAKY = (
    "import os, sys\n"
    "open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')\n"
    "sys.exit(0 if os.path.getsize(sys.argv[1]) > len(sys.argv[2]) + 1 else 7)\n"  # fails on its first run
)


def script(code: str, log: Path) -> str:
    """A cleanup_script running `code` with the log and %f, without a shell."""
    return shlex.join([sys.executable, "-c", code, str(log), "%f"])


def runs(log: Path) -> list[str]:
    """The names a cleanup script ran for, one per run."""
    return log.read_text().splitlines() if log.exists() else []


def synkler(relay, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The synkler command with `role`'s configuration, as an operator on that host runs it."""
    return subprocess.run(relay.command(role, *args), capture_output=True, text=True, timeout=120)


def status(relay, role: str) -> list[dict[str, Any]]:
    result = synkler(relay, role, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def states(relay, role: str) -> list[str]:
    """The state of each entry of `role`, oldest first."""
    return [e.state for e in relay.entries(role)]


@pytest.mark.parametrize("side", ["upload", "download"])
def test_an_operator_retries_a_failed_entry_while_the_agents_run_and_it_is_delivered(make_relay, side):
    # `side`'s first rsync run fails, and one failure is all max_attempts allows: the entry fails.
    relay = make_relay()
    failing = [sys.executable, str(TOOLS / "failing_rsync.py"), str(relay.workdir / "failed-once")]
    up_log, down_log = relay.workdir / "up.log", relay.workdir / "down.log"
    for role, log in (("upload", up_log), ("download", down_log)):
        settings: dict[str, Any] = {"cleanup_script": script(RECORD, log)}
        if role == side:
            settings.update(rsync=shlex.join(failing), max_attempts=1)
        relay.write_config(role, settings)
    relay.start()
    data = os.urandom(300_000)
    md5 = place(relay.dirs["upload"], "run-1.dat", data)
    relay.wait_for(
        "the entry to fail at every role that has it",
        lambda: (
            states(relay, "upload") == ["failed"]
            and states(relay, "central") == ["failed"]
            and states(relay, "download") == ([] if side == "upload" else ["failed"])
        ),
    )
    [row] = status(relay, side)
    assert row["actions"] == ["retry", "forget"]
    assert " retry,forget " in synkler(relay, side, "status").stdout

    result = synkler(relay, side, "retry", "run-1.dat")
    assert result.returncode == 0, result.stdout + result.stderr

    relay.wait_for(
        "delivered", lambda: states(relay, "download") == ["done"] and "done" in states(relay, "upload")
    )
    assert (relay.dirs["download"] / "run-1.dat").read_bytes() == data
    assert md5_entry(relay.dirs["download"] / "run-1.dat") == md5
    relay.wait_for(
        "the cleanup scripts", lambda: runs(up_log) == ["run-1.dat"] and runs(down_log) == ["run-1.dat"]
    )
    if side == "upload":
        # Sent again as a new entry; the failed one is forgotten where it was known.
        assert f"sent again as entry {relay.entries('upload')[1].id}" in result.stdout
        assert states(relay, "upload") == ["forgotten", "done"]
        relay.wait_for("central to forget it", lambda: states(relay, "central") == ["forgotten", "delivered"])
    else:
        # Pulled again from the copy central kept: the same entry, delivered at every role.
        assert "pulling it again from central's verified copy" in result.stdout
        relay.wait_for("central and upload to hear", lambda: states(relay, "upload") == ["done"])
        assert states(relay, "central") == ["delivered"]
    assert_clean(relay)
    assert runs(up_log) == ["run-1.dat"] and runs(down_log) == ["run-1.dat"]  # once, after the delivery


@pytest.mark.parametrize("where", ["upload", "download"])
def test_an_operator_forgets_a_stuck_entry_and_every_role_drops_it(make_relay, where):
    # Download's rsync copies only small files and then fails as a cut link does, for ever: the
    # directory never arrives whole, and the entry waits, uncounted, with part of it in staging.
    relay = make_relay()
    stalling = shlex.join([sys.executable, str(TOOLS / "stalling_rsync.py")])
    relay.write_config("download", {"rsync": stalling, "retry_max_seconds": 1})
    up, down = relay.dirs["upload"], relay.dirs["download"]
    tree = relay.workdir / "run-2"
    tree.mkdir()
    (tree / "notes.txt").write_text("notes\n")
    (tree / "big.bin").write_bytes(os.urandom(200_000))
    os.rename(tree, up / "run-2")
    relay.start()
    staging = down / f".synkler-{relay.instance}"

    def stuck() -> bool:
        entries = relay.entries("download")
        return bool(entries) and "link down" in (entries[0].reason or "")

    relay.wait_for("the entry to be stuck at download", stuck)
    [entry] = relay.entries("central")
    stored = relay.dirs["central"] / relay.instance / "stored" / entry.id
    assert entry.state == "downloading" and stored.exists()
    relay.wait_for("part of it in download's staging", lambda: (staging / entry.id / "notes.txt").exists())
    # (download's entry waits for the link: it may be retried now too)
    assert status(relay, where)[0]["actions"] == (["retry", "forget"] if where == "download" else ["forget"])

    result = synkler(relay, where, "forget", entry.id[:8])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is forgotten here" in result.stdout

    relay.wait_for("every role to forget it", lambda: all(states(relay, r) == ["forgotten"] for r in ROLES))
    relay.wait_for("download's staging to be emptied", lambda: tree_listing(staging) == [])  # after a pull
    assert not stored.exists()
    assert_clean(relay)
    assert md5_entry(up / "run-2")  # upload keeps the file
    assert not (down / "run-2").exists()
    # ... and does not offer it again: a file placed after it goes, and it does not.
    md5 = place(up, "after.txt", b"small enough for that rsync")
    relay.wait_for("after.txt delivered", lambda: relay.states("upload").get("after.txt") == "done")
    assert md5_entry(down / "after.txt") == md5
    assert [(e.name, e.state) for e in relay.entries("upload")] == [
        ("run-2", "forgotten"),
        ("after.txt", "done"),
    ]
    assert states(relay, "central") == ["forgotten", "delivered"]


def test_an_operator_resends_a_delivered_file_and_download_gets_it_again(make_relay):
    relay = make_relay()
    up_log, down_log = relay.workdir / "up.log", relay.workdir / "down.log"
    relay.write_config("upload", {"cleanup_script": script(RECORD, up_log)})
    relay.write_config("download", {"cleanup_script": script(RECORD, down_log)})
    relay.start()
    down = relay.dirs["download"]
    data = os.urandom(50_000)
    place(relay.dirs["upload"], "report.csv", data)

    def delivered(times: int, down_runs: int) -> None:
        relay.wait_for(
            f"delivery {times}",
            lambda: (
                states(relay, "upload") == ["done"] * times
                and states(relay, "central") == ["delivered"] * times
                and states(relay, "download") == ["done"] * times
                and len(runs(up_log)) == times
                and len(runs(down_log)) == down_runs
            ),
        )

    delivered(1, 1)
    (down / "report.csv").unlink()  # the consumer at download took it away
    assert status(relay, "upload")[0]["actions"] == ["resend"]
    result = synkler(relay, "upload", "resend", "report.csv")
    assert result.returncode == 0, result.stdout + result.stderr
    delivered(2, 2)
    assert (down / "report.csv").read_bytes() == data  # the same bytes, under the same name
    # Someone changed download's copy: the file sent again is kept beside it, never over it.
    (down / "report.csv").write_bytes(b"edited at download")
    result = synkler(relay, "upload", "resend", "report.csv")  # the name fits the newest version only
    assert result.returncode == 0, result.stdout + result.stderr
    delivered(3, 3)
    assert (down / "report.csv").read_bytes() == b"edited at download"
    assert (down / "report (2).csv").read_bytes() == data
    # Where download holds the same content under that name already, nothing new is placed (and
    # download's cleanup script does not run: nothing arrived); upload's runs, as for any delivery.
    result = synkler(relay, "upload", "resend", "report.csv")
    assert result.returncode == 0, result.stdout + result.stderr
    delivered(4, 3)
    assert sorted(os.listdir(down)) == [f".synkler-{relay.instance}", "report (2).csv", "report.csv"]
    assert [e.stored_as for e in relay.entries("download")] == ["report.csv"] * 2 + ["report (2).csv"] * 2
    assert_clean(relay)


def test_a_failed_cleanup_script_is_run_again_on_request(make_relay):
    relay = make_relay()
    up_log, down_log = relay.workdir / "up.log", relay.workdir / "down.log"
    relay.write_config("upload", {"cleanup_script": script(FLAKY, up_log)})
    relay.write_config("download", {"cleanup_script": script(FLAKY, down_log)})
    relay.start()
    place(relay.dirs["upload"], "once.txt", b"once")
    relay.wait_for(
        "both cleanup scripts to fail",
        lambda: (
            [e.cleanup for e in relay.entries("upload")] == ["failed"]
            and [e.cleanup for e in relay.entries("download")] == ["failed"]
        ),
    )
    assert runs(up_log) == runs(down_log) == ["once.txt"]
    assert status(relay, "upload")[0]["actions"] == ["retry", "resend"]
    assert status(relay, "download")[0]["actions"] == ["retry", "resend"]  # resend: its receipt

    result = synkler(relay, "upload", "retry", "once.txt")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "its cleanup script runs again" in result.stdout
    relay.wait_for("upload's cleanup", lambda: [e.cleanup for e in relay.entries("upload")] == ["done"])
    # Download's agent is stopped: the request waits for its next start.
    relay.stop("download")
    result = synkler(relay, "download", "retry", "once.txt")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the download agent is not running: it will retry once.txt" in result.stdout
    relay.start("download")
    relay.wait_for("download's cleanup", lambda: [e.cleanup for e in relay.entries("download")] == ["done"])

    assert runs(up_log) == runs(down_log) == ["once.txt"] * 2  # exactly once more on each side
    for role in ("upload", "download"):
        [entry] = relay.entries(role)
        assert (entry.state, entry.reason) == ("done", None)
    assert states(relay, "central") == ["delivered"]  # nothing was sent again
    # Done now: a retry does not apply, and the command says why without asking the agent.
    again = synkler(relay, "upload", "retry", "once.txt")
    assert again.returncode == 1
    assert (
        "cannot retry: it is done: only a failed or waiting entry or cleanup script can be retried"
        in again.stderr
    )
