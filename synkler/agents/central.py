"""The central role: admit offers, verify what upload pushed, hand it to download, expire it.

Central never opens an ssh connection: upload pushes into its spool (synkler.agents.spool) and
download pulls from it. Big files are hashed while they arrive (synkler.agents.followers).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import MessageError
from ..hops.checksum import md5_entry
from ..hops.follow import Follower, pulled_early, verified_md5, worth_following
from ..linux.fs import remove_tree
from ..messages import (
    Admit,
    Corrupt,
    Delivered,
    Failed,
    Fetch,
    Fetched,
    Forget,
    Offer,
    Pushing,
    Sent,
    Wait,
    Withdraw,
)
from ..state import Entry, State
from ..text import count as counted
from .base import (
    CENTRAL,
    DOWNLOAD,
    ENTRY,
    GIVE_UP_ADVICE,
    RECHECK,
    RETRY,
    Agent,
    Jobs,
    Key,
    Status,
    Transitions,
    hash_groups,
)
from .facts import ADMISSION_AT_CENTRAL, PULL, PUSH, STORE_AT_CENTRAL, UPLOAD_TO_CENTRAL, facts, hop
from .followers import Followers
from .pools import Pool
from .spool import Spool

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

MAX_ADMITTED = 2000  # entries admitted but not yet verified; free space is the other limit
ADMIT_RECHECK = 1.0  # seconds: waiting entries are looked at again this often (free space changes)
SWEEP_INTERVAL = 60.0  # seconds between looks for stale partial files


class Mid(Status):
    """Central's entry states."""

    WAITING = "waiting"
    UPLOADING = "uploading"
    VERIFYING = "verifying"
    DOWNLOADING = "downloading"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    FAILED = "failed"
    FORGOTTEN = "forgotten"


