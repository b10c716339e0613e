"""Upload's bundles (synkler.bundles): many small settled files offered as one entry.

When at least `bundle_min` small files (`bundle_file_kib`) with no metadata and no earlier version
have settled at once, they go in bundles of up to `bundle_files` files and `bundle_mib` MiB: each a
directory of hard links to them under ``file_dir/.synkler-bundles/<bundle name>``, made in the pass
that offers the bundle (a dot name: never an entry of its own). From then on the bundle is an entry
like a directory: hashed (each member's md5 is kept from the same read), pushed, verified at central
and download. Its members stay in file_dir: each is a version of its name, which the scan compares
as it compares single entries (`versions`). Once the bundle is delivered its links go, and each
member's cleanup script runs once (synkler.agents.members).

A member changed in place changes the bundle (same inode): the bundle's md5 finds it, the bundle is
withdrawn, and its members settle again as new files. A member replaced (a new file renamed over
its name) or removed is not in the bundle any more than in file_dir: the bundle carries the content
it settled with (its link holds it), and the new file is a new version of the name, relayed on its
own; the old member's cleanup script is skipped, as the name holds other content.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, ClassVar

from .. import bundles
from ..errors import MessageError, Refused
from ..hops.checksum import EntryStat, stat_entry
from ..linux.fs import remove_tree
from ..messages import Failed, new_entry_id
from ..metadata import Metadata
from ..state import Entry
from ..text import count, shown, some_entries
from .base import NAME, Key, Status
from .members import BundleCleanups
from .upload_offers import Offering

if TYPE_CHECKING:
    from .listing import Hashed

log = logging.getLogger("synkler")

BUNDLED_PER_PASS = 5000  # files linked into bundles in one pass of the loop at most
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

    @property
    def bundle_root(self) -> str:
        return os.path.join(self.cfg.file_dir, bundles.UPLOAD_DIR)

    def entry_path(self, entry: Entry) -> str:
        """Where an entry's data is: its name in file_dir, a bundle's directory of links."""
        if entry.kind == bundles.KIND:
            return os.path.join(self.bundle_root, entry.name)
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

    def _make_bundle(self, names: list[str]) -> Entry | None:
        """Link the files into a new bundle's directory and offer it. A file that cannot be linked
        (or changed meanwhile) stays ripe, to go on its own."""
        entry_id = new_entry_id()
        name = bundles.name_of(entry_id)
        where = os.path.join(self.bundle_root, name)
        try:
            os.makedirs(where)
            # As a directory a person makes (the agent's umask is 077): central's agent, which may
            # not be the ssh user that writes its staging, reads the pushed copy; the files keep
            # their own modes.
            os.chmod(where, 0o755)
        except OSError as e:
            log.warning(
                "cannot make a bundle in %s (%s): files go one by one until the agent restarts",
                self.bundle_root,
                e,
            )
            self.bundling_failed = True
            return None
        members = self._link_members(where, names)
        if len(members) < 2:
            remove_tree(where)
            return None
        st = stat_entry(where)
        entry = self.offer_version(entry_id, name, st, kind=bundles.KIND)
        bundles.add(self.state, entry_id, members)
        for member, _size, signature in members:
            self.name_offered(member, signature or "")
        log.info(
            "%s: offered, a bundle of %s (%s): %s",
            name,
            count(len(members), "file"),
            count(st.size, "byte"),
            some_entries([m[0] for m in members], noun="file"),
        )
        return entry

    def _link_members(self, where: str, names: list[str]) -> list[tuple[str, int, str | None]]:
        """Hard links to the ripe files in the bundle's directory: (name, size, fingerprint since the
        link) of each linked; one that cannot be linked, or changed since it settled, is left out."""
        members: list[tuple[str, int, str | None]] = []
        for member_name in names:
            st = self.ripe[member_name][0]
            try:
                os.link(self.path(member_name), os.path.join(where, member_name), follow_symlinks=False)
                now = stat_entry(self.path(member_name))  # its ctime moved with the link
            except (OSError, ValueError) as e:
                log.debug("%s: not bundled (%s)", member_name, e)
                continue
            if now.kind != "file" or now.size != st.size:
                os.unlink(os.path.join(where, member_name))
                continue
            members.append((member_name, st.size, now.signature))
        return members

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

    def release_links(self, entry: Entry) -> None:
        """A delivered (or forgotten) bundle's links go. Removing a link moves the ctime of its file
        in file_dir: the member's fingerprint is taken again, so the scan does not take the file
        for changed."""
        where = self.entry_path(entry)
        refreshed: list[tuple[int, object]] = []
        for member in bundles.of(self.state, entry.id):
            link = os.path.join(where, member.name)
            try:
                before = os.lstat(link)
                os.unlink(link)
                now = os.lstat(self.path(member.name))
                if (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino):
                    signature = stat_entry(self.path(member.name)).signature
                    refreshed.append((member.seq, signature))
                    self.relayed[member.name] = signature
            except (OSError, ValueError):
                continue
        bundles.set_each(self.state, entry.id, "signature", refreshed)
        remove_tree(where)

    def bundle_withdrawn(self, entry: Entry) -> None:
        """A withdrawn bundle carries nothing: its members settle again as new files (the next scan)."""
        names = [member.name for member in bundles.of(self.state, entry.id)]
        for name in names:
            self.relayed.pop(name, None)
        self.state.after_commit(functools.partial(remove_tree, self.entry_path(entry)))
        self.state.after_commit(functools.partial(self.look_again_at, names))

    def delivered(self, entry: Entry, **changes: object) -> None:
        if entry.kind == bundles.KIND:
            self.release_links(entry)
        super().delivered(entry, **changes)

    def drop(self, entry: Entry) -> None:
        if entry.kind == bundles.KIND:  # forgotten: its links go (its members' files stay, as any entry's)
            self.state.after_commit(functools.partial(remove_tree, self.entry_path(entry)))
        super().drop(entry)

    def sweep_bundles(self) -> None:
        """At start: bundle directories of bundles that ended, or were never recorded (a crash between
        the links and the commit), go."""
        try:
            found = os.listdir(self.bundle_root)
        except FileNotFoundError:
            return
        for name in found:
            entry = self.state.get(name[len(bundles.PREFIX) :]) if name.startswith(bundles.PREFIX) else None
            if entry is None or entry.state in (*self.WITHDRAWN, *self.FINISHED):
                log.info("removing leftover bundle %s", shown(name))
                remove_tree(os.path.join(self.bundle_root, name))

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
        self.release_links(entry)
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
