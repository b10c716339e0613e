"""Upload's scan of file_dir: which names are new or changed, when each has settled (docs/
architecture.md, "Settle detection (upload)"), and the offer of each settled name as a new version,
a few thousand a pass. A name relayed before is hashed first, so an entry that was only touched
(same content) is not sent again.

With inotify, a look at file_dir is a look at the names its events told of, and at the names
settling whose time has come; the whole directory is listed at start, after events were lost (the
kernel's queue overflowed), and on the clock as a backstop (MAX_SCAN_GAP at the latest)."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import bundles
from ..hops.checksum import EntryStat
from ..messages import name_problem, new_entry_id
from ..metadata import Metadata, sidecar_of
from ..state import Ended, Entry, State
from ..text import count
from .base import HASHING, NAME, SCAN, Jobs, Key
from .facts import METADATA_AT_CENTRAL
from .listing import Hashed, Listing, hash_entry, scan
from .pools import Pool
from .sidecars import Read, Sidecars
from .upload_bundles import BundleUpload
from .upload_states import UNSENT, Up
from .watch import DirWatcher

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

SCAN_INTERVAL = 0.5  # seconds between looks at file_dir when inotify is not available
RESCAN_INTERVAL = 5.0  # backstop rescan when inotify tells us about changes
MIN_SCAN_GAP = 0.05  # a burst of changes costs one scan per this many seconds at most
# Settled entries offered in one pass at most: a scan that finds 100,000 new files offers them a
# few thousand a pass (each pass one commit), and the loop still answers messages and stops between.
OFFERS_PER_PASS = 2000
# A look at file_dir on the clock (no change told) costs at most this share of the time: a directory
# of 20,000 entries takes 0.1-0.3 s to list, and a rescan every 5 s of what is already relayed was
# a third of upload's CPU in a relay of 20,000 small files. Never less often than MAX_SCAN_GAP.
SCAN_SHARE = {True: 0.02, False: 0.1}  # with inotify (a backstop), without (the only way to notice)
# Without inotify a listing is the only way to notice: one a minute at least, whatever it costs. With
# it, the backstop waits up to 10 minutes: a listing of a million names (10-30 s) once a minute was
# a third of upload's CPU, while it offered the million inotify told of.
MAX_SCAN_GAP = {True: 600.0, False: 60.0}
# After lost events (inotify's queue overflowed) the whole directory is listed, but such listings
# take at most this share of the time: in a flood that overflows the queue again and again, a
# listing of a directory growing to a million names after each overflow would be all upload did.
# Meanwhile the names the events that were not lost tell of are looked at as they come.
LOST_SHARE = 0.25


class Noticing(BundleUpload):
    """Upload's scan of file_dir and the settling of what it finds."""

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        self.next_scan = 0.0
        self.last_scan = 0.0
        self.scan_started = 0.0  # monotonic: when the running scan was submitted
        self.warned: set[str] = set()
        self.changed = threading.Event()
        self.watcher = DirWatcher(str(self.cfg.file_dir), self._on_change)
        self.sidecars = Sidecars(str(self.cfg.file_dir))  # read by the scan job only
        self.watching = False
        self.look_names: set[str] = set()  # names to look at again, besides those inotify tells of
        self.lost = False  # events were lost since the last whole listing began: list it whole
        self.relist_after = 0.0  # time.time(): a whole listing for lost events not before

    def start_watching(self) -> None:
        self.watching = self.watcher.start()
        if self.watching:
            log.debug("watching %s through inotify", self.cfg.file_dir)

    def shutdown(self) -> None:
        self.watcher.stop()

    def look_again_at(self, names: Iterable[str]) -> None:
        """Look at these names of file_dir again soon, as if inotify had told of a change to them
        (one whose change inotify does not tell of: deep inside a directory)."""
        self.look_names.update(names)
        self._on_change()

    def _on_change(self) -> None:
        """Called by the watcher thread: something happened in file_dir; look soon."""
        self.changed.set()
        self.jobs.wake()

    def next_wakeup(self) -> float | None:
        if self.greeting is not None:
            return None  # nothing offered while the first agent's entries are announced (adoption)
        if self.ripe:
            # Settled entries left to offer: the next pass offers more (files held for bundles
            # until central says its version: a little later).
            return self.bundles_wait
        return self._scan_due()

    def _scan_due(self) -> float | None:
        if self.jobs.busy(SCAN):
            return None  # the scan's completion wakes the loop; a past time here would make it spin
        if self.changed.is_set() or self.look_names:
            return self.last_scan + MIN_SCAN_GAP
        due = self.next_scan
        if self.lost:
            due = min(due, max(self.relist_after, self.last_scan + MIN_SCAN_GAP))
        settles = self._next_settle()
        return due if settles is None else min(due, settles)

    def _next_settle(self) -> float | None:
        """When the first name settling that the last look did not look at as settled may have
        settled (those it did and that still settle wait for their hash: inotify tells of a change)."""
        for _, since in self.pending.values():  # in the order of their `since`
            if since + self.cfg.settle_seconds > self.last_scan:
                return since + self.cfg.settle_seconds
        return None

    def _settled_by(self, now: float) -> list[str]:
        """The names settling whose time has come: a look at them tells whether they changed."""
        due = []
        for name, (_, since) in self.pending.items():
            if since + self.cfg.settle_seconds > now:
                break
            due.append(name)
        return due

    def tick_scan(self, now: float) -> None:
        """Offer what has settled, and look at file_dir when it is due (not while greeting: file_dir
        waits until the first agent's entries are known)."""
        if self.greeting is not None:
            return
        self._offer_ripe()
        wakeup = self._scan_due()
        if wakeup is None or now < wakeup:
            return
        self.changed.clear()
        told, whole = self.watcher.take_changes()  # what a whole listing would also find
        self.lost = self.lost or whole
        names: set[str] | None = None  # None: the whole directory
        if self.watching and now < self.next_scan and not (self.lost and now >= self.relist_after):
            names = told | self.look_names
            names.update(self._settled_by(now))
        else:
            self.lost = False
        self.look_names = set()
        self.last_scan = now
        self.scan_started = time.monotonic()
        # With inotify, its events tell of every sidecar written: the scan asks the file system for
        # no other sidecar than those and those it found before.
        sidecars = self.watcher.take_sidecars if self.watching else None
        self.jobs.submit(
            Pool.SCAN,
            [SCAN],
            functools.partial(
                scan, str(self.cfg.file_dir), self.watcher.take_renamed, self.sidecars, names, sidecars
            ),
            self._scanned,
        )

    def prune_later(self) -> bool:
        # A listing under way may still show a name that is gone now, and the scan would take it for
        # new if its history went meanwhile: prune between scans.
        return self.jobs.busy(SCAN)

    def kept(self, ended: list[Ended]) -> set[str]:
        """The latest version of each name still in file_dir stays, however old: the scan compares
        what the name holds with it (fingerprint, then md5), and that is what keeps a delivered file
        that is still here from being offered again. Older versions, and names no longer here, go."""
        keep = super().kept(ended)
        for row in ended:
            if row.name.startswith(bundles.PREFIX):
                bundle = self.state.get(row.id)
                if bundle is not None and bundle.kind == bundles.KIND and self.bundle_present(bundle):
                    keep.add(row.id)  # what its members' names hold is compared with its members
                continue
            latest = self.state.latest_by_name(row.name)
            if latest is None or latest.id != row.id:
                continue
            if os.path.lexists(self.path(row.name)):
                keep.add(row.id)
            else:
                self.relayed.pop(row.name, None)  # only a cache: a name that comes back is looked up
        return keep

    # noticing entries ----------------------------------------------------------------------------

    def _scanned(self, listing: Listing | None, error: BaseException | None) -> None:
        now = time.time()
        if listing is None or listing.looked is None:  # a whole listing: the next on the clock
            took = time.monotonic() - self.scan_started
            interval = RESCAN_INTERVAL if self.watching else SCAN_INTERVAL
            gap = min(max(interval, took / SCAN_SHARE[self.watching]), MAX_SCAN_GAP[self.watching])
            self.next_scan = now + gap
            self.relist_after = now + took * (1 / LOST_SHARE - 1)
        if listing is None:
            log.error("cannot scan %s: %s", self.cfg.file_dir, error)
            return
        found = listing.found
        self._forget_gone(listing)
        looks: list[tuple[str, EntryStat]] = []
        for name, st in found.items():
            if not isinstance(st, EntryStat):
                self.pending.pop(name, None)
                self.unripe(name)
                if st is not None:
                    self._warn_once(name, "%s: not sending it: %s", name, st)
            elif self.relayed.get(name) == st.signature:
                continue  # this content is already on its way or delivered
            elif name in self.ripe and self.ripe[name][0].signature == st.signature:
                continue  # settled, to be offered in a coming pass
            else:
                self.unripe(name)  # changed since it settled: it settles again
                if self._sendable(name) and self._meta_usable(name, listing.meta.get(name)):
                    looks.append((name, st))
        # What the state holds of the names not known yet: a few queries for the whole listing.
        latest = self.versions([n for n, _ in looks if n not in self.unseen])
        for name, st in looks:
            if name not in latest:
                self.unseen.add(name)
            meta = listing.meta.get(name)
            self._look_at(name, st, name in listing.whole, now, latest.get(name), meta)
        self._offer_ripe()

    def _forget_gone(self, listing: Listing) -> None:
        """What was known of the names no longer in file_dir goes (only a cache: a name that comes
        back is looked up again)."""
        found = listing.found
        if listing.looked is None:
            for known in (self.pending, self.relayed, self.ripe, self.bundleable):
                for name in [n for n in known if n not in found]:
                    del known[name]
            self.unseen.intersection_update(found)
        else:
            for name in listing.looked - found.keys():
                self.pending.pop(name, None)
                self.relayed.pop(name, None)
                self.unripe(name)
                self.unseen.discard(name)

    def _warn_once(self, name: str, fmt: str, *args: object) -> None:
        if name not in self.warned:
            self.warned.add(name)
            log.warning(fmt, *args)

    def _sendable(self, name: str) -> bool:
        problem = name_problem(name)
        if problem:
            self._warn_once(name, "%s: not sending it (in %s): %s", name, self.cfg.file_dir, problem)
        return not problem

    def _meta_usable(self, name: str, meta: Read | None) -> bool:
        """An entry whose sidecar is not valid metadata is not sent (said once) until it is."""
        if isinstance(meta, Exception):
            self.pending.pop(name, None)
            self._warn_once(
                sidecar_of(name),
                "%s: not sending it: its sidecar %s (in %s) cannot be used: %s",
                name,
                sidecar_of(name),
                self.cfg.file_dir,
                meta,
            )
            return False
        if self.warned:  # (nearly always empty: no name to make for each entry)
            self.warned.discard(sidecar_of(name))
        return True

    def _look_at(
        self, name: str, st: EntryStat, whole: bool, now: float, latest: Entry | None, meta: Read | None
    ) -> None:
        """One entry of a listing, not on its way with this content (`latest`: its name's latest
        version; `meta`: its sidecar's metadata): note it while it settles; once it has, offer it
        (in this pass or a coming one, `ripe`) or, for a name relayed before, compare its md5 first."""
        if latest is not None and latest.md5 is None and self.jobs.busy(Key(HASHING, latest.id)):
            return  # being hashed (one adopted from the first agent): its md5 decides, then the scan
        if latest is not None and latest.signature == st.signature:
            self.pending.pop(name, None)
            self.state.after_commit(functools.partial(self.relayed.__setitem__, name, st.signature))
            return
        seen = self.pending.get(name)
        if whole:  # counts as settled already
            log.debug("%s: renamed in and not open for writing: no need to wait for it to settle", name)
            seen = (st.signature, float("-inf"))
        if seen is None or seen[0] != st.signature:
            self.pending.pop(name, None)  # kept in the order of their `since` (_settled_by)
            self.pending[name] = (st.signature, now)
        elif now - seen[1] >= self.cfg.settle_seconds and not self.jobs.busy(Key(NAME, name)):
            if latest is None or latest.state == Up.FAILED:
                self.pending.pop(name, None)
                self.ripen(name, st, meta if isinstance(meta, dict) else None, fresh=latest is None)
            else:
                self._hash(name, st.signature)  # maybe only touched: compare before sending

    def _offer_ripe(self) -> None:
        """Offer settled entries, OFFERS_PER_PASS at most, and hash them while they travel."""
        later = self.bundle_ripe()  # for the bundles of the coming passes: not offered alone
        fresh: list[Entry] = []  # offered now, to be hashed while they travel
        # The first few of a flood, not a look at each ripe name a pass: in a flood of small files
        # all are held for bundles (none to look at), else the first OFFERS_PER_PASS go.
        alone = () if len(later) >= len(self.ripe) else (n for n in self.ripe if n not in later)
        for name in list(itertools.islice(alone, OFFERS_PER_PASS)):
            st, meta = self.ripe[name]
            self.unripe(name)
            fresh.append(self._offer(name, st, None, meta))
        self.hash_entries(fresh)

    def _hash(self, name: str, signature: str) -> None:
        """md5 of a name relayed before, to tell new content from a touch."""
        self.jobs.submit(
            Pool.HASH,
            [Key(NAME, name)],
            functools.partial(hash_entry, self.path(name), self.strong),
            functools.partial(self._name_hashed, name, signature),
        )

    def _name_hashed(
        self, name: str, signature: str, hashed: Hashed | None, error: BaseException | None
    ) -> None:
        if hashed is None:
            log.warning("%s: cannot read it (%s); will look again", name, error)
            self.pending.pop(name, None)
            return
        if hashed.stat.signature != signature:
            self.pending.pop(name, None)  # changed while hashing: it settles again
            self.pending[name] = (hashed.stat.signature, time.time())
            return
        if not self._meta_usable(name, hashed.meta):
            return
        latest = self.version(name)
        if latest is not None and latest.md5 == hashed.md5 and latest.state != Up.FAILED:
            self.touched(latest, hashed.stat.signature)  # same content: nothing to send
            return
        meta = hashed.meta if isinstance(hashed.meta, dict) else None
        self._offer(name, hashed.stat, hashed.md5, meta, hashed.checksum)

    def _offer(
        self,
        name: str,
        st: EntryStat,
        md5: str | None,
        meta: Metadata | None,
        checksum: str = "",
        to: tuple[str, ...] = (),
    ) -> Entry:
        """Record a new version of `name` and offer it (Offering.offer_version), in place of the
        name's older versions not sent yet."""
        entry_id = new_entry_id()
        # Older versions of this name not yet sent would now send the new content under the
        # old md5: withdraw them (one already pushed and being verified goes on). A name the
        # state holds no version of has none.
        if name in self.unseen:
            self.unseen.discard(name)
        else:
            for older in self.state.by_name(name, *UNSENT):
                self.withdraw(older, "superseded by a newer version")
            # One central refused for its metadata: this version, with new metadata, takes its place.
            for older in self.state.by_name(name, Up.FAILED):
                if (older.reason or "").startswith(f"{METADATA_AT_CENTRAL}: "):
                    self.forget(older, f"offered again with new metadata as entry {entry_id}")
        entry = self.offer_version(entry_id, name, st, md5=md5, meta=meta, checksum=checksum, to=to)
        self.name_offered(name, st.signature)
        log.info(
            "%s: offered (%s, %s, %s%s)",
            name,
            st.kind,
            count(st.size, "byte"),
            count(st.files, "file"),
            f", md5 {md5}" if md5 else "",
        )
        return entry
