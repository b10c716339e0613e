"""Upload's listing of file_dir with many new names: each offered once, a bounded number a pass, and
no lookup in the state per name at every listing (the fake runtime of support.fakes, real files)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.fakes import Role
from support.transitions import offers, scan

from synkler.agents import upload_scan as upload


def test_many_settled_files_are_offered_a_bounded_number_a_pass_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(upload, "OFFERS_PER_PASS", 3)
    r = Role("upload", tmp_path, settle_seconds=0)
    names = [f"f{i}" for i in range(8)]
    for name in names:
        (r.file_dir / name).write_bytes(name.encode())
    r.start()
    now = time.time() + 10
    scan(r, now)  # seen
    assert offers(r) == []
    scan(r, now + 1)  # settled: the first 3 offered, the others in the passes that follow at once
    offered = offers(r)
    assert len(offered) == 3
    assert r.agent.next_wakeup() == 0.0
    r.tick(now + 1)
    offered += offers(r)
    assert len(offered) == 6
    r.tick(now + 1)
    offered += offers(r)
    assert sorted(o.name for o in offered) == names
    assert r.agent.next_wakeup() != 0.0
    for job in [j for j in r.jobs.pending if j.pool == "hash"]:
        r.run(job)
    scan(r, now + 2)
    scan(r, now + 3)
    assert offers(r) == []  # on their way: none offered again
    assert r.state.counts() == {"offered": 8}


def test_a_settled_file_that_changes_before_its_turn_settles_again_and_is_offered_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(upload, "OFFERS_PER_PASS", 1)
    r = Role("upload", tmp_path, settle_seconds=0)
    for name in ("a", "b"):
        (r.file_dir / name).write_bytes(b"x")
    r.start()
    now = time.time() + 10
    scan(r, now)
    scan(r, now + 1)
    (first,) = offers(r)
    other = "b" if first.name == "a" else "a"
    (r.file_dir / other).write_bytes(b"longer now")  # before its turn came
    with r.state.transaction():  # a listing handed back before the next pass offers it
        r.agent._scanned(upload.scan(str(r.file_dir), r.agent.watcher.take_renamed), None)
    assert offers(r) == []  # changed: it settles again, not offered with what it held before
    assert other not in r.agent.ripe and other in r.agent.pending
    scan(r, now + 3)
    (second,) = offers(r)
    assert (second.name, second.size) == (other, len(b"longer now"))
    scan(r, now + 4)
    assert offers(r) == []


def test_new_names_that_settle_are_looked_up_in_the_state_once_not_at_every_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    r = Role("upload", tmp_path, settle_seconds=1000)  # they never settle here
    for i in range(50):
        (r.file_dir / f"f{i}").write_bytes(b"x")
    asked: list[str] = []
    real = r.state.latest_by_names
    monkeypatch.setattr(r.state, "latest_by_names", lambda names: (asked.extend(names), real(names))[1])
    monkeypatch.setattr(r.state, "latest_by_name", lambda name: pytest.fail(f"a query for {name}"))
    r.start()
    now = time.time()
    for i in range(4):
        scan(r, now + i)
    assert sorted(asked) == sorted(f"f{i}" for i in range(50))
    assert offers(r) == []
