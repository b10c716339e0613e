"""Download's early copy of a file pulled while upload pushes it: what its running md5 covers, and
what becomes of it when download restarts before the fetch."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.fakes import Role

from synkler.agents.base import ENTRY as ENTRY_KEY
from synkler.agents.base import Key
from synkler.agents.download import EARLY_KEEP
from synkler.errors import Interrupted
from synkler.hops import early as early_module
from synkler.hops import transfer
from synkler.hops.checksum import STOPPING
from synkler.hops.early import CUT_TAIL, Early, Trailing, early_room, pull_early, trimmed
from synkler.hops.pull import Verified, finish_early
from synkler.hops.transfer import Result
from synkler.messages import Fetch, Pushing
from synkler.state import Entry


def test_the_digest_covers_what_was_appended_up_to_the_limit(tmp_path):
    local = tmp_path / "copy"
    early = Early(str(local))
    assert early.hash_more(299) and early.hashed == 0  # nothing pulled yet
    data = os.urandom(300)
    local.write_bytes(data[:100])
    assert early.hash_more(299) and early.hashed == 100
    with open(local, "ab") as f:
        f.write(data[100:])
    assert early.hash_more(299) and early.hashed == 299  # the last byte is left for the fetch's run
    assert early.hash_more(300) and early.hashed == 300
    assert early.digest.hexdigest() == hashlib.md5(data).hexdigest()


def test_a_copy_replaced_or_removed_is_not_the_same_copy(tmp_path):
    local = tmp_path / "copy"
    local.write_bytes(b"a" * 50)
    early = Early(str(local))
    assert early.hash_more(99) and early.hashed == 50
    other = tmp_path / "other"
    other.write_bytes(b"a" * 60)
    os.replace(other, local)  # another file (inode) in its place, longer than what was hashed
    assert not early.hash_more(99)
    os.unlink(local)
    assert not early.hash_more(99)  # it was there before: gone is not "nothing pulled yet"


def test_a_copy_cut_shorter_than_what_was_hashed_is_not_the_same_copy(tmp_path):
    local = tmp_path / "copy"
    local.write_bytes(b"a" * 50)
    early = Early(str(local))
    assert early.hash_more(99) and early.hashed == 50
    os.truncate(local, 10)
    assert not early.hash_more(99)


# --------------------------------------------------------------------------------------------------
# A restart during an early pull (the fake runtime of tests/unit/fakes.py; rsync replaced by a function
# that does what `rsync --append` does, from a local file standing for central's).


@dataclass
class Central:
    """Central's files as download's rsync sees them (remote path -> bytes), and the appends asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    once: set[str] = field(default_factory=set)  # files gone after one run (a push that ends)
    appended_from: list[int] = field(default_factory=list)  # the length of download's copy at each run

    def pull_more(self, _cfg: object, remote: str, local: str, cancel: object = None) -> Result:
        if remote not in self.files:
            return Result(False, 23, f'rsync: [sender] link_stat "{remote}" failed: No such file (2)\n')
        have = os.path.getsize(local) if os.path.exists(local) else 0
        self.appended_from.append(have)
        with open(local, "ab") as f:
            f.write(self.files[remote][have:])
        if remote in self.once:
            del self.files[remote]
        return Result(True, 0, "")

    def pull(self, *_args: object) -> Result:
        raise AssertionError("the file was pulled whole")


DATA = os.urandom(300_000)
ENTRY = "e" * 32
STORED = f"/srv/central/lab/stored/{ENTRY}"
GROWING = f"/srv/central/lab/growing/{ENTRY}"


@pytest.fixture
def central(monkeypatch: pytest.MonkeyPatch) -> Central:
    fake = Central()
    monkeypatch.setattr(transfer, "pull_more", fake.pull_more)
    monkeypatch.setattr(transfer, "pull", fake.pull)
    return fake


@pytest.fixture
def down(tmp_path: Path) -> Iterator[Role]:
    r = Role("download", tmp_path)
    yield r
    r.close()


def copy_of(r: Role, entry_id: str = ENTRY) -> Path:
    return Path(r.agent.staging.of(entry_id))


def left_by_an_early_pull(r: Role, length: int, entry_id: str = ENTRY) -> Path:
    """What an early pull cut short by the stop left in staging: the file's first `length` bytes."""
    copy = copy_of(r, entry_id)
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(DATA[:length])
    return copy


