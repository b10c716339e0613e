"""One outage of the link is one failure, whatever number of transfers it cut (synkler.agents.outage);
when the link is back every entry that waits for it goes at once. The pure decision with a fake clock,
then an agent driven through the fake runtime (tests/support/fakes.py), as tests/unit/test_waits.py."""

from __future__ import annotations

import time
from pathlib import Path

from support.fakes import Role

from synkler.agents.outage import Outage
from synkler.backoff import backoff
from synkler.hops.pull import NotPulled, PullRun
from synkler.hops.transfer import Result

CAP = 300.0
MD5 = "a" * 32
OK = Result(True, 0, "")
REFUSED = Result(False, 255, "ssh: connect to host central port 22: Connection refused")
STALLED = Result(False, 30, "stalled: nothing moved for 60 s (stall_seconds); stopped", stalled=True)


def test_fifteen_transfers_cut_by_one_outage_count_as_one_failure():
    link = Outage()
    assert not link.down
    # Fifteen runs began at 0..14 and the link broke at 100: each fails, one after the other.
    counted = [link.failed(started=float(i), now=100.0 + i / 100, cap=CAP, rand=0.5) for i in range(15)]
    assert counted == [True] + [False] * 14
    assert link.failures == 1 and link.next_try == 100.0 + backoff(1, cap=CAP, rand=0.5)
    # Every one of them is tried again together, when the link is.
    assert {link.due(100.0 + i / 100) for i in range(15)} == {link.next_try}


def test_runs_that_fail_before_the_next_try_add_nothing_and_the_next_try_counts_once():
    link = Outage()
    link.failed(started=0.0, now=10.0, cap=CAP, rand=0.0)  # the outage opens: next try at 10.5
    assert not link.failed(started=10.2, now=10.3, cap=CAP, rand=0.0)  # a new entry, tried at once
    assert link.failures == 1 and link.due(10.3) == 10.5
    # At the next try the entries go together; the first to fail counts, the others do not.
    assert link.failed(started=10.5, now=10.6, cap=CAP, rand=0.0)
    assert not link.failed(started=10.5, now=10.7, cap=CAP, rand=0.0)
    assert link.failures == 2 and link.next_try == 10.6 + backoff(2, cap=CAP, rand=0.0)


def test_a_run_under_way_since_before_the_outage_that_fails_late_goes_again_at_once_uncounted():
    link = Outage()
    link.failed(started=5.0, now=10.0, cap=CAP, rand=1.0)  # next try at 11
    # A stalled run that began before the outage is stopped long after: no new failure, and its
    # entry does not wait for a try that is already past.
    assert not link.failed(started=1.0, now=70.0, cap=CAP, rand=1.0)
    assert link.failures == 1 and link.due(70.0) == 70.0


def test_a_long_outage_backs_off_up_to_the_cap_and_a_run_that_gets_through_ends_it():
    link = Outage()
    now = 0.0
    for _ in range(20):  # one failure per try of the link
        assert link.failed(started=now, now=now, cap=CAP, rand=1.0)
        now = link.next_try
    assert link.next_try - link.counted == CAP
    assert link.works() and not link.down and link.due(now) == now
    assert not link.works()  # no outage to end
    assert link.failed(started=now, now=now, cap=CAP, rand=1.0) and link.failures == 1  # a new one


# the agent -----------------------------------------------------------------------------------------


def in_flight(r: Role, count: int) -> list[str]:
    """`count` pushes in flight, each a run of its own (the entries came one after the other)."""
    ids = []
    for i in range(count):
        e = r.given(
            "uploading", name=f"e{i}", peer="central", md5=MD5, path="/srv/central/lab/staging/upload"
        )
        r.agent.look_again()  # as an admit does
        r.tick()
        ids.append(e.id)
    assert len([j for j in r.jobs.pending if j.pool == "transfer"]) == count
    return ids


def pushes(r: Role) -> list:
    return [j for j in r.jobs.pending if j.pool == "transfer"]


