"""The download role: pull verified entries from central, verify them again, publish them by rename.

The pulls themselves are in synkler.hops.pull, the early pull of a big file while it is pushed in
synkler.hops.early; the choice of a name that overwrites nothing in synkler.agents.naming. Download's
parts: its pulls (download_pulls.py), placing (download_place.py), receipts and receipt documents
(download_proofs.py), bundles (download_bundles.py) and a pool of centrals (download_pool.py). After the
md5 matches, the entry is renamed into ``file_dir`` without ever replacing anything: an existing
entry of the same name and other content is kept and the new one is placed beside it as
``name (2).ext``. Same name and same md5: already there, nothing to do.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from typing import TYPE_CHECKING

from ..hops import cleanup
from ..hops.bagit import payload_of
from ..hops.early import EARLY_QUEUE, Early
from ..hops.pull import Staging
from ..linux.fs import remove_tree
from ..messages import Fetch, Forget, Greeted, Pushing, is_valid_entry_id
from ..metadata import canonical
from ..private import private_dir
from ..state import Entry, State
from ..text import shown
from .base import ENTRY, RESEND, Jobs, Key, Status, Transitions
from .download_pulls import Pulls
from .facts import DISK_WAIT, PULL, PULL_FROM_CENTRAL, facts, hop
from .naming import BAGIT

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

EARLY_KEEP = 600.0  # seconds an early copy whose fetch never came is kept (central gave it up)


def _early_copy(name: str, path: str) -> bool:
    """Can this item of staging be a copy an early pull left? A regular file named by an entry id."""
    try:
        return is_valid_entry_id(name) and stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


class Down(Status):
    """Download's entry states."""

    FETCHING = "fetching"
    PLACING = "placing"
    DELIVERED = "delivered"
    DONE = "done"
    FAILED = "failed"
    FORGOTTEN = "forgotten"


# An operator may forget an entry not placed yet, retry a failed one (failed -> fetching, as a fetch
# with a higher attempt does) and run a failed cleanup script again (done -> delivered).
FORGETTABLE = frozenset({Down.FETCHING, Down.PLACING, Down.FAILED})
TRANSITIONS: Transitions = {
    Down.FETCHING: frozenset({Down.PLACING, Down.DONE, Down.FAILED, Down.FORGOTTEN}),
    Down.PLACING: frozenset({Down.FETCHING, Down.DELIVERED, Down.DONE, Down.FORGOTTEN}),
    Down.DELIVERED: frozenset({Down.DONE}),
    Down.DONE: frozenset({Down.DELIVERED}),
    Down.FAILED: frozenset({Down.FETCHING, Down.FORGOTTEN}),
    Down.FORGOTTEN: frozenset(),
}
# The states an entry ends in at this role (pruned from the history keep_history_days later).
FINISHED = (Down.DONE, Down.FORGOTTEN)
# What observers know of these states (synkler.agents.facts).
FACTS = facts(
    "download",
    Down,
    finished=FINISHED,
    failed=Down.FAILED,
    receiving=Down.FETCHING,
    hashing=[Down.FETCHING],
    transferring=[Down.FETCHING],
    disk_waits=(DISK_WAIT,),
    given_up=(Down.FAILED, Down.FORGOTTEN),
    # fetch -> pulled and md5 verified (placing), or found already there (done). Only from fetching:
    # the later delivered -> done, once the cleanup script ran, is not a second pull.
    hops=(hop(PULL, [Down.FETCHING], [Down.PLACING, Down.DONE]),),
)


