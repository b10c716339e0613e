"""Central's admission, bounded by design (issue 22): one upload agent's flood of offers cannot take
every slot, an admission nothing is pushed for lapses, offers beyond a cap per agent are refused,
and more bytes than offered are never stored. Driven through the fake runtime, without a broker."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.fakes import Role

from synkler.agents import admission, spool
from synkler.agents.base import Observer
from synkler.agents.staged import measure_arrivals
from synkler.messages import Admit, Failed, Offer, Sent, Wait
from synkler.state import Entry

MD5 = "a" * 32


def central(tmp_path: Path, **settings: object) -> Role:
    r = Role("central", tmp_path, **settings)
    r.start()
    return r


def offer(r: Role, sender: str, n: int, *, size: int = 1) -> list[str]:
    ids = []
    for i in range(n):
        entry_id = os.urandom(16).hex()
        r.deliver(Offer(entry_id, sender, name=f"{sender}-{i}", kind="file", size=size, files=1))
        ids.append(entry_id)
    return ids


def admitted(r: Role) -> dict[str, int]:
    """Admit messages sent since the last look, per upload agent."""
    counts: dict[str, int] = {}
    for to, msg in r.sent():
        if isinstance(msg, Admit):
            counts[to] = counts.get(to, 0) + 1
    return counts


@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setattr(admission, "MAX_ADMITTED", 5)
    monkeypatch.setattr(admission, "MAX_ADMITTED_PER_AGENT", 3)


def test_one_agents_flood_of_offers_leaves_slots_for_another_agent(tmp_path, small_limits):
    r = central(tmp_path)
    offer(r, "flood", 10)
    offer(r, "lab-b", 4)  # offered after the whole flood
    r.tick()
    assert admitted(r) == {"flood": 3, "lab-b": 2}  # 3 is one agent's most, 5 everyone's
    waiting = [e for e in r.state.by_state("waiting") if e.peer == "lab-b"]
    assert len(waiting) == 2 and waiting[0].reason == "5 entries admitted and not yet verified"


def test_an_agent_at_its_share_waits_with_the_reason_while_others_are_admitted(tmp_path, small_limits):
    r = central(tmp_path)
    offer(r, "flood", 4)
    r.tick()
    assert admitted(r) == {"flood": 3}
    (fourth,) = r.state.by_state("waiting")
    assert fourth.reason == "3 entries of flood admitted and not yet verified, the most for one agent"
    offer(r, "lab-b", 1)
    r.tick()
    assert admitted(r) == {"lab-b": 1}


def test_an_entry_waiting_its_turn_is_told_once_it_has_waited_a_while(tmp_path, small_limits):
    # Issue 24: in a burst most entries behind the caps are admitted within seconds; a `wait` each
    # would cost a message, a state change and a log line at both ends. Told after TURN_TELL, once.
    r = central(tmp_path)
    offer(r, "flood", 4)
    r.tick()
    assert admitted(r) == {"flood": 3}
    (fourth,) = r.state.by_state("waiting")
    assert fourth.reason and "the most for one agent" in fourth.reason  # recorded at once
    assert not [m for _, m in r.sent() if isinstance(m, Wait)]
    r.tick(time.time() + admission.TURN_TELL + 1)
    waits = [(to, m) for to, m in r.sent() if isinstance(m, Wait)]
    assert [(to, m.entry, m.reason) for to, m in waits] == [("flood", fourth.id, fourth.reason)]
    r.tick(time.time() + 2 * admission.TURN_TELL + 2)
    assert not [m for _, m in r.sent() if isinstance(m, Wait)]  # once per reason


def test_offers_beyond_the_cap_per_agent_are_refused_and_not_recorded(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(admission, "MAX_OPEN_PER_AGENT", 3)
    r = central(tmp_path)
    counted: list[str] = []

    class Counting(Observer):  # as the metrics count them (synkler_offers_refused_total)
        def refused_offer(self, peer: str) -> None:
            counted.append(peer)

    r.agent.observer = Counting()
    ids = offer(r, "flood", 5)
    offer(r, "lab-b", 1)
    assert r.entry(ids[2]).state == "waiting" and r.state.get(ids[3]) is None and r.state.get(ids[4]) is None
    refused = [(to, m) for to, m in r.sent() if isinstance(m, Failed)]
    assert [(to, m.entry, m.hop) for to, m in refused] == [
        ("flood", ids[3], "admission at central"),
        ("flood", ids[4], "admission at central"),
    ]
    assert "flood has 3 entries on their way at central or failed there" in refused[0][1].reason
    assert len(r.state.by_state("waiting")) == 4  # lab-b's offer was taken
    said = [rec.getMessage() for rec in caplog.records if "refused" in rec.getMessage()]
    assert said == [  # once a minute at most, with the count
        "refused 1 offer from flood: it has 3 entries on their way at central or failed there, the most "
        "for one upload agent (said again at most once a minute)"
    ]
    assert counted == ["flood", "flood"]


def test_an_entry_that_ended_makes_room_under_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(admission, "MAX_OPEN_PER_AGENT", 2)
    monkeypatch.setattr(admission, "RECOUNT", 0.0)
    r = central(tmp_path)
    first, _second = offer(r, "flood", 2)
    with r.state.transaction():
        r.state.update(r.entry(first), state="expired")
    (third,) = offer(r, "flood", 1)
    assert r.entry(third).state == "waiting"


def lapse(tmp_path: Path, *, staged: bytes | None = None, **settings: object) -> tuple[Role, Entry]:
    """Central with an entry admitted whose lease has ended, what arrived in staging (if anything),
    and the look at arrivals made."""
    r = central(tmp_path, admission_lease_minutes=10, **settings)
    e = r.given("uploading", peer="lab-a", attempt=2, tries=0, md5=None, size=4, due=time.time() - 1)
    if staged is not None:
        path = Path(r.agent.spool.staged(e))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(staged)
    r.tick()
    r.run(r.job("scan"))
    return r, e


def test_an_admission_nothing_arrived_for_lapses_and_is_admitted_again_a_lease_later(tmp_path):
    r, e = lapse(tmp_path)
    entry = r.entry(e.id)
    assert (entry.state, entry.tries, entry.attempt) == ("waiting", 1, 2)
    assert entry.due == pytest.approx(time.time() + 600, abs=5)
    to, wait = [(to, m) for to, m in r.sent() if isinstance(m, Wait)][0]
    assert (
        to == "lab-a" and wait.reason == "admitted, but nothing arrived in 10 min: admitted again in 10 min"
    )
    r.tick()
    assert r.entry(e.id).state == "waiting"  # its slot went to others, for a lease
    with r.state.transaction():
        r.state.update(r.entry(e.id), due=time.time() - 1)
    r.tick(time.time() + 2)  # the next look at waiting entries
    (admit,) = [m for _, m in r.sent() if isinstance(m, Admit)]
    assert admit.attempt == 3 and r.entry(e.id).state == "uploading"  # upload is told again


def test_data_arriving_renews_the_lease(tmp_path):
    r, e = lapse(tmp_path, staged=b"da")  # half of it, just now
    entry = r.entry(e.id)
    assert entry.state == "uploading"
    assert entry.due == pytest.approx(time.time() + 600, abs=5)


def test_lapsed_leases_do_not_count_as_failed_attempts(tmp_path):
    r = central(tmp_path, max_attempts=2)
    e = r.given("verifying", peer="lab-a", md5=MD5, attempt=3, tries=2)  # two leases lapsed before
    path = Path(r.agent.spool.staged(e))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"bad!")
    r.tick()
    r.run(r.job("hash"))  # a mismatch: the first bad copy, not the third
    assert r.entry(e.id).state == "uploading"


def test_more_bytes_than_offered_seen_while_arriving_fail_the_entry_and_are_discarded(tmp_path):
    r, e = lapse(tmp_path, staged=b"far more than four bytes")
    entry = r.entry(e.id)
    assert entry.state == "failed"
    assert (
        entry.reason
        == "upload to central: 24 bytes pushed (seen while it arrived), more than the 4 offered: "
        "discarded, never stored"
    )
    assert not Path(r.agent.spool.staged(e)).exists()
    (failed,) = [m for to, m in r.sent() if isinstance(m, Failed) and to == "lab-a"]
    assert failed.hop == "upload to central"


def test_more_bytes_than_offered_found_at_verification_are_never_stored(tmp_path):
    r = central(tmp_path)
    e = r.given("uploading", peer="lab-a", md5=None, size=4, attempt=1, due=time.time() + 600)
    path = Path(r.agent.spool.staged(e))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"far more than four bytes")
    r.deliver(Sent(e.id, "lab-a", attempt=1, md5="0" * 32))
    r.tick()
    r.run(r.job("hash"))
    entry = r.entry(e.id)
    assert (entry.state, entry.reason) == (
        "failed",
        "upload to central: 24 bytes pushed (found when it was verified), more than the 4 offered: "
        "discarded, never stored",
    )
    assert not path.exists() and not Path(r.agent.spool.stored(e.id)).exists()


def test_what_arrived_counts_each_file_once_in_its_biggest_form(tmp_path):
    """A resumed push holds a file's partial copy and rsync's temporary file at once: counting both
    would take an honest push for an oversized one."""
    (tmp_path / "a.dat").write_bytes(b"x" * 10)  # an older, smaller copy
    (tmp_path / ".a.dat.Xy12Zq").write_bytes(b"x" * 30)  # rsync writing the resumed one
    (tmp_path / ".synkler-partial").mkdir()
    (tmp_path / ".synkler-partial" / "a.dat").write_bytes(b"x" * 20)
    (tmp_path / ".b.dat.Xy12Zq").write_bytes(b"x" * 99)  # another entry's
    run = tmp_path / "run"
    (run / "sub" / ".synkler-partial").mkdir(parents=True)
    (run / "f").write_bytes(b"1" * 5)
    (run / "sub" / ".g.AbCdEf").write_bytes(b"1" * 9)
    (run / "sub" / ".synkler-partial" / "g").write_bytes(b"1" * 8)
    os.symlink("f", run / "link")  # an offer counts regular files only
    assert spool.arrived(str(tmp_path), "a.dat").size == 30
    assert spool.arrived(str(tmp_path), "run").size == 14
    nothing = spool.arrived(str(tmp_path), "c.dat")
    assert (nothing.size, nothing.changed) == (0, 0.0)


def test_an_agent_that_is_pushing_keeps_the_leases_of_its_entries_waiting_their_turn(tmp_path):
    """Upload pushes its admitted entries a few transfer runs at a time: those waiting for a run
    must not lapse while others of the same agent arrive. An agent that pushes nothing loses them."""
    r = central(tmp_path, admission_lease_minutes=10)
    ended = time.time() - 1
    turn = r.given("uploading", name="later.dat", peer="lab-a", md5=None, attempt=1, due=ended)
    busy = r.given("uploading", name="now.dat", peer="lab-a", md5=None, attempt=1, due=ended)
    idle = r.given("uploading", name="idle.dat", peer="lab-b", md5=None, attempt=1, due=ended)
    path = Path(r.agent.spool.staged(busy))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"da")  # arriving right now
    r.tick()
    r.run(r.job("scan"))
    assert r.entry(turn.id).state == "uploading" and r.entry(busy.id).state == "uploading"
    assert r.entry(turn.id).due == pytest.approx(time.time() + 600, abs=5)
    assert r.entry(idle.id).state == "waiting"


def test_one_look_at_a_staging_directory_measures_each_of_its_entries_alone(tmp_path):
    """The entries of one upload agent are measured by one listing of its staging directory; each
    gets its own bytes (its file, rsync's temporary file, its partial file or its tree), and the
    directory the last change to any of them."""
    staging = tmp_path / "up"
    (staging / ".synkler-partial").mkdir(parents=True)
    (staging / "a.bin").write_bytes(b"x" * 10)
    (staging / ".b.bin.Ab12Cd").write_bytes(b"x" * 20)
    (staging / ".synkler-partial" / "b.bin").write_bytes(b"x" * 30)
    (staging / "tree" / "sub").mkdir(parents=True)
    (staging / "tree" / "sub" / "f").write_bytes(b"x" * 5)
    (staging / "tree" / "g").write_bytes(b"x" * 7)
    (staging / "other.bin").write_bytes(b"x" * 1000)  # not measured: not asked for
    places = {
        i: (str(staging), name) for i, name in (("1", "a.bin"), ("2", "b.bin"), ("3", "tree"), ("4", "gone"))
    }
    found, latest = measure_arrivals(places)
    assert {i: a.size for i, a in found.items()} == {"1": 10, "2": 30, "3": 12, "4": 0}
    assert found["4"].changed == 0.0
    assert found["1"].changed == os.lstat(staging / "a.bin").st_ctime
    assert latest[str(staging)] == max(os.stat(staging).st_ctime, *(a.changed for a in found.values()))
