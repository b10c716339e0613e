"""Every transition of every role's state table, driven without a broker, sshd or rsync.

Each scenario puts an entry in a state (as an earlier run would have left it), hands the agent a
message, a tick or a job's outcome through the fake runtime (tests/unit/fakes.py), and checks the
state it went to and what it sent. The table of scenarios must cover each transition the code
allows (synkler/agents/*.py TRANSITIONS, shown in docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.fakes import Role

from synkler import destinations as dests
from synkler import messages, receipts
from synkler.agents import AGENTS
from synkler.agents.base import Cleanup
from synkler.agents.listing import Hashed
from synkler.agents.pools import Pool
from synkler.agents.staged import Checked
from synkler.errors import Interrupted
from synkler.hops import checksum
from synkler.hops.checksum import EntryStat, md5_entry, stat_entry
from synkler.hops.cleanup import script_status
from synkler.hops.pull import Mismatch, NotPulled, PullRun, Verified
from synkler.hops.transfer import Result
from synkler.messages import (
    Admit,
    Corrupt,
    Delivered,
    Failed,
    Fetch,
    Fetched,
    Forget,
    Message,
    Offer,
    Sent,
    Wait,
    Withdraw,
)
from synkler.observe import alerts
from synkler.state import Entry

MD5 = "a" * 32
OTHER = "b" * 32
OK = Result(True, 0, "")
RSYNC_FAILED = Result(False, 23, "rsync: some files could not be transferred")

Scenario = Callable[[Path, str, str], Entry]
SCENARIOS: dict[tuple[str, str, str], Scenario] = {}


def transition(role: str, *pairs: tuple[str, str]) -> Callable[[Scenario], Scenario]:
    """Register a scenario for each (from, to) of `role`; from "" is a new entry."""

    def register(fn: Scenario) -> Scenario:
        for pair in pairs:
            assert (role, *pair) not in SCENARIOS, pair
            SCENARIOS[(role, *pair)] = fn
        return fn

    return register


def role(tmp_path: Path, mode: str, **settings: object) -> Role:
    r = Role(mode, tmp_path, **settings)
    return r


def only(sent: list[tuple[str, Message]], kind: type[Message]) -> tuple[str, Message]:
    found = [(to, m) for to, m in sent if isinstance(m, kind)]
    assert len(found) == 1, sent
    return found[0]


# --------------------------------------------------------------------------------------------------
# upload


UNSENT_AND_SENT = ("offered", "waiting", "uploading", "pushed", "sent")


@transition("upload", ("", "offered"))
def upload_offers_a_settled_file(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "upload", settle_seconds=0)
    (r.file_dir / "data.bin").write_bytes(b"data")
    r.start()
    for _ in range(2):  # seen once, then settled
        r.tick(time.time() + 10)
        r.run(r.job("scan"))
    to, offer = only(r.sent(), Offer)
    assert to == "central" and offer.name == "data.bin" and offer.size == 4
    r.run(r.job("hash"))  # hashed while it waits for admission
    entry = r.entry(offer.entry)
    assert entry.md5 == md5_entry(r.file_dir / "data.bin")
    return entry


@transition("upload", ("offered", "waiting"))
def upload_waits_when_central_says_so(tmp_path: Path, from_: str, _to: str) -> Entry:
    r = role(tmp_path, "upload")
    e = r.given(from_, peer="central")
    r.deliver(Wait(e.id, "central", reason="no room"))
    assert r.entry(e.id).reason == "no room"
    return r.entry(e.id)


@transition("upload", *((s, "uploading") for s in ("offered", "waiting", "pushed", "sent")))
def upload_is_admitted(tmp_path: Path, from_: str, _to: str) -> Entry:
    r = role(tmp_path, "upload")
    e = r.given(from_, peer="central", attempt=1)
    r.deliver(Admit(e.id, "central", attempt=2, dest="/srv/central/lab/staging/upload"))
    entry = r.entry(e.id)
    assert (entry.attempt, entry.path) == (2, "/srv/central/lab/staging/upload")
    r.tick()
    assert r.job("transfer").keys  # the push starts
    return entry


POOL = {"central-a": "synkler@host-a", "central-b": "synkler@host-b"}


@transition("upload", *((s, "offered") for s in ("waiting", "uploading", "pushed", "sent")))
def upload_reowns_the_entries_of_a_central_gone(tmp_path: Path, from_: str, _to: str) -> Entry:
    r = role(tmp_path, "upload", centrals=POOL, reown_seconds=10)
    e = r.given(from_, peer="central-a", attempt=1)
    with r.state.transaction():
        r.state.put_epoch(e.id, 1)
    r.jobs.consumer_counts["central-a"] = 0
    start = time.time()
    r.tick(start)  # seen gone: not yet for long enough
    assert r.entry(e.id).state == from_
    r.tick(start + 11)
    entry = r.entry(e.id)
    assert (entry.peer, r.state.epoch(e.id)) == (None, 2)
    sent = r.sent()
    to, offer = only(sent, Offer)
    assert (to, offer.epoch) == ("offers:upload", 2)
    to, forget = only(sent, Forget)
    assert (to, forget.epoch) == ("central-a", 2) and "re-owned" in forget.reason
    # The old owner's messages of epoch 1 are ignored; the new owner's admission is taken.
    r.deliver(Admit(e.id, "central-a", attempt=2, dest="/srv/central/lab/staging/upload", epoch=1))
    assert r.entry(e.id).state == "offered"
    r.jobs.places["central-b"] = "/srv/b/lab"
    r.deliver(Admit(e.id, "central-b", attempt=1, dest="/srv/b/lab/staging/upload", epoch=2))
    assert (r.entry(e.id).state, r.entry(e.id).peer) == ("uploading", "central-b")
    return entry


@transition("upload", *((s, "superseded") for s in UNSENT_AND_SENT))
def upload_withdraws_a_version_a_newer_one_replaced(tmp_path: Path, from_: str, _to: str) -> Entry:
    r = role(tmp_path, "upload")
    old = r.given(from_, peer="central", created=1.0)
    r.given("offered", peer="central", created=2.0)  # the newer version of the same name
    r.deliver(Admit(old.id, "central", attempt=2, dest="/srv/central/lab/staging/upload"))
    to, withdraw = only(r.sent(), Withdraw)
    assert to == "central" and withdraw.entry == old.id
    return r.entry(old.id)


@transition("upload", *((s, "failed") for s in UNSENT_AND_SENT))
def upload_fails_when_central_reports_failure(tmp_path: Path, from_: str, _to: str) -> Entry:
    r = role(tmp_path, "upload")
    e = r.given(from_, peer="central")
    r.deliver(Failed(e.id, "central", hop="pull from central", reason="exit 23"))
    assert r.entry(e.id).reason == "pull from central: exit 23"
    assert r.sent() == []  # not sent back
    return r.entry(e.id)


# Central may hold a verified copy from the first push on; a failed entry only if download's pull
# failed (central keeps its copy: an operator's retry at download may deliver it yet).
PUSHED_ONCE = ("uploading", "pushed", "sent", "failed", "superseded")


def told_of_delivery(tmp_path: Path, from_: str, **settings: object) -> tuple[Role, Entry]:
    r = role(tmp_path, "upload", **settings)
    e = r.given(from_, peer="central", reason="pull from central: exit 23" if from_ == "failed" else None)
    r.deliver(Delivered(e.id, "central", stored_as="data (2).bin"))
    return r, e


@transition("upload", *((s, "delivered") for s in PUSHED_ONCE))
def upload_is_told_of_delivery_with_a_cleanup_script(tmp_path: Path, from_: str, _to: str) -> Entry:
    r, e = told_of_delivery(tmp_path, from_, cleanup_script="rm %F")
    entry = r.entry(e.id)
    assert (entry.cleanup, entry.stored_as) == (Cleanup.PENDING, "data (2).bin")
    r.tick()
    assert r.job("script").keys  # the cleanup script starts
    return entry


@transition("upload", *((s, "done") for s in PUSHED_ONCE))
def upload_is_told_of_delivery_without_a_cleanup_script(tmp_path: Path, from_: str, _to: str) -> Entry:
    r, e = told_of_delivery(tmp_path, from_)
    assert r.entry(e.id).cleanup is None
    return r.entry(e.id)


@transition("upload", *((s, to) for s in ("offered", "waiting") for to in ("delivered", "done")))
def upload_believes_a_late_delivery_on_its_signed_receipt(tmp_path: Path, from_: str, to: str) -> Entry:
    """A pool: the central re-owned from delivered the entry meanwhile (an older epoch): its
    receipt, signed by the destination's pinned key, is the proof."""
    key = receipts.new_key()
    script = {"cleanup_script": "rm %F"} if to == "delivered" else {}
    pinned = {"download_public_key": receipts.public_text(key)}
    r = role(tmp_path, "upload", centrals=POOL, **pinned, **script)
    e = r.given(from_, peer="central-b" if from_ == "waiting" else None)
    with r.state.transaction():
        r.state.put_epoch(e.id, 2)
    token = receipts.sign(receipts.for_entry(r.cfg.id, e, "download", "data.bin", placed_at=1.0), key)
    r.deliver(Delivered(e.id, "central-a", stored_as="data.bin", receipt=token, epoch=1))
    entry = r.entry(e.id)
    assert entry.cleanup == (Cleanup.PENDING if to == "delivered" else None)
    told = [(dest, m.epoch) for dest, m in r.sent() if isinstance(m, Forget)]
    assert told == ([("central-b", 3)] if from_ == "waiting" else [])  # the new owner drops its copy
    return entry


