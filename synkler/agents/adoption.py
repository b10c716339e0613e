"""Upload's standby adopts the first agent's entries (synkler.agents.greeting; docs/protocol.md,
"A standby that takes over").

While it greets the centrals, upload offers nothing (it does not scan `file_dir`): what it finds
there may be an entry on its way under the first agent's id. Each central describes the entries
of this upload agent it holds (`open`); the standby records each under the same id, in the state
that lets the usual rules go on (`adoption`, a pure decision), and hashes those not pushed yet,
so that the push under way resumes. Once every central has answered, it scans: a name adopted
with the same content is not offered again; one that changed is offered as a new version, as
the first agent would have.

Messages about entries it does not know yet (the first agent's, sent before the answer) are not
dead-lettered: central announces those entries again. A `delivered` among them is kept
(*parked*) until its entry is adopted and then taken: it was still queued, so the first agent
never took it, and the cleanup script runs once, here. An entry central had delivered before
that (the first agent took the `delivered`, and may or may not have run its cleanup script) is
adopted as done, its cleanup script not run again: at most once.
"""

from __future__ import annotations

import json
import logging
import os
from typing import NamedTuple

from .. import destinations as dests
from .. import messages
from ..errors import MessageError
from ..messages import (
    ADMITTED,
    ARRIVED,
    GIVEN_UP,
    RELAYED,
    UNADMITTED,
    Admit,
    Delivered,
    Failed,
    Forget,
    Message,
    Open,
    Wait,
    Withdraw,
)
from ..metadata import canonical
from ..state import Entry
from .base import Cleanup, Status
from .upload_pool import PoolUpload

log = logging.getLogger("synkler")

PARKED = "parked:"  # flags parked:<entry id>: the `delivered` messages of an entry not adopted yet
UNKNOWN = (Admit, Wait, Delivered, Failed, Forget)  # messages about an entry central announces again
NOT_KNOWN = (
    "delivered before the first upload agent stopped: whether its cleanup script ran there is not "
    "known, so it is not run again (`synkler retry` runs it)"
)


class Adopted(NamedTuple):
    """Where an entry central describes starts at the standby."""

    state: Status  # one of upload's states
    cleanup: str | None = None
    reason: str | None = None


