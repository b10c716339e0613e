"""Central's transitions (registered for test_decisions.py, which runs them) and its other decisions,
driven without a broker, sshd or rsync."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.fakes import Role
from support.transitions import MD5, OTHER, only, role, transition

from synkler import destinations as dests
from synkler import messages
from synkler.agents.pools import Pool
from synkler.agents.staged import Checked
from synkler.messages import (
    Admit,
    Corrupt,
    Delivered,
    Failed,
    Fetch,
    Fetched,
    Forget,
    Offer,
    Sent,
    Wait,
    Withdraw,
)
from synkler.observe import alerts
from synkler.state import Entry


@transition("central", ("forgotten", "waiting"))
def central_takes_again_an_entry_reowned_from_it(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "central", uploads=["upload"])
    r.start()
    e = r.given("forgotten", peer="upload", attempt=2)
    with r.state.transaction():
        r.state.put_epoch(e.id, 2)  # upload's re-own `forget` of epoch 2 was read
    offer = Offer(e.id, "upload", name=e.name, kind="file", size=4, files=1, epoch=2)
    r.deliver(offer)
    assert r.entry(e.id).state == "forgotten"  # a copy of the offer it had: nothing
    r.deliver(Offer(e.id, "upload", name=e.name, kind="file", size=4, files=1, epoch=3))
    entry = r.entry(e.id)
    assert (entry.attempt, r.state.epoch(e.id)) == (0, 3)
    r.tick()
    to, admit = only(r.sent(), Admit)
    assert (to, admit.attempt, admit.epoch) == ("upload", 1, 3)
    return entry


@transition("central", ("", "waiting"))
def central_records_an_offer(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "central")
    r.deliver(Offer("1" * 32, "upload", name="data.bin", kind="file", size=4, files=1))
    return r.entry("1" * 32)


@transition("central", ("waiting", "uploading"))
def central_admits_when_there_is_room(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "central")
    r.start()
    e = r.given("waiting", peer="upload", attempt=0)
    r.tick()
    to, admit = only(r.sent(), Admit)
    assert (to, admit.attempt, admit.dest) == ("upload", 1, r.agent.spool.staging(e))
    return r.entry(e.id)


@transition("central", *((s, "withdrawn") for s in ("waiting", "uploading", "verifying")))
def central_forgets_a_withdrawn_version(tmp_path: Path, from_: str, _to: str) -> Entry:
    r = role(tmp_path, "central")
    r.start()
    e = r.given(from_, peer="upload")
    r.deliver(Withdraw(e.id, "upload", reason="superseded by a newer version"))
    return r.entry(e.id)


@transition("central", *((s, "failed") for s in ("waiting", "uploading")))
def central_fails_what_upload_gave_up(tmp_path: Path, from_: str, _to: str) -> Entry:
    r = role(tmp_path, "central")
    r.start()
    e = r.given(from_, peer="upload")
    r.deliver(Failed(e.id, "upload", hop="push to central", reason="exit 23"))
    assert r.sent() == []  # a failure upload reported is not sent back to it
    return r.entry(e.id)


@transition("central", ("downloading", "failed"))
def central_passes_a_download_failure_on_to_upload(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "central")
    r.start()
    e = r.given("downloading", peer="upload")
    r.deliver(Failed(e.id, "download", hop="pull from central", reason="exit 23"))
    to, failed = only(r.sent(), Failed)
    assert (to, failed.hop) == ("upload", "pull from central")
    return r.entry(e.id)


@transition("central", ("uploading", "waiting"))
def central_takes_back_an_admission_nothing_arrived_for(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "central")
    r.start()
    e = r.given("uploading", peer="upload", attempt=1, md5=None, due=time.time() - 1)  # lease ended
    r.tick()
    r.run(r.job("scan"))  # the look at what arrived in staging: nothing
    to, wait = only(r.sent(), Wait)
    assert to == "upload" and "nothing arrived" in wait.reason
    return r.entry(e.id)


@transition("central", ("uploading", "verifying"))
def central_checks_what_was_sent(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "central")
    r.start()
    e = r.given("uploading", peer="upload", attempt=1, md5=None)
    r.deliver(Sent(e.id, "upload", attempt=1, md5=MD5))
    assert r.entry(e.id).md5 == MD5
    return r.entry(e.id)


def staged(tmp_path: Path, content: bytes, **settings: object) -> tuple[Role, Entry]:
    """Central with an entry pushed and `sent`, its staged copy holding `content`."""
    r = role(tmp_path, "central", **settings)
    r.start()
    e = r.given("verifying", peer="upload", md5=MD5)
    path = Path(r.agent.spool.staged(e))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    r.tick()
    return r, e


@transition("central", ("verifying", "downloading"))
def central_stores_a_verified_copy_and_tells_download(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = staged(tmp_path, b"data")
    r.finish(r.job("hash"), [Checked(MD5, False)])
    to, fetch = only(r.sent(), Fetch)
    assert (to, fetch.md5, fetch.path) == ("download", MD5, r.agent.spool.stored(e.id))
    assert Path(fetch.path).read_bytes() == b"data"
    return r.entry(e.id)


@transition("central", ("verifying", "uploading"))
def central_asks_upload_again_on_a_mismatch(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = staged(tmp_path, b"bad!")
    r.run(r.job("hash"))  # the real md5 of b"bad!" is not MD5
    _, admit = only(r.sent(), Admit)
    assert admit.attempt == 2 and not Path(r.agent.spool.staged(e)).exists()
    return r.entry(e.id)


@transition("central", ("verifying", "failed"))
def central_gives_up_after_max_attempts_mismatches(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = staged(tmp_path, b"bad!", max_attempts=1)
    r.run(r.job("hash"))
    to, failed = only(r.sent(), Failed)
    assert (to, failed.hop) == ("upload", "upload to central")
    assert r.entry(e.id).reason.startswith("upload to central: ")  # type: ignore[union-attr]
    return r.entry(e.id)


@transition("central", ("downloading", "delivered"))
def central_is_told_download_has_it(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "central", keep_minutes=10)
    r.start()
    e = r.given("downloading", peer="upload")
    r.deliver(Fetched(e.id, "download", stored_as="data.bin", outcome="placed"))
    to, delivered = only(r.sent(), Delivered)
    assert (to, delivered.stored_as) == ("upload", "data.bin")
    assert r.entry(e.id).due == pytest.approx(time.time() + 600, abs=5)
    return r.entry(e.id)


def corrupt_reported(tmp_path: Path, **settings: object) -> tuple[Role, Entry]:
    r = role(tmp_path, "central", **settings)
    r.start()
    e = r.given("downloading", peer="upload", md5=MD5)
    Path(r.agent.spool.stored(e.id)).write_bytes(b"went bad")
    r.deliver(Corrupt(e.id, "download", got=OTHER))
    r.run(r.job("hash"))  # central hashes its stored copy again: it is not MD5
    return r, e


@transition("central", ("downloading", "waiting"))
def central_gets_an_entry_again_when_its_stored_copy_went_bad(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = corrupt_reported(tmp_path)
    assert not Path(r.agent.spool.stored(e.id)).exists()
    return r.entry(e.id)


def test_central_gives_up_a_stored_copy_that_keeps_going_bad(tmp_path: Path):
    r, e = corrupt_reported(tmp_path, max_attempts=1)
    assert r.entry(e.id).state == "failed"
    assert only(r.sent(), Failed)[1].hop == "store at central"


@transition("central", ("delivered", "expired"))
def central_removes_its_copy_keep_minutes_after_delivery(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "central")
    r.start()
    e = r.given("delivered", peer="upload", due=time.time() - 1)
    Path(r.agent.spool.stored(e.id)).write_bytes(b"data")
    r.tick()
    r.run(r.job(Pool.REMOVE))
    assert not Path(r.agent.spool.stored(e.id)).exists()
    return r.entry(e.id)


def central_holding(tmp_path: Path, state: str) -> tuple[Role, Entry, Path, Path]:
    """Central with an entry in `state` and the copies it would hold: staged and stored."""
    r = role(tmp_path, "central")
    r.start()
    entry_id = messages.new_entry_id()
    stored = Path(r.agent.spool.stored(entry_id))
    # An entry downloading, or failed since, has had its fetch sent: its path is the stored copy.
    fetched = state in ("downloading", "failed")
    e = r.given(state, entry_id=entry_id, peer="upload", md5=MD5, path=str(stored) if fetched else None)
    staged = Path(r.agent.spool.staged(e))
    staged.parent.mkdir(parents=True, exist_ok=True)
    if state in ("uploading", "verifying"):
        staged.write_bytes(b"data")
    if state in ("downloading", "failed"):
        stored.write_bytes(b"data")
    return r, e, staged, stored


@transition("central", *((s, "forgotten") for s in ("waiting", "uploading", "verifying", "downloading")))
def central_forgets_on_request_drops_its_copies_and_tells_both_peers(
    tmp_path: Path, from_: str, _to: str
) -> Entry:
    r, e, staged, stored = central_holding(tmp_path, from_)
    r.tick()  # a verifying entry's md5 check starts
    checking = [job for job in r.jobs.pending if job.pool == "hash"]
    r.sent()
    ok, answer = r.request("forget", e.id)
    assert ok, answer
    assert sorted(to for to, m in r.sent() if isinstance(m, Forget)) == ["download", "upload"]
    assert not staged.exists() and not stored.exists()
    for job in checking:  # the check that ran meanwhile records nothing: no fetch, no copy in stored/
        r.finish(job, [Checked(MD5, False)])
    assert r.sent() == [] and not stored.exists()
    return r.entry(e.id)


@transition("central", ("failed", "forgotten"))
def central_forgets_what_download_forgot_and_tells_upload(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e, _staged, stored = central_holding(tmp_path, "failed")
    r.deliver(Forget(e.id, "download", reason="forgotten by an operator at download"))
    to, forget = only(r.sent(), Forget)  # passed on to upload, not back to download
    assert (to, forget.reason) == ("upload", "forgotten by an operator at download")
    assert not stored.exists()  # the verified copy it kept for a failed entry goes
    r.deliver(Forget(e.id, "upload", reason="forgotten by an operator at upload"))  # the echo: a no-op
    assert r.sent() == []
    return r.entry(e.id)


@transition("central", ("failed", "delivered"))
def central_delivers_a_failed_entry_that_download_got_after_a_retry(
    tmp_path: Path, _from: str, _to: str
) -> Entry:
    r, e, _staged, stored = central_holding(tmp_path, "failed")
    r.deliver(Fetched(e.id, "download", stored_as="data.bin", outcome="placed"))
    to, delivered = only(r.sent(), Delivered)
    assert (to, delivered.stored_as) == ("upload", "data.bin")
    assert r.entry(e.id).reason is None and stored.exists()  # expires keep_minutes from now, as any
    return r.entry(e.id)


@transition("central", ("failed", "downloading"))
def central_asks_a_destination_where_the_entry_failed_again_on_an_operators_retry(
    tmp_path: Path, _from: str, _to: str
) -> Entry:
    r, e, _staged, stored = central_holding(tmp_path, "failed")
    with r.state.transaction():
        dests.mark(r.state, e.id, "download", dests.FAILED, reason="pull from central: exit 23")
    ok, answer = r.request("retry", e.id)
    assert ok and "download asked to pull central's verified copy again" in answer, answer
    to, fetch = only(r.sent(), Fetch)
    assert (to, fetch.path, bool(fetch.again)) == ("download", str(stored), True)
    return r.entry(e.id)


def central_with_room(tmp_path: Path, room: float, capacity: float) -> Role:
    r = role(tmp_path, "central")
    r.start()
    r.agent.spool.room = lambda: room  # type: ignore[method-assign]
    r.agent.spool.capacity = lambda: capacity  # type: ignore[method-assign]
    return r


def test_central_fails_at_once_an_entry_bigger_than_its_file_system(tmp_path: Path):
    r = central_with_room(tmp_path, room=1000, capacity=5000)
    huge = r.given("waiting", peer="upload", size=1 << 62, name="huge", created=1.0, attempt=0)
    small = r.given("waiting", peer="upload", size=10, name="small", created=2.0, attempt=0)
    r.tick()
    assert r.entry(small.id).state == "uploading"  # not held back by the one that can never fit
    to, failed = only(r.sent(), Failed)
    assert (to, failed.hop) == ("upload", "admission at central")
    assert "can ever hold: 5000 bytes above the 10.0% reserve" in failed.reason
    assert r.entry(huge.id).state == "failed"
    # Its notice names the hop, as every failed entry's does.
    told = alerts.entry_failed(r.entry(huge.id))
    assert told.details["hop"] == "admission at central"
    assert told.summary == "entry huge failed (admission at central)"


def test_later_entries_pass_a_big_one_until_they_have_taken_what_it_needs_then_wait_for_it(tmp_path: Path):
    r = central_with_room(tmp_path, room=100, capacity=10_000)
    big = r.given("waiting", peer="upload", size=300, name="big", created=1.0, attempt=0)
    small = [
        r.given("waiting", peer="upload", size=90, name=f"s{i}", created=2.0 + i, attempt=0) for i in range(6)
    ]
    r.tick()  # room for one small one: 90 of the 300 bytes big needs have passed it
    assert [r.entry(e.id).state for e in small[:2]] == ["uploading", "waiting"]
    for admitted in range(2, 5):
        r.agent.spool.room = lambda a=admitted: 100 * a  # type: ignore[method-assign]  # others moved on
        r.tick(time.time() + admitted * 10)
    # 90 + 90 + 90 = 270 < 300 had passed when the fourth one came: it passed too; now it is big's turn
    r.tick(time.time() + 60)
    assert [r.entry(e.id).state for e in small] == ["uploading"] * 4 + ["waiting"] * 2
    assert r.entry(small[4].id).reason == "older entries are waiting for room"
    assert r.entry(big.id).state == "waiting"
    r.agent.spool.room = lambda: 1_000_000  # type: ignore[method-assign]  # the admitted ones expired
    r.tick(time.time() + 100)
    assert r.entry(big.id).state == "uploading"
    assert [r.entry(e.id).state for e in small[4:]] == ["uploading", "uploading"]


def test_central_tells_each_entry_that_waits_for_room_what_it_needs(tmp_path: Path):
    r = central_with_room(tmp_path, room=0, capacity=1 << 40)
    big = r.given("waiting", peer="upload", size=1 << 30, name="big", created=1.0, attempt=0)
    small = r.given("waiting", peer="upload", size=1, name="small", created=2.0, attempt=0)
    r.tick()
    assert (r.entry(big.id).state, r.entry(small.id).state) == ("waiting", "waiting")
    waits = {m.entry: m.reason for _, m in r.sent() if isinstance(m, Wait)}
    assert waits[big.id] == "needs 1073741824 bytes, 0 available above the 10.0% reserve"
    assert waits[small.id] == "needs 1 bytes, 0 available above the 10.0% reserve"
