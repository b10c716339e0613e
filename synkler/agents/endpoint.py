"""Upload and download, the ends of the relay (`Endpoint`): their rsync runs to central in batches,
the retries of what failed, and the cleanup script of each delivered entry."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..backoff import backoff
from ..errors import Refused
from ..hops import cleanup, transfer
from ..state import Entry, State
from ..text import count, shown, some_entries
from . import slots, waits
from .agent import Agent
from .base import CLEANUP, ENTRY, GIVE_UP_ADVICE, PERSON_REPEAT, RETRY, Cleanup, Done, Jobs, Key, Status, T
from .facts import DISK_WAIT, LINK_DOWN, NEEDS_PERSON, needs_person_reason
from .outage import Outage
from .pools import Pool

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

SPACE_WAIT = 30.0  # seconds between tries of a step that failed for lack of disk space
# Cleanup scripts an operator may run again (`synkler retry`): whether an interrupted one ended is
# unknown, so synkler never runs it again by itself, but a person who has looked may.
RERUN = (Cleanup.FAILED, Cleanup.INTERRUPTED)


class Endpoint(Agent):
    """Upload and download, the ends of the relay: they run rsync over ssh to central, retry what
    failed, and run the cleanup script of each delivered entry exactly once."""

    DELIVERED: ClassVar[Status]  # delivered; the cleanup script is pending or running
    RETRIES = "a failed or waiting entry or cleanup script"
    TRANSFERRING: ClassVar[Status]  # the state of the role's own transfer (waits for its retries in it)
    HOP: ClassVar[str]  # the hop of that transfer, as reasons name it
    DONE: ClassVar[Status]
    FAILED: ClassVar[Status]

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        # An rsync that would let central's shell parse a remote path is refused before anything runs.
        transfer.protection(cfg)
        self.cleanup_due = True  # set when an entry's cleanup script becomes due
        self.transfer_due = True  # set when an entry may need a transfer, or a transfer slot freed up
        self.next_transfer_retry = float("inf")  # when a failed transfer is due to run again
        # Transfer runs going on over each link (link_of), which the free slots are shared by.
        self.running: Counter[str] = Counter()
        self.next_cleanup_retry = float("inf")  # when a failed cleanup script is due to run again
        # The link to each central (one in a pool, by name; "" with one central): down since when,
        # tried again when. One central's outage never holds back the entries of another.
        self.outages: dict[str, Outage] = {}
        self.person_told = -float("inf")  # when the agent last said that ssh needs a person (monotonic)

    def look_again(self) -> None:
        self.cleanup_due = self.transfer_due = True

    def link_of(self, entry: Entry) -> str:
        """The link an entry's transfers go over: its central's in a pool, else the one link ("")."""
        return (entry.peer or "") if self.cfg.centrals else ""

    def outage_of(self, link: str) -> Outage:
        return self.outages.setdefault(link, Outage())

    @property
    def outage(self) -> Outage:
        """The link to the one central (of a relay without a pool)."""
        return self.outage_of("")

    def stopped(self) -> None:
        """Ask the ssh master connection to central (to each central of a pool) to exit."""
        for host in dict.fromkeys([self.cfg.central_host, *self.cfg.centrals.values()]):
            transfer.close_shared_connection(dataclasses.replace(self.cfg, central_host=host))

    # transfers -----------------------------------------------------------------------------------

    def submit_transfer(
        self, keys: Sequence[Key], work: Callable[[], T], done: Done[T], link: str = ""
    ) -> None:
        """Run an rsync job over `link` (link_of) on the transfer pool; when it ends its slot is free
        for the next."""
        self.state.after_commit(functools.partial(self._count_run, link, 1))  # as the job starts
        self.jobs.submit(Pool.TRANSFER, keys, work, functools.partial(self._transfer_ended, link, done))

    def _count_run(self, link: str, change: int) -> None:
        self.running[link] += change
        if self.running[link] <= 0:
            del self.running[link]

    def _transfer_ended(
        self, link: str, done: Done[T], outcome: T | None, error: BaseException | None
    ) -> None:
        self._count_run(link, -1)
        self.transfer_due = True  # a slot is free, and retries may have been scheduled
        done(outcome, error)

    def link_result(self, result: transfer.Result | None, started: float, link: str = "") -> None:
        """Note how a transfer run over `link` (link_of) that began at `started` went. A run that
        could not reach central opens an outage of the link or goes on with it (counted once however
        many runs it cut: synkler.agents.outage); a run that reached central ends it, and the waits
        of the entries that wait for that link."""
        outage = self.outage_of(link)
        if waits.reached_central(result):
            self.person_told = -float("inf")  # a refusal after this is news: said at once
            outage.works()
            self.link_works(link)
        elif result is not None and result.link_down:
            now = time.time()
            if outage.failed(started, now, self.cfg.retry_max_seconds):
                # A refusal by ssh or the forced command is said at ERROR with what to fix
                # (Endpoint._needs_person), not also as a link that is down.
                log.log(
                    logging.DEBUG if result.needs_person else logging.WARNING,
                    "the link to central%s is down (failure %d of this outage: %s); entries that "
                    "wait for it are tried again in %.1f s",
                    f" {link}" if link else "",
                    outage.failures,
                    result.summary(),
                    outage.next_try - now,
                )

    def retry_later(
        self,
        entry: Entry,
        hop: str,
        why: str,
        *,
        out_of_space: bool = False,
        link_down: bool = False,
        needs_person: bool = False,
        **changes: Any,
    ) -> bool:
        """Count a failed step; schedule a retry, or mark the entry failed. True if it will retry.

        Two causes are no fault of the entry's and do not count toward max_attempts:
        `out_of_space` (a disk was full: tried again every SPACE_WAIT seconds, at most
        retry_max_seconds) and `link_down` (central could not be reached, or the link broke or
        stalled: tried again with a backoff that grows with the failed runs in a row, up to
        retry_max_seconds). Either way the entry waits, however long that takes.

        `needs_person` (with `link_down`): ssh refused for a reason only a person can fix (a key,
        a host key, a host name). The entry waits as for a link that is down, and the agent says
        so at ERROR, again every PERSON_REPEAT seconds while it lasts (once for all entries).
        """
        if self.jobs.stopping:
            # A transfer cut short by our own shutdown is not the hop's fault: redo it at the next start.
            log.info("%s: %s interrupted by shutdown; resumes at the next start", entry.name, hop)
            return True
        cause = "needs_person" if link_down and needs_person else "link_down" if link_down else "failure"
        cause = "disk_full" if out_of_space else cause
        if out_of_space or link_down or entry.tries + 1 < self.cfg.max_attempts:  # else: it fails now
            self.state.after_commit(functools.partial(self.observer.retried, hop, cause))
        if link_down and needs_person:
            self._needs_person(entry, hop, why, **changes)
        elif out_of_space or link_down:
            self._wait_uncounted(entry, hop, why, out_of_space=out_of_space, **changes)
        else:
            return self._count_failure(entry, hop, why, **changes)
        return True

    def _wait_uncounted(
        self, entry: Entry, hop: str, why: str, *, out_of_space: bool, **changes: Any
    ) -> None:
        """A step failed for lack of disk space or a link that is down: try again, not counted."""
        waiting = f"{hop}: {DISK_WAIT if out_of_space else LINK_DOWN}"
        now = time.time()
        if out_of_space:
            due = now + backoff(6, cap=min(SPACE_WAIT, self.cfg.retry_max_seconds))
        else:
            due = self._link_due(now, self.link_of(entry))
        said = (entry.reason or "").startswith(waiting)  # warn once, not at every try
        self.state.update(entry, due=due, reason=f"{waiting}: {why}", **changes)
        log.log(
            logging.DEBUG if said else logging.WARNING,
            "%s: %s failed %s (%s); trying again in %.0f s, not counted as a failed attempt",
            entry.name,
            hop,
            "for lack of disk space" if out_of_space else "because the link to central is down",
            why,
            due - now,
        )

    def _link_due(self, now: float, link: str) -> float:
        """When an entry that could not reach central over `link` is tried again: at the outage's
        next try of that link, with every other entry that waits for it (the first backoff if none
        is open)."""
        outage = self.outage_of(link)
        return outage.due(now) if outage.down else now + backoff(1, cap=self.cfg.retry_max_seconds)

    def _count_failure(self, entry: Entry, hop: str, why: str, **changes: Any) -> bool:
        """A step failed through the entry's own fault: retry with a growing backoff, or, after
        max_attempts, mark it failed (False)."""
        tries = entry.tries + 1
        if tries >= self.cfg.max_attempts:
            self.move(entry, self.FAILED, tries=tries, reason=f"{hop}: {why}", **changes)
            advice = GIVE_UP_ADVICE.get(hop, "The data stays where it is.")
            log.error(
                "%s: %s failed %s, giving up: %s. %s", entry.name, hop, count(tries, "time"), why, advice
            )
            return False
        delay = backoff(tries, cap=self.cfg.retry_max_seconds)
        self.state.update(entry, tries=tries, due=time.time() + delay, reason=f"{hop}: {why}", **changes)
        log.warning("%s: %s failed (%s); retry %d in %.1f s", entry.name, hop, why, tries, delay)
        return True

    def _needs_person(self, entry: Entry, hop: str, why: str, **changes: Any) -> None:
        due = self._link_due(time.time(), self.link_of(entry))
        delay = due - time.time()
        self.state.update(entry, due=due, reason=needs_person_reason(hop, why), **changes)
        now = time.monotonic()
        if now - self.person_told < PERSON_REPEAT:
            log.debug("%s: %s refused again (%s); trying again in %.0f s", entry.name, hop, why, delay)
            return
        self.person_told = now
        log.error(
            "%s: %s refused by ssh or the key's forced command on central: %s. This needs a person: fix "
            "the key, known host or host name for central, or the key's `rrsync` root and rrsync_root "
            "(`synkler check` tests them). Entries wait and are tried again, not counted as "
            "failed attempts; said again every %d minutes while it lasts",
            entry.name,
            hop,
            why,
            PERSON_REPEAT // 60,
        )

    def due_for_transfer(self, state: Status, now: float) -> list[Entry]:
        """Entries in `state` whose transfer may start now and is not running, oldest first.

        The loop passes after every message and finished job, and thousands of entries may be in
        `state`: look only when something changed (`transfer_due`) or a retry has come due, and
        load only the entries that are due and not already being transferred.
        """
        if self.jobs.transfers >= self.cfg.max_transfers:
            return []  # transfer_due stays as it is: the run that ends frees a slot and sets it
        if not self.transfer_due and now < self.next_transfer_retry:
            return []
        self.transfer_due, self.next_transfer_retry = False, float("inf")
        due = []
        for entry_id, entry_due in self.state.ids_by_state(state):
            if self.jobs.busy(Key(ENTRY, entry_id)):
                continue
            if entry_due > now:
                self.next_transfer_retry = min(self.next_transfer_retry, entry_due)
            else:
                due.append(self.entry(entry_id))
        return due

    def batches(self, entries: list[Entry], group: Callable[[Entry], object]) -> list[list[Entry]]:
        """The transfer runs to start now of `entries` (oldest first; synkler.agents.slots): many
        small entries share one rsync run, big ones and those that failed before go alone; at most
        as many runs as there are free transfer slots, shared fairly by the links to the centrals
        of a pool (each link with work due gets a run before any gets a second), oldest first
        within a link."""
        free = self.cfg.max_transfers - self.jobs.transfers
        return slots.share(slots.runs(entries, group), free, self.link_of, self.running)

    # cleanup scripts -----------------------------------------------------------------------------

    def cleanup_target(self, entry: Entry) -> tuple[str, str]:
        """(%f, %F) for the entry's cleanup script: its name and full path on this host."""
        raise NotImplementedError

    def cleanup_content(self, entry: Entry) -> cleanup.Content:
        """What the entry's name must hold for its cleanup script to run: the delivered content."""
        return cleanup.Content(entry.kind, entry.md5, entry.signature)

    def delivered(self, entry: Entry, **changes: Any) -> None:
        """The entry is delivered: its cleanup script is due, if there is one, else it is done."""
        if self.cfg.cleanup_script:
            self.move(entry, self.DELIVERED, cleanup=Cleanup.PENDING, **changes)
            self.cleanup_due = True
        else:
            self.move(entry, self.DONE, cleanup=None, **changes)

    def start_cleanup(self, entry: Entry, *, resume: bool = False) -> None:
        """Run the cleanup script for a delivered entry exactly once, as far as anything can, and
        only on the content that was delivered.

        'running' is committed before the script starts. The script runs under a runner that
        survives the agent (synkler.hops.scriptrunner): an agent killed meanwhile collects the result at
        its next start. Only if the runner itself died mid-script is the cleanup 'interrupted';
        it is then not run again. Right before the script starts, on the script's own thread, its
        target is checked to hold the delivered content (the entry's kind, md5 and fingerprint);
        if it does not, the cleanup is 'skipped'.
        """
        if not resume:
            self.state.update(entry, cleanup=Cleanup.RUNNING)
        name, full_path = self.cleanup_target(entry)
        content = self.cleanup_content(entry)
        self.jobs.submit(
            Pool.SCRIPT,
            [Key(CLEANUP, entry.id)],
            functools.partial(
                cleanup.run_cleanup, self.cfg, entry.id, name, full_path, resume=resume, content=content
            ),
            functools.partial(self._cleanup_ended, entry.id, name),
        )

    def _cleanup_ended(
        self,
        entry_id: str,
        name: str,
        result: transfer.Result | cleanup.Skipped | None,
        error: BaseException | None,
    ) -> None:
        entry = self.entry(entry_id)
        if isinstance(result, cleanup.Skipped):
            runs = entry.tries  # failed runs before this one (cleanup_attempts)
            after = f" (after {runs} failed run{'s' if runs > 1 else ''})" if runs else ""
            self.move(entry, self.DONE, cleanup=Cleanup.SKIPPED, reason=f"{result.why}{after}")
            log.warning(
                "%s: cleanup script not run: %s no longer holds the delivered content: %s%s",
                name,
                self.cleanup_target(entry)[1],
                result.why,
                after,
            )
            return
        if result is None and error is None:
            self.move(entry, self.DONE, cleanup=Cleanup.INTERRUPTED, reason="cleanup script interrupted")
            log.warning(
                "%s: the cleanup script was interrupted (its runner died); not running it again", name
            )
            return
        output = (result.output if result else "").strip()
        if result is not None and result.ok:
            self.move(entry, self.DONE, cleanup=Cleanup.DONE)
            log.info("%s: cleanup script ran (exit 0)%s", name, f": {output}" if output else "")
            return
        why = repr(error) if error is not None or result is None else result.summary()
        self._cleanup_failed(entry, name, why, output)

    def _cleanup_failed(self, entry: Entry, name: str, why: str, output: str) -> None:
        """A cleanup script that failed runs again later, up to cleanup_attempts runs in all."""
        tries = entry.tries + 1
        if tries < self.cfg.cleanup_attempts:
            delay = backoff(tries, cap=self.cfg.retry_max_seconds)
            self.state.update(
                entry,
                cleanup=Cleanup.PENDING,
                tries=tries,
                due=time.time() + delay,
                reason=f"cleanup script: {why}",
            )
            self.next_cleanup_retry = min(self.next_cleanup_retry, entry.due)
            log.warning(
                "%s: cleanup script failed (%s); run %d of %d in %.1f s; output: %s",
                name,
                why,
                tries + 1,
                self.cfg.cleanup_attempts,
                delay,
                output,
            )
        else:
            self.move(entry, self.DONE, cleanup=Cleanup.FAILED, reason=f"cleanup script: {why}")
            log.error("%s: cleanup script failed (%s); output: %s", name, why, output)

    def start_due_cleanups(self, now: float) -> None:
        if not self.cleanup_due and now < self.next_cleanup_retry:
            return
        self.cleanup_due, self.next_cleanup_retry = False, float("inf")
        for entry in self.state.by_state(self.DELIVERED):
            if entry.cleanup != Cleanup.PENDING or self.jobs.busy(Key(CLEANUP, entry.id)):
                continue
            if entry.due > now:  # a retry after a failed run, not yet due
                self.next_cleanup_retry = min(self.next_cleanup_retry, entry.due)
                continue
            self.start_cleanup(entry)

    def resume_cleanups(self) -> None:
        """At start: scripts marked running when the agent stopped are collected, not run again."""
        for entry in self.state.by_state(self.DELIVERED):
            if entry.cleanup == Cleanup.RUNNING:
                log.info(
                    "%s: the agent stopped while the cleanup script ran; collecting its result", entry.name
                )
                self.start_cleanup(entry, resume=True)

    # an operator's requests ----------------------------------------------------------------------

    @classmethod
    def refusal(cls, action: str, entry: Entry, latest: bool, *, present: bool = True) -> str | None:
        if action == RETRY and entry.state == cls.DONE and entry.cleanup in RERUN:
            return None
        if action == RETRY and cls.is_waiting(entry):
            return None
        return super().refusal(action, entry, latest, present=present)

    @classmethod
    def is_waiting(cls, entry: Entry) -> bool:
        """Does the entry wait for a retry of its transfer (a reason says why), or of its cleanup
        script (a failed run)? Pure, as `refusal`."""
        if entry.state == cls.TRANSFERRING:
            return bool(entry.reason)
        return entry.state == cls.DELIVERED and entry.cleanup == Cleanup.PENDING and entry.tries > 0

    def retry(self, entry: Entry) -> str:
        if entry.state == self.DONE:
            return self.retry_cleanup(entry)
        if entry.state in (self.TRANSFERRING, self.DELIVERED):
            return self.retry_now(entry)
        return self.retry_failed(entry)

    def retry_failed(self, entry: Entry) -> str:
        raise NotImplementedError

    def retry_cleanup(self, entry: Entry) -> str:
        """Run a cleanup script that failed (or was interrupted) again, as an operator asks: due now,
        with cleanup_attempts counted afresh."""
        if not self.cfg.cleanup_script:
            raise Refused(f"{shown(entry.name)}: no cleanup_script is set (any more)")
        self.move(entry, self.DELIVERED, cleanup=Cleanup.PENDING, tries=0, due=0, reason=None)
        self.cleanup_due = True
        return f"{shown(entry.name)} (entry {entry.id}): its cleanup script runs again"

    # waits that end before their time (synkler.agents.waits) ---------------------------------------

    def end_waits(self, cause: str, now: float, link: str | None = None) -> list[Entry]:
        """Make every entry that waits for `cause` (waits.ANY: for anything; with `link`, only those
        whose transfers go over that link) due now; those entries. One query down the index of
        waiting entries: cheap when none waits."""
        patterns: tuple[str, ...] = ()
        if cause == waits.LINK:  # asked after every transfer run: the reasons are sorted out in SQL
            patterns = (f"{self.HOP}: {LINK_DOWN}: %", f"{self.HOP}: {NEEDS_PERSON}: %")
        found = self.state.waiting((self.TRANSFERRING, self.DELIVERED), now, *patterns)
        if cause != waits.ANY:
            found = [e for e in found if waits.cause_of(e.reason, self.HOP) == cause]
        if link is not None:
            found = [e for e in found if self.link_of(e) == link]
        return self._due_now(found, now)

    def _due_now(self, entries: list[Entry], now: float) -> list[Entry]:
        """Those of `entries` that wait for a retry, made due now (their failed tries still count)."""
        ended = [self.state.update(e, due=0) for e in entries if self.is_waiting(e) and e.due > now]
        if ended:
            self.transfer_due = self.cleanup_due = True
        return ended

    def link_works(self, link: str = "") -> None:
        """A run reached central over `link`: the entries that wait for that link go now, not when
        their backoff runs out (it grows to retry_max_seconds while the link is down)."""
        ended = self.end_waits(waits.LINK, time.time(), link)
        if ended:
            log.info(
                "the link to central%s works again: %s waiting for it go now",
                f" {link}" if link else "",
                some_entries([shown(e.name) for e in ended]),
            )

    def retry_now(self, entry: Entry) -> str:
        """End the wait of one entry for a retry of its transfer or cleanup script, as an operator
        asks."""
        what = f"{shown(entry.name)} (entry {entry.id})"
        if self.jobs.busy(Key(ENTRY, entry.id)) or self.jobs.busy(Key(CLEANUP, entry.id)):
            return f"{what}: already being tried again"
        if not self._due_now([entry], time.time()):
            return f"{what}: already due: tried again as soon as a transfer slot is free"
        return f"{what}: tried again now (it waited: {shown(entry.reason or 'a retry')})"

    def retry_waiting(self, cause: str) -> str:
        ended = self.end_waits(cause, time.time())
        if not ended:
            return f"no entry at this {self.mode} agent waits for {waits.what(cause)}"
        names = some_entries([shown(e.name) for e in ended])
        return f"{names} waiting for {waits.what(cause)}: tried again now"
