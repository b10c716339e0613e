"""A pool of centrals, decided without a broker (synkler.agents.ownership and the roles' pool
parts): who may act on an entry at which epoch, when a central counts as gone, and what each role
does with a message of an ownership that has ended."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from support.fakes import Role

from synkler import receipts
from synkler.agents.central import Mid
from synkler.agents.central_pool import DRAIN, UNDRAIN
from synkler.agents.download import Down
from synkler.agents.ownership import Reowner, stale
from synkler.errors import NotYet
from synkler.messages import Admit, Delivered, Fetch, Fetched, Forget, Offer, Sent

MD5 = "a" * 32
KEY = receipts.new_key()
PINNED = {"download_public_key": receipts.public_text(KEY)}
POOL = {"central-a": "synkler@host-a", "central-b": "synkler@host-b"}


def test_a_message_acts_only_from_the_owner_at_the_current_epoch():
    assert stale(2, 2, "central-b", "central-b") is None
    assert stale(2, 2, "central-b", None) is None  # not taken yet: the central that took the offer
    assert "epoch 1" in (stale(1, 2, "central-a", "central-b") or "")
    assert "owned by central-b" in (stale(2, 2, "central-a", "central-b") or "")
    assert "no epoch" in (stale(None, 2, "central-a", "central-a") or "")


def test_a_central_counts_as_gone_only_after_the_grace_without_a_consumer():
    watch = Reowner(grace=40)
    counts = {"central-a": 0, "central-b": 1}
    assert watch.gone({"central-a", "central-b"}, counts.get, 100) == []
    assert watch.gone({"central-a", "central-b"}, counts.get, 139) == []
    counts["central-a"] = 1  # back in time: counted again from zero
    assert watch.gone({"central-a"}, counts.get, 141) == []
    counts["central-a"] = 0
    assert watch.gone({"central-a"}, counts.get, 150) == []
    assert watch.gone({"central-a"}, counts.get, 189) == []
    # Not known (upload was not connected): counted again from zero, as the central may be
    # reconnecting after the same outage.
    assert watch.gone({"central-a"}, lambda c: None, 170) == []
    assert watch.gone({"central-a"}, counts.get, 190) == []
    assert watch.gone({"central-a"}, counts.get, 230) == ["central-a"]


def pooled_central(tmp_path: Path, name: str = "central-a") -> Role:
    r = Role("central", tmp_path, name=name, uploads=["upload"])
    r.start()
    return r


def offer(entry_id: str, epoch: int | None) -> Offer:
    return Offer(entry_id, "upload", name="data.bin", kind="file", size=4, files=1, epoch=epoch)


def test_central_takes_an_offer_at_its_epoch_and_stamps_it_on_what_it_says(tmp_path: Path):
    r = pooled_central(tmp_path)
    r.deliver(offer("1" * 32, 1))
    r.tick()
    to, admit = [(to, m) for to, m in r.sent() if isinstance(m, Admit)][0]
    assert (to, admit.epoch) == ("upload", 1)
    # upload's `sent` of another epoch does nothing
    r.deliver(Sent("1" * 32, "upload", attempt=1, md5=MD5, epoch=2))
    assert r.entry("1" * 32).state == Mid.UPLOADING


def test_central_refuses_offers_from_unknown_uploads_and_requeues_a_reoffer_of_its_own(tmp_path: Path):
    r = pooled_central(tmp_path)
    assert r.apply(b"") == ("dead", [])
    bad = Offer("2" * 32, "lab-x", name="x", kind="file", size=1, files=1, epoch=1)
    from synkler import messages

    assert r.apply(messages.encode(bad))[0] == "dead"
    r.deliver(offer("3" * 32, 1))
    with pytest.raises(NotYet):
        r.deliver(offer("3" * 32, 2))  # re-owned from it: another central takes it


def test_a_reown_forget_drops_the_copy_and_passes_nothing_on(tmp_path: Path):
    r = pooled_central(tmp_path)
    e = r.given("downloading", peer="upload")
    with r.state.transaction():
        r.state.put_epoch(e.id, 1)
    r.deliver(Forget(e.id, "upload", reason="re-owned by upload at epoch 2: central-a was gone", epoch=2))
    assert r.entry(e.id).state == Mid.FORGOTTEN
    assert r.sent() == []  # download is not told: it answers the new owner
    # download's `fetched` arriving later changes nothing
    r.deliver(Fetched(e.id, "download", stored_as="data.bin", outcome="placed"))
    assert r.entry(e.id).state == Mid.FORGOTTEN and r.sent() == []


def test_a_drained_central_has_no_room_for_offers(tmp_path: Path):
    r = pooled_central(tmp_path)
    assert r.agent.offer_room() == 2 * r.cfg.max_transfers
    with r.state.transaction():
        seq = r.state.add_request("", DRAIN)
    with r.state.transaction():
        r.agent.take_requests()
    request = r.state.get_request(seq)
    assert request is not None and request.ok and "draining" in (request.answer or "")
    assert r.agent.offer_room() == 0
    with r.state.transaction():
        r.state.add_request("", UNDRAIN)
    with r.state.transaction():
        r.agent.take_requests()
    assert r.agent.offer_room() == 2 * r.cfg.max_transfers


def fetch(entry_id: str, sender: str, epoch: int, path: str) -> Fetch:
    return Fetch(
        entry_id,
        sender,
        name="data.bin",
        kind="file",
        size=4,
        files=1,
        md5=MD5,
        attempt=1,
        path=path,
        epoch=epoch,
    )


def test_download_follows_the_newest_owner_and_ignores_an_old_one(tmp_path: Path):
    r = Role("download", tmp_path, centrals=POOL)
    r.jobs.places = {"central-a": "/srv/a/lab", "central-b": "/srv/b/lab"}
    entry_id = "4" * 32
    r.deliver(fetch(entry_id, "central-b", 2, f"/srv/b/lab/stored/{entry_id}"))
    r.deliver(fetch(entry_id, "central-a", 1, f"/srv/a/lab/stored/{entry_id}"))  # old: ignored
    entry = r.entry(entry_id)
    assert (entry.peer, entry.path, r.state.epoch(entry_id)) == (
        "central-b",
        f"/srv/b/lab/stored/{entry_id}",
        2,
    )
    assert r.agent.link_cfg(entry).central_host == "synkler@host-b"


def test_download_that_finished_answers_the_new_owner_again(tmp_path: Path):
    r = Role("download", tmp_path, centrals=POOL)
    r.jobs.places = {"central-a": "/srv/a/lab", "central-b": "/srv/b/lab"}
    e = r.given(Down.DONE, peer="central-a", stored_as="data.bin")
    with r.state.transaction():
        r.state.put_epoch(e.id, 1)
    r.deliver(fetch(e.id, "central-b", 2, f"/srv/b/lab/stored/{e.id}"))
    sent = r.sent()
    assert [(to, type(m)) for to, m in sent] == [("central-b", Fetched)]
    assert r.entry(e.id).state == Down.DONE  # pulled once, cleaned up once


def test_upload_believes_a_delivery_only_from_the_owner_at_its_epoch(tmp_path: Path):
    r = Role("upload", tmp_path, centrals=POOL)
    e = r.given("sent", peer="central-b")
    with r.state.transaction():
        r.state.put_epoch(e.id, 2)
    r.deliver(Delivered(e.id, "central-a", stored_as="data.bin", epoch=1))
    assert r.entry(e.id).state == "sent"
    r.deliver(Delivered(e.id, "central-b", stored_as="data.bin", epoch=2))
    assert r.entry(e.id).state in ("delivered", "done")


def test_without_a_pool_nothing_changes(tmp_path: Path):
    r = Role("upload", tmp_path)
    assert not r.agent.pooled
    e = r.given("sent", peer="central")
    r.deliver(Delivered(e.id, "central", stored_as="data.bin"))
    assert r.entry(e.id).state in ("delivered", "done")
    assert time.time() > 0


# a late `delivered`: a central re-owned from delivered the entry meanwhile ---------------------------


def signed(r: Role, entry_id: str, key=KEY) -> str:
    """Download's receipt of the entry as upload (or central) knows it, signed with `key`."""
    e = r.entry(entry_id)
    got = receipts.for_entry(r.cfg.id, e, "download", "data.bin", placed_at=1.0, outcome="placed")
    return receipts.sign(got, key)