# An operator may forget an entry not delivered yet (at any role: the forget is passed on); a failed
# entry is delivered after all if download, retried there, gets the verified copy central kept.
FORGETTABLE = frozenset({Mid.WAITING, Mid.UPLOADING, Mid.VERIFYING, Mid.DOWNLOADING, Mid.FAILED})
TRANSITIONS: Transitions = {
    Mid.WAITING: frozenset({Mid.UPLOADING, Mid.WITHDRAWN, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.UPLOADING: frozenset({Mid.VERIFYING, Mid.WITHDRAWN, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.VERIFYING: frozenset({Mid.DOWNLOADING, Mid.UPLOADING, Mid.WITHDRAWN, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.DOWNLOADING: frozenset({Mid.DELIVERED, Mid.WAITING, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.DELIVERED: frozenset({Mid.EXPIRED}),
    Mid.EXPIRED: frozenset(),
    Mid.WITHDRAWN: frozenset(),
    Mid.FAILED: frozenset({Mid.DELIVERED, Mid.FORGOTTEN}),
    Mid.FORGOTTEN: frozenset(),
}
IN_FLIGHT = (Mid.WAITING, Mid.UPLOADING, Mid.VERIFYING)  # their staged copies may still be needed
KEEP_STORED = (Mid.VERIFYING, Mid.DOWNLOADING, Mid.DELIVERED, Mid.FAILED)  # their stored/ copies stay
# The reasons of entries that wait for room on file_dir say one of these.
ROOM_WAIT, ABOVE_RESERVE = "waiting for room", "available above the"
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


@dataclass(frozen=True)
class Checked:
    """The md5 of what upload pushed; `in_store`: found already moved to stored/ (a crash between
    that rename and its commit)."""

    md5: str
    in_store: bool


@dataclass(frozen=True)
class ToCheck:
    """A staged copy to check: where it is (or, after a crash, was moved to) and its expected md5."""

    entry_id: str
    name: str
    staged: str
    stored: str
    expected: str


def check_pushed(
    items: list[ToCheck], take_follower: Callable[[str], Follower | None]
) -> list[Checked | Exception]:
    """md5 of staged copies, each on its own (one that cannot be read does not stop the others). A
    big file's follower usually has the md5 already (synkler.hops.follow)."""
    results: list[Checked | Exception] = []
    for item in items:
        follower = take_follower(item.entry_id)
        try:
            followed = follower.finish() if follower else None
            if not os.path.lexists(item.staged) and os.path.lexists(item.stored):
                results.append(Checked(md5_entry(item.stored), True))
            else:
                md5, unread = verified_md5(item.staged, item.expected, followed)
                if unread:
                    log.debug("%s: hashed while it arrived", item.name)
                results.append(Checked(md5, False))
        except Exception as e:  # this entry only; the others of the group go on
            results.append(e)
    return results


class Central(Agent):
    mode = "central"
    STATES = Mid
    NEW = (Mid.WAITING,)
    TRANSITIONS = TRANSITIONS
    FORGOTTEN = Mid.FORGOTTEN
    FORGETTABLE = FORGETTABLE
    FINISHED = FINISHED

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
        }
        self.spool = Spool(self.cfg)
        self.followers = Followers(self.cfg.max_transfers)
        self.next_sweep = 0.0
        self.next_admit_check = 0.0
        self.admit_due = self.verify_due = True
        self.overtaken: dict[str, int] = {}  # waiting entry id -> bytes admitted past it (see _admit_waiting)

    def startup(self) -> None:
        in_flight = {(e.peer or "", e.name) for e in self.state.by_state(*IN_FLIGHT)}

        def keep_stored(entry_id: str) -> str | None:
            entry = self.state.get(entry_id)
            if entry is None:
                return "unknown entry"
            return None if entry.state in KEEP_STORED else entry.state

        self.spool.reconcile(in_flight, keep_stored)
        self._follow_more()  # pushes cut short by the stop start again

    def shutdown(self) -> None:
        self.followers.stop_all()

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

    # messages ------------------------------------------------------------------------------------

    def on_offer(self, msg: Offer) -> None:
        if msg.sender in (CENTRAL, DOWNLOAD):
            raise MessageError(f"offer from {msg.sender!r}: only upload agents offer")
        known = self.state.get(msg.entry)
        if known is not None:
            if known.peer != msg.sender:
                raise MessageError(
                    f"offer of entry {msg.entry} from {msg.sender!r}: {known.peer!r} offered it"
                )
            return  # a duplicate offer: already handled
        entry = self.create(self.entry_from(msg, Mid.WAITING))
        self.admit_due = True
        log.debug("%s: offered by %s (%d bytes)", entry.name, entry.peer, entry.size)
        # admitted (or told to wait) by the tick that follows, in offer order

    def on_sent(self, msg: Sent) -> None:
        entry = self.entry_for(msg)
        if entry.state == Mid.UPLOADING and msg.attempt == entry.attempt:
            self.move(entry, Mid.VERIFYING, md5=msg.md5, tries=0, due=0)
            self.verify_due = True

    def on_fetched(self, msg: Fetched) -> None:
        entry = self.entry_for(msg, DOWNLOAD)
        # A failed entry too: download, retried by an operator, got the verified copy central kept.
        if entry.state in (Mid.DOWNLOADING, Mid.FAILED):
            keep = self.cfg.keep_minutes * 60
            self.move(entry, Mid.DELIVERED, stored_as=msg.stored_as, due=time.time() + keep, reason=None)
            self.send(entry.peer or "", Delivered(entry.id, self.name, stored_as=msg.stored_as))
            log.info(
                "%s: delivered to %s as %s; central copy kept %g min",
                entry.name,
                msg.sender,
                msg.stored_as,
                self.cfg.keep_minutes,
            )

    def on_corrupt(self, msg: Corrupt) -> None:
        entry = self.entry_for(msg, DOWNLOAD)
        if entry.state == Mid.DOWNLOADING and not self.jobs.busy(Key(RECHECK, entry.id)):
            log.warning(
                "%s: download got md5 %s instead of %s; checking central's copy",
                entry.name,
                msg.got,
                entry.md5,
            )
            self._recheck(entry)

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
        entry = self.entry_for(msg, (known.peer if known else None) or "", DOWNLOAD)
        if entry.state not in (Mid.DELIVERED, Mid.EXPIRED, Mid.FAILED, Mid.WITHDRAWN, Mid.FORGOTTEN):
            reason = f"{msg.hop}: {msg.reason}"
            self.move(entry, Mid.FAILED, reason=reason)
            self._unfollow(entry.id)
            log.error("%s: %s reports failure: %s", entry.name, msg.sender, reason)
            if msg.sender != entry.peer:
                self.send(entry.peer or "", Failed(entry.id, self.name, hop=msg.hop, reason=msg.reason))

    # an operator's requests ----------------------------------------------------------------------

    @classmethod
    def refusal(cls, action: str, entry: Entry, latest: bool, *, present: bool = True) -> str | None:
        if action == RETRY:
            return (
                "central does not retry: run `synkler retry` on upload (it sends the entry again), or on "
                "download for a failed pull (it pulls central's verified copy again)"
            )
        return super().refusal(action, entry, latest, present=present)

    def peers(self, entry: Entry) -> list[str]:
        return [entry.peer or "", DOWNLOAD]

    def drop(self, entry: Entry) -> None:
        """Its copies go: the staged one (a running push may still write there: the sweep removes that a
        minute later, as for a withdrawn version) and the stored one. A running md5 check or expiry
        finds the entry forgotten and records nothing."""
        self._unfollow(entry.id)
        if entry.state in (Mid.UPLOADING, Mid.VERIFYING):  # only then is the staging path this version's
            self.spool.drop_staged(entry)
            self.spool.drop_partial(entry)
        self.spool.drop_stored(entry.id)
        self.admit_due = True  # its room and its name are free

    # admission -----------------------------------------------------------------------------------

    def _admit_waiting(self) -> None:
        """Admit waiting entries, oldest first, while there is room; tell the others why they wait.

        Room: at most MAX_ADMITTED entries between admission and verification, one version of a name
        per upload agent at a time (they share a staging path), and free space on file_dir's
        filesystem above the free_percent reserve, minus what admitted entries have yet to bring.

        An entry bigger than the whole filesystem above the reserve can never be admitted: it fails
        at once. One that does not fit now waits, and later entries that fit may pass it, until
        together they have taken as many bytes as it needs; then later entries wait behind it
        until it fits (the space admitted entries take is freed keep_minutes after delivery). So a
        big entry neither blocks the relay while space is there nor waits for ever behind smaller
        ones. What has passed it is counted in memory: a restart of central lets as much pass again.
        """
        waiting = self.state.by_state(Mid.WAITING)
        self.overtaken = {e.id: self.overtaken.get(e.id, 0) for e in waiting}
        if not waiting:
            return
        active = self.state.by_state(Mid.UPLOADING, Mid.VERIFYING)
        count = len(active)
        busy_names = {(e.peer, e.name) for e in active}
        room = self.spool.room() - sum(e.size for e in active if e.state == Mid.UPLOADING)
        capacity = self.spool.capacity()
        first: Entry | None = None  # the oldest entry that waits for room; later ones may pass it
        blocked = None  # once set, later entries queue behind the entry that set it
        for entry in waiting:
            if entry.size > capacity:
                self._never_fits(entry, capacity)
                continue
            if blocked:
                why = f"older entries are {ROOM_WAIT}"
            elif count >= MAX_ADMITTED:
                why = blocked = f"{counted(count, 'entry')} admitted and not yet verified"
            elif (entry.peer, entry.name) in busy_names:
                why = "another version of this name is still being uploaded"
            elif entry.size > room:
                available, reserve_pct = max(0, int(room)), self.cfg.free_percent
                why = f"needs {entry.size} bytes, {available} {ABOVE_RESERVE} {reserve_pct}% reserve"
                if first is None:
                    first = entry
                    if self.overtaken[entry.id] >= entry.size:
                        blocked = why  # others have had their turn: now they wait for this one
            else:
                self._admit(entry)
                if first is not None:
                    self.overtaken[first.id] += entry.size
                count += 1
                busy_names.add((entry.peer, entry.name))
                room -= entry.size
                continue
            if entry.reason != why:  # say it once per reason, not at every tick
                self.state.update(entry, reason=why)
                self.send(entry.peer or "", Wait(entry.id, self.name, reason=why))
                log.info("%s: waiting: %s", entry.name, why)

    def _never_fits(self, entry: Entry, capacity: float) -> None:
        why = (
            f"needs {entry.size} bytes, more than central's file system can ever hold: "
            f"{max(0, int(capacity))} bytes above the {self.cfg.free_percent}% reserve"
        )
        # The reason names its hop, as every failed entry's does: the notice and status say where.
        self.move(entry, Mid.FAILED, reason=f"{ADMISSION_AT_CENTRAL}: {why}")
        self.send(entry.peer or "", Failed(entry.id, self.name, hop=ADMISSION_AT_CENTRAL, reason=why))
        log.error("%s: %s; giving up at once. %s", entry.name, why, GIVE_UP_ADVICE[ADMISSION_AT_CENTRAL])

    def _admit(self, entry: Entry) -> None:
        self.spool.prepare(entry)
        self.move(entry, Mid.UPLOADING, attempt=entry.attempt + 1, tries=0, reason=None)
        self.send(
            entry.peer or "",
            Admit(entry.id, self.name, attempt=entry.attempt, dest=self.spool.staging(entry)),
        )
        if pulled_early(entry.kind, entry.size):
            path = self.spool.growing(entry.id)
            self.send(DOWNLOAD, Pushing(entry.id, self.name, size=entry.size, path=path))
        self._follow(entry)

    # jobs ----------------------------------------------------------------------------------------

    def look_again(self) -> None:
        self.admit_due = self.verify_due = True

    def tick(self, now: float) -> None:
        # The loop ticks after every message batch and finished job: look at the (possibly
        # thousands of) waiting and verifying entries only when something may have changed.
        if self.admit_due or now >= self.next_admit_check:
            self.admit_due, self.next_admit_check = False, now + ADMIT_RECHECK
            self._admit_waiting()
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
        self.prune_history(now)

    def _verify(self, group: list[Entry]) -> None:
        """md5 of the staged copies of a group of entries, by one job (small entries share one:
        one hand-over and one wake-up of the loop instead of one per entry)."""
        items = [
            ToCheck(e.id, e.name, self.spool.staged(e), self.spool.stored(e.id), e.known_md5()) for e in group
        ]
        self.jobs.submit(
            Pool.HASH,
            [Key(ENTRY, e.id) for e in group],
            functools.partial(check_pushed, items, self.followers.take),
            functools.partial(self._checked, group),
        )

    def _checked(
        self, group: list[Entry], results: list[Checked | Exception] | None, error: BaseException | None
    ) -> None:
        # Whatever happens below (even a rollback), look at verifying entries and admission again.
        self.verify_due = self.admit_due = True
        if any(worth_following(e.kind, e.size, e.files) for e in group):
            self._follow_more()  # a follower is free again
        self.record_each(group, results, error, self._verified, "its md5 check")

    def _verified(self, entry: Entry, result: Checked | BaseException) -> None:
        """Record one md5 check: on a match move the copy into stored/ and tell download."""
        entry_now = self.entry(entry.id)
        if entry_now.state != Mid.VERIFYING:
            return
        self.spool.drop_growing(entry.id)  # download pulls the rest from stored/, or all of it again
        checked = result if isinstance(result, Checked) else None
        if checked is not None and checked.md5 == entry.md5:
            if not checked.in_store:
                self.spool.store(entry)
            self.spool.drop_partial(entry)
            stored = self.spool.stored(entry.id)
            self.move(entry_now, Mid.DOWNLOADING, tries=0, path=stored)
            self.send(
                DOWNLOAD,
                Fetch(
                    entry.id,
                    self.name,
                    name=entry.name,
                    kind=entry.kind,
                    size=entry.size,
                    files=entry.files,
                    md5=entry.known_md5(),
                    attempt=entry_now.attempt,  # grows when central had to get the entry again
                    path=stored,
                ),
            )
            log.info("%s: md5 verified at central (%s); download may fetch it", entry.name, checked.md5)
            return
        why = (
            f"md5 mismatch at central: expected {entry.md5}, got {checked.md5}"
            if checked is not None
            else f"cannot read upload: {result}"
        )
        if checked is not None:
            self.state.after_commit(functools.partial(self.observer.mismatch, PUSH))
        self.spool.drop_staged(entry)
        if entry_now.attempt >= self.cfg.max_attempts:
            self._give_up(entry_now, UPLOAD_TO_CENTRAL, why)
        else:
            log.warning("%s: %s; asking upload again", entry.name, why)
            self._admit(entry_now)

    def _give_up(self, entry: Entry, hop: str, why: str) -> None:
        """max_attempts uploads did not give a good copy: fail the entry and tell upload."""
        self.move(entry, Mid.FAILED, reason=f"{hop}: {why}")
        self.send(entry.peer or "", Failed(entry.id, self.name, hop=hop, reason=why))
        log.error(
            "%s: %s after %s; giving up. %s",
            entry.name,
            why,
            counted(entry.attempt, "attempt"),
            GIVE_UP_ADVICE[hop],
        )

    def _recheck(self, entry: Entry) -> None:
        """Verify the stored copy again; if it went bad, drop it and get the entry again from upload."""
        self.jobs.submit(
            Pool.HASH,
            [Key(RECHECK, entry.id)],
            functools.partial(md5_entry, self.spool.stored(entry.id)),
            functools.partial(self._rechecked, entry.id),
        )

    def _rechecked(self, entry_id: str, md5: str | None, error: BaseException | None) -> None:
        entry = self.entry(entry_id)
        if entry.state != Mid.DOWNLOADING:
            return
        if md5 == entry.md5:
            log.info("%s: central's copy is intact; download pulls again", entry.name)
            return
        why = f"stored copy at central went bad (md5 {md5})" if md5 else f"stored copy unreadable: {error}"
        self.spool.drop_stored(entry.id)
        if entry.attempt >= self.cfg.max_attempts:
            self._give_up(entry, STORE_AT_CENTRAL, why)
            return
        log.warning("%s: %s; getting it again from upload", entry.name, why)
        self.move(entry, Mid.WAITING, reason=why)
        self.admit_due = True

    def _expire(self, entry: Entry) -> None:
        self.jobs.submit(
            Pool.REMOVE,
            [Key(ENTRY, entry.id)],
            functools.partial(remove_tree, self.spool.stored(entry.id)),
            functools.partial(self._expired, entry.id),
        )

    def _expired(self, entry_id: str, _result: None, error: BaseException | None) -> None:
        self.admit_due = True  # space was freed
        entry = self.entry(entry_id)
        if error is not None:
            log.error("%s: cannot remove central copy %s: %s", entry.name, self.spool.stored(entry_id), error)
            self.state.update(entry, due=time.time() + 60)
            return
        self.move(entry, Mid.EXPIRED)
        log.info("%s: central copy removed (%g min after delivery)", entry.name, self.cfg.keep_minutes)
