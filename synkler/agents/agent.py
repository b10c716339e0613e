"""The core of every role (`Agent`): its entries' states and the moves between them, message
dispatch, the outbox, and an operator's requests (retry, forget, resend).

An agent reacts to messages, job results and time; it never talks to the broker itself and never
waits for a job. The runtime (synkler.runtime.loop) runs it: it hands each message to `on_message`,
runs the jobs an agent submits on worker threads and hands their outcome back in the main loop,
and calls `tick` after each pass. A test can do the same with jobs run at once (tests/support/fakes.py).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from .. import messages, places
from ..errors import MessageError, NotYet, Refused
from ..messages import EntryMessage, Forget, Message
from ..state import Ended, Entry, Request, State
from ..text import shown
from . import waits
from .base import (
    ACTIONS,
    ENTRY,
    FORGET,
    RESEND,
    RETRY,
    Jobs,
    Key,
    Observer,
    Status,
    T,
    Transitions,
    job_error,
)
from .history import History

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")


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

    def took_over(self) -> None:
        """This agent was a standby and has just taken its queue over from another of its name,
        whose state it does not have (upload and download then greet the centrals:
        synkler.agents.greeting; a central of a pool greets its upload agents, which re-own what
        they held at it: synkler.agents.central_pool). Called before `startup`, in its transaction."""

    def on_message(self, msg: Message) -> None:
        """Act on one message, inside the caller's savepoint; MessageError dead-letters it."""
        handler = self.handlers.get(type(msg))
        if handler is None:
            raise MessageError(f"{self.mode} does not take {msg.TYPE!r} messages")
        stale = self.fenced(msg) if self.pooled else None
        if stale is not None:
            log.info("%s from %s about entry %s ignored: %s", msg.TYPE, msg.sender, msg.entry, stale)
            return
        try:
            handler(msg)
        except Pruned as e:  # raised by entry_for, before the handler changed anything
            log.info("%s", e)

    @property
    def pooled(self) -> bool:
        """Is this agent part of a pool of centrals (`centrals` at upload and download, `uploads` at
        central)? Then every message about an entry carries its epoch."""
        return bool(self.cfg.centrals or self.cfg.uploads)

    def fenced(self, msg: Message) -> str | None:
        """In a pool: why a message belongs to an ownership of its entry that has ended (an old
        epoch), so that it must not act; None: it may."""
        return None

    def tick(self, now: float) -> None:
        """Start what is due. Called often: keep it cheap."""

    def next_wakeup(self) -> float | None:
        """When `tick` next has something to do on its own (None: nothing timed)."""
        return None

    def offer_room(self) -> int:
        """Central in a pool: how many offers it may take now (0: none; its consumers of the
        offers queues are cancelled while it has no room)."""
        return 0

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
        """Queue a message in the outbox, in the caller's transaction. In a pool, a message about an
        entry carries the entry's epoch as this agent knows it."""
        if self.pooled and getattr(msg, "epoch", 0) is None:
            msg = dataclasses.replace(msg, epoch=self.state.epoch(msg.entry) or None)  # type: ignore[call-arg]
        self.state.enqueue(to, messages.encode(msg))

    def create(self, entry: Entry) -> Entry:
        """Record a new entry, in one of the role's `NEW` states."""
        if entry.state not in self.NEW:
            raise TransitionError(f"{self.mode}: a new entry cannot start in {entry.state!r}")
        created = self.state.insert(entry)
        self._tell_moved(None, created)
        return created

    def move(self, entry: Entry, to: Status, **changes: Any) -> Entry:
        """Change an entry's state (and other fields) as the role's transition table allows."""
        if to != entry.state and to not in self.TRANSITIONS.get(self.STATES(entry.state), ()):
            raise TransitionError(f"{self.mode}: entry {entry.id}: {entry.state} -> {to} is not a transition")
        old = entry.state
        moved = self.state.update(entry, state=to, **changes)
        if to != old:
            self._tell_moved(old, moved)
        return moved

    def _tell_moved(self, old: str | None, entry: Entry) -> None:
        """Tell the observer (metrics) of a new entry or a change of state once it commits, with a
        copy: the entry may change again before the commit. Nothing at all when no observer listens
        (no metrics): a copy and a callback per step of every entry are not free."""
        if type(self.observer).moved is Observer.moved:
            return
        self.state.after_commit(functools.partial(self.observer.moved, old, copy.copy(entry)))

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

    def on_central(self, msg: Message, field: str, *parts: str) -> None:
        """Refuse (dead-letter) the path on central in `msg`'s `field` unless it is central's
        directory of this instance (as central announces it) joined with exactly `parts`, compared
        in full: an agent never reads or writes anywhere else on central. While central has never
        said where its directory is, the message waits (NotYet); with `authenticate`, a message
        the broker proves central sent says it itself (places.vouched): another agent's login that
        holds central's presence reports stalls nothing. In a pool, the central is the message's
        sender (one of `centrals`, checked by `from_central`)."""
        path = getattr(msg, field)
        central = msg.sender if self.cfg.centrals else None
        place = self.jobs.central_place(central=central)
        if place is None or not places.is_exactly(path, place, *parts):
            place = self.jobs.central_place(fresh=True, central=central)  # it may have moved (a new config)
        if place is None and self.cfg.authenticate and msg.sender in self.cfg.central_names:
            place = places.vouched(path, self.cfg.id, *parts)
        if place is None:
            raise NotYet(f"{msg.TYPE}: {msg.sender} has not yet announced where its directory is")
        if not places.is_exactly(path, place, *parts):
            raise MessageError(
                f"{msg.TYPE}: {field} {path!r} is not <central's file_dir>/{self.cfg.id}/{'/'.join(parts)} "
                f"({places.at(place, *parts)!r}, as {msg.sender} announces it)"
            )

    def from_central(self, msg: Message) -> None:
        """Refuse a message that only central (a central of the pool) may send, from anyone else."""
        if msg.sender not in self.cfg.central_names:
            allowed = " or ".join(repr(c) for c in self.cfg.central_names)
            raise MessageError(f"{msg.TYPE} from {msg.sender!r}: only {allowed} sends it")

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
        if ":" in action:
            return "only central forgets an entry at one destination (`synkler forget --to` there)"
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
        cause = waits.selected(request.entry)
        if cause is not None:  # `synkler retry --waiting [CAUSE]`: the entries are picked now
            if request.action != RETRY:
                raise Refused(f"{request.action!r} takes one entry, not all those waiting")
            return self.retry_waiting(cause)
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
        return self.resend(entry, request.action.partition(":")[2] or None)

    def retry(self, entry: Entry) -> str:
        """Take up again an entry in one of the RETRYABLE states; the answer for the operator."""
        raise Refused(f"{shown(entry.name)}: the {self.mode} agent does not retry")

    def resend(self, entry: Entry, to: str | None = None) -> str:
        """Send the entry again (`to`: to that destination only); the answer for the operator."""
        raise Refused(f"{shown(entry.name)}: the {self.mode} agent does not send entries")

    def retry_waiting(self, cause: str) -> str:
        """End now the waits of every entry waiting for `cause` (waits.ANY: for anything), as an
        operator asks (`synkler retry --waiting`); the answer for the operator."""
        raise Refused(f"the {self.mode} agent has no entries that wait for a retry")

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
