"""Files that come faster than inotify can tell of them: upload offers every one, once.

The kernel queues at most fs.inotify.max_queued_events (16,384 by default) events per watcher and
drops the rest, saying so once (IN_Q_OVERFLOW). The test makes that happen with the default limit,
as it happens on a busy host: it stops the upload agent (SIGSTOP, so its watcher reads nothing)
while tens of thousands of files are made, then lets it go on. Each file must be offered exactly
once (upload's state database: one entry per name, none withdrawn), a file still being written
meanwhile only once it is whole, and the log says once that events were lost, however many
overflows there were. With bundles on (the default), each file is offered once either as an
entry of its own or as a member of one bundle (the `members` table, synkler.bundles).

The `scale` tests write 1,000,000 files within a minute into a running upload agent, one by one and
with bundles (run them with `-m scale`; minutes; SYNKLER_SCALE_FILES=N writes N instead).

Bundles are made only once a central has said its version (its presence report; else after
VERSION_WAIT files go one by one): the bundle tests start central and stop it before upload starts.
Its last report stays on the broker, so upload bundles, and nothing is admitted or pushed: what is
measured is upload noticing and offering the flood, not the relay's transfers.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from support.relay_helpers import started

from synkler import bundles
from synkler.agents.upload import Up
from synkler.state import State

# The scale test's files; fewer on a machine too busy to write a million within minutes.
SCALE_FILES = int(os.environ.get("SYNKLER_SCALE_FILES", "1000000"))
# What is tested is how upload notices names (each offered once), so each file is an entry of its
# own: no bundles (which the default makes of files that settle together).
ONE_BY_ONE = {"settle_seconds": 1, "bundle_files": 0}
BUNDLES = {"settle_seconds": 1}  # the default bundles (bundle_files: 1000, bundle_min: 50)
OVERFLOW_LINE = "files came faster than inotify could tell of them"


def make_files(where: Path, names: list[str]) -> None:
    """Empty files, as fast as Python makes them (two events each: create, close after write)."""
    for name in names:
        os.close(os.open(where / name, os.O_CREAT | os.O_WRONLY, 0o644))


def offered_names(db: Path) -> collections.Counter:
    """How many versions of each name upload's state database holds (read-only, as `status` reads it)."""
    if not db.exists():
        return collections.Counter()
    state = State(db, readonly=True)
    try:
        return collections.Counter(e.name for e in state.all())
    except Exception:  # the agent may be making the schema right now
        return collections.Counter()
    finally:
        state.close()


def offered_files(db: Path) -> collections.Counter:
    """How many times each name was offered, as an entry of its own or as a member of a bundle
    (read-only); bundles themselves are not files of file_dir."""
    if not db.exists():
        return collections.Counter()
    state = State(db, readonly=True)
    try:
        found = collections.Counter(e.name for e in state.all() if e.kind != bundles.KIND)
        found.update(os.fsdecode(name) for (name,) in state.rows("SELECT name FROM members"))
        return found
    except Exception:  # the agent may be making the schema right now
        return collections.Counter()
    finally:
        state.close()


def offers(db: Path) -> int:
    """Files offered (entries of their own and members of bundles), counted (a look every few
    seconds at a million rows must not compete with the agent it waits for)."""
    state = State(db, readonly=True)
    try:
        own = state.rows("SELECT COUNT(*) FROM entries WHERE kind != ?", (bundles.KIND,))[0][0]
        return own + state.rows("SELECT COUNT(*) FROM members")[0][0]
    except Exception:  # the agent may be making the schema right now
        return 0
    finally:
        state.close()


def bundled(db: Path) -> int:
    """Files offered as members of bundles."""
    state = State(db, readonly=True)
    try:
        return state.rows("SELECT COUNT(*) FROM members")[0][0]
    finally:
        state.close()


def central_known(relay) -> None:
    """Start central and stop it again: its last presence report (with its version) stays on the
    broker, so upload makes bundles (and nothing is admitted or pushed)."""
    started(relay, "central")
    relay.stop("central")


def upload_counts(db: Path) -> dict[str, int]:
    state = State(db, readonly=True)
    try:
        return state.counts()
    finally:
        state.close()


class SlowWriter(threading.Thread):
    """Appends to one file every 0.2 s, `times` times: a file being written while the flood comes."""

    def __init__(self, path: Path, times: int):
        super().__init__(daemon=True)
        self.path, self.times = path, times
        self.content = b""

    def run(self) -> None:
        with open(self.path, "ab") as f:
            for i in range(self.times):
                chunk = f"line {i}\n".encode() * 100
                f.write(chunk)
                f.flush()
                self.content += chunk
                time.sleep(0.2)


