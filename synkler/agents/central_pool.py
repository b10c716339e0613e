"""Central's part in a pool of centrals (`uploads` in its config: the upload agents whose offers
queues it takes offers from; docs/architecture.md, "Who owns an entry").

A central takes offers while it has room (`offer_room`: the runtime cancels its consumers of the
offers queues at 0), owns each entry it takes for the offer's epoch, stamps that epoch on every
message about it (synkler.agents.agent.Agent.send), and ignores a message of another epoch. A
`forget` from upload with a newer epoch means upload re-owned the entry (this central was gone):
its copies go, and nothing is passed on (download answers the new owner).

A central's standby that takes over (same name, a state of its own) says `hello` to its upload
agents, which re-own every entry they held at the first one (synkler.agents.upload_pool); the
messages about those entries that reach it meanwhile are ignored, not dead-lettered.
"""

from __future__ import annotations

import logging
import time

from .. import destinations as dests
from ..errors import MessageError, NotYet, Refused
from ..messages import Delivered, Forget, Hello, Message, Offer, new_entry_id
from ..state import Entry, Request
from .base import Status
from .central_hello import Answering
from .ownership import stale

log = logging.getLogger("synkler")

DRAIN, UNDRAIN = "drain", "undrain"  # an operator's requests (`synkler drain [--undo]`)
DRAINING = "draining"  # the flag in the state: since when (a timestamp)
TOOK_OVER = "took-over"  # the flag in the state: this central took over from a standby, when

# Entries a central of a pool holds before it has been pushed their data (waiting, being pushed,
# being verified): it takes no more offers while it holds twice max_transfers of them.
ROOM_FACTOR = 2