def fetch(entry_id: str = ENTRY) -> Fetch:
    return Fetch(
        entry_id,
        "central",
        name="data.bin",
        kind="file",
        size=len(DATA),
        files=1,
        md5=hashlib.md5(DATA).hexdigest(),
        attempt=1,
        path=f"/srv/central/lab/stored/{entry_id}",
    )


def pushing(entry_id: str = ENTRY) -> Pushing:
    return Pushing(entry_id, "central", size=len(DATA), path=f"/srv/central/lab/growing/{entry_id}")


def test_a_copy_pulled_early_before_a_restart_is_completed_after_the_fetch_not_pulled_again(
    down: Role, central: Central
):
    copy = left_by_an_early_pull(down, 200_000)
    down.start()
    assert copy.read_bytes() == DATA[:200_000]
    assert down.agent.early[ENTRY].hashed == 0  # the main loop read nothing of it
    central.files[STORED] = DATA
    down.deliver(fetch())
    down.tick()
    down.run(down.job("transfer"))  # hashes the copy, then appends the rest
    assert central.appended_from == [200_000]
    entry = down.entry(ENTRY)
    assert (entry.state, entry.stored_as) == ("placing", "data.bin")
    down.tick()
    assert (down.file_dir / "data.bin").read_bytes() == DATA
    assert not copy.exists()


def test_a_pushing_sent_again_after_a_restart_goes_on_pulling_early_from_where_the_copy_ends(
    down: Role, central: Central
):
    left_by_an_early_pull(down, 100_000)
    down.start()
    central.files[GROWING] = DATA[:250_000]  # the push goes on
    central.once.add(GROWING)  # then it is over: the link goes, and the early pull stops
    down.deliver(pushing())  # a redelivery, or a new try of the push
    down.tick()  # pushes begun are pulled early by the tick, after the fetches
    down.run(down.job("transfer"))
    assert central.appended_from == [100_000]
    early = down.agent.early[ENTRY]
    assert (early.hashed, early.hexdigest()) == (250_000, hashlib.md5(DATA[:250_000]).hexdigest())
    central.files[STORED] = DATA
    down.deliver(fetch())
    down.tick()
    down.run(down.job("transfer"))
    assert central.appended_from == [100_000, 250_000]
    down.tick()
    assert (down.file_dir / "data.bin").read_bytes() == DATA


def test_a_copy_kept_at_start_up_whose_fetch_never_comes_goes_after_early_keep(down: Role):
    copy = left_by_an_early_pull(down, 1000)
    started = time.time()
    down.start()
    down.tick(started + EARLY_KEEP - 5)
    assert copy.exists()
    down.tick(started + EARLY_KEEP + 5)
    assert not copy.exists() and ENTRY not in down.agent.early


def test_hashing_a_kept_copy_ends_at_once_when_the_agent_stops_and_the_copy_stays(
    down: Role, central: Central
):
    copy = left_by_an_early_pull(down, 200_000)
    down.start()
    central.files[STORED] = DATA
    down.deliver(fetch())
    down.tick()
    job = down.job("transfer")
    STOPPING.set()
    try:
        with pytest.raises(Interrupted):
            job.work()
    finally:
        STOPPING.clear()
    assert central.appended_from == []
    assert copy.read_bytes() == DATA[:200_000]


def test_an_early_copys_last_run_ended_by_the_stop_keeps_the_copy_and_pulls_nothing_whole(
    down: Role, central: Central, monkeypatch: pytest.MonkeyPatch
):
    # The stop ends the run that appends the rest (rsync exits 20 on SIGTERM): that is no reason to
    # drop what was pulled early and start a whole pull, which nothing would then end.
    copy = left_by_an_early_pull(down, 200_000)
    down.start()
    central.files[STORED] = DATA
    down.deliver(fetch())
    down.tick()
    job = down.job("transfer")

    def ended_by_the_stop(*_args: object, **_kw: object) -> Result:
        STOPPING.set()
        return Result(False, 20, "rsync error: received SIGINT, SIGTERM, or SIGHUP (code 20)")

    monkeypatch.setattr(transfer, "pull_more", ended_by_the_stop)
    try:
        with pytest.raises(Interrupted):
            job.work()
    finally:
        STOPPING.clear()
    assert copy.read_bytes() == DATA[:200_000]


