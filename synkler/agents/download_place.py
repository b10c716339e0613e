"""Download's placing: a verified copy renamed into file_dir (its sidecar or BagIt bag first), never
over anything, and `fetched` sent to central. The name is committed (`placing`) before the rename,
which comes in the pass after, so a crash in between is recognised at the restart."""

from __future__ import annotations

import functools
import logging
import os

from .. import __version__, bundles
from ..hops.bagit import make_bag, payload_of, work_dir
from ..hops.pull import Verified
from ..linux.fs import remove_tree, rename_noreplace
from ..messages import Failed, Fetched
from ..metadata import Metadata, loads, sidecar_of
from ..state import Entry
from . import sidecars
from .base import ENTRY, Key
from .download_bundles import placed_signature
from .download_proofs import DownloadProofs
from .facts import PULL_FROM_CENTRAL
from .naming import BAGIT, SIDECAR, upload_dir
from .pools import Pool

log = logging.getLogger("synkler")


class Placing(DownloadProofs):
    """A verified copy placed into file_dir."""

    def _forgotten(self, entry_id: str) -> bool:
        """Forgotten while a pull of it ran: what the pull left goes now."""
        entry = self.state.get(entry_id)
        if entry is None or entry.state != self.FORGOTTEN:
            return False
        self.staging.drop(entry_id)
        return True

    def _verified(self, entry: Entry, verified: Verified) -> None:
        target, present = verified.target, verified.present
        log.debug("%s: md5 verified at download (%s)", entry.name, entry.md5)
        if entry.kind == bundles.KIND:
            self.bundle_verified(entry, verified)
            return
        if present:
            self.staging.drop(entry.id)
            entry = self.move(entry, self.DONE, stored_as=target, tries=0, reason=None)
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
        entry = self.move(entry, self.PLACING, stored_as=target, tries=0, reason=None)
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
            renamed, signature = self._rename(entry, src, dst, meta)
            if not renamed:
                return
        elif not os.path.lexists(dst):
            log.warning("%s: staged copy vanished before it was placed; fetching again", entry.name)
            self.move(entry, self.FETCHING, due=0)
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

    def _rename(self, entry: Entry, src: str, dst: str, meta: Metadata | None) -> tuple[bool, str | None]:
        """Rename the staged copy (or its bag) to `dst`, its metadata sidecar first: whether it was
        renamed, and its fingerprint there for the cleanup script (None: no script, none noted). Not
        renamed: it waits for its upload's directory, or its name is chosen again."""
        subdir = os.path.split(entry.stored_as or "")[0]
        if subdir and not self.upload_dir_made(entry, subdir):
            return False, None
        # With `layout: bagit`, the fingerprint is of the data in the bag: what the script's check reads.
        inside = payload_of(entry.name) if self.cfg.layout == BAGIT else ""
        staged = os.lstat(os.path.join(src, inside) if inside else src)
        wrote = self.cfg.layout == SIDECAR and meta is not None and self._write_sidecar(entry, meta)
        if wrote is None:
            return False, None
        try:
            rename_noreplace(src, dst)
        except FileExistsError:
            # Someone put something there since we looked: choose again (the pull is a no-op now;
            # a bag is built again).
            if wrote:
                sidecars.remove(*os.path.split(dst))
            if src != self.staging.of(entry.id):
                remove_tree(src)
            self.move(entry, self.FETCHING, due=0)
            self.transfer_due = True
            return False, None
        placed = os.path.join(dst, inside) if inside else dst
        return True, placed_signature(placed, staged) if self.cfg.cleanup_script else None

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
        entry = self.move(entry, self.FETCHING)
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
        self.move(entry, self.FETCHING, due=0)
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
        if entry is None or entry.state != self.PLACING:
            self._forgotten(entry_id)
            return
        if error is not None:
            # A full disk, or a file that cannot be read: pulled and bagged again (failed tries
            # count, as a failed pull's do).
            self.staging.drop(entry_id)
            entry = self.move(entry, self.FETCHING)
            if not self.retry_later(entry, PULL_FROM_CENTRAL, f"cannot build its BagIt bag: {error!r}"):
                failed = Failed(entry.id, self.name, hop=PULL_FROM_CENTRAL, reason=f"BagIt: {error!r}"[:1900])
                self.send(entry.peer or "", failed)
