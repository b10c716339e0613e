"""Bounded history on three real agents, RabbitMQ, sshd and rsync: entries that ended long ago leave
the state databases while the agents run, and nothing is sent, delivered or cleaned up twice.

The entries are made by a real relay, then back-dated in the three databases while the agents are
stopped, as agents that had been running for a month would find them.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import sys
import time

from support.relay_helpers import place, started

from synkler import messages
from synkler.broker.amqp import Broker, BrokerParams
from synkler.devkit.localrelay import ROLES
from synkler.messages import Fetch

DAY = 86400
RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


def back_date(relay, days: float) -> None:
    """Every entry of every role as if it had happened `days` earlier (the agents are stopped)."""
    for role in ROLES:
        db = sqlite3.connect(relay.workdir / role / "state.sqlite")
        with db:
            db.execute(
                "UPDATE entries SET created = created - ?, updated = updated - ?", (days * DAY, days * DAY)
            )
        db.close()


def done(relay, role: str) -> dict[str, str]:
    return {e.name: e.state for e in relay.entries(role)}


def copy_of_fetch(entry, at: float) -> bytes:
    """The fetch central sent for a download entry, as it would come again from the broker."""
    msg = Fetch(
        entry.id,
        "central",
        name=entry.name,
        kind=entry.kind,
        size=entry.size,
        files=entry.files,
        md5=entry.md5,
        attempt=entry.attempt,
        path=entry.path,
    )
    wire = json.loads(messages.encode(msg))
    wire["at"] = at
    return json.dumps(wire).encode()


def test_old_entries_are_pruned_while_the_agents_run_and_nothing_is_sent_twice(make_relay, broker):
    keep = {"keep_history_days": 7}
    runs = make_relay.next_dir() / "cleanups.log"
    script = shlex.join([sys.executable, "-c", RECORD, str(runs), "%f"])
    relay = make_relay(
        upload=keep,
        central={**keep, "keep_minutes": 0.01},
        download={**keep, "cleanup_script": script},
    )
    up, down = relay.dirs["upload"], relay.dirs["download"]
    relay.start()
    names = ["kept-1", "kept-2", "gone-1", "gone-2", "report.txt"]
    for name in names:
        place(up, name, f"{name} version 1\n".encode())
    relay.wait_for("all delivered", lambda: done(relay, "download") == dict.fromkeys(names, "done"))
    place(up, "report.txt", b"report.txt version 2\n")  # a second version of a name still here
    relay.wait_for(
        "version 2 delivered and every central copy expired",
        lambda: (
            len(relay.entries("download")) == 6
            and {e.state for e in relay.entries("download")} == {"done"}
            and {e.state for e in relay.entries("upload")} == {"done"}
            and {e.state for e in relay.entries("central")} == {"expired"}
        ),
    )
    delivered = relay.entries("download")
    listing = sorted(os.listdir(down))
    cleanups = sorted(runs.read_text().splitlines())
    assert len(cleanups) == 6
    report_v2 = max((e for e in relay.entries("upload") if e.name == "report.txt"), key=lambda e: e.created)

    relay.stop()
    for name in ("gone-1", "gone-2"):
        os.remove(up / name)  # taken away, as upload's cleanup script would
    back_date(relay, 30)
    started(relay)

    # Pruned while they run: all of central's and download's, and at upload all but the latest version
    # of each name still in file_dir.
    relay.wait_for(
        "the old entries pruned",
        lambda: (
            relay.entries("central") == []
            and relay.entries("download") == []
            and sorted(e.name for e in relay.entries("upload")) == ["kept-1", "kept-2", "report.txt"]
        ),
        timeout=30,
    )
    assert [e.id for e in relay.entries("upload") if e.name == "report.txt"] == [report_v2.id]

    # Each fetch comes again, as a broker holding it back for a month would hand it over: download
    # has forgotten those entries, and must not pull them again.
    admin = Broker(BrokerParams(broker.host, broker.port), relay.instance, "test-admin")
    admin.connect(consume=False)
    try:
        for entry in delivered:
            admin.publish("download", copy_of_fetch(entry, entry.created - 30 * DAY))
    finally:
        admin.close()
    relay.wait_for(
        "the copies recorded as failed, not pulled",
        lambda: (
            sorted((e.id, e.state) for e in relay.entries("download"))
            == sorted((e.id, "failed") for e in delivered)
        ),
    )
    failed = relay.entries("download")[0]
    assert "may be a copy of one delivered before, so it is not pulled" in (failed.reason or "")

    # The relay goes on: a touched file is not sent again, a changed one and a new one are.
    os.utime(up / "kept-1", (time.time() + 5, time.time() + 5))
    place(up, "kept-2", b"kept-2 version 2\n")
    place(up, "new", b"new\n")
    relay.wait_for(
        "the new and the changed file delivered",
        lambda: (
            {n: s for n, s in done(relay, "download").items() if n in ("new", "kept-2")}
            == {"new": "done", "kept-2": "done"}
        ),
    )
    time.sleep(2)  # time enough for anything sent twice to show
    upload = relay.entries("upload")
    assert sorted(e.name for e in upload) == ["kept-1", "kept-2", "kept-2", "new", "report.txt"]
    assert sorted(os.listdir(down)) == sorted([*listing, "kept-2 (2)", "new"])
    assert sorted(runs.read_text().splitlines()) == sorted([*cleanups, "kept-2 (2)", "new"])
    assert all(relay.alive(r) for r in ROLES)
