"""A pool of centrals: an entry a central holds waiting for room is offered elsewhere after
`reoffer_minutes`, while another central reports room for it (synkler.agents.ownership.reoffers,
upload's and central's pool parts), decided without a broker."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from support.fakes import Role

from synkler.agents.central import Mid
from synkler.agents.ownership import reoffers
from synkler.messages import Forget, Offer, Wait

POOL = {"central-a": "synkler@host-a", "central-b": "synkler@host-b", "central-c": "synkler@host-c"}
DISK_WAIT = "needs 4 bytes, 0 available above the 10% reserve"


def test_an_entry_goes_to_another_central_with_an_offer_and_the_bytes_to_spare():
    rooms = {"central-a": (5, 1e9), "central-b": (1, 100.0), "central-c": None}
    # Not back to its holder; each entry counted against the room it was given.
    assert reoffers([("e1", 60, "central-a"), ("e2", 60, "central-a")], rooms) == [("e1", "central-b")]
    assert reoffers([("e1", 60, "central-b")], rooms) == [("e1", "central-a")]
    assert reoffers([("e1", 200, "central-a")], rooms) == []  # too big for central-b's room
    assert reoffers([("e1", 1, "central-a")], {"central-b": (0, 1e9)}) == []  # no offer to spare


def waiting_upload(tmp_path: Path, **settings: object) -> tuple[Role, str]:
    r = Role("upload", tmp_path, centrals=POOL, **settings)
    e = r.given("offered")
    with r.state.transaction():
        r.state.put_epoch(e.id, 1)
    r.deliver(Wait(e.id, "central-a", reason=DISK_WAIT, epoch=1))
    entry = r.entry(e.id)
    assert (entry.state, entry.peer) == ("waiting", "central-a")  # the central that took the offer
    return r, e.id


def test_upload_offers_an_entry_held_waiting_too_long_again_where_another_central_has_room(tmp_path: Path):
    r, entry_id = waiting_upload(tmp_path, reoffer_minutes=2)
    r.jobs.rooms = {"central-a": (0, 0.0), "central-b": (3, 1e9)}
    now = time.time()
    r.tick(now + 60)  # not waited long enough
    assert r.entry(entry_id).state == "waiting" and r.sent() == []
    r.tick(now + 125)
    entry = r.entry(entry_id)
    assert (entry.state, entry.peer, r.state.epoch(entry_id)) == ("offered", None, 2)
    sent = r.sent()
    assert [(to, m.epoch) for to, m in sent if isinstance(m, Offer)] == [("offers:upload", 2)]
    ((to, forget),) = [(to, m) for to, m in sent if isinstance(m, Forget)]
    assert (to, forget.epoch) == ("central-a", 2)
    assert "held waiting for room by central-a" in forget.reason and "central-b reports room" in forget.reason
    # The old holder's `wait` of epoch 1 changes nothing now.
    r.deliver(Wait(entry_id, "central-a", reason=DISK_WAIT, epoch=1))
    assert r.entry(entry_id).state == "offered"


def test_an_entry_held_waiting_stays_while_no_other_central_has_room_or_reoffer_minutes_is_0(tmp_path: Path):
    r, entry_id = waiting_upload(tmp_path, reoffer_minutes=2)
    r.jobs.rooms = {"central-a": (4, 1e9), "central-b": (0, 1e9)}  # draining or full: none elsewhere
    r.tick(time.time() + 3600)
    assert r.entry(entry_id).state == "waiting" and r.sent() == []
    (tmp_path / "never").mkdir()
    r, entry_id = waiting_upload(tmp_path / "never", reoffer_minutes=0)
    r.jobs.rooms = {"central-b": (4, 1e9)}
    r.tick(time.time() + 3600)
    assert r.entry(entry_id).state == "waiting" and r.sent() == []


def test_a_central_whose_offer_waits_for_disk_space_takes_no_more_offers(tmp_path: Path):
    usage = shutil.disk_usage(tmp_path)
    reserve = min(99.0, 100 * usage.free / usage.total + 5)  # more than is free: nothing fits now
    r = Role("central", tmp_path, name="central-a", uploads=["upload"], free_percent=reserve)
    r.start()
    assert r.agent.offer_room() == 2 * r.cfg.max_transfers
    entry_id = "1" * 32
    r.deliver(Offer(entry_id, "upload", name="data.bin", kind="file", size=4, files=1, epoch=1))
    r.tick()
    assert r.entry(entry_id).state == Mid.WAITING
    assert [m.reason for _, m in r.sent() if isinstance(m, Wait)] != []
    assert r.agent.offer_room() == 0  # the offers go to the other centrals meanwhile
    r.deliver(Forget(entry_id, "upload", reason="re-owned by upload at epoch 2: offered elsewhere", epoch=2))
    r.tick()
    assert r.entry(entry_id).state == Mid.FORGOTTEN
    assert r.agent.offer_room() == 2 * r.cfg.max_transfers  # nothing waits for room now


def test_a_central_that_read_the_reown_forget_first_takes_the_offer_of_that_epoch_afresh(tmp_path: Path):
    # Upload re-owns (its holder was gone, or held it waiting too long) with a `forget` and an offer
    # of the same epoch; the old holder may read the forget first, and be the only central with room.
    r = Role("central", tmp_path, name="central-a", uploads=["upload"])
    r.start()
    entry_id = "2" * 32
    offer = Offer(entry_id, "upload", name="data.bin", kind="file", size=4, files=1, epoch=1)
    r.deliver(offer)
    r.tick()
    r.deliver(Forget(entry_id, "upload", reason="re-owned by upload at epoch 2: central-a was gone", epoch=2))
    assert r.entry(entry_id).state == Mid.FORGOTTEN
    r.deliver(dataclasses.replace(offer, epoch=2))
    assert (r.entry(entry_id).state, r.state.epoch(entry_id)) == (Mid.WAITING, 2)  # not lost as a duplicate
    r.deliver(dataclasses.replace(offer, epoch=2))  # a copy of it: nothing more
    r.deliver(offer)  # the old epoch's: nothing
    assert r.entry(entry_id).state in (Mid.WAITING, Mid.UPLOADING) and r.state.epoch(entry_id) == 2


def test_an_offer_again_of_an_entry_an_operator_forgot_at_central_is_a_duplicate(tmp_path: Path):
    r = Role("central", tmp_path, name="central-a", uploads=["upload"])
    r.start()
    e = r.given("forgotten", peer="upload", reason="forgotten by an operator")
    with r.state.transaction():
        r.state.put_epoch(e.id, 1)
    r.deliver(Offer(e.id, "upload", name="data.bin", kind="file", size=4, files=1, epoch=1))
    assert r.entry(e.id).state == Mid.FORGOTTEN
