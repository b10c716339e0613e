"""Upload's bundles (synkler.bundles): many small settled files offered as one entry.

When at least `bundle_min` small files (`bundle_file_kib`) with no metadata and no earlier version
have settled at once, they go in bundles of up to `bundle_files` files and `bundle_mib` MiB. A bundle
is a list of files of file_dir, each recorded with the fingerprint it settled with (the `members`
table): nothing is linked, copied or made in file_dir. From then on the bundle is an entry like a
directory: hashed with its members read in place (synkler.agents.bundle_reads: the tree md5 of the
directory its push makes, each member's md5 kept from the same read), pushed alone by one run from
file_dir into its own directory on central (transfer.push_bundle), verified at central and
download. Its members stay in file_dir: each is a version of its name, which the scan compares as
it compares single entries (`versions`); as nothing touches them, the fingerprints they settled
with still hold when the bundle is delivered, and each member's cleanup script runs once if its
name still holds that content (synkler.agents.members).

The bundle carries what its names hold when read, so a member changed in place, replaced (a file
renamed over its name) or removed before central has verified the bundle withdraws it, and its
members settle again as new files (one gone for good is in no bundle): the hash finds a change up
to its read (the fingerprints after it); later, a failed push (rsync's exit 23, a name missing, or
24, one gone while pushed) or central asking again (its md5 did not match) has upload look at the
members' fingerprints (`bundle_changed`) before it pushes again. A change after central verified
the bundle changes nothing delivered: that member's cleanup script is skipped, and the new content
is a new version of the name, relayed on its own.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, ClassVar

from .. import bundles
from ..errors import MessageError, Refused
from ..hops import transfer
from ..hops.checksum import EntryStat, stat_entry
from ..hops.follow import worth_following
from ..linux.fs import remove_tree
from ..messages import Failed, new_entry_id
from ..metadata import Metadata
from ..private import private_dir
from ..state import Entry
from ..text import count, shown, some_entries
from . import bundle_reads
from .base import HASHING, NAME, Key, Status
from .members import BundleCleanups
from .pools import Pool
from .upload_offers import Offering

if TYPE_CHECKING:
    from .listing import Hashed

log = logging.getLogger("synkler")

BUNDLED_PER_PASS = 5000  # files put into bundles in one pass of the loop at most
# A central that has not reported yet (started with upload): how long settled small files wait for
# its version before they go one by one, and how often it is looked for meanwhile.
VERSION_WAIT = 10.0
VERSION_LOOK = 0.25


class BundleUpload(BundleCleanups, Offering):
    """Upload's side of bundles; the scan and the offers of single entries are in Noticing
    (synkler.agents.upload_scan)."""

    WITHDRAWN: ClassVar[tuple[Status, ...]]  # a bundle in these carries nothing (set by Upload)
    # The bundles' directory cannot be made, or central does not take bundles: none until a restart.
    bundling_failed = False
    old_centrals: list[str] = []  # centrals that run a synkler older than bundles (said once)
    # Settled files held for bundles until a central says its version: when to look again (time.time();
    # 0: none held), and until when they are held at most (time.monotonic(); None: not yet waited).
    bundles_wait = 0.0
    awaited_until: float | None = None

    def path(self, name: str) -> str:
        raise NotImplementedError

    def entry_path(self, entry: Entry) -> str:
        """Where an entry's data is: its name in file_dir (a bundle's: its members', bundles.of)."""
        return self.path(entry.name)

    # the latest version of a name ----------------------------------------------------------------

    def versions(self, names: Collection[str]) -> dict[str, Entry]:
        """Name -> its latest version, single entry or member of a bundle (an Entry that stands for
        the member: kind "member", id its bundle's, attempt its number in it)."""
        latest = self.state.latest_by_names(names)
        for name, v in bundles.latest_by_names(self.state, names, self.WITHDRAWN).items():
            if name not in latest or v.created > latest[name].created:
                latest[name] = _as_entry(v)
        return latest

    def version(self, name: str) -> Entry | None:
        return self.versions([name]).get(name)

    def touched(self, latest: Entry, signature: str) -> None:
        """The name holds the same content as its latest version under a new fingerprint."""
        if latest.kind == "member":
            bundles.set_each(self.state, latest.id, "signature", [(latest.attempt, signature)])
        else:
            self.state.update(latest, signature=signature)

    # making bundles ------------------------------------------------------------------------------

    def bundle_ripe(self) -> Collection[str]:
        """Put settled small files into bundles, if enough of them wait (bundles.plan), at most
        BUNDLED_PER_PASS files a pass (the first found); the names held back for the coming passes'
        bundles. What a pass costs does not grow with the number waiting (a flood of a million)."""
        self.bundles_wait = 0.0
        if self.bundling_failed or len(self.bundleable) < self.cfg.bundle_min:
            return ()
        take = self.centrals_take_bundles()
        if take is None and self.centrals_awaited():
            self.bundles_wait = time.time() + VERSION_LOOK
            return self.bundleable.keys()  # held until a central has said its version
        if not take:
            return ()
        first = list(itertools.islice(self.bundleable.items(), BUNDLED_PER_PASS))
        plan = bundles.plan(
            first,
            files=self.cfg.bundle_files,
            least=min(self.cfg.bundle_min, BUNDLED_PER_PASS),
            max_bytes=self.cfg.bundle_mib << 20,
        )
        fresh = [b for b in (self._make_bundle(names) for names in plan) if b is not None]
        self.hash_entries(fresh)
        for name, _ in first:  # one not bundled (a last one alone, a link that failed) goes alone
            self.bundleable.pop(name, None)
        return self.bundleable.keys()

    def centrals_awaited(self) -> bool:
        """No central has reported yet: are its files still held for bundles (the first VERSION_WAIT
        seconds the agent waits for one; after, they go one by one until one reports)?"""
        now = time.monotonic()
        if self.awaited_until is None:
            self.awaited_until = now + VERSION_WAIT
        return now < self.awaited_until

    def centrals_take_bundles(self) -> bool | None:
        """Do the centrals run a synkler that knows bundles (0.8.0 or newer, by their presence
        reports)? One that never reported does not count (a pool's central never started), but one
        must have (None while none has); an older one is said once (WARNING), and files go one by
        one while it runs."""
        versions = {c: self.jobs.central_version(c) for c in self.cfg.central_names}
        known = {c: v for c, v in versions.items() if v is not None}
        old = sorted(c for c, v in known.items() if not bundles.knows_bundles(v))
        if old and old != self.old_centrals:
            log.warning(
                "%s runs synkler %s, which does not know bundles: small files go one by one until it "
                "is upgraded",
                old[0],
                known[old[0]] or "older than 0.5",
            )
        self.old_centrals = old
        return None if not known else not old

    def _make_bundle(self, names: list[str]) -> Entry:
        """Record a new bundle of these ripe files, each with the fingerprint it settled with, and
        offer it. Nothing is linked, copied or looked at again: the hash reads the files in place."""
        entry_id = new_entry_id()
        name = bundles.name_of(entry_id)
        members = [(n, self.ripe[n][0].size, self.ripe[n][0].signature) for n in names]
        size = sum(m[1] for m in members)
        st = EntryStat(bundles.KIND, size, len(members), bundles.signature((m[0], m[2]) for m in members))
        entry = self.offer_version(entry_id, name, st, kind=bundles.KIND)
        bundles.add(self.state, entry_id, members)
        for member, _size, signature in members:
            self.name_offered(member, signature)
        log.info(
            "%s: offered, a bundle of %s (%s): %s",
            name,
            count(len(members), "file"),
            count(size, "byte"),
            some_entries(names, noun="file"),
        )
        return entry

    def hash_bundle(self, entry: Entry) -> None:
        """md5 of a bundle, its members read where they are (a job of its own)."""
        members = bundles.of(self.state, entry.id)
        self.jobs.submit(
            Pool.HASH,
            [Key(HASHING, entry.id)],
            functools.partial(bundle_reads.hash_each, str(self.cfg.file_dir), members, self.strong),
            functools.partial(self._group_hashed, [entry]),
        )

    def bundle_hashed(self, entry: Entry, hashed: Hashed) -> None:
        """Keep each member's md5 from the bundle's hash."""
        md5s = {f.path: f.md5 for f in hashed.files}
        found = bundles.of(self.state, entry.id)
        bundles.set_each(self.state, entry.id, "md5", [(m.seq, md5s.get(os.fsencode(m.name))) for m in found])

    # a bundle's end ------------------------------------------------------------------------------

    def member_target(self, member: bundles.Member) -> tuple[str, str]:
        return member.name, self.path(member.name)

    def member_cleanups_due(self, entry: Entry) -> None:
        bundles.set_all(self.state, entry.id, cleanup="pending", where=(None,))

    def bundle_withdrawn(self, entry: Entry) -> None:
        """A withdrawn bundle carries nothing: its members settle again as new files (the next scan)."""
        names = [member.name for member in bundles.of(self.state, entry.id)]
        for name in names:
            self.relayed.pop(name, None)
        self.state.after_commit(functools.partial(self.look_again_at, names))

    def bundle_changed(self, entry: Entry) -> str | None:
        """Why a bundle on its way cannot go on as it is (None: it can): one of its members no longer
        holds the content it was bundled with (changed in place, replaced, removed), or none is known
        here (a bundle adopted from another upload agent)."""
        members = bundles.of(self.state, entry.id)
        if not members:
            return "its files are not known here (a bundle of another upload agent)"
        changed = bundle_reads.changed(str(self.cfg.file_dir), members)
        if changed:
            return f"{some_entries(changed, noun='file')} of it changed or gone since it was bundled"
        return None

    def bundle_push(self, entry: Entry) -> Callable[[], transfer.Result] | None:
        """The push of an admitted bundle: its files from file_dir into its directory in central's
        staging, in one run; None when it cannot go (withdrawn here: no files of it known)."""
        members = bundles.of(self.state, entry.id)
        if not members:
            self.withdraw(entry, "its files are not known here (a bundle of another upload agent)")
            return None
        return functools.partial(
            transfer.push_bundle,
            self.link_cfg(entry),
            str(self.cfg.file_dir),
            [m.name for m in members],
            entry.path or "",
            entry.name,
            self.bundle_top,
            # (written in place, as other small entries: central's staging is its own)
            inplace=not worth_following(entry.kind, entry.size, entry.files),
        )

    @property
    def bundle_top(self) -> str:
        """An empty private directory of the agent's: what stands for a bundle's own directory in
        its push (transfer.push_bundle)."""
        db = str(self.cfg.state_db)
        return os.path.join(os.path.dirname(db), os.path.basename(db) + ".bundle")

    def ready_bundle_top(self) -> None:
        """At start: bundle_top made, and empty (anything in it would go in every bundle)."""
        private_dir(self.bundle_top)
        for name in os.listdir(self.bundle_top):
            log.warning("removing %s from %s, which must stay empty", shown(name), self.bundle_top)
            remove_tree(os.path.join(self.bundle_top, name))

    # what an older synkler left ------------------------------------------------------------------

    def sweep_bundles(self) -> None:
        """At start: the hard links an older synkler made for its bundles (file_dir/.synkler-bundles)
        go; this one makes none. A bundle of it still on its way goes on from its files in place,
        their fingerprints taken again (removing a link moves its file's ctime)."""
        root = os.path.join(self.cfg.file_dir, bundles.UPLOAD_DIR)
        try:
            found = os.listdir(root)
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("cannot look into %s, left by an older synkler: %s", shown(root), e)
            return
        for name in found:
            where = os.path.join(root, name)
            entry = self.state.get(name[len(bundles.PREFIX) :]) if name.startswith(bundles.PREFIX) else None
            if (
                entry is not None
                and entry.kind == bundles.KIND
                and entry.state not in (*self.WITHDRAWN, *self.FINISHED)
            ):
                self._unlink_old(entry, where)
            log.info("removing the hard links of bundle %s (made by an older synkler)", shown(name))
            remove_tree(where)
        try:
            os.rmdir(root)
        except OSError as e:
            log.warning("cannot remove %s, left by an older synkler: %s", shown(root), e)

    def _unlink_old(self, entry: Entry, where: str) -> None:
        """An older synkler's bundle on its way: its links go, and each member whose name still holds
        the linked file gets its fingerprint again; the bundle's follows from theirs."""
        refreshed: list[tuple[int, object]] = []
        members = bundles.of(self.state, entry.id)
        for member in members:
            link = os.path.join(where, member.name)
            try:
                before = os.lstat(link)
                os.unlink(link)
                now = os.lstat(self.path(member.name))
                if (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino):
                    refreshed.append((member.seq, stat_entry(self.path(member.name)).signature))
            except (OSError, ValueError):
                continue
        bundles.set_each(self.state, entry.id, "signature", refreshed)
        signatures = dict(refreshed)
        now_members = [(m.name, signatures.get(m.seq, m.signature)) for m in members]
        self.state.update(entry, signature=bundles.signature(now_members))  # type: ignore[arg-type]

    def bundle_present(self, entry: Entry) -> bool:
        return any(os.path.lexists(self.path(m.name)) for m in bundles.of(self.state, entry.id))

    def retry_bundle(self, entry: Entry) -> str:
        """A failed bundle: forgotten, and its members that are still here settle again as new files
        (in bundles again, if enough of them are here)."""
        again = self._unbundle(entry, "retried by an operator at upload: its files are sent again")
        if not again:
            raise Refused(f"{shown(entry.name)}: none of its files is in upload's file_dir any more")
        return f"{shown(entry.name)}: {count(again, 'file')} of it sent again; the failed bundle is forgotten"

    def resend_bundle(self, entry: Entry, to: tuple[str, ...], where: str) -> str:
        """`synkler resend` of a delivered (or forgotten) bundle: each of its files still here is sent
        again as an entry of its own (to the destinations `to`; (): central's routes), from the
        fingerprint recorded for it, hashed on its way as any new version (a file changed since is
        withdrawn by its hash, and the scan offers what is there now)."""
        here = [m for m in bundles.of(self.state, entry.id) if os.path.lexists(self.path(m.name))]
        busy = [m.name for m in here if self.jobs.busy(Key(NAME, m.name))]
        if busy:
            raise Refused(f"{shown(busy[0])}: upload is reading it right now; ask again in a moment")
        if not here:
            raise Refused(f"{shown(entry.name)}: none of its files is in upload's file_dir any more")
        sent = [
            self._offer(m.name, EntryStat("file", m.size, 1, m.signature or ""), None, None, to=to)
            for m in here
        ]
        self.hash_entries(sent)
        return (
            f"{shown(entry.name)}: {count(len(sent), 'file')} of it sent again{where}, each as an entry "
            f"of its own (entry {entry.id} stays as it was)"
        )

    def _offer(
        self,
        name: str,
        st: EntryStat,
        md5: str | None,
        meta: Metadata | None,
        checksum: str = "",
        to: tuple[str, ...] = (),
    ) -> Entry:
        raise NotImplementedError

    def _unbundle(self, entry: Entry, why: str, told_by: str | None = None) -> int:
        """Forget a bundle that did not go, and make its files that are still here ripe again (to go in
        a bundle again, unless bundles are off now); how many."""
        again = 0
        for member in bundles.of(self.state, entry.id):
            try:
                st = stat_entry(self.path(member.name))
            except (OSError, ValueError):
                continue
            self.ripen(member.name, st, None, fresh=True)
            again += 1
        self.forget(entry, why, told_by=told_by)
        return again

    def bundle_refused(self, msg: Failed) -> None:
        """Central does not take bundles (its routes choose by name, fanout.bundle_refusal): bundles are
        off until the agent restarts, and this one's files are offered one by one."""
        entry = self.state.get(msg.entry)
        if entry is None or entry.kind != bundles.KIND:
            raise MessageError(f"{msg.TYPE} ({msg.hop}) for entry {msg.entry}, which is no bundle here")
        entry = self.entry_for(msg, *((entry.peer,) if entry.peer else self.cfg.central_names))
        if entry.state != self.OFFERED:
            return  # a duplicate: taken apart already
        if not self.bundling_failed:
            log.warning(
                "%s does not take bundles: %s; until upload restarts, files go one by one",
                msg.sender,
                msg.reason,
            )
        self.bundling_failed = True
        again = self._unbundle(entry, f"{msg.hop}: {msg.reason}", told_by=msg.sender)
        log.info("%s: taken apart: %s offered one by one", entry.name, count(again, "file"))


def _as_entry(v: bundles.Version) -> Entry:
    m = v.member
    return Entry(
        id=m.bundle,
        name=m.name,
        kind="member",
        md5=m.md5,
        state=v.state,
        size=m.size,
        files=1,
        attempt=m.seq,
        signature=m.signature,
        created=v.created,
    )