class Download(Pulls):
    mode = "download"
    STATES = Down
    NEW = (Down.FETCHING,)
    TRANSITIONS = TRANSITIONS
    DELIVERED, DONE, FAILED, FORGOTTEN = Down.DELIVERED, Down.DONE, Down.FAILED, Down.FORGOTTEN
    PLACING, FETCHING = Down.PLACING, Down.FETCHING
    FORGETTABLE = FORGETTABLE
    TRANSFERRING, HOP = Down.FETCHING, PULL_FROM_CENTRAL
    RETRYABLE = frozenset({Down.FAILED})
    FINISHED = FINISHED

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        self.handlers = {
            Pushing: self.on_pushing,
            Fetch: self.on_fetch,
            Forget: self.on_forget,
            Greeted: self.on_greeted,
        }
        self.staging = Staging(self.cfg)
        self.place_due = True  # set when an entry's name was chosen and it may be renamed into place
        self.early: dict[str, Early] = {}  # entry id -> its early pull (memory only)
        self.early_forgotten: set[str] = set()  # early pulls still running for entries central forgot
        self.pushed: dict[str, Pushing] = {}  # pushes begun, to pull early when a slot is free (memory only)
        self.full_at: int | None = None  # free bytes in staging when a pull last found the disk full
        self.next_disk_look = 0.0

    def cleanup_target(self, entry: Entry) -> tuple[str, str]:
        stored_as = entry.stored_as or entry.name
        return stored_as, os.path.join(self.cfg.file_dir, stored_as)

    def cleanup_content(self, entry: Entry) -> cleanup.Content:
        # With `layout: bagit`, %F is the entry's bag and what was delivered is in it.
        inside = payload_of(entry.name) if self.cfg.layout == BAGIT else ""
        return cleanup.Content(entry.kind, entry.md5, entry.signature, inside)

    def startup(self) -> None:
        if self.receipt_key is None:
            log.warning(
                "receipt_key is not set: deliveries are not proven (download signs no receipt, so upload "
                "and central cannot tell them from forged ones); see docs/security.md, 'Delivery receipts'"
            )
        private_dir(self.staging.dir)  # data in transit: the agent's user's alone
        # A pull cut short keeps what it got, and rsync's partial file, for its entry's next run;
        # so does an early pull whose fetch has not come yet. Anything else in staging is left over.
        now = time.time()
        for name, path in self.staging.leftovers():
            entry = self.state.get(_entry_id_of(name))
            if entry is not None and entry.state in (Down.FETCHING, Down.PLACING):
                continue
            if entry is None and path == self.staging.of(name) and _early_copy(name, path):
                self._keep_early(name, path, now)
                continue
            log.info("removing leftover staging %s", os.path.relpath(path, self.staging.dir))
            remove_tree(path)
        self.staging.drop_empty_partial_dir()
        self.resume_cleanups()
        self.greet_again()

    def _keep_early(self, entry_id: str, path: str, now: float) -> None:
        """Keep the copy an early pull left for its fetch (or a `pushing` sent again), to go on from.

        Its md5 is made again from the bytes on disk by the job that next uses it, on a worker: a
        big copy neither blocks the main loop nor holds a stop. Never fetched, it goes EARLY_KEEP
        seconds from now, as any early copy.
        """
        log.info(
            "keeping the early copy of entry %s (%d bytes) for its fetch", entry_id, os.lstat(path).st_size
        )
        self.early[entry_id] = Early(path, ended=now)

    # messages ------------------------------------------------------------------------------------

    def on_pushing(self, msg: Pushing) -> None:
        self.from_central(msg)
        self.on_central(msg, "path", "growing", msg.entry)
        early = self.early.get(msg.entry)
        if (
            self.state.get(msg.entry) is None
            and not self.history.may_have_pruned(msg)  # a copy, about an entry delivered long ago
            and (early is None or early.ended is not None)  # not pulling it early right now
        ):
            # Pulled early by the tick of this pass, after the fetches (they go first), or once a
            # slot is free; the oldest are forgotten beyond EARLY_QUEUE (they are pulled after
            # their fetch, as any entry).
            self.pushed.pop(msg.entry, None)
            self.pushed[msg.entry] = msg
            for old in list(self.pushed)[: max(0, len(self.pushed) - EARLY_QUEUE)]:
                del self.pushed[old]

    def on_fetch(self, msg: Fetch) -> None:
        self.from_central(msg)
        self.on_central(msg, "path", "stored", msg.entry)
        entry = self.state.get(msg.entry)
        newer = self.newer(msg)  # read before new_owner records the new epoch
        self.pushed.pop(msg.entry, None)
        if msg.entry in self.early:
            self.early[msg.entry].fetched.set()
        if entry is None and self.history.may_have_pruned(msg):
            self._not_fetched(msg)
        elif entry is None:
            entry = self.create(self.entry_from(msg, Down.FETCHING, attempt=msg.attempt, path=msg.path))
            if msg.epoch is not None:
                self.state.put_epoch(entry.id, msg.epoch)
            self.state.put_metadata(entry.id, canonical(msg.meta) if msg.meta else None)
            self.state.put_source(entry.id, msg.source)
            self._second_hash(msg)
            self.transfer_due = True
        elif self.pooled and self.new_owner(msg, entry):
            return
        elif entry.state in (Down.FETCHING, Down.FAILED) and (
            msg.attempt > entry.attempt or newer or (self.pooled and msg.path != entry.path)
        ):
            # Central has a fresh copy (it found its stored one bad and got it again from upload), or
            # upload re-owned the entry (a newer epoch): pulled afresh from that copy.
            self.move(entry, Down.FETCHING, attempt=msg.attempt, path=msg.path, tries=0, due=0)
            self.state.put_source(entry.id, msg.source)
            self._second_hash(msg)
            self.transfer_due = True
        elif entry.state == Down.FAILED and msg.again and msg.attempt == entry.attempt:
            # Central asks again (an operator's `synkler retry --to` there): pulled from its copy.
            self.move(entry, Down.FETCHING, tries=0, due=0, reason=None)
            self.transfer_due = True
            log.info("%s: central asks again (%s): pulling it again", entry.name, shown(msg.again))

    def _second_hash(self, msg: Fetch) -> None:
        """The entry's second hash: upload's, as central passes it on; without one, download's own
        `checksum:` if it asks for one (computed here only, so it is in the receipt, not compared
        with upload's: docs/checksums.md, "Where the choice lives")."""
        checksum = msg.checksum
        if not checksum and self.cfg.checksum != "md5":
            checksum = f"{self.cfg.checksum}:"  # to compute: download's own
        self.state.put_checksum(msg.entry, checksum)

    def _not_fetched(self, msg: Fetch) -> None:
        """A fetch for an entry this agent does not have, sent no later than entries it has pruned
        from its history: it may be a copy of a fetch delivered long ago (a message held back for
        longer than keep_history_days), and pulling it would deliver that entry twice. So it is not
        pulled: the entry is recorded as failed (shown by status, logged at ERROR) for a person to
        decide. Central is not told: for a copy, central forgot the entry too (a `failed` would be
        dead-lettered there); for a fetch that really is that late, central keeps its verified copy
        while it waits for `fetched`, so the entry can still be pulled."""
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.history.pruned_until))
        sent = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(msg.at or 0))
        why = (
            f"fetch sent {sent}, no later than entries this agent has pruned from its history (fetched "
            f"up to {until}): it may be a copy of one delivered before, so it is not pulled"
        )
        entry = self.create(self.entry_from(msg, Down.FETCHING, attempt=msg.attempt, path=msg.path))
        self.move(entry, Down.FAILED, reason=why)
        log.error(
            "%s: %s. If it was not delivered (look in %s), `synkler retry %s` on download pulls it "
            "(docs/runbook.md, 'A fetch older than the history')",
            entry.name,
            why,
            self.cfg.file_dir,
            entry.id,
        )

    # an operator's requests ----------------------------------------------------------------------

    def peers(self, entry: Entry) -> list[str]:
        return [entry.peer or self.cfg.central_name]

    def on_forget(self, msg: Forget) -> None:
        self.pushed.pop(msg.entry, None)
        early = self.early.get(msg.entry)
        if early is not None and msg.sender == self.cfg.central_name and self.state.get(msg.entry) is None:
            # Pulled early, and central forgot it before its fetch: what was pulled goes now (or
            # when the early pull ends), not EARLY_KEEP later. Nothing to pass on: download never had it.
            del self.early[msg.entry]
            early.fetched.set()
            if early.ended is None:
                self.early_forgotten.add(msg.entry)
            else:
                remove_tree(early.local)
            return
        super().on_forget(msg)

    @classmethod
    def refusal(cls, action: str, entry: Entry, latest: bool, *, present: bool = True) -> str | None:
        if action == RESEND:
            if entry.state in (Down.DELIVERED, Down.DONE):
                return None
            return f"it is {entry.state}: only a delivered entry's receipt can be sent again"
        return super().refusal(action, entry, latest, present=present)

    def retry_failed(self, entry: Entry) -> str:
        """Pull a failed entry again: central keeps the verified copy of an entry it could not deliver."""
        self.move(entry, Down.FETCHING, tries=0, due=0, reason=None)
        self.transfer_due = True
        return f"{shown(entry.name)} (entry {entry.id}): pulling it again from central's verified copy"

    def drop(self, entry: Entry) -> None:
        """What was pulled of it goes; if a pull (or an early pull) of it runs, once that has ended."""
        early = self.early.pop(entry.id, None)
        if early is not None:
            early.fetched.set()  # an early pull stops
        if not self.jobs.busy(Key(ENTRY, entry.id)):
            self.staging.drop(entry.id)

    # jobs ----------------------------------------------------------------------------------------

    def look_again(self) -> None:
        super().look_again()
        self.place_due = True

    def tick(self, now: float) -> None:
        due = self.due_for_transfer(Down.FETCHING, now)
        # An entry with an early copy goes alone: its run appends to that copy (hops.pull.finish_early).
        batches = self.batches(
            due, group=lambda e: (e.peer, os.path.dirname(e.path or ""), e.id if e.id in self.early else "")
        )
        for batch in batches:
            self._fetch(batch)
        if self.pushed:
            self._start_early(self.jobs.transfers + len(batches))
        if self.place_due:
            self.place_due = False
            for entry in self.state.by_state(Down.PLACING):
                if not self.jobs.busy(Key(ENTRY, entry.id)):
                    self._place(entry)
        self.start_due_cleanups(now)
        self._look_at_disk(now)
        self.tick_greeting(now)
        for entry_id, early in list(self.early.items()):
            if early.ended and now - early.ended > EARLY_KEEP and self.state.get(entry_id) is None:
                log.info("dropping the early copy of entry %s: central never sent it", entry_id)
                del self.early[entry_id]
                remove_tree(early.local)
        self.prune_history(now)
        self.retention.tick(now)

    def shutdown(self) -> None:
        for early in self.early.values():
            early.fetched.set()


def _entry_id_of(name: str) -> str:
    """The entry a name in staging belongs to: the copy <id>, its bag <id>.bag, <id>.bag.tmp."""
    return name.split(".", 1)[0]
