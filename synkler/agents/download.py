"""The download role: pull verified entries from central, verify them again, publish them by rename.

The pulls themselves, and the early pull of a big file while it is pushed, are in
synkler.hops.pull; the choice of a name that overwrites nothing in synkler.agents.naming. After the
md5 matches, the entry is renamed into ``file_dir`` without ever replacing anything: an existing
entry of the same name and other content is kept and the new one is placed beside it as
``name (2).ext``. Same name and same md5: already there, nothing to do.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import time
from typing import TYPE_CHECKING

from .. import __version__, bundles, proofs, receipts
from ..errors import ConfigError, Refused
from ..hops import receiptfiles
from ..hops.bagit import make_bag, work_dir
from ..hops.checksum import EntryDigest, alg_of
from ..hops.pull import Early, Mismatch, NotPulled, PullRun, Staging, Verified, pull, pull_early
from ..linux.fs import free_bytes, remove_tree, rename_noreplace
from ..messages import Corrupt, Failed, Fetch, Fetched, Forget, Greeted, Pushing, is_valid_entry_id
from ..metadata import Metadata, canonical, loads, sidecar_of
from ..private import private_dir
from ..state import Entry, State
from ..text import shown, some_entries
from . import sidecars, waits
from .base import ENTRY, RESEND, Jobs, Key, Status, Transitions
from .download_bundles import BundleDownload, placed_signature
from .download_pool import PoolDownload
from .facts import DISK_WAIT, PULL, PULL_FROM_CENTRAL, facts, hop
from .naming import BAGIT, SIDECAR, chooser, upload_dir
from .pools import Pool

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

EARLY_MAX = 2  # files pulled early at a time
EARLY_KEEP = 600.0  # seconds an early copy whose fetch never came is kept (central gave it up)
DISK_LOOK = 1.0  # seconds between looks at the free space while pulls wait for it
DISK_FREED = 1 << 20  # bytes that must come free after a pull found the disk full to try again at once


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


class Download(BundleDownload, PoolDownload):
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
        self.receipt_key = None
        if cfg.receipt_key is not None:
            try:
                self.receipt_key = receipts.load_private_key(cfg.receipt_key)
            except (OSError, ValueError) as e:
                raise ConfigError(cfg.path, "receipt_key", f"{cfg.receipt_key}: {e}") from None
        self.full_at: int | None = None  # free bytes in staging when a pull last found the disk full
        self.proofs: dict[str, dict | str] = {}  # entry id -> its receipt document, until `fetched` is sent
        self.retention = receiptfiles.Retention(cfg.receipt_dir, cfg.receipt_keep_days)
        self.receipts = receiptfiles.Batch(cfg.receipt_dir, state.before_commit)
        self.next_disk_look = 0.0

    def cleanup_target(self, entry: Entry) -> tuple[str, str]:
        stored_as = entry.stored_as or entry.name
        return stored_as, os.path.join(self.cfg.file_dir, stored_as)

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
            and sum(e.ended is None for e in self.early.values()) < EARLY_MAX
            and self.jobs.transfers < self.cfg.max_transfers
        ):
            self._pull_early(msg, early)

    def on_fetch(self, msg: Fetch) -> None:
        self.from_central(msg)
        self.on_central(msg, "path", "stored", msg.entry)
        entry = self.state.get(msg.entry)
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
            msg.attempt > entry.attempt or (self.pooled and msg.path != entry.path)
        ):
            # Central has a fresh copy (it found its stored one bad and got it again from upload).
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

    def resend(self, entry: Entry, to: str | None = None) -> str:
        """Send `fetched` of a delivered entry again, with its receipt and receipt document signed by
        the receipt_key download has now: the way out when that key was made, or its public key pinned
        (or corrected) at central or upload, only after the delivery, which they then refused as not
        proven (docs/security.md, "Delivery receipts"). What download signs is what it verified then."""
        what = f"{shown(entry.name)} (entry {entry.id})"
        if self.receipt_key is None:
            raise Refused(f"{what}: cannot resend: download has no receipt_key, so it has no receipt to send")
        proof = self._kept_document(entry, reseal=True)
        kept = self.state.receipts(entry.id).get(self.name)
        placed_at, outcome = resent_receipt_times(kept, proof, entry)
        stored_as = entry.stored_as or entry.name
        receipt = receipts.for_entry(
            self.cfg.id, entry, self.name, stored_as, placed_at=placed_at, outcome=outcome
        )
        token = receipts.sign(receipt, self.receipt_key)
        self.state.put_receipt(entry.id, self.name, token)
        self.send(
            entry.peer or self.cfg.central_name,
            Fetched(entry.id, self.name, stored_as=stored_as, outcome=outcome, receipt=token, proof=proof),
        )
        return f"{what}: its signed receipt is sent to {entry.peer or self.cfg.central_name} again"

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

    def _forgotten(self, entry_id: str) -> bool:
        """Forgotten while a pull of it ran: what the pull left goes now."""
        entry = self.state.get(entry_id)
        if entry is None or entry.state != Down.FORGOTTEN:
            return False
        self.staging.drop(entry_id)
        return True

    # jobs ----------------------------------------------------------------------------------------

    def look_again(self) -> None:
        super().look_again()
        self.place_due = True

    def tick(self, now: float) -> None:
        due = self.due_for_transfer(Down.FETCHING, now)
        for batch in self.batches(due, group=lambda e: (e.peer, os.path.dirname(e.path or ""))):
            self._fetch(batch)
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

    def _pull_early(self, msg: Pushing, early: Early | None) -> None:
        """Pull early, into a new copy or on from one kept (a restart, an earlier try of the push)."""
        if early is None:
            early = self.early[msg.entry] = Early(self.staging.of(msg.entry))
        early.ended = None
        self.submit_transfer(
            [Key(ENTRY, msg.entry)],
            functools.partial(pull_early, self.cfg, msg.entry, msg.path, msg.size, early),
            functools.partial(self._early_ended, msg.entry, early),
        )

    def _early_ended(self, entry_id: str, early: Early, _result: None, error: BaseException | None) -> None:
        early.ended = time.time()
        if entry_id in self.early_forgotten:
            self.early_forgotten.discard(entry_id)
            remove_tree(early.local)
            return
        if self._forgotten(entry_id):
            return
        if error is not None:
            log.warning("early pull of entry %s stopped: %s", entry_id, error)
            dropped = self.early.pop(entry_id, None)
            if dropped is not None:
                remove_tree(dropped.local)

    def _fetch(self, batch: list[Entry]) -> None:
        """One rsync run for entries stored under the same directory on central, then md5 of each."""
        sources: dict[str, str] = {}
        if self.cfg.subdir_per_upload:
            sources = self._upload_dirs(batch)
            batch = [e for e in batch if e.id in sources]
            if not batch:
                return
        if len(batch) == 1:
            log.info("%s: pulling from central", batch[0].name)
        else:
            log.info("pulling %s from central", some_entries([e.name for e in batch]))
        # Big files go alone (base.BATCH_BYTES): one pulled early has a batch of its own.
        early = self.early.pop(batch[0].id, None) if len(batch) == 1 else None
        metas = {}
        for e in batch:
            meta = loads(self.state.metadata(e.id))
            if meta:
                metas[e.id] = meta
        checksums = {e.id: self.state.checksum(e.id) for e in batch}
        chosen = chooser(str(self.cfg.file_dir), self.cfg.layout, metas, sources)
        self.submit_transfer(
            [Key(ENTRY, e.id) for e in batch],
            functools.partial(pull, self.link_cfg(batch[0]), self.staging, batch, early, chosen, checksums),
            functools.partial(self._pulled, batch, time.time()),
        )

    def _upload_dirs(self, batch: list[Entry]) -> dict[str, str]:
        """With subdir_per_upload: the upload agent (the subdirectory of file_dir) of each entry of
        the batch that can go into its own; the others fail now, before a pull, with the reason: a
        person must act (central keeps its verified copy: `synkler retry` pulls it again)."""
        sources = {}
        for entry in batch:
            source = self.state.source(entry.id)
            why = upload_dir(str(self.cfg.file_dir), source)
            if why is None:
                sources[entry.id] = source
                continue
            why = f"subdir_per_upload: {why}"
            log.error("%s (entry %s): not pulled: %s", shown(entry.name), entry.id, why)
            self.move(entry, Down.FAILED, reason=why)
            self.send(entry.peer or "", Failed(entry.id, self.name, hop=PULL_FROM_CENTRAL, reason=why[:1900]))
        return sources

    def _pulled(
        self, batch: list[Entry], started: float, run: PullRun | None, error: BaseException | None
    ) -> None:
        self.link_result(run.result if run else None, started, self.link_of(batch[0]))
        if run is not None and run.early is not None and self.entry(batch[0].id).state == Down.FETCHING:
            self.early[batch[0].id] = run.early  # the next try goes on from it
        for entry in batch:
            entry_now = self.entry(entry.id)
            if entry_now.state != Down.FETCHING:
                self._forgotten(entry.id)
                continue
            outcome = run.outcomes[entry.id] if run else NotPulled("error", repr(error))
            if isinstance(outcome, Mismatch):
                # Central re-checks its stored copy (and gets it again from upload if it is bad).
                self.send(entry.peer or "", Corrupt(entry.id, self.name, got=outcome.got))
                why = outcome.why or f"md5 mismatch at download: expected {entry.md5}, got {outcome.got}"
                self.state.after_commit(functools.partial(self.observer.mismatch, PULL))
            elif isinstance(outcome, NotPulled):
                why = outcome.why
            else:
                self._verified(entry_now, outcome)
                continue
            if isinstance(outcome, NotPulled) and outcome.cause == "space":
                self._disk_full()
            if not self.retry_later(
                entry_now,
                PULL_FROM_CENTRAL,
                why,
                out_of_space=isinstance(outcome, NotPulled) and outcome.cause == "space",
                link_down=isinstance(outcome, NotPulled) and outcome.cause in ("link", "person"),
                needs_person=isinstance(outcome, NotPulled) and outcome.cause == "person",
            ):
                self.send(
                    entry.peer or "", Failed(entry.id, self.name, hop=PULL_FROM_CENTRAL, reason=why[:1900])
                )

    def _disk_full(self) -> None:
        """A pull found the disk full: note the free space, to see it grow (`_look_at_disk`)."""
        try:
            self.full_at = free_bytes(self.staging.dir)
        except OSError:
            self.full_at = None  # the waits run out as they would

    def _look_at_disk(self, now: float) -> None:
        """While pulls wait for disk space: once DISK_FREED bytes more are free than when the disk was
        found full, they go now, not at the end of their wait."""
        if self.full_at is None or now < self.next_disk_look:
            return
        self.next_disk_look = now + DISK_LOOK
        try:
            freed = free_bytes(self.staging.dir) - self.full_at
        except OSError:
            return
        if freed < DISK_FREED:
            return
        self.full_at = None
        ended = self.end_waits(waits.DISK, time.time())
        if ended:
            log.info(
                "%.0f MB more free at download: %s waiting for disk space go now",
                freed / 1e6,
                some_entries([shown(e.name) for e in ended]),
            )

    def _verified(self, entry: Entry, verified: Verified) -> None:
        target, present = verified.target, verified.present
        log.debug("%s: md5 verified at download (%s)", entry.name, entry.md5)
        if entry.kind == bundles.KIND:
            self.bundle_verified(entry, verified)
            return
        if present:
            self.staging.drop(entry.id)
            entry = self.move(entry, Down.DONE, stored_as=target, tries=0, reason=None)
            receipt = self._receipt(entry, "present")
            proof = self.document(entry, "present", verified.digest)
            self.send(
                entry.peer or "",
                Fetched(
                    entry.id, self.name, stored_as=target, outcome="present", receipt=receipt, proof=proof
                ),
            )
            log.info(
                "%s: already present as %s with the same md5 (%s); nothing to do",
                entry.name,
                target,
                entry.md5,
            )
            return
        # Commit the chosen name before the rename, so a crash in between is recognised at restart.
        entry = self.move(entry, Down.PLACING, stored_as=target, tries=0, reason=None)
        # Written now, from what the verification read: by the time of the rename it is gone.
        self.proofs[entry.id] = self.document(entry, "placed", verified.digest)
        self.state.after_commit(self.place_soon)

    def place_soon(self) -> None:
        """Once `placing` (the chosen name) is committed: the rename comes in the next pass, never
        in the one that chose the name. Else a crash (or a failed commit) between the rename and
        the pass's commit left the file in file_dir while the state still said `fetching`: the
        restart found it "already present with the same md5" and its cleanup script never ran."""
        self.place_due = True
        self.jobs.wake()

    def _place(self, entry: Entry) -> None:
        """Rename the verified copy (or its bag) into file_dir, its metadata sidecar first; for its
        cleanup script, note its fingerprint there."""
        if entry.kind == bundles.KIND:
            self.unpack(entry)
            return
        src = self.staging.of(entry.id)
        dst = os.path.join(self.cfg.file_dir, entry.stored_as or entry.name)
        meta = loads(self.state.metadata(entry.id))
        if self.cfg.layout == BAGIT:
            bag = self.staging.bag(entry.id)
            if not os.path.lexists(bag) and (os.path.lexists(src) or os.path.lexists(work_dir(bag))):
                self._build_bag(entry, meta)
                return
            src = bag
        signature = None  # not known: the cleanup script's check reads the md5 instead
        if os.path.lexists(src):
            subdir = os.path.split(entry.stored_as or "")[0]
            if subdir and not self.upload_dir_made(entry, subdir):
                return
            staged = os.lstat(src)
            wrote = self.cfg.layout == SIDECAR and meta is not None and self._write_sidecar(entry, meta)
            if wrote is None:
                return
            try:
                rename_noreplace(src, dst)
            except FileExistsError:
                # Someone put something there since we looked: choose again (the pull is a no-op now;
                # a bag is built again).
                if wrote:
                    sidecars.remove(*os.path.split(dst))
                if src != self.staging.of(entry.id):
                    remove_tree(src)
                self.move(entry, Down.FETCHING, due=0)
                self.transfer_due = True
                return
            if self.cfg.cleanup_script:
                signature = placed_signature(dst, staged)
        elif not os.path.lexists(dst):
            log.warning("%s: staged copy vanished before it was placed; fetching again", entry.name)
            self.move(entry, Down.FETCHING, due=0)
            self.transfer_due = True
            return
        self.delivered(entry, signature=signature)
        self.tell_placed(entry)
        log.info(
            "%s: delivered into %s as %s (md5 %s verified)",
            entry.name,
            self.cfg.file_dir,
            entry.stored_as,
            entry.md5,
        )

    def tell_placed(self, entry: Entry) -> None:
        """`fetched` to central, with the signed receipt and the receipt document, for a verified
        copy just placed."""
        receipt = self._receipt(entry, "placed")
        proof = self.proofs.pop(entry.id, None) or self._kept_document(entry)
        self.send(
            entry.peer or "",
            Fetched(
                entry.id,
                self.name,
                stored_as=entry.stored_as or "",
                outcome="placed",
                receipt=receipt,
                proof=proof,
            ),
        )

    def upload_dir_made(self, entry: Entry, subdir: str) -> bool:
        """An entry (or a bundle's members) placed in a subdirectory per upload (`<upload>/<name>`): is
        that directory there (made now if not)? If something else took its place since the pull, the
        entry is pulled and placed again, and that counts as a failed try."""
        why = upload_dir(str(self.cfg.file_dir), subdir, make=True)
        if why is None:
            return True
        why = f"subdir_per_upload: {why}"
        entry = self.move(entry, Down.FETCHING)
        if not self.retry_later(entry, PULL_FROM_CENTRAL, why):
            self.send(entry.peer or "", Failed(entry.id, self.name, hop=PULL_FROM_CENTRAL, reason=why[:1900]))
        return False

    def _write_sidecar(self, entry: Entry, meta: Metadata) -> bool | None:
        """Put the entry's metadata beside the name it is about to take (before the data, so whoever
        finds the data finds its metadata): True if written now, False if it was there already (a
        restart), None if another sidecar holds the name (the entry is placed again, under another)."""
        directory, name = os.path.split(os.path.join(self.cfg.file_dir, entry.stored_as or entry.name))
        try:
            sidecars.write(directory, name, meta, replace=False)
            return True
        except FileExistsError:
            if sidecars.holds(directory, name, meta):
                return False
        log.info("%s: %s is taken by another sidecar; choosing another name", entry.name, sidecar_of(name))
        self.move(entry, Down.FETCHING, due=0)
        self.transfer_due = True
        return None

    def _build_bag(self, entry: Entry, meta: Metadata | None) -> None:
        """Build the entry's BagIt bag in staging (a job: it reads the entry again for its manifests)."""
        log.debug("%s: building its BagIt bag", entry.name)
        self.jobs.submit(
            Pool.HASH,
            [Key(ENTRY, entry.id)],
            functools.partial(
                make_bag,
                self.staging.of(entry.id),
                self.staging.bag(entry.id),
                entry.name,
                meta,
                entry.id,
                f"synkler {__version__}",
            ),
            functools.partial(self._bagged, entry.id),
        )

    def _bagged(self, entry_id: str, _result: None, error: BaseException | None) -> None:
        self.place_due = True
        entry = self.state.get(entry_id)
        if entry is None or entry.state != Down.PLACING:
            self._forgotten(entry_id)
            return
        if error is not None:
            # A full disk, or a file that cannot be read: pulled and bagged again (failed tries
            # count, as a failed pull's do).
            self.staging.drop(entry_id)
            entry = self.move(entry, Down.FETCHING)
            if not self.retry_later(entry, PULL_FROM_CENTRAL, f"cannot build its BagIt bag: {error!r}"):
                failed = Failed(entry.id, self.name, hop=PULL_FROM_CENTRAL, reason=f"BagIt: {error!r}"[:1900])
                self.send(entry.peer or "", failed)

    def _receipt(self, entry: Entry, outcome: str) -> str:
        """The signed receipt of a verified copy just placed (or found present), kept in the state
        with the entry's change; "" without a receipt_key."""
        if self.receipt_key is None:
            return ""
        stored_as = entry.stored_as or entry.name
        receipt = receipts.for_entry(
            self.cfg.id, entry, self.name, stored_as, placed_at=time.time(), outcome=outcome
        )
        token = receipts.sign(receipt, self.receipt_key)
        self.state.put_receipt(entry.id, self.name, token)
        return token

    def document(self, entry: Entry, outcome: str, digest: EntryDigest | None) -> dict | str:
        """Write the receipt document of a verified copy (synkler.proofs) into receipt_dir, signed
        with receipt_key if there is one; what goes back with `fetched` (the listing stays here)."""
        if digest is None:
            return ""
        checksum = digest.strong or ""
        now = time.time()
        items = proofs.listing(digest.files, alg_of(checksum))
        hops = [
            {"role": "central", "agent": entry.peer or "", "at": entry.created},
            {"role": "download", "agent": self.name, "at": now},
        ]
        doc = proofs.document(
            instance=self.cfg.id,
            entry=entry,
            checksum=checksum,
            destination=self.name,
            stored_as=entry.stored_as or entry.name,
            outcome=outcome,
            hops=hops,
            items=items,
            metadata=loads(self.state.metadata(entry.id)),
        )
        sealed = proofs.seal(doc, self.receipt_key)
        # Written with the other documents of the transaction, just before it commits.
        self.receipts.keep(entry.id, shown(entry.name), now, {**sealed, "listing": items})
        return sealed if not proofs.wire_problem(sealed) else ""

    def kept_proof(self, entry: Entry) -> dict | str:
        return self._kept_document(entry)

    def _kept_document(self, entry: Entry, *, reseal: bool = False) -> dict | str:
        """The receipt document written when the copy was verified (after a restart: from its file).
        `reseal`: one not signed by receipt_key (made before it was) is signed with it now, in its file
        too."""
        for path in reversed(receiptfiles.find(self.cfg.receipt_dir, entry.id)):
            try:
                kept = receiptfiles.read(path)
            except (OSError, ValueError):
                continue
            sealed = {"receipt": kept.get("receipt"), "signature": kept.get("signature")}
            if proofs.wire_problem(sealed):
                continue
            key = self.receipt_key
            if reseal and key is not None and proofs.signature_problem(sealed, receipts.public_of(key)):
                sealed = proofs.seal(sealed["receipt"], key)
                try:
                    receiptfiles.write_at(path, {**kept, **sealed})
                except OSError as e:
                    log.error("%s: cannot sign its receipt document %s again: %s", entry.name, path, e)
            return sealed
        return ""


def resent_receipt_times(kept: str | None, proof: dict | str, entry: Entry) -> tuple[float, str]:
    """When the copy was placed (or found present) and which of the two, for a receipt sent again:
    from the receipt kept (signed before, perhaps with another key), else the receipt document, else
    the entry's last change. Pure."""
    if kept:
        try:
            receipt = receipts.parse(kept)[0]
            return receipt.placed_at, receipt.outcome
        except receipts.ReceiptError:
            pass
    if isinstance(proof, dict):
        doc = proof["receipt"]
        at = [h.get("at") for h in doc.get("hops", []) if isinstance(h, dict) and h.get("role") == "download"]
        when = at[-1] if at and isinstance(at[-1], (int, float)) else entry.updated
        return float(when), doc["outcome"]
    return entry.updated, "placed"


def _entry_id_of(name: str) -> str:
    """The entry a name in staging belongs to: the copy <id>, its bag <id>.bag, <id>.bag.tmp."""
    return name.split(".", 1)[0]
