"""What the roles share: entry states and their transitions, message dispatch, the seam to the runtime
(`Jobs`), and for upload and download (`Endpoint`) retries, transfer batches and cleanup scripts.

An agent reacts to messages, job results and time; it never talks to the broker itself and never
waits for a job. The runtime (synkler.runtime.loop) runs it: it hands each message to `on_message`,
runs the jobs an agent submits on worker threads and hands their outcome back in the main loop,
and calls `tick` after each pass. A test can do the same with jobs run at once (tests/unit/fakes.py).
"""

from __future__ import annotations

import copy
import enum
import functools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple, Protocol, TypeVar

from .. import messages
from ..backoff import backoff
from ..errors import MessageError, Refused
from ..hops import cleanup, transfer
from ..text import count, shown
from ..messages import EntryMessage, Forget, Message
from ..state import Ended, Entry, Request, State
from .facts import (
    ADMISSION_AT_CENTRAL,
    DISK_WAIT,
    LINK_DOWN,
    PULL_FROM_CENTRAL,
    PUSH_TO_CENTRAL,
    STORE_AT_CENTRAL,
    UPLOAD_TO_CENTRAL,
    needs_person_reason,
)
from .history import History
from .pools import Pool

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

BATCH_ENTRIES = 500  # at most this many entries in one rsync run
BATCH_BYTES = 64 << 20  # ... and about this many bytes; bigger entries get a run of their own
SPACE_WAIT = 30.0  # seconds between tries of a step that failed for lack of disk space
CENTRAL = "central"  # the names of the two fixed roles: peers address them by these
DOWNLOAD = "download"
PERSON_REPEAT = 600  # seconds between ERROR lines while ssh refuses for a reason a person must fix
# What a person can do when a hop gives up (after the log line that says which hop failed and why).
REOFFER = "then `synkler retry <entry>` on upload relays it again (docs/runbook.md)."
GIVE_UP_ADVICE = {
    PUSH_TO_CENTRAL: "The entry stays in upload's file_dir. Fix the cause (`synkler check` tests "
    "ssh and rsync to central), " + REOFFER,
    PULL_FROM_CENTRAL: "Upload keeps its copy, central its verified one (stored/<entry id>). Fix the "
    "cause on download's side or the path to central, then `synkler retry <entry>` on download pulls it "
    "again (docs/runbook.md).",
    UPLOAD_TO_CENTRAL: "Upload keeps its copy. Find out why the copies differ (a file still being "
    "written, a disk or memory problem), " + REOFFER,
    STORE_AT_CENTRAL: "Upload keeps its copy. Central's copies keep going bad: check central's disk, "
    + REOFFER,
    ADMISSION_AT_CENTRAL: "Upload keeps its copy. Give central's file_dir a bigger file system (or a "
    "lower free_percent), " + REOFFER,
}


HASH_GROUP = 100  # small entries hashed by one job (md5 at upload and central)
HASH_GROUP_BYTES = 4 << 20  # ... at most this many bytes together; a bigger entry gets a job alone


def hash_groups(entries: Iterable[Entry]) -> Iterator[list[Entry]]:
    """Entries in groups for md5 jobs: small ones share a job (one hand-over to a worker and one
    wake-up of the loop instead of one each), a big one gets its own."""
    group: list[Entry] = []
    size = 0
    for entry in entries:
        if entry.size >= HASH_GROUP_BYTES:
            yield [entry]
            continue
        group.append(entry)
        size += entry.size
        if len(group) >= HASH_GROUP or size >= HASH_GROUP_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


class Key(NamedTuple):
    """What a running job holds busy until its outcome is recorded: `kind` and an entry id or name."""

    kind: str
    of: str = ""


ENTRY = "entry"  # the transfer or check of an entry (its id): one job at a time per entry
HASHING = "md5"  # upload: the md5 of an offered entry (its id)
NAME = "md5 of name"  # upload: the md5 of a name relayed before, before a new version is offered
CLEANUP = "cleanup"  # the cleanup script of an entry (its id)
RECHECK = "recheck"  # central: the md5 of a stored copy download found bad (its id)
SCAN = Key("scan")  # upload: the listing of file_dir

# What an operator can ask of one entry (synkler retry | forget | resend, docs/runbook.md). The
# command writes the request into the agent's state database; the running agent takes it in its main
# loop (Agent.take_requests) and answers there.
RETRY, FORGET, RESEND = "retry", "forget", "resend"
ACTIONS = (RETRY, FORGET, RESEND)