def pushing(tmp_path: Path, md5: str, **settings: object) -> tuple[Role, Entry]:
    r = role(tmp_path, "upload", **settings)
    e = r.given("uploading", peer="central", md5=md5, path="/srv/central/lab/staging/upload")
    r.tick()
    return r, e


@transition("upload", ("uploading", "sent"))
def upload_sends_the_md5_when_the_push_ends(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = pushing(tmp_path, MD5)
    r.finish(r.job("transfer"), OK)
    to, sent = only(r.sent(), Sent)
    assert (to, sent.md5, sent.attempt) == ("central", MD5, 1)
    return r.entry(e.id)


@transition("upload", ("uploading", "pushed"))
def upload_waits_for_its_md5_after_the_push(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = pushing(tmp_path, "")
    r.finish(r.job("transfer"), OK)
    assert r.sent() == []
    return r.entry(e.id)


@transition("upload", ("pushed", "sent"))
def upload_sends_the_md5_once_it_is_hashed(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "upload")
    e = r.given("pushed", peer="central", md5=None, signature="sig")
    r.start()  # hashes cut short by a stop start again
    r.finish(r.job("hash"), [Hashed(MD5, EntryStat("file", 4, 1, "sig"))])
    _, sent = only(r.sent(), Sent)
    assert sent.md5 == MD5
    return r.entry(e.id)


@transition("upload", ("delivered", "done"))
def upload_is_done_when_the_cleanup_script_ran(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "upload", cleanup_script="true")
    e = r.given("delivered", peer="central", cleanup=Cleanup.PENDING)
    r.tick()
    r.finish(r.job("script"), OK)
    assert r.entry(e.id).cleanup == Cleanup.DONE
    return r.entry(e.id)


@transition("upload", *((s, "forgotten") for s in UNSENT_AND_SENT))
def upload_forgets_an_entry_on_its_way_when_an_operator_asks(tmp_path: Path, from_: str, _to: str) -> Entry:
    r = role(tmp_path, "upload")
    (r.file_dir / "data.bin").write_bytes(b"data")
    e = r.given(from_, peer="central")
    ok, answer = r.request("forget", e.id)
    assert ok and "forgotten" in answer, answer
    to, forget = only(r.sent(), Forget)
    assert (to, forget.entry, forget.reason) == ("central", e.id, "forgotten by an operator at upload")
    assert (r.file_dir / "data.bin").read_bytes() == b"data"  # the file stays
    r.deliver(Admit(e.id, "central", attempt=9, dest="/srv/central/lab/staging/upload"))  # late: ignored
    r.deliver(Delivered(e.id, "central", stored_as="data.bin"))
    assert r.sent() == []
    return r.entry(e.id)


def upload_with_a_failed_file(tmp_path: Path, **settings: object) -> tuple[Role, Entry]:
    r = role(tmp_path, "upload", **settings)
    path = r.file_dir / "data.bin"
    path.write_bytes(b"data")
    st = stat_entry(path)
    e = r.given("failed", peer="central", md5=md5_entry(path), signature=st.signature, reason="push: exit 23")
    return r, e


@transition("upload", ("failed", "forgotten"))
def upload_retries_a_failed_entry_as_a_new_one_and_forgets_the_failed_one(
    tmp_path: Path, _from: str, _to: str
) -> Entry:
    r, e = upload_with_a_failed_file(tmp_path)
    ok, answer = r.request("retry", e.id)
    assert ok, answer
    sent = r.sent()
    _, offer = only(sent, Offer)
    _, forget = only(sent, Forget)
    assert offer.entry != e.id and offer.name == "data.bin" and forget.entry == e.id
    assert f"sent again as entry {offer.entry}" in forget.reason and offer.entry in answer
    r.run(r.job("hash"))  # the new entry is hashed on its way, as any new name
    assert r.entry(offer.entry).md5 == md5_entry(r.file_dir / "data.bin")
    return r.entry(e.id)


@transition("upload", ("done", "delivered"))
def upload_runs_a_failed_cleanup_script_again_on_request(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "upload", cleanup_script="true", cleanup_attempts=2)
    e = r.given("done", peer="central", cleanup=Cleanup.FAILED, tries=1, reason="cleanup script: exit 1")
    ok, answer = r.request("retry", e.id)
    assert ok and "cleanup script runs again" in answer, answer
    entry = r.entry(e.id)
    assert (entry.cleanup, entry.tries, entry.reason) == (Cleanup.PENDING, 0, None)  # attempts counted afresh
    r.tick()
    r.finish(r.job("script"), OK)
    assert (r.entry(e.id).state, r.entry(e.id).cleanup) == ("done", Cleanup.DONE)
    return entry


def test_upload_gives_up_a_push_after_max_attempts_and_tells_central(tmp_path: Path):
    r, e = pushing(tmp_path, MD5, max_attempts=2)
    r.finish(r.job("transfer"), RSYNC_FAILED)
    assert r.entry(e.id).state == "uploading" and r.entry(e.id).tries == 1
    r.tick(time.time() + 600)  # the retry is due
    r.finish(r.job("transfer"), RSYNC_FAILED)
    assert r.entry(e.id).state == "failed"
    _, failed = only(r.sent(), Failed)
    assert failed.hop == "push to central"


def test_upload_does_not_count_a_push_that_failed_for_a_link_that_is_down(tmp_path: Path):
    r, e = pushing(tmp_path, MD5, max_attempts=1)
    r.finish(r.job("transfer"), Result(False, 255, "ssh: connect to host central: Connection refused"))
    entry = r.entry(e.id)
    assert (entry.state, entry.tries) == ("uploading", 0) and "link down" in (entry.reason or "")


def test_upload_says_at_error_once_for_all_entries_that_ssh_refused_its_key(tmp_path: Path, caplog):
    r = role(tmp_path, "upload")
    a = r.given("uploading", peer="central", md5=MD5, path="/srv/central/lab/staging/upload", size=1 << 27)
    b = r.given("uploading", peer="central", md5=MD5, path="/srv/central/lab/staging/upload", size=1 << 27)
    r.tick()  # two big entries: two runs
    refused = Result(False, 255, "root@central: Permission denied (publickey).\n" + "rsync: closed\n" * 3)
    for job in list(r.jobs.pending):
        if job.pool == "transfer":
            r.finish(job, refused)
    for e in (a, b):
        entry = r.entry(e.id)
        assert (entry.state, entry.tries) == ("uploading", 0)
        assert (entry.reason or "").startswith(
            "push to central: needs a person: exit 255: root@central: Permission"
        )
    errors = [rec for rec in caplog.records if rec.levelname == "ERROR"]
    assert len(errors) == 1 and "This needs a person" in errors[0].getMessage()


def test_upload_ignores_an_admit_it_has_seen(tmp_path: Path):
    r = role(tmp_path, "upload")
    e = r.given("sent", peer="central", attempt=2)
    r.deliver(Admit(e.id, "central", attempt=2, dest="/srv/central/lab/staging/upload"))
    assert r.entry(e.id).state == "sent"


def test_upload_runs_a_failing_cleanup_script_cleanup_attempts_times(tmp_path: Path):
    r = role(tmp_path, "upload", cleanup_script="false", cleanup_attempts=2)
    e = r.given("delivered", peer="central", cleanup=Cleanup.PENDING)
    r.tick()
    r.finish(r.job("script"), Result(False, 1, ""))
    assert (r.entry(e.id).state, r.entry(e.id).cleanup) == ("delivered", Cleanup.PENDING)
    r.tick(time.time() + 600)
    r.finish(r.job("script"), Result(False, 1, ""))
    assert (r.entry(e.id).state, r.entry(e.id).cleanup) == ("done", Cleanup.FAILED)


def test_a_cleanup_script_whose_runner_died_is_interrupted_and_not_run_again(tmp_path: Path):
    r = role(tmp_path, "upload", cleanup_script="true")
    e = r.given("delivered", peer="central", cleanup=Cleanup.PENDING)
    r.tick()
    r.finish(r.job("script"), None)  # run_cleanup's None: the runner died mid-script
    assert (r.entry(e.id).state, r.entry(e.id).cleanup) == ("done", Cleanup.INTERRUPTED)
    r.tick(time.time() + 600)
    assert [job for job in r.jobs.pending if job.pool == "script"] == []


# --------------------------------------------------------------------------------------------------
# central


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


# --------------------------------------------------------------------------------------------------
# download


def fetch_for(entry_id: str, attempt: int = 1) -> Fetch:
    return Fetch(
        entry_id,
        "central",
        name="data.bin",
        kind="file",
        size=4,
        files=1,
        md5=MD5,
        attempt=attempt,
        path=f"/srv/central/lab/stored/{entry_id}",
    )


@transition("download", ("", "fetching"))
def download_records_a_fetch(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "download")
    r.deliver(fetch_for("2" * 32))
    r.tick()
    assert r.job("transfer").keys  # the pull starts
    return r.entry("2" * 32)


@transition("download", ("failed", "fetching"))
def download_fetches_again_when_central_got_the_entry_again(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "download")
    e = r.given("failed", peer="central", attempt=1, path="/srv/central/lab/stored/x")
    r.deliver(fetch_for(e.id, attempt=2))
    assert r.entry(e.id).attempt == 2
    return r.entry(e.id)


def pulled(tmp_path: Path, outcome: object, **settings: object) -> tuple[Role, Entry]:
    r = role(tmp_path, "download", **settings)
    r.start()
    e = r.given("fetching", peer="central", path="/srv/central/lab/stored/x")
    r.tick()
    job = r.job("transfer")
    result = RSYNC_FAILED if isinstance(outcome, NotPulled) else OK
    r.finish(job, PullRun(result, {e.id: outcome}))  # type: ignore[dict-item]
    return r, e


@transition("download", ("fetching", "placing"))
def download_chooses_a_name_for_a_verified_copy(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = pulled(tmp_path, Verified("data (2).bin", False))
    assert r.entry(e.id).stored_as == "data (2).bin"
    return r.entry(e.id)


@transition("download", ("fetching", "done"))
def download_is_done_when_the_same_content_is_there(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = pulled(tmp_path, Verified("data.bin", True))
    to, fetched = only(r.sent(), Fetched)
    assert (to, fetched.outcome, fetched.stored_as) == ("central", "present", "data.bin")
    return r.entry(e.id)


@transition("download", ("fetching", "failed"))
def download_gives_up_after_max_attempts(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = pulled(tmp_path, NotPulled("rsync", "exit 23"), max_attempts=1)
    to, failed = only(r.sent(), Failed)
    assert (to, failed.hop) == ("central", "pull from central")
    return r.entry(e.id)


def test_download_reports_a_mismatch_to_central_and_tries_again(tmp_path: Path):
    r, e = pulled(tmp_path, Mismatch(OTHER))
    assert only(r.sent(), Corrupt)[1].got == OTHER
    entry = r.entry(e.id)
    assert (entry.state, entry.tries) == ("fetching", 1)


def placing(tmp_path: Path, staged: bool, **settings: object) -> tuple[Role, Entry]:
    r = role(tmp_path, "download", **settings)
    r.start()
    e = r.given("placing", peer="central", stored_as="data.bin")
    if staged:
        Path(r.agent.staging.of(e.id)).write_bytes(b"data")
    r.tick()
    return r, e


@transition("download", ("placing", "delivered"))
def download_places_and_then_runs_its_cleanup_script(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = placing(tmp_path, True, cleanup_script="true")
    assert (r.file_dir / "data.bin").read_bytes() == b"data"
    assert only(r.sent(), Fetched)[1].outcome == "placed"
    assert r.entry(e.id).cleanup == Cleanup.RUNNING and r.job("script").keys  # started in the same pass
    return r.entry(e.id)


@transition("download", ("placing", "done"))
def download_places_without_a_cleanup_script(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = placing(tmp_path, True)
    assert (r.file_dir / "data.bin").read_bytes() == b"data"
    return r.entry(e.id)


@transition("download", ("placing", "fetching"))
def download_fetches_again_when_its_staged_copy_vanished(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = placing(tmp_path, False)
    assert r.sent() == []
    return r.entry(e.id)


def test_download_never_places_over_an_entry_put_there_meanwhile(tmp_path: Path):
    r = role(tmp_path, "download")
    r.start()
    e = r.given("placing", peer="central", stored_as="data.bin")
    Path(r.agent.staging.of(e.id)).write_bytes(b"data")
    (r.file_dir / "data.bin").write_bytes(b"someone else's")
    r.tick()
    assert r.entry(e.id).state == "fetching"
    assert (r.file_dir / "data.bin").read_bytes() == b"someone else's"


@transition("download", ("delivered", "done"))
def download_is_done_when_the_cleanup_script_ran(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "download", cleanup_script="true")
    e = r.given("delivered", peer="central", stored_as="data.bin", cleanup=Cleanup.PENDING)
    r.tick()
    r.finish(r.job("script"), OK)
    return r.entry(e.id)


def download_holding(tmp_path: Path, state: str, **settings: object) -> tuple[Role, Entry, Path]:
    """Download with an entry in `state` and what a pull left of it in staging."""
    r = role(tmp_path, "download", **settings)
    r.start()
    e = r.given(state, peer="central", stored_as="data.bin", path="/srv/central/lab/stored/x")
    staged = Path(r.agent.staging.of(e.id))
    staged.write_bytes(b"da")
    return r, e, staged


@transition("download", ("fetching", "forgotten"))
def download_forgets_what_central_forgot(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e, staged = download_holding(tmp_path, "fetching")
    r.deliver(Forget(e.id, "central", reason="forgotten by an operator at upload"))
    assert r.sent() == [] and not staged.exists()
    r.deliver(fetch_for(e.id, attempt=5))  # late: ignored
    r.tick()
    assert [job for job in r.jobs.pending if job.pool == "transfer"] == []
    return r.entry(e.id)


@transition("download", *((s, "forgotten") for s in ("placing", "failed")))
def download_forgets_on_request_and_tells_central(tmp_path: Path, from_: str, _to: str) -> Entry:
    r, e, staged = download_holding(tmp_path, from_)
    ok, answer = r.request("forget", e.id)
    assert ok, answer
    to, forget = only(r.sent(), Forget)
    assert (to, forget.reason) == ("central", "forgotten by an operator at download")
    assert not staged.exists() and not (r.file_dir / "data.bin").exists()
    r.tick()  # nothing is placed
    assert not (r.file_dir / "data.bin").exists()
    return r.entry(e.id)


@transition("download", ("done", "delivered"))
def download_runs_a_failed_cleanup_script_again_on_request(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "download", cleanup_script="true")
    e = r.given("done", peer="central", stored_as="data.bin", cleanup=Cleanup.INTERRUPTED)
    ok, answer = r.request("retry", e.id)
    assert ok, answer
    entry = r.entry(e.id)
    r.tick()
    assert r.entry(e.id).cleanup == Cleanup.RUNNING and r.job("script").keys
    return entry


# --------------------------------------------------------------------------------------------------
# cleanup scripts act only on the content that was delivered

RAN = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


def recording_script(tmp_path: Path) -> tuple[str, Path]:
    """A cleanup script that appends its %F to a log, and the log."""
    log = tmp_path / "ran"
    return shlex.join([sys.executable, "-c", RAN, str(log), "%F"]), log


def change(path: Path, how: str) -> None:
    """Do to a delivered entry what a writer or a person might, before its cleanup script starts."""
    if how == "touched":  # the same content: still the delivered one
        os.utime(path, (time.time() + 5, time.time() + 5))
    elif how == "replaced":  # a newer version renamed over the name
        newer = path.parent.parent / ".newer"
        newer.write_bytes(b"a newer version")
        os.rename(newer, path)
    elif how == "removed":
        path.unlink()
    elif how == "a directory":
        path.unlink()
        path.mkdir()


def delivered_at_upload(tmp_path: Path, cleanup: str = Cleanup.PENDING) -> tuple[Role, Entry, Path]:
    """Upload with data.bin delivered and its cleanup script due; the script logs what it ran on."""
    script, log = recording_script(tmp_path)
    r = role(tmp_path, "upload", cleanup_script=script, settle_seconds=0)
    path = r.file_dir / "data.bin"
    path.write_bytes(b"version 1")
    e = r.given(
        "delivered",
        peer="central",
        cleanup=cleanup,
        md5=md5_entry(path),
        size=path.stat().st_size,
        signature=stat_entry(path).signature,  # as it was offered
    )
    return r, e, log


@pytest.mark.parametrize(
    ("how", "outcome", "why"),
    [
        ("untouched", "done", None),
        ("touched", "done", None),
        ("replaced", "skipped", "the name now holds other content (md5 {md5}, delivered {delivered})"),
        ("removed", "skipped", "the name is gone"),
        ("a directory", "skipped", "the name now holds a dir, not the delivered file"),
    ],
)
def test_upload_runs_its_cleanup_script_only_if_the_name_still_holds_the_delivered_content(
    tmp_path: Path, caplog, how: str, outcome: str, why: str | None
):
    r, e, log = delivered_at_upload(tmp_path)
    path = r.file_dir / "data.bin"
    change(path, how)
    md5 = md5_entry(path) if path.is_file() else None
    r.tick()
    r.run(r.job("script"))
    entry = r.entry(e.id)
    assert (entry.state, entry.cleanup) == ("done", outcome)
    if outcome == "done":
        assert log.read_text() == f"{path}\n"
        return
    assert not log.exists()  # the script never started
    assert entry.reason == why.format(md5=md5, delivered=e.md5)
    [warning] = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    assert warning.startswith(
        f"data.bin: cleanup script not run: {path} no longer holds the delivered content"
    )


def test_upload_offers_the_newer_version_whose_name_a_skipped_cleanup_left_alone(tmp_path: Path):
    r, e, log = delivered_at_upload(tmp_path)
    path = r.file_dir / "data.bin"
    change(path, "replaced")
    r.tick()  # the cleanup script is due (and a scan)
    r.run(r.job("script"))
    assert r.entry(e.id).cleanup == "skipped"
    for _ in range(2):  # seen once, then settled
        r.run(r.job("scan"))
        r.tick(time.time() + 10)
    r.run(r.job("hash"))  # a name relayed before is hashed before a new version is offered
    _, offer = only(r.sent(), Offer)
    assert (offer.name, r.entry(offer.entry).md5) == ("data.bin", md5_entry(path))
    assert offer.entry != e.id and not log.exists()


def test_a_cleanup_script_that_ran_while_the_agent_was_down_is_collected_whatever_the_name_holds_now(
    tmp_path: Path,
):
    r, e, log = delivered_at_upload(tmp_path, cleanup=Cleanup.RUNNING)
    Path(script_status(r.cfg, e.id)).write_text(json.dumps({"returncode": 0, "output": "moved it"}))
    change(r.file_dir / "data.bin", "replaced")  # e.g. the script moved it, and a newer one came
    r.start()
    r.run(r.job("script"))
    assert (r.entry(e.id).state, r.entry(e.id).cleanup) == ("done", "done")


def test_a_cleanup_script_that_had_not_started_when_the_agent_died_is_checked_at_the_next_start(
    tmp_path: Path,
):
    r, e, log = delivered_at_upload(tmp_path, cleanup=Cleanup.RUNNING)  # no runner ever started
    change(r.file_dir / "data.bin", "replaced")
    r.start()
    r.run(r.job("script"))
    assert (r.entry(e.id).state, r.entry(e.id).cleanup) == ("done", "skipped")
    assert not log.exists()


def test_a_stop_while_the_target_is_hashed_starts_no_script_and_leaves_the_check_to_the_next_start(
    tmp_path: Path,
):
    r, e, log = delivered_at_upload(tmp_path)
    change(r.file_dir / "data.bin", "touched")  # a new fingerprint: the check reads the md5
    r.tick()
    job = r.job("script")
    checksum.STOPPING.set()
    try:
        with pytest.raises(Interrupted):  # the runtime records nothing of a job that ends so
            job.work()
    finally:
        checksum.STOPPING.clear()
    assert r.entry(e.id).cleanup == Cleanup.RUNNING  # collected, and so checked, at the next start
    assert not log.exists() and not os.path.exists(script_status(r.cfg, e.id) + ".pid")


@pytest.mark.parametrize(
    ("how", "outcome"),
    [("untouched", "done"), ("touched", "done"), ("replaced", "skipped"), ("removed", "skipped")],
)
def test_download_runs_its_cleanup_script_only_on_the_copy_it_placed(tmp_path: Path, how: str, outcome: str):
    script, log = recording_script(tmp_path)
    r = role(tmp_path, "download", cleanup_script=script)
    r.start()
    e = r.given("placing", peer="central", stored_as="data (2).bin", md5=hashlib.md5(b"data").hexdigest())
    Path(r.agent.staging.of(e.id)).write_bytes(b"data")
    r.tick()  # placed, and its cleanup script is due
    path = r.file_dir / "data (2).bin"
    assert r.entry(e.id).signature == stat_entry(path).signature  # what it placed, as placed
    change(path, how)
    r.run(r.job("script"))
    entry = r.entry(e.id)
    assert (entry.state, entry.cleanup) == ("done", outcome)
    assert (log.read_text() if log.exists() else "") == (f"{path}\n" if outcome == "done" else "")
    if how == "replaced":
        assert path.read_bytes() == b"a newer version"  # someone else's, left alone


# --------------------------------------------------------------------------------------------------


def every_transition() -> list[tuple[str, str, str]]:
    pairs = []
    for mode, agent in AGENTS.items():
        pairs += [(mode, "", str(state)) for state in agent.NEW]
        for from_, targets in agent.TRANSITIONS.items():
            pairs += [(mode, str(from_), str(to)) for to in sorted(targets)]
    return pairs


def test_every_transition_has_a_scenario_and_every_scenario_a_transition():
    assert sorted(SCENARIOS) == sorted(every_transition())


@pytest.mark.parametrize("mode,from_,to", sorted(SCENARIOS), ids=lambda v: v or "new")
def test_transition(tmp_path: Path, mode: str, from_: str, to: str):
    entry = SCENARIOS[(mode, from_, to)](tmp_path, from_, to)
    assert entry.state == to