def test_a_pass_that_records_a_pull_and_is_undone_has_placed_nothing_in_file_dir(
    down: Role, central: Central
):
    # The runtime records job results and ticks in one pass, one commit. Were the rename into
    # file_dir done in the pass that chose the name (`placing`), a crash before its commit would
    # leave the file there with the entry still `fetching`: the restart took it for one already
    # present (`done`, "nothing to do") and its cleanup script never ran.
    left_by_an_early_pull(down, 200_000)
    down.start()
    central.files[STORED] = DATA
    down.deliver(fetch())
    down.tick()
    job = down.job("transfer")
    outcome = job.work()
    down.jobs.pending.remove(job)
    down.jobs.held.difference_update(job.keys)
    down.jobs.transfers -= 1
    with pytest.raises(KeyboardInterrupt), down.state.transaction():  # killed before the commit
        job.done(outcome, None)
        down.agent.tick(time.time())
        raise KeyboardInterrupt
    assert not (down.file_dir / "data.bin").exists()
    assert down.entry(ENTRY).state == "fetching"  # pulled again at the restart, then placed


def test_copies_kept_at_start_up_leave_room_for_new_early_pulls(down: Role, central: Central):
    kept = [uuid.uuid4().hex for _ in range(down.cfg.max_transfers)]
    for entry_id in kept:
        left_by_an_early_pull(down, 1000, entry_id)
    down.start()
    assert set(down.agent.early) == set(kept)
    down.deliver(pushing())
    down.tick()
    assert down.job("transfer").keys == (Key(ENTRY_KEY, ENTRY),)
    down.deliver(pushing())  # the same file, sent again while it is pulled: one pull
    down.tick()
    assert len(down.jobs.pending) == 1


# --------------------------------------------------------------------------------------------------
# Which pushes are pulled early, and when an early pull ends.


def test_early_pulls_leave_one_transfer_slot_for_entries_already_fetched():
    assert early_room(0, 0, 4) and early_room(2, 2, 4)
    assert not early_room(3, 3, 4)  # the fourth slot is for fetched entries
    assert not early_room(1, 4, 4)  # no slot free at all
    assert early_room(0, 0, 1) and not early_room(1, 1, 1)  # one slot: it may pull early


def test_pushes_without_a_slot_wait_and_are_pulled_early_once_one_is_free(down: Role, central: Central):
    down.start()
    ids = [uuid.uuid4().hex for _ in range(down.cfg.max_transfers)]
    for entry_id in ids:
        down.deliver(pushing(entry_id))
    down.tick()
    early = [j for j in down.jobs.pending if j.pool == "transfer"]
    assert [j.keys for j in early] == [(Key(ENTRY_KEY, i),) for i in ids[:-1]]
    down.finish(early[0], None)  # that push is over: its early pull ended
    down.tick()
    assert down.jobs.pending[-1].keys == (Key(ENTRY_KEY, ids[-1]),)


def test_a_push_whose_fetch_comes_before_a_slot_is_not_pulled_early(down: Role, central: Central):
    down.start()
    ids = [uuid.uuid4().hex for _ in range(down.cfg.max_transfers)]
    for entry_id in ids:
        down.deliver(pushing(entry_id))
    down.tick()
    first = down.jobs.pending[0]
    down.deliver(fetch(ids[-1]))  # verified at central before download had room to pull it early
    down.finish(first, None)
    down.tick()
    pulls = [j for j in down.jobs.pending if Key(ENTRY_KEY, ids[-1]) in j.keys]
    assert len(pulls) == 1 and ids[-1] not in down.agent.early  # its pull from the verified copy


def test_an_early_pull_ends_once_the_copy_is_whole_without_waiting_for_the_fetch(
    down: Role, central: Central
):
    down.start()
    central.files[GROWING] = DATA  # pushed whole; central has not checked it yet
    down.deliver(pushing())
    down.tick()
    down.run(down.job("transfer"))  # would go on until the fetch if it did not end by itself
    assert central.appended_from == [0]
    assert down.agent.early[ENTRY].ended is not None and copy_of(down).read_bytes() == DATA
    central.files[STORED] = DATA
    down.deliver(fetch())
    down.tick()
    down.run(down.job("transfer"))
    assert central.appended_from == [0, len(DATA) - 1]  # the last byte again, for mode and mtime
    down.tick()
    assert (down.file_dir / "data.bin").read_bytes() == DATA


