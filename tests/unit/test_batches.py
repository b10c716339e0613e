"""Grouping entries into rsync runs: small ones share a run, big or failed ones go alone; the free
transfer slots shared by the links to the centrals of a pool."""

from __future__ import annotations

from collections import Counter
from itertools import count
from types import SimpleNamespace

from synkler.agents import slots
from synkler.agents.base import HASH_GROUP_BYTES, hash_groups
from synkler.agents.endpoint import Endpoint
from synkler.agents.slots import BATCH_BYTES, BATCH_ENTRIES
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


def agent(
    max_transfers: int = 4,
    running: int = 0,
    centrals: dict[str, str] | None = None,
    going: dict | None = None,
) -> Endpoint:
    """An end agent with `running` transfer runs going on, over each link as in `going`."""
    a = Endpoint.__new__(Endpoint)
    a.cfg = SimpleNamespace(max_transfers=max_transfers, centrals=centrals or {})
    a.jobs = SimpleNamespace(transfers=running)
    a.running = Counter(going or {"": running})
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


# transfer slots shared by the links to the centrals of a pool (synkler.agents.slots.share) ----------


def at(link: str, size: int = BATCH_BYTES) -> Entry:
    """An entry whose transfers go over `link` (big: a run of its own)."""
    e = entry(size=size)
    e.peer = link
    return e


def links_of(runs: list[list[Entry]]) -> list[str]:
    return [run[0].peer or "" for run in runs]


def share(entries: list[Entry], free: int, running: dict[str, int] | None = None) -> list[list[Entry]]:
    return slots.share(
        slots.runs(entries, lambda e: (e.peer, e.path)), free, lambda e: e.peer or "", running or {}
    )


def test_every_central_with_work_due_gets_a_slot_before_any_gets_a_second():
    es = [at("a"), at("a"), at("a"), at("a"), at("b"), at("c")]  # a's are the oldest
    chosen = share(es, 4)
    assert links_of(chosen) == ["a", "b", "c", "a"]
    assert [run[0] for run in chosen if run[0].peer == "a"] == es[:2]  # oldest first within a link


def test_the_slots_then_go_round_robin_to_the_least_busy_central():
    es = [at("a") for _ in range(5)] + [at("b") for _ in range(5)]
    assert links_of(share(es, 4)) == ["a", "b", "a", "b"]
    # a already runs two: b gets runs until it runs as many, then the oldest run goes (c has none due)
    assert links_of(share(es, 3, {"a": 2, "c": 1})) == ["b", "b", "a"]


def test_a_central_with_nothing_due_leaves_its_share_to_the_others():
    es = [at("a") for _ in range(5)]
    assert links_of(share(es, 4, {"b": 0})) == ["a"] * 4
    assert share([], 4) == [] and share(es, 0) == []


def test_small_entries_of_each_central_share_its_run_as_before():
    es = [at("a", 10), at("b", 10), at("a", 10), at("b", 10)]
    assert sorted(len(run) for run in share(es, 4)) == [2, 2]


def test_with_one_central_the_oldest_runs_go_first_whatever_runs():
    es = [entry(size=BATCH_BYTES) for _ in range(6)]
    chosen = agent(max_transfers=4, running=1).batches(es, group=lambda e: e.path)
    assert [run[0] for run in chosen] == es[:3]


def test_an_agent_of_a_pool_shares_its_slots_by_the_runs_it_has_going():
    a = agent(max_transfers=4, running=2, centrals={"a": "u@a", "b": "u@b"}, going={"a": 2})
    es = [at("a"), at("a"), at("b"), at("b")]
    assert links_of(a.batches(es, group=lambda e: (e.peer, e.path))) == ["b", "b"]
