"""Central admits what it has room for and watches what arrives of it (the rules are pure, in
synkler.agents.admission): waiting entries admitted oldest first or told why they wait, big files
hashed while they are pushed (synkler.agents.followers), what has arrived of admitted entries
measured (more bytes than offered fail an entry; a lease with nothing pushed lapses), and an entry
given up with upload told.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

from .. import destinations as dests
from ..hops.follow import pulled_early, worth_following
from ..messages import Admit, Failed, Pushing, Wait
from ..state import Entry, State
from ..text import count as counted
from . import admission, fanout
from .admission import ABOVE_RESERVE, MAX_ADMITTED_PER_AGENT, Offers, Room, admission_pass
from .base import ENTRY, GIVE_UP_ADVICE, REOFFER, Jobs, Key
from .central_pool import PoolCentral
from .central_states import IN_FLIGHT, Mid
from .facts import ADMISSION_AT_CENTRAL, UPLOAD_TO_CENTRAL
from .followers import Followers
from .pools import Pool
from .spool import Arrival, PlaceRefused, Spool
from .staged import measure_arrivals

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

ARRIVALS = Key("arrivals")  # the look at what has arrived of admitted entries


class Admitting(PoolCentral):
    """Admission at central, the pushes it follows and the arrivals it measures."""

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        self.spool = Spool(self.cfg)
        self.followers = Followers(self.cfg.max_transfers)
        self.admit_due = True
        self.overtaken: dict[str, int] = {}  # waiting entry id -> bytes admitted past it (see _admit_waiting)
        # waiting entry id -> when it was first seen waiting its turn, not told yet (None: told)
        self.in_line: dict[str, float | None] = {}
        self.offers = Offers(state, (*IN_FLIGHT, Mid.FAILED))
        self.lease = cfg.admission_lease_minutes * 60
        self.next_arrival_look = 0.0

    # hashing big files while they arrive ----------------------------------------------------------

    def _follow(self, entry: Entry) -> None:
        """Hash a big file (or a directory of them) while upload pushes it, if fewer than
        max_transfers are followed already."""
        self._unfollow(entry.id)
        if not worth_following(entry.kind, entry.size, entry.files):
            return
        link = (
            functools.partial(self.spool.link_growing, entry.id)
            if pulled_early(entry.kind, entry.size)
            else None
        )
        start = functools.partial(
            self.followers.start, entry.id, self.spool.staging(entry), entry.name, entry.kind, link
        )
        self.state.after_commit(start)

    def _follow_more(self) -> None:
        """Follow uploading big files that have no follower yet, while there are free followers
        (one that gave up waiting for its push frees its place)."""
        for entry_id in self.followers.ended():
            self._unfollow(entry_id)
        free = self.followers.free()
        if free <= 0:
            return
        for entry in self.state.by_state(Mid.UPLOADING):
            if (
                free > 0
                and worth_following(entry.kind, entry.size, entry.files)
                and entry.id not in self.followers
            ):
                self._follow(entry)
                free -= 1

    def _unfollow(self, entry_id: str) -> None:
        self.followers.stop(entry_id)
        self.spool.drop_growing(entry_id)

    # admission -----------------------------------------------------------------------------------

    def _admit_waiting(self, now: float | None = None) -> None:
        """Admit waiting entries, oldest first, while there is room (synkler.agents.admission); tell
        the others why they wait. What has passed a big entry is counted in memory: a restart of
        central lets as much pass again."""
        waiting = self.state.oldest_per_peer(Mid.WAITING, MAX_ADMITTED_PER_AGENT)
        self.overtaken = {e.id: self.overtaken.get(e.id, 0) for e in waiting}
        self.in_line = {e.id: self.in_line[e.id] for e in waiting if e.id in self.in_line}
        self.short_of_space = False
        if not waiting:
            return
        active = self.state.by_state(Mid.UPLOADING, Mid.VERIFYING)
        space = self.spool.room() - sum(e.size for e in active if e.state == Mid.UPLOADING)
        room = Room(space, self.spool.capacity(), self.cfg.free_percent)
        now = time.time() if now is None else now
        for verdict in admission_pass(waiting, active, room, self.overtaken, now):
            entry, why = verdict.entry, verdict.why
            if verdict.never:
                self._give_up(entry, ADMISSION_AT_CENTRAL, why or "", at_once=True)
            elif why is None:
                self._admit(entry)
            else:
                self.short_of_space |= ABOVE_RESERVE in why  # it waits for room above the reserve
                self._waits(entry, why, verdict.turn, now)

    def _waits(self, entry: Entry, why: str, turn: bool, now: float) -> None:
        """Record why an entry waits and tell its upload agent, once per reason; one that only waits
        its turn behind the caps is told only once it has waited TURN_TELL seconds (in a burst, most
        are admitted before). After a restart of central such an entry may be told twice: upload
        takes a `wait` again as a no-op."""
        if not turn:
            self.in_line.pop(entry.id, None)
            if entry.reason != why:
                self.state.update(entry, reason=why)
                self._tell_wait(entry, why)
            return
        if entry.reason != why:
            self.state.update(entry, reason=why)
            self.in_line[entry.id] = now  # told once this reason has lasted
            return
        first = self.in_line.setdefault(entry.id, now)  # after a restart: counted from now
        if first is not None and now - first >= admission.TURN_TELL:
            self.in_line[entry.id] = None
            self._tell_wait(entry, why)

    def _tell_wait(self, entry: Entry, why: str) -> None:
        self.send(entry.peer or "", Wait(entry.id, self.name, reason=why))
        log.info("%s: waiting: %s", entry.name, why)

    def _admit(self, entry: Entry) -> None:
        try:
            self.spool.prepare(entry)
        except PlaceRefused as e:
            # A person must look (someone planted it, or changed its owner); nothing is pushed there.
            self.move(entry, Mid.FAILED, reason=f"{ADMISSION_AT_CENTRAL}: {e}")
            failed = Failed(entry.id, self.name, hop=ADMISSION_AT_CENTRAL, reason=str(e))
            self.send(entry.peer or "", failed)
            log.error("%s: %s; giving up. Upload keeps its copy; %s", entry.name, e, REOFFER)
            return
        lease_ends = time.time() + self.lease
        entry = self.move(entry, Mid.UPLOADING, attempt=entry.attempt + 1, due=lease_ends, reason=None)
        to = fanout.route(self.state, self.cfg, entry)  # frozen at the first admission
        self.send(entry.peer or "", self.admit_for(entry))
        if pulled_early(entry.kind, entry.size):
            path = self.spool.growing(entry.id)
            for dest in to:
                self.send(dest, Pushing(entry.id, self.name, size=entry.size, path=path))
        self._follow(entry)

    def admit_for(self, entry: Entry) -> Admit:
        """The `admit` of the entry's current attempt (its destinations frozen already)."""
        to = tuple(dests.rows(self.state, entry.id)) if self.cfg.routes else ()
        return Admit(entry.id, self.name, attempt=entry.attempt, dest=self.spool.staging(entry), to=to)

    # what arrives of admitted entries: more bytes than offered, and leases --------------------------

    def _look_at_arrivals(self, now: float) -> None:
        """Measure what has arrived of each admitted entry, by one job: more bytes than offered fail
        the entry as soon as they are seen; a lease that ended lapses if nothing arrived meanwhile,
        neither of it nor of any other entry of its upload agent (an agent that is pushing works
        through its admitted entries a few transfer runs at a time: they wait their turn)."""
        uploading = [e for e in self.state.by_state(Mid.UPLOADING) if not self.jobs.busy(Key(ENTRY, e.id))]
        if not uploading:
            self.next_arrival_look = now + admission.ARRIVAL_LOOK
            return
        staging = {e.id: (self.spool.staging(e), e.name) for e in uploading}
        self.jobs.submit(
            Pool.SCAN,  # not Pool.HASH: a look at a big tree never delays an md5 check
            [ARRIVALS],
            functools.partial(measure_arrivals, staging),
            functools.partial(
                self._arrivals_seen, staging, {e.id: e.attempt for e in uploading}, time.monotonic()
            ),
        )

    def _arrivals_seen(
        self,
        staging: dict[str, tuple[str, str]],
        attempts: dict[str, int],
        started: float,
        measured: tuple[dict[str, Arrival], dict[str, float]] | None,
        error: BaseException | None,
    ) -> None:
        # A look costs at most a tenth of the time: a tree of many files is walked less often.
        took = time.monotonic() - started
        self.next_arrival_look = time.time() + max(admission.ARRIVAL_LOOK, 10 * took)
        if measured is None:
            log.error("cannot look at what arrives in central's staging: %r", error)
            return
        arrivals, latest = measured
        now = time.time()
        for entry_id, arrival in arrivals.items():
            entry = self.state.get(entry_id)
            if entry is None or entry.state != Mid.UPLOADING or entry.attempt != attempts[entry_id]:
                continue  # sent, withdrawn or forgotten meanwhile
            too_big = admission.oversize(entry, arrival.size, "seen while it arrived")
            if too_big is not None:
                self._refuse_pushed(entry, too_big)
                continue
            lease_ends = admission.lease_lapsed(entry, latest[staging[entry_id][0]], now, self.lease)
            if lease_ends is None:
                self._lapse(entry)
            elif lease_ends != entry.due:
                self.state.update(entry, due=lease_ends)

    def _refuse_pushed(self, entry: Entry, why: str) -> None:
        """More bytes than offered arrived: a failed hop. What arrived is discarded (a push still
        writing leaves a temporary file that the sweep removes once it stops changing)."""
        self._unfollow(entry.id)
        self.spool.drop_staged(entry)
        self.spool.drop_partial(entry)
        self.admit_due = True
        self._give_up(entry, UPLOAD_TO_CENTRAL, why, at_once=True)

    def _lapse(self, entry: Entry) -> None:
        """Nothing was pushed for an admitted entry within its lease: its slot goes to others, and it
        waits as long again before it is admitted again (counted in `tries`, not as an attempt)."""
        minutes = self.lease / 60
        why = f"admitted, but nothing arrived in {minutes:g} min: admitted again in {minutes:g} min"
        self._unfollow(entry.id)
        self.move(entry, Mid.WAITING, tries=entry.tries + 1, due=time.time() + self.lease, reason=why)
        self.send(entry.peer or "", Wait(entry.id, self.name, reason=why))
        self.admit_due = True
        log.warning("%s: %s (upload agent %s)", entry.name, why, entry.peer)

    def _copies(self, entry: Entry) -> int:
        """The copies upload was asked for (admissions, less those whose lease lapsed)."""
        return entry.attempt - entry.tries

    def _give_up(self, entry: Entry, hop: str, why: str, *, at_once: bool = False) -> None:
        """Fail the entry and tell upload: max_attempts uploads did not give a good copy, or (at
        once) it can never be admitted or more bytes arrived than it had."""
        # The reason names its hop, as every failed entry's does: the notice and status say where.
        self.move(entry, Mid.FAILED, reason=f"{hop}: {why}")
        self.send(entry.peer or "", Failed(entry.id, self.name, hop=hop, reason=why))
        after = "at once" if at_once else f"after {counted(self._copies(entry), 'attempt')}"
        log.error("%s: %s; giving up %s. %s", entry.name, why, after, GIVE_UP_ADVICE[hop])