T = TypeVar("T")
Done = Callable[["T | None", "BaseException | None"], None]


def job_error(error: BaseException | None) -> BaseException:
    """The error a job ended with (a job ends with an outcome or an error)."""
    return error if error is not None else RuntimeError("the job ended without an outcome")


class Jobs(Protocol):
    """What an agent sees of the runtime that runs it."""

    @property
    def transfers(self) -> int:
        """rsync runs going on (jobs of Pool.TRANSFER)."""

    @property
    def stopping(self) -> bool:
        """The agent is stopping: a job cut short now is not the entry's fault."""

    def busy(self, key: Key) -> bool:
        """Does a job hold `key`?"""

    def submit(self, pool: Pool, keys: Sequence[Key], work: Callable[[], T], done: Done[T]) -> None:
        """Run `work()` on a worker of `pool` once the current transaction commits; then
        `done(outcome, error)` runs in the main loop, in a transaction. `keys` stay busy meanwhile."""

    def wake(self) -> None:
        """Make the main loop pass soon (from any thread)."""


class Observer:
    """What an agent tells about as it happens, for its metrics (synkler.observe.metrics); by default nothing.
    Called in the main loop; `moved` only once the change has committed."""

    def moved(self, old: str | None, entry: Entry) -> None:
        """An entry was created (`old` None) or changed state from `old`."""

    def mismatch(self, hop: str) -> None:
        """A copy's md5 did not match after `hop`."""

    def retried(self, hop: str, cause: str) -> None:
        """A step of `hop` failed and is scheduled again; `cause`: failure, link_down, disk_full or
        needs_person."""

    def heard_from(self, peer: str, now: float) -> None:
        """A message from agent `peer` arrived."""


class Status(str, enum.Enum):
    """Base of each role's entry states. The value is what the state column holds and status shows."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Cleanup(Status):
    """Where an entry's cleanup script is (upload and download; the `cleanup` column)."""

    PENDING = "pending"  # due: starts when the script runner is free (and a retry's wait is over)
    RUNNING = "running"  # committed before the runner starts; collected after a restart
    DONE = "done"  # exit 0
    FAILED = "failed"  # failed cleanup_attempts times
    INTERRUPTED = "interrupted"  # its runner died mid-script: not run again
    SKIPPED = "skipped"  # not run: the name no longer held the delivered content (the reason says why)


Transitions = Mapping[Status, "frozenset[Status]"]
# Cleanup scripts an operator may run again (`synkler retry`): whether an interrupted one ended is
# unknown, so synkler never runs it again by itself, but a person who has looked may.
RERUN = (Cleanup.FAILED, Cleanup.INTERRUPTED)


class TransitionError(Exception):
    """A bug: a role tried a state change its transition table does not allow."""


class Pruned(Exception):
    """A message about an entry this agent does not have, sent before the time its history still
    covers: it was about an entry pruned since (or older still). Nothing to do."""