def reowned_upload(tmp_path: Path, state: str, owner: str | None, **settings: object) -> tuple[Role, str]:
    """Upload with an entry re-owned from central-a: at epoch 2, in `state`, owned by `owner`."""
    r = Role("upload", tmp_path, centrals=POOL, cleanup_script="true", **settings)
    r.start()
    e = r.given(state, peer=owner, md5=MD5)
    with r.state.transaction():
        r.state.put_epoch(e.id, 2)
    return r, e.id


@pytest.mark.parametrize(
    "state, owner", [("offered", None), ("waiting", "central-b"), ("uploading", "central-b")]
)
def test_upload_believes_a_late_delivery_on_its_signed_receipt(tmp_path: Path, state: str, owner):
    r, entry_id = reowned_upload(tmp_path, state, owner, **PINNED)
    late = Delivered(entry_id, "central-a", stored_as="data.bin", receipt=signed(r, entry_id), epoch=1)
    r.deliver(late)
    assert r.entry(entry_id).state == "delivered"
    # the current owner, if any, drops its copy (a `forget` of the next epoch, as a re-own's)
    told = [(to, m.epoch) for to, m in r.sent() if isinstance(m, Forget)]
    assert told == ([(owner, 3)] if owner else [])
    r.deliver(late)  # again (a copy, or the central answering a later offer): nothing more
    r.tick()
    assert r.job("script")  # the cleanup script, once
    assert r.sent() == []


