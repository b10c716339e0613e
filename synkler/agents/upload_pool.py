"""Upload's part in a pool of centrals (`centrals` in its config): offers go to its offers queue,
the central that takes one owns the entry for its epoch, and the entries of a central that is gone
are re-owned (synkler.agents.ownership; docs/architecture.md, "Who owns an entry").

Upload is the owner of record: it believes a central's message about an entry only from the
entry's owner at its current epoch, pushes only to that central, and re-offers an entry (epoch+1)
once its owner's queue has had no consumer for `reown_seconds`, telling the old owner to `forget`
it (with the new epoch: the old owner drops its copy and passes nothing on). An entry a central
holds waiting for room for `reoffer_minutes` is re-offered the same way while another central
reports room for it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from .. import destinations as dests
from ..errors import MessageError
from ..messages import Admit, Delivered, Forget, Hello, Message, Offer, Wait, offers_key
from ..metadata import loads
from ..state import Entry, State
from .base import Jobs, Status
from .greeting import Greeting
from .ownership import Reowner, reoffers, stale

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")


class PoolUpload(Greeting):
    """The pool's rules at upload; the states it re-owns from are `OWNED` (set by Upload)."""

    ROLE = "upload"
    OWNED: tuple[Status, ...] = ()  # admitted by a central, not yet delivered: re-owned when it is gone
    OFFERED: Status
    WAITING: Status  # a central took the offer and holds the entry until it has room
    download_keys: dict  # destination -> its pinned public key (set by Upload)
    offers_empty_since: float | None = None  # when upload last found its offers queue empty (a pool)

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        self.reowner = Reowner(cfg.reown_seconds)

    def owner(self, entry: Entry) -> str | None:
        """The central messages about the entry go to: its owner; without a pool, central_name. None:
        in a pool, an entry no central has taken yet (its offer waits in the offers queue)."""
        return entry.peer or (None if self.cfg.centrals else self.cfg.central_name)

    def send_to_owner(self, entry: Entry, msg: Message) -> None:
        owner = self.owner(entry)
        if owner is not None:
            self.send(owner, msg)

    def send_offer(self, entry: Entry, offer: Offer) -> None:
        """To central, or in a pool to this agent's offers queue, at the entry's epoch (1 at first)."""
        if not self.cfg.centrals:
            self.send(self.cfg.central_name, offer)
            return
        epoch = self.state.epoch(entry.id) + 1
        self.state.put_epoch(entry.id, epoch)
        self.send(offers_key(self.name), dataclasses.replace(offer, epoch=epoch))

    def fenced(self, msg: Message) -> str | None:
        """A central's message of an ownership that has ended, or from a central not in `centrals`."""
        entry = self.state.get(msg.entry)
        if entry is None:
            return None  # the handler says what is wrong (or that it was pruned)
        if msg.sender not in self.cfg.centrals:
            return f"{msg.sender} is not a central of this upload agent's pool (`centrals`)"
        why = stale(getattr(msg, "epoch", None), self.state.epoch(entry.id), msg.sender, entry.peer)
        if why is not None and self.late_proof(msg):
            return None  # the proof is the receipt, not the central: on_delivered checks it as any other
        if why is not None:
            self.answer_stale(entry, msg)
        return why

    def late_proof(self, msg: Message) -> bool:
        """A `delivered` of an ownership that has ended (a central re-owned from, come back) that upload
        believes all the same: it carries a receipt, and the destination's key is pinned to check it.
        Without a pinned key (central's word only), an old epoch's `delivered` is ignored."""
        if not isinstance(msg, Delivered) or msg.epoch is None or not msg.receipt:
            return False
        if msg.epoch >= self.state.epoch(msg.entry):
            return False
        return (msg.destination or self.cfg.download_name) in self.download_keys

    def release(self, entry: Entry, central: str, why: str) -> None:
        """Tell a central to drop an entry that was delivered meanwhile through another (a signed
        receipt of an older epoch): a `forget` of the next epoch, as when re-owning, ends its needless
        transfer; the central drops its copy and passes nothing on."""
        epoch = self.state.epoch(entry.id) + 1
        self.state.put_epoch(entry.id, epoch)
        self.send(central, Forget(entry.id, self.name, reason=why, epoch=epoch))
        log.info("%s: %s; told %s to drop its copy", entry.name, why, central)

    def take_admit(self, msg: Admit) -> None:
        """The first admission of an entry not owned yet: the central that sent it owns it now."""
        entry = self.state.get(msg.entry)
        if self.cfg.centrals and entry is not None and entry.peer is None:
            self.on_central(msg, "dest", "staging", self.name)  # before it counts as the owner
            self.state.update(entry, peer=msg.sender)
            log.info("%s: taken by central %s (epoch %d)", entry.name, msg.sender, msg.epoch or 0)

    def take_wait(self, entry: Entry, central: str) -> None:
        """The first `wait` of an entry not owned yet (its epoch checked: `fenced`): the central
        that sent it took the offer and holds it, so it is the one upload hears from, and the one a
        re-own or a re-offer tells."""
        if self.cfg.centrals and entry.peer is None:
            self.state.update(entry, peer=central)
            log.info("%s: taken by central %s, which holds it until it has room", entry.name, central)

    def link_cfg(self, entry: Entry) -> Config:
        """The configuration a transfer to the entry's owner runs with (its ssh destination)."""
        if not self.cfg.centrals or entry.peer is None:
            return self.cfg
        return dataclasses.replace(self.cfg, central_host=self.cfg.central_host_of(entry.peer))

    def reown_gone(self, now: float) -> None:
        """Offer again (next epoch) the entries of centrals gone for `reown_seconds`."""
        if not self.cfg.centrals or not self.reowner.due(now):
            return
        owned = [e for e in self.state.by_state(*self.OWNED) if e.peer]
        gone = self.reowner.gone({e.peer or "" for e in owned}, self.jobs.consumers, now)
        for entry in owned:
            if entry.peer in gone:
                self.reown(entry)
        self.reoffer_waiting(now)
        self.reoffer_unanswered(now)

    def reoffer_waiting(self, now: float) -> None:
        """Offer again (next epoch) the entries held waiting for room `reoffer_minutes` or longer
        by a central, while another central reports room for them (its presence report)."""
        minutes = self.cfg.reoffer_minutes
        if not minutes or not self.state.counts().get(str(self.WAITING)):
            return
        rooms = {c: self.jobs.room(c) for c in self.cfg.centrals}
        if not any(r and r[0] > 0 for r in rooms.values()):
            return  # nowhere else to go: the waiting entries are not even read
        ripe = [e for e in self.state.by_state(self.WAITING) if e.peer and now - e.updated >= minutes * 60]
        chosen = dict(reoffers([(e.id, e.size, e.peer or "") for e in ripe], rooms))
        for entry in ripe:
            if entry.id in chosen:
                waited = f"held waiting for room by {entry.peer} for {(now - entry.updated) / 60:.0f} min"
                self.reown(entry, f"{waited}, while {chosen[entry.id]} reports room")

    def on_hello(self, msg: Hello) -> None:
        """A central of the pool took over from another of its name with a state of its own (its
        standby): what upload held at that central is lost there, so each entry is re-owned (next
        epoch, offered again) as when a central is gone; one delivered meanwhile is proven by its
        late receipt, and the first central, if it comes back, holds only old epochs."""
        if msg.role != "central" or msg.sender not in self.cfg.centrals:
            raise MessageError(
                f"hello from {msg.sender!r} as {msg.role}: upload takes a hello only from a central of "
                "its pool (`centrals`) that took over"
            )
        held = [e for e in self.state.by_state(*self.OWNED) if e.peer == msg.sender]
        for entry in held:
            self.reown(entry, f"{msg.sender} took over with a state of its own")
        log.warning(
            "central %s took over with a state of its own: %d entries it held offered again",
            msg.sender,
            len(held),
        )

    def reown(self, entry: Entry, why: str | None = None) -> None:
        """Offer the entry again at the next epoch, and tell its old owner to drop it; `why`: what
        made upload take it back (default: its owner was gone)."""
        old, old_epoch = entry.peer or "", self.state.epoch(entry.id)
        reason = f"re-owned by upload at epoch {old_epoch + 1}: {why or f'{old} was gone'}"
        entry = self.move(entry, self.OFFERED, peer=None, attempt=0, tries=0, due=0, path=None, reason=None)
        self.offer_again(entry)
        # Waits in the old owner's queue: if it comes back, it drops its copy before it touches it.
        self.send(old, Forget(entry.id, self.name, reason=reason, epoch=old_epoch + 1))
        log.warning("%s: %s; offered again", entry.name, reason)

    def offer_again(self, entry: Entry) -> None:
        """Offer the entry again, at the next epoch. Routes frozen at its first admission stay the
        entry's: the next owner sends it to the destinations that have not proved a copy yet,
        whatever its own routes say now."""
        found = dests.rows(self.state, entry.id)
        offer = Offer(
            entry.id,
            self.name,
            name=entry.name,
            kind=entry.kind,
            size=entry.size,
            files=entry.files,
            meta=loads(self.state.metadata(entry.id)) or None,
            to=tuple(dests.waiting_for(found)) if found else (),
        )
        self.send_offer(entry, offer)

    def reoffer_unanswered(self, now: float) -> None:
        """Offer again (next epoch) what a central took from the offers queue and never answered:
        it died for good between taking the offer (its ack, after its commit) and publishing its
        `admit` or `wait`. Such an entry is neither in the queue nor owned by anyone upload knows.
        A live central answers an offer it took within seconds (a `wait` for its turn within 10 s),
        so once the offers queue has been empty for `reown_seconds` and the entry was offered at
        least that long ago, nobody holds it. (If one does after all, its answer is of the old
        epoch: `answer_stale` tells it to drop its copy.)"""
        if self.greeting is not None:
            return
        ready = self.jobs.offers_ready(self.name)
        if ready != 0:  # None: not known now; more: offers still wait there for a central with room
            self.offers_empty_since = None
            return
        if self.offers_empty_since is None:
            self.offers_empty_since = now
        since = now - self.cfg.reown_seconds
        if self.offers_empty_since > since:
            return
        for entry in self.state.by_state(self.OFFERED):
            if entry.peer is None and entry.updated <= since:
                self.offers_empty_since = now  # offered again now: the queue holds it until taken
                epoch = self.state.epoch(entry.id)
                self.state.update(entry)  # offered again now: its wait starts again
                self.offer_again(entry)
                log.warning(
                    "%s: its offer of epoch %d was taken from the offers queue, but no central answered "
                    "for %d s (one that died as it took it); offered again at epoch %d",
                    entry.name,
                    epoch,
                    now - self.offers_empty_since,
                    epoch + 1,
                )

    def answer_stale(self, entry: Entry, msg: Message) -> None:
        """A central's `admit` or `wait` of an epoch the entry has left, from a central that does not
        own it: it holds the entry at that old epoch (it took an offer it answered too late, or came
        back). Tell it to drop its copy (a `forget` of the current epoch ends nothing newer)."""
        epoch = self.state.epoch(entry.id)
        msg_epoch = getattr(msg, "epoch", None)
        if not isinstance(msg, (Admit, Wait)) or msg_epoch is None or msg_epoch >= epoch:
            return
        if msg.sender == entry.peer or entry.state in self.FINISHED:
            return
        why = f"offered again at epoch {epoch}: the answer of epoch {msg_epoch} came too late"
        self.send(msg.sender, Forget(entry.id, self.name, reason=why, epoch=epoch))