class PoolCentral(Answering):
    """The pool's rules at central; `TAKING` (set by Central): the states an entry counts against
    the offers it takes."""

    TAKING: tuple[Status, ...] = ()
    WAITING: Status  # where an offer taken starts
    SETTLED: tuple[Status, ...] = ()  # delivered to every destination (its copy kept, or expired since)

    _draining: bool | None = None  # the flag, as read from the state (None: not read yet)
    # An entry waits for room above the reserve (the last admission pass): no room for more offers,
    # which go to the other centrals meanwhile; upload offers the waiting ones elsewhere after
    # `reoffer_minutes` (synkler.agents.upload_pool).
    short_of_space = False

    @property
    def draining(self) -> bool:
        """`synkler drain`: this central takes no new offers and finishes what it holds."""
        if self._draining is None:
            self._draining = self.state.flag(DRAINING) is not None
        return self._draining

    def on_request(self, request: Request) -> str:
        if request.action not in (DRAIN, UNDRAIN):
            return super().on_request(request)
        if not self.cfg.uploads:
            raise Refused(
                f"{self.name} is not a central of a pool (no `uploads`): it takes offers in its own queue"
            )
        held = len(self.state.ids_by_state(*self.TAKING))
        if request.action == UNDRAIN:
            self.state.put_flag(DRAINING, None)
            self.state.after_commit(self._read_again)
            return f"{self.name} takes offers again"
        if not self.draining:
            self.state.put_flag(DRAINING, repr(request.created))
            self.state.after_commit(self._read_again)
        return (
            f"{self.name} is draining: it takes no new offers and finishes the {held} entries it holds "
            "on their way (`synkler drain --undo` ends it)"
        )

    def _read_again(self) -> None:
        self._draining = None

    def offer_room(self) -> int:
        if not self.cfg.uploads or self.draining or self.short_of_space:
            return 0
        held = len(self.state.ids_by_state(*self.TAKING))
        return max(0, ROOM_FACTOR * self.cfg.max_transfers - held)

    def pool_offer(self, msg: Offer, known: Entry | None) -> bool:
        """Check an offer in a pool: True if it was handled here (nothing more to do)."""
        if not self.cfg.uploads:
            return False
        if msg.sender not in self.cfg.uploads:
            raise MessageError(f"offer from {msg.sender!r}, not one of the upload agents of `uploads`")
        if msg.epoch is None:
            raise MessageError(f"offer from {msg.sender!r} without an epoch: not from a pool's upload agent")
        if known is None:
            return False
        held = self.state.epoch(known.id)
        if msg.epoch <= held:
            return True  # a duplicate
        if known.state == self.FORGOTTEN and known.peer == msg.sender:
            # Re-owned from this central (its copy is gone) and offered to it again: taken afresh.
            self.move(known, self.WAITING, attempt=0, tries=0, due=0, path=None, reason=None)
            self.state.put_epoch(known.id, msg.epoch)
            self.look_again()
            log.info("%s: taken again at epoch %d", known.name, msg.epoch)
            return True
        if known.state in self.SETTLED and known.peer == msg.sender:
            self.delivered_again(known, msg.epoch)
            return True
        # Re-owned from this central while it was gone, and offered again before upload's `forget`
        # of the old epoch was read here: until it is, another central may take it.
        raise NotYet(f"offer of entry {known.id} at epoch {msg.epoch}: this central held it at {held}")

    def delivered_again(self, entry: Entry, offered_at: int) -> None:
        """An entry this central delivered (at the epoch it held: upload had re-owned it meanwhile), offered
        to it again: it tells upload `delivered` again with the receipts it kept, at that epoch (upload
        believes it on a good signed receipt), and drops the offer rather than requeue it for ever."""
        tokens = self.state.receipts(entry.id)
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        for dest, row in rows.items():
            if row.state != dests.FETCHED and row.updated:  # no row at all: an older synkler's, delivered
                continue
            self.send(
                entry.peer or "",
                Delivered(
                    entry.id,
                    self.name,
                    stored_as=row.stored_as or entry.stored_as or entry.name,
                    receipt=tokens.get(dest, ""),
                    destination=dest if self.cfg.routes else "",
                ),
            )
        log.warning(
            "%s: offered again at epoch %d, but this central delivered it (epoch %d): offer dropped, "
            "delivered sent again with the receipts it kept%s",
            entry.name,
            offered_at,
            self.state.epoch(entry.id),
            ""
            if tokens
            else " (none: upload, with no download_public_key, cannot believe it; see "
            "docs/architecture.md, 'Limits of this version')",
        )

    def took_over(self) -> None:
        """This central was a standby and took over with a state of its own: in a pool, it says
        `hello` to its upload agents, which re-own (next epoch, offered again) what they held at the
        first central; without a pool (no epochs to fence the first central with), they do not."""
        if not self.cfg.uploads:
            log.warning(
                "central agent %r took over with a state of its own: the entries the first one held stop "
                "where they were (only a pool of centrals, `uploads`, offers them again: docs/protocol.md)",
                self.name,
            )
            return
        self.state.put_flag(TOOK_OVER, repr(time.time()))
        token = new_entry_id()
        for upload in self.cfg.uploads:
            self.send(upload, Hello(token, self.name, role="central"))
        log.warning(
            "central agent %r took over with a state of its own: asking %s to offer again the entries "
            "the first one held",
            self.name,
            ", ".join(self.cfg.uploads),
        )

    def took(self, entry: Entry, msg: Offer) -> None:
        if msg.epoch is not None:
            self.state.put_epoch(entry.id, msg.epoch)

    def fenced(self, msg: Message) -> str | None:
        epoch = getattr(msg, "epoch", None)
        if isinstance(msg, (Offer, Hello)):
            return None
        entry = self.state.get(msg.entry)
        if entry is None:
            return self._first_ones()
        if epoch is None:
            return None
        held = self.state.epoch(entry.id)
        if isinstance(msg, Forget) and msg.sender == entry.peer and epoch > held:
            return None  # upload re-owned it: on_forget drops it
        return stale(epoch, held, msg.sender, None)

    def _first_ones(self) -> str | None:
        """After a takeover: a message about an entry this central never had is about one the first
        central of its name held (or an upload's re-own of one): upload offers it again, so it is
        ignored rather than dead-lettered. None: no takeover, the handler says what is wrong."""
        if self.state.flag(TOOK_OVER) is None:
            return None
        return (
            "an entry this central never had: the first central of its name held it (upload offers it again)"
        )

    def on_forget(self, msg: Forget) -> None:
        entry = self.state.get(msg.entry)
        if entry is None or msg.epoch is None or msg.sender != entry.peer:
            super().on_forget(msg)  # an operator's forget (it carries no epoch), or none of ours
            return
        held = self.state.epoch(entry.id)
        if msg.epoch <= held:
            # A pool's forget (upload's re-own or release) of an ownership older than the one this
            # central holds now (it took the entry again since, at that epoch): it ends nothing.
            log.debug(
                "%s: forget of epoch %d while this central holds epoch %d: nothing to do",
                entry.name,
                msg.epoch,
                held,
            )
            return
        # Re-owned by upload: drop what this central holds of it, and pass nothing on. The epoch it
        # held stays recorded: the offer of the new epoch (upload sends it with this forget) is
        # then newer, and taken afresh, or answered with the receipts of a delivery (pool_offer).
        if self.STATES(entry.state) in self.FORGETTABLE:
            self.drop(entry)
            self.move(entry, self.FORGOTTEN, reason=msg.reason)
        log.warning("%s: %s; this central's copy is dropped", entry.name, msg.reason)
