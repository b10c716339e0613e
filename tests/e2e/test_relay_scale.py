"""Many small files through the real relay, with each agent killed while they cross (issue 24).

What a user checks after a big batch: every file at download once, under its own name, with its md5;
each cleanup script run exactly once per file on each side; central's copies gone keep_minutes after
delivery; nothing left in any staging place. The default suite relays 2,000 files; the `scale`
marker selects 20,000 (`pytest -m scale tests/e2e/test_relay_scale.py`). The same with bundles
(many small files as one entry, synkler.bundles): every file still arrives once, under its own name,
with its md5, and its cleanup script runs exactly once at each end.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.relay_helpers import assert_clean, started

from synkler import bundles
from synkler.devkit.localrelay import LocalRelay
from synkler.hops.checksum import md5_entry

KEEP_MINUTES = 0.1  # central's copies go 6 s after delivery
# A cleanup script as cheap as one can be (a shell appending the name), run without a shell of
# synkler's own: thousands of them run during the test.
RECORD = 'printf \'%s\\n\' "$1" >> "$0"'


def recorder(log: Path) -> str:
    return shlex.join(["sh", "-c", RECORD, str(log), "%f"])


def done_count(relay: LocalRelay, role: str, state: str = "done") -> int:
    """Entries of `role` in `state`, by one cheap query (LocalRelay.entries builds every row)."""
    rows = query(relay, role, "SELECT COUNT(*) FROM entries WHERE state = ?", state)
    return rows[0][0] if rows else 0


def query(relay: LocalRelay, role: str, sql: str, *params: object) -> list[tuple]:
    """Rows of `sql` on `role`'s state database, read-only; none while the agent makes its schema."""
    path = relay.workdir / role / "state.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True)
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # the agent is creating the schema
        return []
    finally:
        db.close()


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def relay_of_files(make_relay, count: int, **upload: object) -> tuple[LocalRelay, Path, Path, dict[str, str]]:
    """A relay whose cleanup scripts log each name (up.log, down.log), started, and `count` files of
    4 KiB renamed into upload's file_dir once every agent is connected: (relay, up_log, down_log,
    md5 of each name)."""
    relay = make_relay(verbose=False, central={"keep_minutes": KEEP_MINUTES})
    up_log, down_log = relay.workdir / "up.log", relay.workdir / "down.log"
    relay.write_config("upload", {"cleanup_script": recorder(up_log), **upload})
    relay.write_config("download", {"cleanup_script": recorder(down_log)})
    # Written beside file_dir, then renamed in one by one (as a careful writer does).
    source = relay.workdir / "source"
    source.mkdir()
    md5s: dict[str, str] = {}
    for i in range(count):
        path = source / f"f{i:05d}.bin"
        path.write_bytes(os.urandom(4096))
        md5s[path.name] = md5_entry(path)
    started(relay)
    for name in md5s:
        os.rename(source / name, relay.dirs["upload"] / name)
    return relay, up_log, down_log, md5s


def kill_each_agent_in_turn(
    relay: LocalRelay, done: Callable[[], int], what: str, count: int, timeout: float
) -> None:
    """Kill each agent in turn while entries cross, each at a later point of the batch (`done` of
    `count` so far), and start it again at once."""
    for victim, fraction in (("download", 0.15), ("central", 0.4), ("upload", 0.65)):
        relay.wait_for(
            f"{fraction:.0%} {what} at download before {victim} is killed",
            lambda f=fraction: done() >= f * count,
            timeout,
            interval=0.2,
        )
        relay.kill(victim)
        relay.start(victim)


def wait_for_every_cleanup_script(
    relay: LocalRelay, up_log: Path, down_log: Path, count: int, timeout: float
) -> None:
    relay.wait_for(
        "every cleanup script run",
        lambda: len(lines(up_log)) >= count and len(lines(down_log)) >= count,
        timeout,
        interval=0.5,
    )


def assert_each_file_once(relay: LocalRelay, up_log: Path, down_log: Path, md5s: dict[str, str]) -> None:
    """Every file at download once, with its md5; each cleanup script run once per name on each side."""
    down = relay.dirs["download"]
    assert sorted(os.listdir(down)) == sorted([*md5s, f".synkler-{relay.instance}"])  # nothing twice
    assert [n for n, md5 in md5s.items() if md5_entry(down / n) != md5] == []
    # Exactly once on each side: every name once, no name twice.
    assert sorted(lines(up_log)) == sorted(md5s)
    assert sorted(lines(down_log)) == sorted(md5s)