def test_upload_checks_a_late_receipt_as_any_other(tmp_path: Path):
    r, entry_id = reowned_upload(tmp_path, "uploading", "central-b", **PINNED)
    forged = signed(r, entry_id, receipts.new_key())
    with pytest.raises(receipts.ReceiptError):
        r.deliver(Delivered(entry_id, "central-a", stored_as="data.bin", receipt=forged, epoch=1))
    r.deliver(Delivered(entry_id, "central-a", stored_as="data.bin", epoch=1))  # no receipt: ignored
    assert r.entry(entry_id).state == "uploading" and r.sent() == []


def test_without_pinned_keys_upload_ignores_a_late_delivery(tmp_path: Path):
    r, entry_id = reowned_upload(tmp_path, "uploading", "central-b")
    r.deliver(Delivered(entry_id, "central-a", stored_as="data.bin", receipt="", epoch=1))
    assert r.entry(entry_id).state == "uploading" and r.sent() == []
    r.deliver(Delivered(entry_id, "central-b", stored_as="data.bin", epoch=2))  # the current owner's word
    assert r.entry(entry_id).state == "delivered"


def test_a_central_that_takes_the_offer_of_an_entry_delivered_meanwhile_is_told_to_drop_it(tmp_path: Path):
    r, entry_id = reowned_upload(tmp_path, "offered", None, **PINNED)
    r.deliver(Delivered(entry_id, "central-a", stored_as="data.bin", receipt=signed(r, entry_id), epoch=1))
    r.deliver(Admit(entry_id, "central-b", attempt=1, dest="/srv/central/lab/staging/upload", epoch=2))
    assert r.entry(entry_id).state == "delivered"
    assert [(to, type(m), m.epoch) for to, m in r.sent()] == [("central-b", Forget, 3)]


