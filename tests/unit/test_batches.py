"""Grouping entries into rsync runs: small ones share a run, big or failed ones go alone."""

from __future__ import annotations

from itertools import count
from types import SimpleNamespace

from synkler.agents.base import HASH_GROUP_BYTES, hash_groups
from synkler.agents.endpoint import BATCH_BYTES, BATCH_ENTRIES, Endpoint
from synkler.state import Entry

_ids = count(1)


def entry(size: int = 10, tries: int = 0, path: str = "/c/staging/upload") -> Entry:
    return Entry(
        id=f"{next(_ids):032x}",
        name="x",
        kind="file",
        md5="d" * 32,
        state="uploading",
        size=size,
        tries=tries,
        path=path,
    )


def agent(max_transfers: int = 4, running: int = 0) -> Endpoint:
    a = Endpoint.__new__(Endpoint)
    a.cfg = SimpleNamespace(max_transfers=max_transfers)
    a.jobs = SimpleNamespace(transfers=running)
    return a


def sizes(batches):
    return [len(b) for b in batches]


def test_small_entries_for_the_same_place_share_one_run():
    assert sizes(agent().batches([entry() for _ in range(10)], group=lambda e: e.path)) == [10]


def test_a_run_holds_at_most_batch_entries_entries():
    batches = agent().batches([entry() for _ in range(BATCH_ENTRIES + 1)], group=lambda e: e.path)
    assert sizes(batches) == [BATCH_ENTRIES, 1]


def test_big_entries_and_entries_that_failed_before_go_alone():
    es = [entry(), entry(size=BATCH_BYTES), entry(tries=1), entry()]
    assert sizes(agent().batches(es, group=lambda e: e.path)) == [2, 1, 1]


def test_entries_for_different_places_never_share_a_run():
    es = [entry(path="/a"), entry(path="/b"), entry(path="/a")]
    assert sorted(sizes(agent().batches(es, group=lambda e: e.path))) == [1, 2]


def test_no_more_runs_than_free_transfer_slots():
    es = [entry(size=BATCH_BYTES) for _ in range(5)]
    assert sizes(agent(max_transfers=4, running=1).batches(es, group=lambda e: e.path)) == [1, 1, 1]
    assert agent(max_transfers=2, running=2).batches(es, group=lambda e: e.path) == []


def test_md5_jobs_take_up_to_100_small_entries_and_a_big_one_alone():
    small = [entry(1024) for _ in range(250)]
    big = entry(HASH_GROUP_BYTES)
    groups = list(hash_groups([*small[:150], big, *small[150:]]))
    assert [len(g) for g in groups] == [100, 1, 100, 50]
    assert groups[1] == [big]
    assert [e for g in groups for e in g if e is not big] == small  # every entry once, in order


def test_md5_jobs_stop_at_the_byte_limit():
    half = HASH_GROUP_BYTES // 2
    assert [len(g) for g in hash_groups([entry(half), entry(half), entry(half)])] == [2, 1]