def relay_many_with_kills(make_relay, count: int, timeout: float) -> None:
    """Each file an entry of its own (`bundle_files: 0`): the per-entry path at scale, every step of
    it killed; the same with bundles is relay_bundles."""
    relay, up_log, down_log, md5s = relay_of_files(make_relay, count, bundle_files=0)
    kill_each_agent_in_turn(relay, lambda: done_count(relay, "download"), "done", count, timeout)
    relay.wait_for(
        "every file done at upload and download",
        lambda: done_count(relay, "download") == count and done_count(relay, "upload") == count,
        timeout,
        interval=0.5,
    )
    wait_for_every_cleanup_script(relay, up_log, down_log, count, timeout)
    # Central removes its copies keep_minutes after delivery.
    relay.wait_for(
        "every central copy expired", lambda: done_count(relay, "central", "expired") == count, timeout, 0.5
    )
    assert_each_file_once(relay, up_log, down_log, md5s)
    # One entry per file at each role: nothing was offered, fetched or placed a second time.
    for role in ("upload", "central", "download"):
        assert len(relay.entries(role)) == count, role
    assert os.listdir(relay.dirs["central"] / relay.instance / "stored") == []
    assert_clean(relay)


def test_two_thousand_small_files_cross_once_each_while_every_agent_is_killed(make_relay):
    relay_many_with_kills(make_relay, 2000, timeout=600)


@pytest.mark.scale
def test_twenty_thousand_small_files_cross_once_each_while_every_agent_is_killed(make_relay):
    relay_many_with_kills(make_relay, 20_000, timeout=3600)


# bundles ------------------------------------------------------------------------------------

BUNDLES = {"bundle_files": 100, "bundle_min": 20}


def placed(relay: LocalRelay) -> int:
    """Files placed at download: members of bundles, and single entries."""
    rows = query(relay, "download", "SELECT count(*) FROM members WHERE placed = ?", bundles.PLACED)
    sql = "SELECT count(*) FROM entries WHERE kind != ? AND state = ?"
    single = query(relay, "download", sql, "bundle", "done")
    return (rows[0][0] if rows else 0) + (single[0][0] if single else 0)


def all_done(relay: LocalRelay, role: str) -> bool:
    rows = query(relay, role, "SELECT count(*), sum(state = 'done') FROM entries")
    return bool(rows) and rows[0][0] > 0 and rows[0][0] == rows[0][1]


def relay_bundles(make_relay, count: int, timeout: float, kills: bool) -> None:
    relay, up_log, down_log, md5s = relay_of_files(make_relay, count, **BUNDLES)
    if kills:
        kill_each_agent_in_turn(relay, lambda: placed(relay), "placed", count, timeout)
    relay.wait_for(
        "every file placed, every entry done at upload and download",
        lambda: placed(relay) == count and all_done(relay, "upload") and all_done(relay, "download"),
        timeout,
        interval=0.5,
    )
    wait_for_every_cleanup_script(relay, up_log, down_log, count, timeout)
    relay.wait_for(
        "every central copy expired",
        lambda: all(s == "expired" for (s,) in query(relay, "central", "SELECT state FROM entries")),
        timeout,
        0.5,
    )
    assert_each_file_once(relay, up_log, down_log, md5s)
    # Most files crossed in bundles: far fewer entries than files.
    kinds = query(relay, "central", "SELECT kind, count(*), sum(files) FROM entries GROUP BY kind")
    in_bundles = sum(n for kind, _, n in kinds if kind == "bundle")
    assert in_bundles >= count * 0.9, kinds
    assert len(relay.entries("central")) < count / 10, kinds
    # Each member's md5 at upload is the one download placed, and its receipt document lists it.
    up = dict(query(relay, "upload", "SELECT name, md5 FROM members"))
    assert {os.fsdecode(n): m for n, m in up.items() if os.fsdecode(n) in md5s} == {
        n: md5s[n] for n in (os.fsdecode(n) for n in up)
    }
    assert os.listdir(relay.dirs["central"] / relay.instance / "stored") == []
    assert not (relay.dirs["upload"] / bundles.UPLOAD_DIR).exists()  # no links, no directory of them
    assert_clean(relay)
    # status --json at download lists each bundle's files, where each went and its cleanup.
    out = subprocess.run(
        relay.command("download", "status", "--all", "--json"), capture_output=True, text=True, check=True
    )
    shown = [m for row in json.loads(out.stdout) for m in row.get("members", [])]
    assert sorted(m["name"] for m in shown) == sorted(n for n in md5s if n not in single_names(relay))
    assert {(m["placed"], m["cleanup"]) for m in shown} == {("placed", "done")}
    assert all(m["md5"] == md5s[m["name"]] and m["stored_as"] == m["name"] for m in shown)


def single_names(relay: LocalRelay) -> set[str]:
    return {n for (n,) in query(relay, "download", "SELECT name FROM entries WHERE kind != 'bundle'")}


def test_two_thousand_small_files_cross_in_bundles_each_placed_and_cleaned_up_once(make_relay):
    relay_bundles(make_relay, 2000, timeout=600, kills=False)


def test_bundles_cross_once_each_while_every_agent_is_killed(make_relay):
    relay_bundles(make_relay, 2000, timeout=900, kills=True)


@pytest.mark.scale
def test_twenty_thousand_small_files_cross_in_bundles_while_every_agent_is_killed(make_relay):
    relay_bundles(make_relay, 20_000, timeout=3600, kills=True)