def test_a_central_offered_an_entry_it_delivered_answers_with_its_receipt(tmp_path: Path):
    r = pooled_central(tmp_path)
    e = r.given(Mid.DELIVERED, peer="upload", stored_as="data.bin")
    token = signed(r, e.id)
    with r.state.transaction():
        r.state.put_epoch(e.id, 2)  # delivered at 2 (re-owned once before)
        r.state.put_receipt(e.id, "download", token)
    r.deliver(offer(e.id, 3))  # the new owner was lost too: offered again, not requeued for ever
    again = Delivered(e.id, "central-a", stored_as="data.bin", receipt=token, epoch=2)
    assert r.sent() == [("upload", again)]
    assert r.entry(e.id).state == Mid.DELIVERED


REOWN_FORGET = Forget("", "upload", reason="re-owned by upload at epoch 2: central-a was gone", epoch=2)


def test_a_central_back_after_a_reown_takes_the_new_epoch_s_offer_afresh(tmp_path: Path):
    # Found by the pool chaos test: the central came back, read the re-own `forget` of epoch 2, then
    # the offer of epoch 2 (sent with it), took it for a duplicate and dropped it: upload waited at
    # `offered` for ever.
    r = pooled_central(tmp_path)
    r.deliver(offer("4" * 32, 1))
    r.tick()
    r.sent()
    r.deliver(dataclasses.replace(REOWN_FORGET, entry="4" * 32))
    assert r.entry("4" * 32).state == Mid.FORGOTTEN
    r.deliver(offer("4" * 32, 2))
    assert r.entry("4" * 32).state == Mid.WAITING
    r.tick()
    assert [(to, m.epoch) for to, m in r.sent() if isinstance(m, Admit)] == [("upload", 2)]
    # The forget of epoch 2 again (upload's outbox sent it twice): it ends nothing now.
    r.deliver(dataclasses.replace(REOWN_FORGET, entry="4" * 32))
    assert r.entry("4" * 32).state != Mid.FORGOTTEN and r.sent() == []


def test_a_central_back_after_a_reown_answers_the_new_epoch_s_offer_with_its_receipt(tmp_path: Path):
    # As above, of an entry it had delivered before the re-own: dropped as a duplicate, the offer
    # left upload waiting; answered with the receipt, upload settles it.
    r = pooled_central(tmp_path)
    e = r.given(Mid.DELIVERED, peer="upload", stored_as="data.bin")
    token = signed(r, e.id)
    with r.state.transaction():
        r.state.put_epoch(e.id, 1)
        r.state.put_receipt(e.id, "download", token)
    r.deliver(dataclasses.replace(REOWN_FORGET, entry=e.id))
    r.deliver(offer(e.id, 2))
    again = Delivered(e.id, "central-a", stored_as="data.bin", receipt=token, epoch=1)
    assert r.sent() == [("upload", again)]


def test_a_central_that_took_an_entry_again_ignores_download_s_answer_to_its_earlier_fetch(tmp_path: Path):
    # Found by the pool chaos test: download finished the pull of the first ownership (epoch 1)
    # while the central, back from the dead, had taken the entry again at epoch 2; its `fetched`
    # was dead-lettered. It is a leftover: the fetch of epoch 2 gets the answer that counts.
    r = pooled_central(tmp_path)
    e = r.given(Mid.DOWNLOADING, peer="upload", path="/srv/central/lab/stored/x")
    with r.state.transaction():
        r.state.put_epoch(e.id, 1)
    r.deliver(dataclasses.replace(REOWN_FORGET, entry=e.id))
    r.deliver(offer(e.id, 2))
    assert r.entry(e.id).state == Mid.WAITING
    r.tick()
    r.sent()
    r.deliver(Fetched(e.id, "download", stored_as="data.bin", outcome="placed"))
    assert r.entry(e.id).state in (Mid.WAITING, Mid.UPLOADING) and r.sent() == []


def test_an_end_agent_of_a_pool_closes_its_ssh_master_connection_to_each_central_at_stop(
    tmp_path: Path, monkeypatch
):
    from synkler.hops import transfer

    closed: list[str] = []
    monkeypatch.setattr(transfer, "close_shared_connection", lambda cfg: closed.append(cfg.central_host))
    r = Role("upload", tmp_path, centrals=POOL)
    r.agent.stopped()
    assert closed[1:] == ["synkler@host-a", "synkler@host-b"] and len(closed) == 3


