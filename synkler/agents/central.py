"""The central role: admit offers, verify what upload pushed, hand it to download, expire it.

Central never opens an ssh connection: upload pushes into its spool (synkler.agents.spool) and
download pulls from it. This module holds the role's states, their transitions and what upload's
messages do; the rest of the role is a chain of parts, each a class the next one inherits:
synkler.agents.central_hello (the answer to a standby's `hello`), central_pool (a pool of
centrals), central_admit (admission, the pushes followed and what arrives of them), central_verify
(the md5 checks), central_delivery (the destinations' answers and the expiry of copies) and
central_requests (an operator's requests). Big files are hashed while they arrive
(synkler.agents.followers); the md5 checks and the looks at what arrives run on workers
(synkler.agents.staged). What is admitted when, and for how long, is decided in
synkler.agents.admission.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

from .. import destinations as dests
from ..errors import MessageError
from ..messages import (
    ADMITTED,
    ARRIVED,
    GIVEN_UP,
    RELAYED,
    UNADMITTED,
    Corrupt,
    Failed,
    Fetched,
    Forget,
    Hello,
    Offer,
    Sent,
    Withdraw,
)
from ..metadata import canonical, requirement_problems
from ..state import Entry, State
from . import fanout
from .admission import ABOVE_RESERVE, ROOM_WAIT
from .base import ENTRY, GIVE_UP_ADVICE, Jobs, Key, Transitions, hash_groups
from .central_admit import ARRIVALS
from .central_requests import Operating
from .central_states import IN_FLIGHT, Mid
from .facts import ADMISSION_AT_CENTRAL, METADATA_AT_CENTRAL, PULL, PUSH, facts, hop

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

ADMIT_RECHECK = 1.0  # seconds: waiting entries are looked at again this often (free space changes)
SWEEP_INTERVAL = 60.0  # seconds between looks for stale partial files


# An operator may forget an entry not delivered yet (at any role: the forget is passed on); a failed
# entry is delivered after all if download, retried there, gets the verified copy central kept.
FORGETTABLE = frozenset({Mid.WAITING, Mid.UPLOADING, Mid.VERIFYING, Mid.DOWNLOADING, Mid.FAILED})
TRANSITIONS: Transitions = {
    Mid.WAITING: frozenset({Mid.UPLOADING, Mid.WITHDRAWN, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.UPLOADING: frozenset({Mid.VERIFYING, Mid.WAITING, Mid.WITHDRAWN, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.VERIFYING: frozenset({Mid.DOWNLOADING, Mid.UPLOADING, Mid.WITHDRAWN, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.DOWNLOADING: frozenset({Mid.DELIVERED, Mid.WAITING, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.DELIVERED: frozenset({Mid.EXPIRED}),
    Mid.EXPIRED: frozenset(),
    Mid.WITHDRAWN: frozenset(),
    # failed -> downloading: an operator's retry at the destinations where it failed
    Mid.FAILED: frozenset({Mid.DOWNLOADING, Mid.DELIVERED, Mid.FORGOTTEN}),
    # forgotten -> waiting: in a pool, an entry re-owned from this central and offered to it again
    Mid.FORGOTTEN: frozenset({Mid.WAITING}),
}
KEEP_STORED = (Mid.VERIFYING, Mid.DOWNLOADING, Mid.DELIVERED, Mid.FAILED)  # their stored/ copies stay
# The states an entry ends in at this role (pruned from the history keep_history_days later).
FINISHED = (Mid.EXPIRED, Mid.WITHDRAWN, Mid.FORGOTTEN)
# What observers know of these states (synkler.agents.facts). Delivered is finished for the relay:
# only its expiry is left (the history keeps it until then: Central.FINISHED).
FACTS = facts(
    "central",
    Mid,
    finished=(Mid.DELIVERED, *FINISHED),
    failed=Mid.FAILED,
    receiving=Mid.UPLOADING,
    hashing=[Mid.VERIFYING],
    transferring=[],
    given_up=(Mid.FAILED, Mid.FORGOTTEN, Mid.WITHDRAWN, Mid.EXPIRED),
    disk_waits=(ROOM_WAIT, ABOVE_RESERVE),
    hops=(
        # admitted -> md5 verified
        hop(PUSH, [Mid.UPLOADING], [Mid.DOWNLOADING], during=[Mid.UPLOADING, Mid.VERIFYING]),
        # verified -> download confirmed it (also after it failed here, when download retried it)
        hop(PULL, [Mid.DOWNLOADING], [Mid.DELIVERED], during=[Mid.DOWNLOADING, Mid.FAILED]),
    ),
)


class Central(Operating):
    mode = "central"
    TAKING, WAITING = IN_FLIGHT, Mid.WAITING
    SETTLED = (Mid.DELIVERED, Mid.EXPIRED)
    STATES = Mid
    NEW = (Mid.WAITING,)
    TRANSITIONS = TRANSITIONS
    FORGOTTEN = Mid.FORGOTTEN
    FORGETTABLE = FORGETTABLE
    FINISHED = FINISHED
    # What a standby upload agent that says `hello` is told of its entries (`open`), by state.
    HELD = {
        Mid.WAITING: UNADMITTED,
        Mid.UPLOADING: ADMITTED,
        Mid.VERIFYING: ARRIVED,
        Mid.DOWNLOADING: ARRIVED,
        Mid.DELIVERED: RELAYED,
        Mid.EXPIRED: RELAYED,
        Mid.FAILED: GIVEN_UP,
    }
    UPLOADING, STORED = Mid.UPLOADING, (Mid.DOWNLOADING, Mid.FAILED)

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        self.handlers = {
            Offer: self.on_offer,
            Sent: self.on_sent,
            Fetched: self.on_fetched,
            Corrupt: self.on_corrupt,
            Withdraw: self.on_withdraw,
            Failed: self.on_failed,
            Forget: self.on_forget,
            Hello: self.on_hello,
        }
        self.next_sweep = 0.0
        self.next_admit_check = 0.0

    def startup(self) -> None:
        unpinned = [d for d in self.cfg.destinations if d not in self.download_keys]
        if unpinned and self.download_keys:
            log.warning(
                "download_public_key pins no key for %s: deliveries there are not proven", ", ".join(unpinned)
            )
        if not self.download_keys:
            log.warning(
                "download_public_key is not set: deliveries are not proven (a `fetched` is believed "
                "without download's signed receipt); see docs/security.md, 'Delivery receipts'"
            )
        self._reconcile()

    def _reconcile(self) -> None:
        in_flight = {(e.peer or "", e.name) for e in self.state.by_state(*IN_FLIGHT)}

        def keep_stored(entry_id: str) -> str | None:
            entry = self.state.get(entry_id)
            if entry is None:
                return "unknown entry"
            return None if entry.state in KEEP_STORED else entry.state

        self.spool.reconcile(in_flight, keep_stored)
        for entry in self.state.by_state(Mid.UPLOADING, due_before=0):  # admitted by an older version
            self.state.update(entry, due=time.time() + self.lease)
        self._follow_more()  # pushes cut short by the stop start again

    def shutdown(self) -> None:
        self.followers.stop_all()

    # messages ------------------------------------------------------------------------------------

    def on_offer(self, msg: Offer) -> None:
        if msg.sender in (self.cfg.central_name, self.cfg.download_name, *self.cfg.destinations):
            raise MessageError(f"offer from {msg.sender!r}: only upload agents offer")
        known = self.state.get(msg.entry)
        if self.pool_offer(msg, known):
            return
        if known is not None:
            if known.peer != msg.sender:
                raise MessageError(
                    f"offer of entry {msg.entry} from {msg.sender!r}: {known.peer!r} offered it"
                )
            return  # a duplicate offer: already handled
        refused = self.offers.refusal(msg.sender) or fanout.unknown(self.cfg, msg.to)
        if refused is not None:  # not recorded: a flood of offers costs no rows
            self.state.after_commit(functools.partial(self.observer.refused_offer, msg.sender))
            self.send(msg.sender, Failed(msg.entry, self.name, hop=ADMISSION_AT_CENTRAL, reason=refused))
            return
        entry = self.create(self.entry_from(msg, Mid.WAITING))
        self.took(entry, msg)
        self.state.put_metadata(entry.id, canonical(msg.meta) if msg.meta else None)
        lacks = requirement_problems(msg.meta, self.cfg.require_metadata)
        if lacks:
            self._refuse_metadata(entry, lacks)
            return
        if msg.to:
            dests.route(self.state, entry.id, msg.to)  # an operator's resend: in place of the routes'
        self.admit_due = True
        log.debug("%s: offered by %s (%d bytes)", entry.name, entry.peer, entry.size)
        # admitted (or told to wait) by the tick that follows, in offer order

    def _refuse_metadata(self, entry: Entry, lacks: list[str]) -> None:
        """An entry without the metadata central requires (require_metadata) is refused at once: it
        stays at upload, failed with the reason, until its metadata is added (upload then offers it
        again as a new entry and forgets this one)."""
        why = f"lacks the metadata central requires: {'; '.join(lacks)}"[:1900]
        self.move(entry, Mid.FAILED, reason=f"{METADATA_AT_CENTRAL}: {why}")
        self.send(entry.peer or "", Failed(entry.id, self.name, hop=METADATA_AT_CENTRAL, reason=why))
        log.error("%s: refused: %s. %s", entry.name, why, GIVE_UP_ADVICE[METADATA_AT_CENTRAL])

    def on_sent(self, msg: Sent) -> None:
        entry = self.entry_for(msg)
        if entry.state == Mid.UPLOADING and msg.attempt == entry.attempt:
            self.move(entry, Mid.VERIFYING, md5=msg.md5, due=0)
            self.state.put_checksum(entry.id, msg.checksum)
            self.verify_due = True

    def on_withdraw(self, msg: Withdraw) -> None:
        entry = self.entry_for(msg)
        if entry.state in IN_FLIGHT:
            self.move(entry, Mid.WITHDRAWN, reason=msg.reason)
            self._unfollow(entry.id)
            self.spool.drop_staged(entry)
            self.admit_due = True  # its name and its room are free for the newer version
            log.info("%s: withdrawn by %s: %s", entry.name, msg.sender, msg.reason)

    def on_failed(self, msg: Failed) -> None:
        known = self.state.get(msg.entry)
        rows = dests.of(self.state, msg.entry, self.cfg.download_name)
        entry = self.entry_for(msg, (known.peer if known else None) or "", *rows)
        if msg.sender != entry.peer:
            self._failed_at(*self._at_destination(msg), msg)
            return
        if entry.state in (Mid.DELIVERED, Mid.EXPIRED, Mid.FAILED, Mid.WITHDRAWN, Mid.FORGOTTEN):
            return  # ended already (or failed: told once)
        # Upload has a say while it sends the entry.
        if entry.state not in IN_FLIGHT:
            raise MessageError(
                f"failed for entry {entry.id} from {msg.sender!r} while it is {entry.state} at central: "
                f"{msg.sender!r} has no say over it now"
            )
        reason = f"{msg.hop}: {msg.reason}"
        self.move(entry, Mid.FAILED, reason=reason)
        self._unfollow(entry.id)
        log.error("%s: %s reports failure: %s", entry.name, msg.sender, reason)

    # jobs ----------------------------------------------------------------------------------------

    def look_again(self) -> None:
        self.admit_due = self.verify_due = True

    def tick(self, now: float) -> None:
        # The loop ticks after every message batch and finished job: look at the (possibly
        # thousands of) waiting and verifying entries only when something may have changed.
        if self.admit_due or now >= self.next_admit_check:
            self.admit_due, self.next_admit_check = False, now + ADMIT_RECHECK
            self._admit_waiting(now)
        if now >= self.next_sweep:
            self.next_sweep = now + SWEEP_INTERVAL
            self.spool.sweep(now, {(e.peer or "", e.name) for e in self.state.by_state(*IN_FLIGHT)})
            self._follow_more()
        if self.verify_due:
            self.verify_due = False
            ready = (
                self.entry(entry_id)
                for entry_id, _ in self.state.ids_by_state(Mid.VERIFYING)
                if not self.jobs.busy(Key(ENTRY, entry_id))
            )
            for group in hash_groups(ready):
                self._verify(group)
        for entry in self.state.by_state(Mid.DELIVERED, due_before=now):
            if not self.jobs.busy(Key(ENTRY, entry.id)):
                self._expire(entry)
        if now >= self.next_arrival_look and not self.jobs.busy(ARRIVALS):
            self._look_at_arrivals(now)
        self.prune_history(now)