def test_a_flood_of_files_that_overflows_inotify_is_offered_whole_each_file_once(make_relay):
    relay = make_relay(verbose=False, upload=ONE_BY_ONE)
    files = relay.dirs["upload"]
    db = relay.workdir / "upload" / "state.sqlite"
    relay.start("upload")
    (files / "probe").write_bytes(b"probe")
    relay.wait_for("the probe offered", lambda: offered_names(db)["probe"] == 1, timeout=60)
    agent = relay.procs["upload"]

    expected = {"probe"}
    writer = SlowWriter(files / "growing.log", times=20)  # written for 4 s: settles only after
    for burst in range(2):  # two floods, two overflows at least: the log says it once
        names = [f"burst{burst}-{i:05d}.dat" for i in range(20_000)]  # 40,000 events > 16,384
        agent.send_signal(signal.SIGSTOP)
        try:
            make_files(files, names)
            if burst == 1:
                writer.start()
        finally:
            agent.send_signal(signal.SIGCONT)
        expected.update(names)
        relay.wait_for(
            f"flood {burst + 1} offered",
            lambda: set(offered_names(db)) >= expected,
            timeout=300,
            interval=1.0,
        )
    writer.join()
    expected.add("growing.log")
    relay.wait_for("the growing file offered", lambda: "growing.log" in offered_names(db), timeout=60)

    counts = offered_names(db)
    assert set(counts) == expected, "a file was missed, or something else was offered"
    twice = [n for n, c in counts.items() if c != 1]
    assert not twice, f"offered more than once: {twice[:10]}"
    # None withdrawn: nothing was offered before it was whole (a version offered while being written
    # is withdrawn when its hash sees it change, and its name offered again).
    assert Up.SUPERSEDED not in upload_counts(db)
    state = State(db, readonly=True)
    try:
        (growing,) = [e for e in state.all() if e.name == "growing.log"]
    finally:
        state.close()
    assert growing.size == len(writer.content)
    relay.stop("upload")

    log = relay.log_path("upload").read_text(errors="replace")
    assert log.count(OVERFLOW_LINE) == 1, [line for line in log.splitlines() if OVERFLOW_LINE in line]


def test_a_flood_of_small_files_that_overflows_inotify_is_offered_in_bundles_each_file_once(make_relay):
    """The default configuration: files that settle together go in bundles; each file once, as a
    member of a bundle or (the last few, fewer than bundle_min) on its own."""
    relay = make_relay(verbose=False, upload=BUNDLES)
    files = relay.dirs["upload"]
    db = relay.workdir / "upload" / "state.sqlite"
    central_known(relay)
    relay.start("upload")
    (files / "probe").write_bytes(b"probe")  # alone: no bundle
    relay.wait_for("the probe offered", lambda: offered_files(db)["probe"] == 1, timeout=60)
    agent = relay.procs["upload"]

    names = [f"flood-{i:05d}.dat" for i in range(30_000)]  # 60,000 events > 16,384
    agent.send_signal(signal.SIGSTOP)
    try:
        make_files(files, names)
    finally:
        agent.send_signal(signal.SIGCONT)
    expected = {"probe", *names}
    relay.wait_for("the flood offered", lambda: set(offered_files(db)) >= expected, timeout=300, interval=1.0)

    counts = offered_files(db)
    assert set(counts) == expected, "a file was missed, or something else was offered"
    twice = [n for n, c in counts.items() if c != 1]
    assert not twice, f"offered more than once: {twice[:10]}"
    assert Up.SUPERSEDED not in upload_counts(db)
    assert bundled(db) >= len(names) // 2, "the flood did not go in bundles"
    relay.stop("upload")
    log = relay.log_path("upload").read_text(errors="replace")
    assert log.count(OVERFLOW_LINE) == 1, [line for line in log.splitlines() if OVERFLOW_LINE in line]


def flood(relay, settings_name: str) -> int:
    """Write SCALE_FILES files into the running upload agent's file_dir, as fast as Python can, and
    wait until each is offered once (as an entry or a bundle's member); say how long it took."""
    files = relay.dirs["upload"]
    db = relay.workdir / "upload" / "state.sqlite"
    relay.start("upload")
    (files / "probe").write_bytes(b"probe")
    relay.wait_for("the probe offered", lambda: offered_files(db)["probe"] == 1, timeout=60)

    started_at = time.monotonic()
    names = [f"f{i:07d}" for i in range(SCALE_FILES)]
    for i in range(0, len(names), 10_000):
        make_files(files, names[i : i + 10_000])
    written = time.monotonic() - started_at  # about 10 s on an idle machine; said at the end

    relay.wait_for(f"{len(names):,} offers", lambda: offers(db) >= len(names) + 1, timeout=3600, interval=5.0)
    took = time.monotonic() - started_at
    counts = offered_files(db)
    assert set(counts) == {"probe", *names}
    assert max(counts.values()) == 1, "a file was offered more than once"
    assert Up.SUPERSEDED not in upload_counts(db)
    in_bundles = bundled(db)
    relay.stop("upload")
    log = relay.log_path("upload").read_text(errors="replace")
    assert log.count(OVERFLOW_LINE) <= 1
    print(
        f"\n{settings_name}: {len(names):,} files written in {written:.1f} s, all offered {took:.0f} s after"
        f" the first was written ({in_bundles:,} in bundles)"
    )
    return in_bundles


@pytest.mark.scale
def test_a_million_files_written_within_a_minute_are_each_offered_once(make_relay):
    relay = make_relay(verbose=False, upload=ONE_BY_ONE)
    assert flood(relay, "one by one") == 0


@pytest.mark.scale
def test_a_million_files_written_within_a_minute_are_each_offered_once_in_bundles(make_relay):
    relay = make_relay(verbose=False, upload=BUNDLES)
    central_known(relay)
    assert flood(relay, "bundles") >= SCALE_FILES // 2  # (files that settle a few at a time go alone)
