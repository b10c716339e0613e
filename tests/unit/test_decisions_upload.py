"""Upload's transitions (registered for test_decisions.py, which runs them) and its other decisions,
driven without a broker, sshd or rsync."""

from __future__ import annotations

import time
from pathlib import Path

from support.fakes import Role
from support.transitions import MD5, OK, RSYNC_FAILED, only, role, transition

from synkler import receipts
from synkler.agents.base import Cleanup
from synkler.agents.listing import Hashed
from synkler.hops.checksum import EntryStat, md5_entry, stat_entry
from synkler.hops.transfer import Result
from synkler.messages import (
    Admit,
    Delivered,
    Failed,
    Forget,
    Offer,
    Sent,
    Wait,
    Withdraw,
)
from synkler.state import Entry

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