def test_what_each_run_appended_is_hashed_once_it_has_ended_while_the_next_goes(tmp_path: Path):
    local = tmp_path / "copy"
    early = Early(str(local))
    seen = bytearray()
    with Trailing(early, len(DATA) - 1) as trailing, open(local, "r+b" if local.exists() else "w+b") as f:
        for start in range(0, len(DATA), 100_000):
            chunk = bytearray(DATA[start : start + 100_000])
            f.write(chunk)
            f.flush()
            if start == 100_000:  # a byte goes bad once rsync wrote it, before the run ends
                chunk[500] ^= 0xFF
                f.seek(start + 500)
                f.write(chunk[500:501])
                f.seek(0, os.SEEK_END)
                f.flush()
            seen += chunk
            trailing.ended(f.tell())
            deadline = time.monotonic() + 10
            while early.hashed < min(f.tell(), len(DATA) - 1) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert early.hashed == min(f.tell(), len(DATA) - 1)  # while the block (the pull) goes on
    assert (
        early.hexdigest() == hashlib.md5(bytes(seen[:-1])).hexdigest() != hashlib.md5(DATA[:-1]).hexdigest()
    )


def test_a_fetched_entry_with_an_early_copy_is_pulled_alone_on_from_its_copy(down: Role, central: Central):
    # Files under 64 MiB share a pull run; one pulled early must not: its run appends to its copy.
    left_by_an_early_pull(down, 200_000)
    down.start()
    other = uuid.uuid4().hex
    central.files[STORED] = DATA
    down.deliver(fetch())
    down.deliver(fetch(other))
    down.tick()
    runs = [j.keys for j in down.jobs.pending if j.pool == "transfer"]
    assert sorted(runs) == sorted([(Key(ENTRY_KEY, ENTRY),), (Key(ENTRY_KEY, other),)])
    [early] = [j for j in down.jobs.pending if j.keys == (Key(ENTRY_KEY, ENTRY),)]
    down.run(early)
    assert central.appended_from == [200_000]  # on from its copy, not pulled whole with the other


def fetched_entry() -> Entry:
    md5 = hashlib.md5(DATA).hexdigest()
    return Entry(ENTRY, "data.bin", "file", md5, "fetching", size=len(DATA), files=1, path=STORED)


def test_an_early_run_ended_by_the_fetch_that_wrote_its_last_buffer_twice_leaves_no_bad_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # rsync ended by a signal may flush its last write buffer a second time: the copy then ends with
    # a repeat of the block before. The early pull cuts that tail off, and the fetch's run brings it.
    monkeypatch.setattr(early_module, "CUT_TAIL", 65_536)
    block = 65_536
    local = tmp_path / "copy"
    early = Early(str(local))

    def cut_run(_cfg: object, remote: str, path: str, cancel: object = None) -> Result:
        assert remote == GROWING
        with open(path, "ab") as f:
            f.write(DATA[:200_000])
            f.write(DATA[200_000 - block : 200_000])  # the last buffer, written again
        early.fetched.set()
        return Result(False, -1, "rsync error: received SIGUSR1 (code 19)\n\nstopped: no longer needed")

    monkeypatch.setattr(transfer, "pull_more", cut_run)
    pull_early(None, ENTRY, GROWING, len(DATA), early)  # type: ignore[arg-type]
    assert local.read_bytes() == DATA[:200_000]

    def last_run(_cfg: object, remote: str, path: str, cancel: object = None) -> Result:
        assert remote == STORED
        with open(path, "ab") as f:
            f.write(DATA[os.path.getsize(path) :])
        return Result(True, 0, "")

    monkeypatch.setattr(transfer, "pull_more", last_run)
    run = finish_early(None, fetched_entry(), early, lambda e, md5: ("data.bin", False))  # type: ignore[arg-type]
    assert run is not None and isinstance(run.outcomes[ENTRY], Verified)
    assert local.read_bytes() == DATA


def test_a_run_that_failed_keeps_what_the_copy_held_before_it_and_loses_at_most_its_tail(tmp_path: Path):
    local = tmp_path / "copy"
    local.write_bytes(b"a" * (3 << 20))
    failed = Result(False, 12, "rsync error")
    assert trimmed(str(local), 1 << 20, failed) == (3 << 20) - CUT_TAIL
    assert trimmed(str(local), (3 << 20) - CUT_TAIL - 10, failed) == (3 << 20) - CUT_TAIL - 10
    assert trimmed(str(local), 0, Result(True, 0, "")) == (3 << 20) - CUT_TAIL - 10  # a run that ended well
    assert local.stat().st_size == (3 << 20) - CUT_TAIL - 10
