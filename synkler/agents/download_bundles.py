"""Download's bundles (synkler.bundles): a verified bundle is unpacked, each member renamed into
file_dir as a top-level file of its own, under the same rules as an entry (never over anything: a
name that holds other content gets the next versioned name; the same content there already counts
as placed). With `layout: bagit` each member goes as the bag it would have been as an entry of its
own (synkler.hops.bagit): the bags are built in staging by a job, after the names are committed,
and renamed into file_dir as the files are.

Crash-safe as an entry's placing is: the name each member takes is committed (with the bundle's
move to `placing`) before any rename; the renames of a pass are recorded in that pass's commit; a
member whose staged copy is gone and whose chosen name holds a file was renamed by an agent killed
before its commit, and counts as placed (a member whose bag was being built when the agent was killed
is in that bag's work directory: the build is finished). So each member is placed exactly once,
whenever the agent is killed, and its cleanup script (synkler.agents.members) runs once.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from .. import __version__, bundles
from ..hops import cleanup
from ..hops.bagit import make_member_bags, member_identifier, payload_of, work_dir
from ..hops.checksum import stat_entry
from ..hops.pull import Staging, Verified
from ..linux.fs import rename_noreplace
from ..messages import Failed, name_problem
from ..state import Entry
from ..text import count, shown, some_entries
from .base import ENTRY, Key, Status
from .facts import PULL_FROM_CENTRAL
from .members import BundleCleanups
from .naming import BAGIT, choose_name, stored_in
from .pools import Pool

log = logging.getLogger("synkler")


class BundleDownload(BundleCleanups):
    """Download's side of bundles; pulls and single entries are in Download."""

    PLACING: Status
    FETCHING: Status
    staging: Staging
    proofs: dict[str, dict | str]
    place_due: bool

    def document(self, entry: Entry, outcome: str, digest: Any) -> dict | str:
        raise NotImplementedError

    def tell_placed(self, entry: Entry) -> None:
        raise NotImplementedError

    def place_soon(self) -> None:
        raise NotImplementedError

    def upload_dir_made(self, entry: Entry, subdir: str) -> bool:
        raise NotImplementedError

    def _bagged(self, entry_id: str, _result: None, error: BaseException | None) -> None:
        raise NotImplementedError

    def member_target(self, member: bundles.Member) -> tuple[str, str]:
        stored_as = member.stored_as or member.name
        return stored_as, os.path.join(self.cfg.file_dir, stored_as)

    def member_content(self, member: bundles.Member) -> cleanup.Content:
        # With `layout: bagit`, %F is the member's bag and the file delivered is in it.
        inside = payload_of(member.name) if self.cfg.layout == BAGIT else ""
        return cleanup.Content("file", member.md5, member.signature, inside)

    def member_cleanups_due(self, entry: Entry) -> None:
        # Only the members placed here: one found there already was not delivered by this bundle.
        self.state.rows(
            "UPDATE members SET cleanup = 'pending' WHERE bundle = ? AND placed = ? AND cleanup IS NULL",
            (entry.id, bundles.PLACED),
        )

    def bundle_verified(self, entry: Entry, verified: Verified) -> None:
        """The bundle's md5 matched: choose each member's name, and commit them before any rename."""
        files = verified.digest.files if verified.digest else []
        wrong = next((f for f in files if f.kind != "file" or b"/" in f.path or _bad(f.path)), None)
        why = None
        if wrong is not None or not files:
            why = f"not a bundle of top-level files: {shown(os.fsdecode(wrong.path)) if wrong else 'empty'}"
        if why is not None:
            self.move(entry, self.FAILED, reason=f"{PULL_FROM_CENTRAL}: {why}")
            self.send(entry.peer or "", Failed(entry.id, self.name, hop=PULL_FROM_CENTRAL, reason=why))
            log.error("%s: %s", entry.name, why)
            return
        source = self.members_source(entry)
        known = bundles.of(self.state, entry.id)
        if not known:  # first verification; after a pull again, those not placed choose again
            chosen = []
            for f in files:
                name = os.fsdecode(f.path)
                target, present = self.member_name(source, name, f.md5)
                chosen.append((name, f.size, f.md5, target, present))
            bundles.add_verified(self.state, entry.id, chosen)
        else:
            again = [
                (m.seq, self.member_name(source, m.name, m.md5 or "")[0])
                for m in known
                if m.placed == bundles.NOT_PLACED
            ]
            bundles.set_each(self.state, entry.id, "stored_as", again)
        entry = self.move(entry, self.PLACING, stored_as=entry.name, tries=0, reason=None)
        self.proofs[entry.id] = self.document(entry, "placed", verified.digest)
        self.state.after_commit(self.place_soon)  # the renames once the names are committed

    def members_source(self, entry: Entry) -> str:
        """With subdir_per_upload, the upload agent whose subdirectory of file_dir takes the bundle's
        members (checked before the pull); "" without it: file_dir itself."""
        return self.state.source(entry.id) if self.cfg.subdir_per_upload else ""

    def member_name(self, source: str, name: str, md5: str) -> tuple[str, bool]:
        """A member's stored_as (`name`, a versioned name, or `<upload>/<name>`) and whether the same
        content is there already: choose_name, as for a single file."""
        directory = os.path.join(self.cfg.file_dir, source) if source else str(self.cfg.file_dir)
        try:
            os.lstat(f"{directory}/{name}")  # (a name of a bundle holds no '/')
        except FileNotFoundError:  # choose_name's first answer, without its search (most members)
            return stored_in(source, name), False
        except OSError:
            pass
        target, present = choose_name(directory, name, "file", md5, layout=self.cfg.layout)
        return stored_in(source, target), present

    def unpack(self, entry: Entry) -> None:
        """Rename the members not placed yet into file_dir, under the names committed for them (with
        `layout: bagit`, their bags, built first by a job: build_member_bags)."""
        source = self.members_source(entry)
        if source and not self.upload_dir_made(entry, source):
            return
        missing, to_bag, again = self._rename_members(entry, source)
        if missing:
            log.warning(
                "%s: the staged copies of %s vanished before they were placed; fetching the bundle again",
                entry.name,
                some_entries(missing, noun="file"),
            )
            self.move(entry, self.FETCHING, due=0)
            self.transfer_due = True
        elif to_bag:
            self.build_member_bags(entry, to_bag)
        elif again:
            self.place_due = True
        else:
            self._unpacked(entry)

    def member_source(self, entry: Entry, member: bundles.Member) -> tuple[str | None, str]:
        """What is renamed to a member's name, and where its file is in that ("": itself): its
        staged file, or with `layout: bagit` its bag in staging (its file at data/NAME); None while
        that bag is still to be built (or finished: its work directory holds the file)."""
        staged = os.path.join(self.staging.of(entry.id), member.name)
        if self.cfg.layout != BAGIT:
            return staged, ""
        bag = os.path.join(self.staging.bag(entry.id), str(member.seq))
        inside = payload_of(member.name)
        if not os.path.lexists(bag) and (
            os.path.lexists(staged) or os.path.lexists(os.path.join(work_dir(bag), inside))
        ):
            return None, inside
        return bag, inside

    def build_member_bags(self, entry: Entry, members: list[bundles.Member]) -> None:
        """Build the bags of these members in staging (a job: it reads each file again for its
        manifests); the pass after it renames them into file_dir."""
        log.debug("%s: building the BagIt bags of %s", entry.name, count(len(members), "file"))
        todo = [(m.name, str(m.seq), member_identifier(entry.id, m.name)) for m in members]
        self.jobs.submit(
            Pool.HASH,
            [Key(ENTRY, entry.id)],
            functools.partial(
                make_member_bags,
                self.staging.of(entry.id),
                self.staging.bag(entry.id),
                todo,
                f"synkler {__version__}",
            ),
            functools.partial(self._bagged, entry.id),
        )

    def _rename_members(self, entry: Entry, source: str) -> tuple[list[str], list[bundles.Member], bool]:
        """One pass of renames, recorded in the pass's commit. The names of the members whose staged
        copy vanished unplaced; those whose bag is to be built first (`layout: bagit`); and whether
        some must be renamed in a next pass (under another name: theirs was taken since chosen)."""
        staged, file_dir = self.staging.of(entry.id), str(self.cfg.file_dir)
        placed: list[tuple[int, object]] = []
        signatures: list[tuple[int, object]] = []
        present: list[tuple[int, object]] = []
        again: list[tuple[int, object]] = []
        missing: list[str] = []
        to_bag: list[bundles.Member] = []
        bagit = self.cfg.layout == BAGIT
        # A cleanup script needs each file's fingerprint: the staged file is looked at first. Without
        # a script or a bag, the rename tells whether the staged copy is gone.
        look = bool(self.cfg.cleanup_script) or bagit

        def gone(m: bundles.Member, dst: str) -> None:
            if os.path.lexists(dst):  # renamed by an agent killed before it recorded it
                placed.append((m.seq, bundles.PLACED))
            else:
                missing.append(m.name)

        for m in bundles.of(self.state, entry.id, placed=bundles.NOT_PLACED):
            src, inside = self.member_source(entry, m) if bagit else (f"{staged}/{m.name}", "")
            if src is None:
                to_bag.append(m)
                continue
            # (os.path.join, for a thousand members: a name holds no '/', nor begins a stored_as with one)
            dst = f"{file_dir}/{m.stored_as or m.name}"
            st = None
            if look:
                try:
                    st = os.lstat(_within(src, inside))
                except FileNotFoundError:
                    gone(m, dst)
                    continue
            try:
                rename_noreplace(src, dst)
            except FileExistsError:  # taken since it was chosen: choose again, rename in a next pass
                target, there = self.member_name(source, m.name, m.md5 or "")
                (present if there else again).append((m.seq, bundles.PRESENT if there else target))
                continue
            except FileNotFoundError:
                if look or os.path.lexists(src):
                    raise  # the staged copy is there: something else is missing
                gone(m, dst)
                continue
            placed.append((m.seq, bundles.PLACED))
            if st is not None and self.cfg.cleanup_script:
                signatures.append((m.seq, placed_signature(_within(dst, inside), st)))
        bundles.set_each(self.state, entry.id, "placed", [*placed, *present])
        bundles.set_each(self.state, entry.id, "signature", signatures)
        bundles.set_each(self.state, entry.id, "stored_as", again)
        return missing, to_bag, bool(again)

    def _unpacked(self, entry: Entry) -> None:
        """Every member is placed: the bundle is delivered here, `fetched` goes to central."""
        self.state.after_commit(functools.partial(self.staging.drop, entry.id))
        self.delivered(entry, signature=None)
        self.tell_placed(entry)
        here = bundles.of(self.state, entry.id, placed=bundles.PRESENT)
        log.info(
            "%s: delivered into %s: %s placed%s (md5 of each verified)",
            entry.name,
            self.cfg.file_dir,
            count(entry.files - len(here), "file"),
            f", {len(here)} there already with the same md5" if here else "",
        )


def _within(path: str, inside: str) -> str:
    return os.path.join(path, inside) if inside else path


def _bad(path: bytes) -> bool:
    return name_problem(os.fsdecode(path)) is not None


def placed_signature(path: str, staged: os.stat_result) -> str | None:
    """The fingerprint (checksum.stat_entry) of what was just renamed to `path`, taken after the rename
    (which changes the ctime); None if `path` is no longer the inode that was renamed there."""
    try:
        signature = stat_entry(path).signature
        now = os.lstat(path)
    except (OSError, ValueError):
        return None
    return signature if (now.st_dev, now.st_ino) == (staged.st_dev, staged.st_ino) else None