class Agent:
    """Base of the three roles: reacts to messages, job results and time. No direct broker I/O.

    Each role declares its states (`STATES`, an enum), the states a new entry starts in (`NEW`) and
    every change of state it may make (`TRANSITIONS`: state -> the states it may go to; staying in a
    state is not a change). Entries change state only through `move`, which enforces the table;
    docs/architecture.md shows the same tables (a test keeps them equal). Messages are dispatched by
    type to one handler each (`handlers`).
    """

    mode: ClassVar[str] = ""
    STATES: ClassVar[type[Status]]
    NEW: ClassVar[tuple[Status, ...]] = ()
    TRANSITIONS: ClassVar[Transitions] = {}
    FORGOTTEN: ClassVar[Status]  # ended by an operator's `forget` (here or at a peer): final
    FORGETTABLE: ClassVar[frozenset[Status]] = frozenset()  # the states `forget` ends: on the way, or failed
    RETRYABLE: ClassVar[frozenset[Status]] = frozenset()  # the states `retry` takes up again
    RETRIES: ClassVar[str] = "a failed entry"  # what `retry` takes up, for a person
    # The states an entry ends in, pruned from the history keep_history_days later (never `failed`:
    # a person must look; `Agent.kept` says which of them the role keeps longer).
    FINISHED: ClassVar[tuple[Status, ...]] = ()
    observer: Observer = Observer()  # the runtime puts the agent's metrics here

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        self.cfg = cfg
        self.state = state
        self.jobs = jobs
        self.name = cfg.name
        # message type -> its handler; a type not here is refused (dead-lettered)
        self.handlers: dict[type[Message], Callable[[Any], None]] = {}
        self.history = History(cfg, state, tuple(str(s) for s in self.FINISHED), self.kept, self.prune_later)

    def startup(self) -> None:
        """Reconcile the disk with the durable state after a (possibly unclean) stop."""

    def on_message(self, msg: Message) -> None:
        """Act on one message, inside the caller's savepoint; MessageError dead-letters it."""
        handler = self.handlers.get(type(msg))
        if handler is None:
            raise MessageError(f"{self.mode} does not take {msg.TYPE!r} messages")
        try:
            handler(msg)
        except Pruned as e:  # raised by entry_for, before the handler changed anything
            log.info("%s", e)

    def tick(self, now: float) -> None:
        """Start what is due. Called often: keep it cheap."""

    def next_wakeup(self) -> float | None:
        """When `tick` next has something to do on its own (None: nothing timed)."""
        return None

    def look_again(self) -> None:
        """Forget the hints that let `tick` skip work (after a tick was rolled back)."""

    def prune_history(self, now: float) -> None:
        """Prune finished entries older than keep_history_days, if a pass is due (at the end of each
        role's tick). A pass that fails is undone alone, logged, and tried again later: it never stops
        the tick or the loop."""
        try:
            with self.state.savepoint():
                self.history.prune(now)
        except Exception:
            log.exception("error while pruning the history; trying again in a few minutes")
            self.history.forget_cache()
            self.history.next_pass = now + 300

    def prune_later(self) -> bool:
        """Is this a bad moment to decide what to keep? (The pass is then made a second later.)"""
        return False

    def kept(self, ended: list[Ended]) -> set[str]:
        """The ids of these finished, old entries that must stay in the history for now: those a job
        still holds (a role adds what it needs to stay exactly-once)."""
        return {e.id for e in ended if self.jobs.busy(Key(ENTRY, e.id))}

    def shutdown(self) -> None:
        """Stop what `startup` began (threads, watches), before the running jobs are ended."""

    def stopped(self) -> None:
        """Release what jobs used, once every job has ended."""

    # helpers -------------------------------------------------------------------------------------

    def send(self, to: str, msg: Message) -> None:
        """Queue a message in the outbox, in the caller's transaction."""
        self.state.enqueue(to, messages.encode(msg))

    def create(self, entry: Entry) -> Entry:
        """Record a new entry, in one of the role's `NEW` states."""
        if entry.state not in self.NEW:
            raise TransitionError(f"{self.mode}: a new entry cannot start in {entry.state!r}")
        created = self.state.insert(entry)
        self.state.after_commit(functools.partial(self.observer.moved, None, copy.copy(created)))
        return created

    def move(self, entry: Entry, to: Status, **changes: Any) -> Entry:
        """Change an entry's state (and other fields) as the role's transition table allows."""
        if to != entry.state and to not in self.TRANSITIONS.get(self.STATES(entry.state), ()):
            raise TransitionError(f"{self.mode}: entry {entry.id}: {entry.state} -> {to} is not a transition")
        old = entry.state
        moved = self.state.update(entry, state=to, **changes)
        if to != old:  # a copy: the entry may change again before the commit
            self.state.after_commit(functools.partial(self.observer.moved, old, copy.copy(moved)))
        return moved

    def entry_from(self, msg: EntryMessage, state: Status, **fields: Any) -> Entry:
        """A new entry described by an offer or fetch message (name, kind, size, files, and the md5
        if the message has it: an offer does not)."""
        return Entry(
            id=msg.entry,
            state=state,
            peer=msg.sender,
            name=msg.name,
            kind=msg.kind,
            size=msg.size,
            files=msg.files,
            md5=getattr(msg, "md5", None),
            **fields,
        )

    def entry_for(self, msg: Message, *senders: str) -> Entry:
        """The entry a message is about. Refused: a message about an entry this agent never had, and
        one from an agent that has no say over the entry: by default only its peer (the central that
        sent it, the upload that offered it) may; `senders` names who may instead. A message about an
        entry this agent does not have, sent before the time its history still covers, is about an
        entry pruned since: nothing is done (`Pruned`)."""
        entry = self.state.get(msg.entry)
        if entry is None:
            if self.history.older_than_history(msg):
                raise Pruned(
                    f"{msg.TYPE} from {msg.sender} about entry {msg.entry}, which this agent no longer "
                    f"has: sent before the {self.cfg.keep_history_days:g} days of history it keeps; "
                    "nothing to do"
                )
            raise MessageError(f"{msg.TYPE} for unknown entry {msg.entry}")
        allowed = senders or (entry.peer or "",)
        if msg.sender not in allowed:
            raise MessageError(
                f"{msg.TYPE} for entry {msg.entry} from {msg.sender!r}, which has no say over it "
                f"(only {' or '.join(repr(a) for a in allowed)})"
            )
        return entry

    def from_central(self, msg: Message) -> None:
        """Refuse a message that only central may send, from anyone else."""
        if msg.sender != CENTRAL:
            raise MessageError(f"{msg.TYPE} from {msg.sender!r}: only {CENTRAL!r} sends it")

    def record_each(
        self,
        group: list[Entry],
        outcomes: Sequence[T | Exception] | None,
        error: BaseException | None,
        record: Callable[[Entry, T | BaseException], None],
        what: str,
    ) -> None:
        """Record the outcome of a job that did one thing per entry (or the error that ended the
        whole job), each entry in its own savepoint: a bug with one does not undo the others."""
        each: Sequence[T | BaseException] = (
            outcomes if outcomes is not None else [job_error(error)] * len(group)
        )
        for entry, outcome in zip(group, each):
            try:
                with self.state.savepoint():
                    record(entry, outcome)
            except Exception:
                log.exception("%s: bug while recording %s", entry.name, what)

    def entry(self, entry_id: str) -> Entry:
        """An entry this agent has (a job's entry, recorded before the job began)."""
        entry = self.state.get(entry_id)
        if entry is None:
            raise LookupError(f"{self.mode}: no entry {entry_id}")
        return entry

    # an operator's requests (synkler retry | forget | resend) ----------------------------------------

    @classmethod
    def refusal(cls, action: str, entry: Entry, latest: bool, *, present: bool = True) -> str | None:
        """Why an operator cannot `action` the entry as it is now; None if they can. `latest`: the entry
        is the newest version of its name; `present`: (upload) its name is in file_dir. Pure: `synkler
        status` shows the actions it allows, and the agent refuses the others with this reason."""
        try:
            state = cls.STATES(entry.state)
        except ValueError:
            return f"{entry.state!r} is not a {cls.mode} state"
        if action == FORGET:
            if state in cls.FORGETTABLE:
                return None
            return f"it is {state}: only an entry on its way or failed can be forgotten"
        if action == RETRY:
            return None if state in cls.RETRYABLE else f"it is {state}: only {cls.RETRIES} can be retried"
        if action == RESEND:
            return "only upload sends an entry again: run `synkler resend` there"
        return f"{action!r} is not an action ({', '.join(ACTIONS)})"

    @classmethod
    def actions(cls, entry: Entry, latest: bool, *, present: bool = True) -> list[str]:
        """What an operator can ask of the entry now (shown by `synkler status`)."""
        return [action for action in ACTIONS if cls.refusal(action, entry, latest, present=present) is None]

    def take_requests(self) -> None:
        """Take the operator's requests not answered yet and answer each in its row, in the main loop's
        transaction. Each is done in a savepoint of its own: one that is refused (or fails) changes
        nothing and is answered with the reason."""
        for request in self.state.open_requests():
            try:
                with self.state.savepoint():
                    ok, answer = True, self.on_request(request)
            except Refused as e:
                ok, answer = False, str(e)
            except Exception as e:  # a bug, or the disk: answered, so the command does not wait in vain
                log.exception(
                    "error while taking an operator's %s of entry %s", request.action, request.entry
                )
                ok, answer = False, f"{request.action} of entry {request.entry} failed: {e!r} (see the log)"
            self.state.answer_request(request.seq, ok, answer)
            log.log(logging.INFO if ok else logging.WARNING, "operator's %s: %s", request.action, answer)

    def on_request(self, request: Request) -> str:
        """Do what an operator asked (inside a savepoint); the answer, or Refused with the reason."""
        entry = self.state.get(request.entry)
        if entry is None:
            raise Refused(f"the {self.mode} agent has no entry {request.entry}")
        latest = self.state.latest_by_name(entry.name)
        newest = latest is not None and latest.id == entry.id
        why = self.refusal(request.action, entry, newest, present=self.present(entry))
        if why is not None:
            raise Refused(f"{shown(entry.name)} (entry {entry.id}): cannot {request.action}: {why}")
        if request.action == FORGET:
            self.forget(entry, f"forgotten by an operator at {self.mode}")
            return f"{shown(entry.name)} (entry {entry.id}) is forgotten here; its peers are told"
        if request.action == RETRY:
            return self.retry(entry)
        return self.resend(entry)

    def retry(self, entry: Entry) -> str:
        """Take up again an entry in one of the RETRYABLE states; the answer for the operator."""
        raise Refused(f"{shown(entry.name)}: the {self.mode} agent does not retry")

    def resend(self, entry: Entry) -> str:
        raise Refused(f"{shown(entry.name)}: the {self.mode} agent does not send entries")

    def forget(self, entry: Entry, reason: str, told_by: str | None = None) -> None:
        """End an entry here: what this role holds of it is removed (`drop`), it becomes forgotten, and
        the peers are told, except the one that told us. Each role does this once per entry: one that
        has forgotten it already, or never had it, neither acts nor passes it on, so it cannot loop."""
        self.drop(entry)
        self.move(entry, self.FORGOTTEN, reason=reason)
        for peer in self.peers(entry):
            if peer != told_by:
                self.send(peer, Forget(entry.id, self.name, reason=reason))
        log.info("%s: %s", entry.name, reason)

    def on_forget(self, msg: Forget) -> None:
        entry = self.state.get(msg.entry)
        if entry is None:
            return  # never had it: nothing to forget and nothing to pass on; not a bad message
        if msg.sender not in self.peers(entry):
            raise MessageError(f"forget of entry {msg.entry} from {msg.sender!r}, which is not its peer")
        if self.STATES(entry.state) in self.FORGETTABLE:
            self.forget(entry, msg.reason, told_by=msg.sender)

    def present(self, entry: Entry) -> bool:
        """Is the entry's name in file_dir (what upload would send)? Only upload asks."""
        return True

    def peers(self, entry: Entry) -> list[str]:
        """The agents this one exchanges messages with about the entry."""
        raise NotImplementedError

    def drop(self, entry: Entry) -> None:
        """Remove what this role holds of an entry it forgets (called before its state changes)."""