def test_an_agent_counts_fifteen_pushes_cut_at_once_as_one_failure_and_tries_them_together(tmp_path: Path):
    r = Role("upload", tmp_path, max_transfers=16)
    ids = in_flight(r, 15)
    cut = time.time()
    for job in pushes(r):
        r.finish(job, REFUSED)
    assert r.agent.outage.failures == 1
    dues = {r.entry(i).due for i in ids}
    assert len(dues) == 1 and cut < dues.pop() <= time.time() + backoff(1, rand=1.0)
    assert all("link down" in (r.entry(i).reason or "") and r.entry(i).tries == 0 for i in ids)
    r.tick(r.entry(ids[0]).due)
    assert {k.of for j in pushes(r) for k in j.keys} == set(ids)  # all of them at once (in one run)


def test_a_push_that_gets_through_makes_every_entry_waiting_for_the_link_due_now(tmp_path: Path):
    r = Role("upload", tmp_path, max_transfers=16)
    ids = in_flight(r, 3)
    first, *others = pushes(r)
    r.finish(first, REFUSED)  # the outage opens; the other two still run
    r.finish(others[0], OK)  # ... and one of them gets through: the link works
    assert not r.agent.outage.down
    assert r.entry(ids[0]).due == 0 and r.entry(ids[1]).state == "sent"
    r.finish(others[1], REFUSED)  # began before the link worked again: a new outage, one failure
    assert r.agent.outage.failures == 1


def test_a_pull_stopped_because_it_stalled_is_the_link_down_counted_once(tmp_path: Path):
    r = Role("download", tmp_path, max_transfers=16)
    r.start()
    ids = []
    for i in range(4):
        e = r.given("fetching", name=f"e{i}", peer="central", md5=MD5, path=f"/srv/central/lab/stored/{i}")
        r.agent.look_again()  # as a fetch does
        r.tick()
        ids.append(e.id)
    for job, entry_id in zip(pushes(r), ids):  # a stalled link: every pull stalls and is stopped
        r.finish(job, PullRun(STALLED, {entry_id: NotPulled("link", STALLED.summary())}))
    assert r.agent.outage.failures == 1
    for entry_id in ids:
        entry = r.entry(entry_id)
        assert entry.state == "fetching" and entry.tries == 0
        assert "link down: exit 30" in (entry.reason or "") and "stalled" in (entry.reason or "")


# a pool of centrals: a link each ------------------------------------------------------------------


def test_in_a_pool_one_central_s_outage_neither_holds_back_nor_is_ended_by_another_s_link(tmp_path: Path):
    pool = {"central-a": "synkler@host-a", "central-b": "synkler@host-b"}
    r = Role("upload", tmp_path, max_transfers=16, centrals=pool)
    place = "/srv/central/lab/staging/upload"
    at_b = [r.given("uploading", name=f"b{i}", peer="central-b", md5=MD5, path=place).id for i in range(2)]
    r.agent.look_again()
    r.tick()
    # central-b's host has been down a long while: its link's next try is minutes away.
    b_link = r.agent.outage_of("central-b")
    b_link.failures, b_link.counted, b_link.next_try = 9, time.time() - 1, time.time() + 200
    for job in pushes(r):
        r.finish(job, REFUSED)
    assert all(r.entry(i).due == b_link.next_try for i in at_b)
    # central-a's link fails once: its entry waits the first backoff, not central-b's long wait.
    a = r.given("uploading", name="a0", peer="central-a", md5=MD5, path=place)
    r.agent.look_again()
    r.tick()
    (a_push,) = pushes(r)
    failed_at = time.time()
    r.finish(a_push, REFUSED)
    assert r.agent.outage_of("central-a").failures == 1 and b_link.failures == 9
    assert r.entry(a.id).due <= failed_at + backoff(1, rand=1.0)
    # central-a's link works again: its entries go at once; central-b's keep waiting for their link.
    r.tick(r.entry(a.id).due)
    (a_push,) = pushes(r)
    r.finish(a_push, OK)
    assert r.entry(a.id).state == "sent"
    assert not r.agent.outage_of("central-a").down and b_link.down
    assert all(r.entry(i).due == b_link.next_try and r.entry(i).state == "uploading" for i in at_b)