class Adopting(PoolUpload):
    """Upload's side of a takeover: parking, adopting, and the late answer of a central."""

    next_scan: float  # when upload next looks at file_dir (set by Upload)
    WAITING: Status  # upload's states an adopted entry starts in (set by Upload)
    SENT: Status

    @classmethod
    def adoption(cls, held: str, *, parked: bool, script: bool, present: bool, reason: str = "") -> Adopted:
        """Where an entry central holds as `held` starts at the upload agent that took over (pure).
        `parked`: its `delivered` came to this agent (the first one never took it); `script`: a
        cleanup script is configured; `present`: its name is in file_dir."""
        if held == UNADMITTED:
            return Adopted(cls.WAITING, reason="waiting at central")
        if held == ADMITTED:
            return Adopted(cls.OFFERED)  # central's `admit`, sent again, follows: the push resumes
        if held == ARRIVED:
            return Adopted(cls.SENT)  # central holds the copy; its `delivered` comes here
        if held == GIVEN_UP:
            return Adopted(cls.FAILED, reason=reason or "failed at central")
        if parked:
            return Adopted(cls.SENT)  # its `delivered`, parked, is taken now: the cleanup script runs once
        if not script:
            return Adopted(cls.DONE)
        if not present:
            why = "delivered before the first upload agent stopped; the name is gone"
            return Adopted(cls.DONE, Cleanup.SKIPPED, why)
        return Adopted(cls.DONE, Cleanup.INTERRUPTED, NOT_KNOWN)

    def hash_adopted(self, entry: Entry) -> None:
        """md5 of an adopted entry not pushed yet (Upload: its hash job)."""
        raise NotImplementedError

    def on_message(self, msg: Message) -> None:
        if isinstance(msg, UNKNOWN) and self.state.get(msg.entry) is None and self.unknown(msg):
            return
        super().on_message(msg)

    def unknown(self, msg: Message) -> bool:
        """A message about an entry this agent does not know: True if handled here. While greeting,
        a `delivered` is parked and the rest dropped (central announces their entries again). After
        it, in a pool, an `admit` or `wait` of an offer the first agent left in the offers queue
        is answered with `withdraw` (this agent offers what it finds in file_dir itself)."""
        if self.greeting is not None:
            if isinstance(msg, Delivered):
                key = PARKED + msg.entry
                held = json.loads(self.state.flag(key) or "[]")
                self.state.put_flag(key, json.dumps([*held, messages.encode(msg).decode("ascii")]))
                log.info(
                    "delivered from %s about entry %s kept until central announces it", msg.sender, msg.entry
                )
            else:
                log.info(
                    "%s from %s about entry %s, not known yet: the first agent's (announced again)",
                    msg.TYPE,
                    msg.sender,
                    msg.entry,
                )
            return True
        if self.cfg.centrals and isinstance(msg, (Admit, Wait)) and msg.sender in self.cfg.centrals:
            why = "not known to the upload agent that took over (it offers what file_dir holds itself)"
            self.send(msg.sender, Withdraw(msg.entry, self.name, reason=why, epoch=msg.epoch))
            log.info("%s from %s about entry %s: %s; withdrawn", msg.TYPE, msg.sender, msg.entry, why)
            return True
        return False

    def on_open(self, msg: Open) -> None:
        self.from_central(msg)
        if not self.answering(msg.sender):
            raise MessageError(
                f"open from {msg.sender!r}: this agent has not asked it (no greeting under way)"
            )
        if self.state.get(msg.entry) is not None:
            return  # known already: a restart's second answer, or this agent's own entry
        if self.greeting is None and self.state.latest_by_name(msg.name) is not None:
            self._reown_late(msg)
            return
        parked = [
            messages.decode(raw.encode("ascii"))
            for raw in json.loads(self.state.flag(PARKED + msg.entry) or "[]")
        ]
        entry = self._adopt(msg, parked=bool(parked))
        self.state.put_flag(PARKED + msg.entry, None)
        for delivered in parked:
            try:
                with self.state.savepoint():
                    self.on_message(delivered)
            except MessageError as e:
                log.warning("%s: the delivered kept for it is not taken: %s", msg.name, e)
        now = self.entry(entry.id)
        if msg.held == RELAYED and now.state == self.SENT:  # another destination's was taken before
            self.move(now, self.DONE, cleanup=Cleanup.INTERRUPTED, reason=NOT_KNOWN)

    def _reown_late(self, msg: Open) -> None:
        """A late answer (a pool's central that was gone while this agent greeted): the name has a
        version of this agent's own since. The central drops its copy, as when re-owning."""
        epoch = (msg.epoch or 0) + 1
        why = f"re-owned by upload at epoch {epoch}: announced after the takeover, and offered anew since"
        self.send(msg.sender, Forget(msg.entry, self.name, reason=why, epoch=epoch if msg.epoch else None))
        log.warning("%s: entry %s of %s %s; told it to drop its copy", msg.name, msg.entry, msg.sender, why)

    def _adopt(self, msg: Open, *, parked: bool) -> Entry:
        """Record the entry central describes where `adoption` says it starts, and hash it if it
        has no md5 yet (`parked`: a `delivered` of it is kept, to be taken next)."""
        decided = self.adoption(
            msg.held,
            parked=parked,
            script=bool(self.cfg.cleanup_script),
            present=os.path.lexists(os.path.join(self.cfg.file_dir, msg.name)),
            reason=msg.reason,
        )
        entry = Entry(
            id=msg.entry,
            name=msg.name,
            kind=msg.kind,
            size=msg.size,
            files=msg.files,
            md5=msg.md5 or None,
            state=decided.state,
            peer=msg.sender,
            cleanup=decided.cleanup,
            reason=decided.reason,
        )
        entry = self.state.insert(entry)  # not `create`: it starts where central says it is
        self._tell_moved(None, entry)
        if msg.epoch is not None:
            self.state.put_epoch(entry.id, msg.epoch)
        if msg.to:
            dests.route(self.state, entry.id, msg.to)
        self.state.put_metadata(entry.id, canonical(msg.meta) if msg.meta else None)
        log.info(
            "%s: entry %s adopted from the first upload agent (%s at %s)",
            msg.name,
            msg.entry,
            msg.held,
            msg.sender,
        )
        if decided.cleanup == Cleanup.INTERRUPTED:
            log.warning("%s: %s", msg.name, NOT_KNOWN)
        if entry.md5 is None:
            self.hash_adopted(entry)
        return entry

    def greeted(self) -> None:
        """Every central has answered: a `delivered` still kept is of an entry no central holds any
        longer (pruned from its history): its cleanup script is not run (at most once)."""
        for key, value in self.state.flags_like(PARKED):
            self.state.put_flag(key, None)
            log.warning(
                "entry %s: %d delivered kept for it, but no central announced it (pruned from its "
                "history): its cleanup script is not run",
                key[len(PARKED) :],
                len(json.loads(value)),
            )
        self.next_scan = 0.0  # what file_dir holds, now that the first agent's entries are known