class Endpoint(Agent):
    """Upload and download, the ends of the relay: they run rsync over ssh to central, retry what
    failed, and run the cleanup script of each delivered entry exactly once."""

    DELIVERED: ClassVar[Status]  # delivered; the cleanup script is pending or running
    RETRIES = "a failed entry or cleanup script"
    DONE: ClassVar[Status]
    FAILED: ClassVar[Status]

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        # An rsync that would let central's shell parse a remote path is refused before anything runs.
        transfer.rsync_protection(tuple(cfg.rsync))
        self.cleanup_due = True  # set when an entry's cleanup script becomes due
        self.transfer_due = True  # set when an entry may need a transfer, or a transfer slot freed up
        self.next_transfer_retry = float("inf")  # when a failed transfer is due to run again
        self.next_cleanup_retry = float("inf")  # when a failed cleanup script is due to run again
        self.link_failures = 0  # transfer runs in a row that could not reach central
        self.person_told = -float("inf")  # when the agent last said that ssh needs a person (monotonic)

    def look_again(self) -> None:
        self.cleanup_due = self.transfer_due = True

    def stopped(self) -> None:
        transfer.close_shared_connection(self.cfg)

    # transfers -----------------------------------------------------------------------------------

    def submit_transfer(self, keys: Sequence[Key], work: Callable[[], T], done: Done[T]) -> None:
        """Run an rsync job on the transfer pool; when it ends its slot is free for the next."""
        self.jobs.submit(Pool.TRANSFER, keys, work, functools.partial(self._transfer_ended, done))

    def _transfer_ended(self, done: Done[T], outcome: T | None, error: BaseException | None) -> None:
        self.transfer_due = True  # a slot is free, and retries may have been scheduled
        done(outcome, error)

    def link_result(self, result: transfer.Result | None) -> None:
        """Note how a transfer run went: the backoff for a link that is down grows with its failures."""
        if result is not None and result.ok:
            self.link_failures = 0
        elif result is not None and result.link_down:
            self.link_failures += 1

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
        if out_of_space or link_down or entry.tries + 1 < self.cfg.max_attempts:  # else: failed
            cause = "needs_person" if link_down and needs_person else "link_down" if link_down else "failure"
            cause = "disk_full" if out_of_space else cause
            self.state.after_commit(functools.partial(self.observer.retried, hop, cause))
        if link_down and needs_person:
            self._needs_person(entry, hop, why, **changes)
            return True
        if out_of_space or link_down:
            waiting = f"{hop}: {DISK_WAIT if out_of_space else LINK_DOWN}"
            if out_of_space:
                delay = backoff(6, cap=min(SPACE_WAIT, self.cfg.retry_max_seconds))
            else:
                delay = backoff(max(1, self.link_failures), cap=self.cfg.retry_max_seconds)
            said = (entry.reason or "").startswith(waiting)  # warn once, not at every try
            level = logging.DEBUG if said else logging.WARNING
            self.state.update(entry, due=time.time() + delay, reason=f"{waiting}: {why}", **changes)
            log.log(
                level,
                "%s: %s failed %s (%s); trying again in %.0f s, not counted as a failed attempt",
                entry.name,
                hop,
                "for lack of disk space" if out_of_space else "because the link to central is down",
                why,
                delay,
            )
            return True
        tries = entry.tries + 1
        if tries >= self.cfg.max_attempts:
            self.move(entry, self.FAILED, tries=tries, reason=f"{hop}: {why}", **changes)
            log.error(
                "%s: %s failed %s, giving up: %s. %s",
                entry.name,
                hop,
                count(tries, "time"),
                why,
                GIVE_UP_ADVICE.get(hop, "The data stays where it is."),
            )
            return False
        delay = backoff(tries, cap=self.cfg.retry_max_seconds)
        self.state.update(entry, tries=tries, due=time.time() + delay, reason=f"{hop}: {why}", **changes)
        log.warning("%s: %s failed (%s); retry %d in %.1f s", entry.name, hop, why, tries, delay)
        return True

    def _needs_person(self, entry: Entry, hop: str, why: str, **changes: Any) -> None:
        delay = backoff(max(1, self.link_failures), cap=self.cfg.retry_max_seconds)
        self.state.update(entry, due=time.time() + delay, reason=needs_person_reason(hop, why), **changes)
        now = time.monotonic()
        if now - self.person_told < PERSON_REPEAT:
            log.debug("%s: %s refused again (%s); trying again in %.0f s", entry.name, hop, why, delay)
            return
        self.person_told = now
        log.error(
            "%s: %s refused by ssh: %s. This needs a person: fix the key, known host or host name for "
            "central (`synkler check` tests them). Entries wait and are tried again, not counted as "
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
        """Group entries for transfer runs: many small entries share one rsync run, big ones go alone.

        Only entries on their first try are grouped: one that failed before goes alone, so a single
        bad entry cannot hold a whole batch back. Returns at most as many batches as there are free
        transfer slots, oldest entries first.
        """
        free = self.cfg.max_transfers - self.jobs.transfers
        out: list[list[Entry]] = []
        open_batches: dict[object, tuple[list[Entry], int]] = {}
        for entry in entries:
            alone = bool(entry.tries) or entry.size >= BATCH_BYTES
            key = group(entry)
            batch, size = ([], 0) if alone else open_batches.get(key, ([], 0))
            if not batch:
                if len(out) >= free:
                    continue  # no slot for a new run; entries of open batches may still join
                out.append(batch)
            batch.append(entry)
            if alone:
                continue
            size += entry.size
            if len(batch) >= BATCH_ENTRIES or size >= BATCH_BYTES:
                open_batches.pop(key, None)  # full: the next entry of this group starts a new batch
            else:
                open_batches[key] = (batch, size)
        return out

    # cleanup scripts -----------------------------------------------------------------------------

    def cleanup_target(self, entry: Entry) -> tuple[str, str]:
        """(%f, %F) for the entry's cleanup script: its name and full path on this host."""
        raise NotImplementedError

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
        content = cleanup.Content(entry.kind, entry.md5, entry.signature)
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
        return super().refusal(action, entry, latest, present=present)

    def retry(self, entry: Entry) -> str:
        if entry.state == self.DONE:
            return self.retry_cleanup(entry)
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
