"""After delivery, through three real agents, RabbitMQ, sshd and rsync: cleanup scripts run once,
only on the content that was delivered, retried as configured; central's copy goes keep_minutes
later."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.relay_helpers import (
    assert_clean,
    deliver,
    place,
    recorder,
    runs,
)

from synkler.hops.checksum import md5_entry


def test_cleanup_scripts_run_exactly_once_on_each_side_with_name_and_full_path(make_relay):
    relay = make_relay()
    up_log, down_log = relay.workdir / "up.log", relay.workdir / "down.log"
    relay.write_config("upload", {"cleanup_script": recorder(up_log)})
    relay.write_config("download", {"cleanup_script": recorder(down_log)})
    relay.start()
    md5s = {n: place(relay.dirs["upload"], n, n.encode()) for n in ("a.txt", "b c.txt", "d")}
    deliver(relay, md5s)
    relay.wait_for("cleanup scripts", lambda: len(runs(up_log)) == 3 and len(runs(down_log)) == 3)
    assert sorted(runs(up_log)) == sorted((n, str(relay.dirs["upload"] / n)) for n in md5s)
    assert sorted(runs(down_log)) == sorted((n, str(relay.dirs["download"] / n)) for n in md5s)
    # A restart finds nothing left to do: no script runs a second time, nothing is offered again.
    relay.stop()
    relay.start()
    relay.wait_for(
        "agents reconnected",
        lambda: all(
            relay.log_path(r).read_text().count("connected to broker") >= 2 for r in ("upload", "download")
        ),
    )
    md5s["e"] = place(relay.dirs["upload"], "e", b"e")  # proves the loop ran after the restart
    deliver(relay, md5s)
    relay.wait_for("cleanup of e", lambda: len(runs(up_log)) == 4 and len(runs(down_log)) == 4)
    assert sorted(n for n, _ in runs(up_log)) == ["a.txt", "b c.txt", "d", "e"]
    assert len(relay.entries("central")) == 4


def test_central_deletes_its_copy_keep_minutes_after_delivery_and_not_before(make_relay):
    keep_minutes = 0.1  # 6 s
    relay = make_relay(central={"keep_minutes": keep_minutes})
    relay.start()
    md5 = place(relay.dirs["upload"], "kept.bin", os.urandom(1000))
    relay.wait_for("delivered at central", lambda: relay.states("central").get("kept.bin") == "delivered")
    seen_delivered = time.time()
    entry = relay.entries("central")[0]
    stored = relay.dirs["central"] / relay.instance / "stored" / entry.id  # the entry itself, by its id
    assert md5_entry(stored) == md5
    # Watch the copy for most of the keep time: it must stay.
    while time.time() < seen_delivered + keep_minutes * 60 - 1.5:
        assert stored.exists(), "central copy deleted before keep_minutes had passed"
        time.sleep(0.1)
    relay.wait_for("central copy expired", lambda: relay.states("central").get("kept.bin") == "expired", 20)
    assert not os.path.lexists(stored)
    expired = relay.entries("central")[0]
    delivered_at = expired.due - keep_minutes * 60
    assert delivered_at <= seen_delivered
    assert expired.updated >= expired.due


GATED = (
    "import os, sys, time\n"
    "open(sys.argv[1] + '.started', 'a').write(sys.argv[2] + '\\n')\n"
    "while not os.path.exists(sys.argv[1] + '.gate'): time.sleep(0.05)\n"
    "open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')\n"
)


@pytest.mark.parametrize("side", ["upload", "download"])
def test_an_agent_killed_while_its_cleanup_script_runs_collects_the_result_and_never_reruns_it(
    make_relay, side
):
    relay = make_relay()
    log = relay.workdir / f"{side}-cleanup"
    relay.write_config(side, {"cleanup_script": shlex.join([sys.executable, "-c", GATED, str(log), "%f"])})
    relay.start()
    md5s = {"gated.txt": place(relay.dirs["upload"], "gated.txt", b"gated")}
    started = Path(f"{log}.started")
    relay.wait_for("the cleanup script started", started.exists)
    relay.kill(side)
    relay.start(side)
    Path(f"{log}.gate").touch()
    relay.wait_for(
        "the cleanup recorded as done", lambda: [e.cleanup for e in relay.entries(side)] == ["done"]
    )
    deliver(relay, md5s)
    assert log.read_text() == "gated.txt\n"
    assert started.read_text() == "gated.txt\n"


# A cleanup script as documented (`mv %F sent/`), waiting for a gate file first; it records the name
# and the md5 of what it found at %F ("-": nothing), then moves that away.
MOVER = (
    "import hashlib, os, sys, time\n"
    "log, name, path = sys.argv[1:4]\n"
    "open(log + '.started', 'a').write(name + '\\n')\n"
    "while not os.path.exists(log + '.gate'): time.sleep(0.05)\n"
    "found = hashlib.md5(open(path, 'rb').read()).hexdigest() if os.path.lexists(path) else '-'\n"
    "open(log, 'a').write(name + '\\t' + found + '\\n')\n"
    "os.makedirs(log + '.sent', exist_ok=True)\n"
    "os.rename(path, os.path.join(log + '.sent', str(len(open(log).readlines()))))\n"
)


def mover(log: Path) -> str:
    return shlex.join([sys.executable, "-c", MOVER, str(log), "%f", "%F"])


def status_of(relay, side: str) -> str:
    return subprocess.run(relay.command(side, "status"), capture_output=True, text=True, check=True).stdout


def test_a_newer_version_renamed_over_the_name_before_delivery_is_not_cleaned_up_and_is_delivered_too(
    make_relay,
):
    relay = make_relay()
    log = relay.workdir / "upload-cleanup"
    Path(f"{log}.gate").touch()  # upload's script runs as soon as it is started
    relay.write_config("upload", {"cleanup_script": mover(log)})
    up, down = relay.dirs["upload"], relay.dirs["download"]
    v1, v2 = os.urandom(100_000), os.urandom(150_000)
    md5_v1 = place(up, "report.bin", v1)
    relay.start("upload", "central")  # no download yet: v1 is sent and stored, but not delivered
    relay.wait_for("v1 stored at central", lambda: relay.states("central") == {"report.bin": "downloading"})
    [first] = relay.entries("upload")
    assert (first.state, first.md5) == ("sent", md5_v1)
    md5_v2 = place(up, "report.bin", v2)  # a writer renames a new version over the name
    relay.start("download")  # v1 is delivered now, while report.bin holds v2

    def upload_entry(entry_id: str):
        return next(e for e in relay.entries("upload") if e.id == entry_id)

    relay.wait_for("v1's cleanup decided", lambda: upload_entry(first.id).state == "done")
    first = upload_entry(first.id)
    assert first.cleanup == "skipped", (first.cleanup, first.reason)
    assert f"other content (md5 {md5_v2}, delivered {md5_v1})" in (first.reason or "")
    # v2 relays as its own entry and arrives beside v1; its own cleanup runs, on v2.
    relay.wait_for(
        "v2 delivered and cleaned up",
        lambda: (
            [(e.md5, e.cleanup) for e in relay.entries("upload")] == [(md5_v1, "skipped"), (md5_v2, "done")]
        ),
    )
    assert sorted(os.listdir(down)) == [f".synkler-{relay.instance}", "report (2).bin", "report.bin"]
    assert {md5_entry(down / n) for n in ("report.bin", "report (2).bin")} == {md5_v1, md5_v2}
    assert runs(log) == [("report.bin", md5_v2)]  # once, and never on v1's behalf
    assert (Path(f"{log}.sent") / "1").read_bytes() == v2
    assert os.listdir(up) == []
    assert "cleanup skipped: " in status_of(relay, "upload")
    log_text = relay.log_path("upload").read_text()
    assert re.search(r" WARNING report\.bin: cleanup script not run: .*other content", log_text)
    assert_clean(relay)


@pytest.mark.parametrize("change", ["replaced", "removed"])
def test_a_placed_copy_replaced_or_removed_at_download_before_its_cleanup_script_runs_is_left_alone(
    make_relay, change
):
    relay = make_relay()
    log = relay.workdir / "download-cleanup"
    relay.write_config("download", {"cleanup_script": mover(log)})
    relay.start()
    up, down = relay.dirs["upload"], relay.dirs["download"]
    gate = Path(f"{log}.gate")

    def down_entries() -> dict:
        return {e.name: e for e in relay.entries("download")}

    try:
        md5s = {"first.bin": place(up, "first.bin", os.urandom(1000))}
        # Scripts run one at a time: while first.bin's waits at its gate, report.bin's waits its turn.
        relay.wait_for("first.bin's cleanup script started", Path(f"{log}.started").exists)
        md5s["report.bin"] = place(up, "report.bin", os.urandom(2000))
        relay.wait_for(
            "report.bin placed, its cleanup script due",
            lambda: "report.bin" in down_entries() and down_entries()["report.bin"].state == "delivered",
        )
        assert md5_entry(down / "report.bin") == md5s["report.bin"]
        other = os.urandom(3000)
        if change == "replaced":
            (down / ".other").write_bytes(other)
            os.rename(down / ".other", down / "report.bin")
        else:
            os.unlink(down / "report.bin")
    finally:
        gate.touch()  # first.bin's script goes on (and ends, even if this test failed)
    relay.wait_for(
        "both cleanups decided", lambda: [e.state for e in down_entries().values()] == ["done"] * 2
    )
    entries = down_entries()
    assert (entries["first.bin"].cleanup, entries["report.bin"].cleanup) == ("done", "skipped")
    assert runs(log) == [("first.bin", md5s["first.bin"])]
    if change == "replaced":
        assert (down / "report.bin").read_bytes() == other  # someone else's file, left alone
        assert "other content" in (entries["report.bin"].reason or "")
    else:
        assert not os.path.lexists(down / "report.bin")
        assert "gone" in (entries["report.bin"].reason or "")
    assert "cleanup skipped: " in status_of(relay, "download")
    relay.wait_for("upload done", lambda: relay.all_done(set(md5s)))


FLAKY = (
    "import os, sys\n"
    "open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')\n"
    "sys.exit(0 if os.path.getsize(sys.argv[1]) > len(sys.argv[2]) + 1 else 7)\n"  # fails on its first run
)


@pytest.mark.parametrize(("attempts", "runs", "outcome"), [(1, 1, "failed"), (3, 2, "done")])
def test_a_failing_cleanup_script_is_retried_as_configured_and_never_causes_a_resend(
    make_relay, attempts, runs, outcome
):
    relay = make_relay()
    log = relay.workdir / "runs"
    script = shlex.join([sys.executable, "-c", FLAKY, str(log), "%f"])
    relay.write_config(
        "download", {"cleanup_script": script, "cleanup_attempts": attempts, "retry_max_seconds": 1}
    )
    relay.start()
    md5s = {"once.txt": place(relay.dirs["upload"], "once.txt", b"once")}
    relay.wait_for(f"cleanup {outcome}", lambda: [e.cleanup for e in relay.entries("download")] == [outcome])
    deliver(relay, md5s)
    assert log.read_text() == "once.txt\n" * runs
    entry = relay.entries("download")[0]
    assert (entry.state, entry.tries) == ("done", runs - 1)
    assert len(relay.entries("central")) == 1 and relay.states("central") == {"once.txt": "delivered"}
    assert sorted(os.listdir(relay.dirs["download"])) == [f".synkler-{relay.instance}", "once.txt"]
    if outcome == "failed":
        assert "exit 7" in entry.reason