def test_a_reowned_entry_keeps_the_destinations_frozen_at_its_first_admission(tmp_path: Path):
    """Re-owned, an entry routed to two destinations of which one already proved a copy is offered
    again to the other only (`to`), so the next central does not route it by its own rules."""
    from synkler import destinations as dests

    r = Role("upload", tmp_path, centrals=POOL)
    r.start()
    e = r.given("sent", peer="central-a", md5=MD5)
    with r.state.transaction():
        r.state.put_epoch(e.id, 1)
        dests.route(r.state, e.id, ["download", "archive"])
        dests.mark(r.state, e.id, "download", dests.FETCHED)
    with r.state.transaction():
        r.agent.reown(r.entry(e.id))
    offers = [m for _, m in r.sent() if isinstance(m, Offer)]
    assert len(offers) == 1 and offers[0].to == ("archive",) and offers[0].epoch == 2
    # without routes (one destination), the offer names none: central's default
    plain = r.given("sent", name="plain.bin", peer="central-a", md5=MD5)
    with r.state.transaction():
        r.agent.reown(r.entry(plain.id))
    assert [m.to for _, m in r.sent() if isinstance(m, Offer) and m.entry == plain.id] == [()]


def test_an_offer_a_central_took_and_never_answered_is_offered_again_once_the_queue_stays_empty(
    tmp_path: Path,
):
    """A central that died for good between taking an offer from the offers queue (its ack) and
    answering it leaves the entry neither queued nor owned: once the queue has been empty for
    `reown_seconds` and the entry was offered at least that long ago, upload offers it again; the
    late answer of a central that held it after all is of the old epoch and told to drop it."""
    r = Role("upload", tmp_path, centrals=POOL)
    r.start()
    e = r.given("offered", md5=MD5)
    with r.state.transaction():
        r.state.put_epoch(e.id, 1)
    grace = r.cfg.reown_seconds
    start = time.time() + 100

    def look(now: float) -> list[Offer]:
        with r.state.transaction():
            r.agent.reoffer_unanswered(now)
        return [m for _, m in r.sent() if isinstance(m, Offer)]

    r.jobs.offers_waiting = 2  # offers still wait for a central with room: nobody took it
    assert look(start) == [] and look(start + 2 * grace) == []
    r.jobs.offers_waiting = None  # not known (the broker is away): nothing decided
    assert look(start + 3 * grace) == []
    r.jobs.offers_waiting = 0  # taken from the queue ...
    assert look(start + 4 * grace) == []
    assert look(start + 5 * grace - 1) == []  # ... and not yet answered for reown_seconds
    again = look(start + 5 * grace)
    assert [(o.entry, o.epoch) for o in again] == [(e.id, 2)]
    assert r.entry(e.id).state == "offered" and r.entry(e.id).peer is None
    assert look(start + 5 * grace + 1) == []  # offered again just now: its wait starts again

    # central-a held it after all and answers at epoch 1: ignored, and told to drop its copy
    r.deliver(Admit(e.id, "central-a", attempt=1, dest="/srv/a/lab/staging/upload", epoch=1))
    assert r.entry(e.id).state == "offered"
    forgets = [(to, m) for to, m in r.sent() if isinstance(m, Forget)]
    assert [(to, m.epoch) for to, m in forgets] == [("central-a", 2)]
    # central-b takes the offer of epoch 2: it owns the entry
    r.deliver(Admit(e.id, "central-b", attempt=1, dest="/srv/central/lab/staging/upload", epoch=2))
    assert r.entry(e.id).peer == "central-b"
    # a late answer of the old epoch from the owner itself is only ignored
    r.deliver(Admit(e.id, "central-b", attempt=1, dest="/srv/central/lab/staging/upload", epoch=1))
    assert not [m for _, m in r.sent() if isinstance(m, Forget)]
