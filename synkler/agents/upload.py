"""The upload role: notice settled entries in file_dir, offer them, push them when admitted.

A new name is offered as soon as it has settled and hashed while central admits it and while it is
pushed: the md5 goes with `sent`, once both the push and the hash are done (`pushed`: the push is,
the hash is not yet). A name relayed before is hashed first, so an entry that was only touched
(same content) is not sent again.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from .. import bundles, proofs, receipts
from .. import destinations as dests
from ..errors import MessageError, Refused
from ..hops import cleanup, receiptfiles, transfer
from ..hops.checksum import EntryStat
from ..messages import (
    Admit,
    Delivered,
    Failed,
    Forget,
    Greeted,
    Offer,
    Open,
    Sent,
    Wait,
    Withdraw,
    name_problem,
    new_entry_id,
)
from ..metadata import Metadata, canonical, loads, sidecar_of
from ..state import Ended, Entry, State
from ..text import count, shown, some_entries
from . import sidecars
from .adoption import Adopting
from .base import (
    ENTRY,
    HASHING,
    NAME,
    RESEND,
    RETRY,
    SCAN,
    Cleanup,
    Jobs,
    Key,
    Status,
    Transitions,
    hash_groups,
)
from .facts import (
    BUNDLE_AT_CENTRAL,
    DISK_WAIT,
    METADATA_AT_CENTRAL,
    PULL_FROM_CENTRAL,
    PUSH,
    PUSH_TO_CENTRAL,
    RELAY,
    facts,
    hop,
)
from .listing import Hashed, Listing, data_signature, hash_each, hash_entry, scan
from .pools import Pool
from .sidecars import Read, Sidecars
from .upload_bundles import BundleUpload
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
MAX_SCAN_GAP = 60.0


class Up(Status):
    """Upload's entry states."""

    OFFERED = "offered"
    WAITING = "waiting"
    UPLOADING = "uploading"
    PUSHED = "pushed"
    SENT = "sent"
    DELIVERED = "delivered"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    FORGOTTEN = "forgotten"


UNSENT = (Up.OFFERED, Up.WAITING, Up.UPLOADING, Up.PUSHED)  # versions a newer one withdraws
# `delivered` ends every state in which central may hold a verified copy: from the first push on
# (central's word is final, even for a version upload gave up on or withdrew after it was pushed);
# not one still offered or waiting, which central never had, except in a pool: a `delivered` of an
# older epoch with the destination's signed receipt (a central re-owned from delivered it meanwhile).
_ENDS = (Up.DELIVERED, Up.DONE)
# The hop of a failure after which central still holds a verified copy: download's pull (an
# operator's retry at download may deliver it yet). The failure's reason starts with it.
AFTER_STORE = PULL_FROM_CENTRAL
# An operator may forget an entry on its way or failed (`retry` of a failed one forgets it too, and
# offers the file again as a new entry), and run a failed cleanup script again (done -> delivered).
FORGETTABLE = frozenset({*UNSENT, Up.SENT, Up.FAILED})
TRANSITIONS: Transitions = {
    # offered/waiting -> delivered/done: only a pool's late `delivered` with a signed receipt (above)
    Up.OFFERED: frozenset({Up.WAITING, Up.UPLOADING, Up.SUPERSEDED, Up.FAILED, Up.FORGOTTEN, *_ENDS}),
    # ... -> offered: re-owned (a pool of centrals: its central is gone; synkler.agents.ownership)
    Up.WAITING: frozenset({Up.OFFERED, Up.UPLOADING, Up.SUPERSEDED, Up.FAILED, Up.FORGOTTEN, *_ENDS}),
    Up.UPLOADING: frozenset({Up.OFFERED, Up.PUSHED, Up.SENT, Up.SUPERSEDED, Up.FAILED, Up.FORGOTTEN, *_ENDS}),
    Up.PUSHED: frozenset({Up.OFFERED, Up.SENT, Up.UPLOADING, Up.SUPERSEDED, Up.FAILED, Up.FORGOTTEN, *_ENDS}),
    Up.SENT: frozenset({Up.OFFERED, Up.UPLOADING, Up.SUPERSEDED, Up.FAILED, Up.FORGOTTEN, *_ENDS}),
    Up.DELIVERED: frozenset({Up.DONE}),
    Up.DONE: frozenset({Up.DELIVERED}),
    Up.FAILED: frozenset({*_ENDS, Up.FORGOTTEN}),
    Up.SUPERSEDED: frozenset(_ENDS),
    Up.FORGOTTEN: frozenset(),
}
# The states an entry ends in at this role (pruned from the history keep_history_days later).
FINISHED = (Up.DONE, Up.SUPERSEDED, Up.FORGOTTEN)
# What observers know of these states (synkler.agents.facts).
FACTS = facts(
    "upload",
    Up,
    finished=FINISHED,
    failed=Up.FAILED,
    receiving=None,
    hashing=UNSENT,
    transferring=UNSENT,
    disk_waits=(DISK_WAIT,),
    given_up=(Up.FAILED, Up.FORGOTTEN, Up.SUPERSEDED),
    hops=(
        hop(PUSH, [Up.UPLOADING], [Up.PUSHED, Up.SENT]),  # rsync into central's staging ended well
        # central confirmed delivery: timed from the offer (the entry's creation)
        hop(RELAY, [], _ENDS, during=[s for s in Up if s not in _ENDS]),
    ),
)


class Upload(BundleUpload, Adopting):
    mode = "upload"
    WITHDRAWN = (Up.SUPERSEDED,)
    OWNED = (Up.WAITING, Up.UPLOADING, Up.PUSHED, Up.SENT)
    OFFERED, WAITING, SENT = Up.OFFERED, Up.WAITING, Up.SENT
    STATES = Up
    NEW = (Up.OFFERED,)
    TRANSITIONS = TRANSITIONS
    DELIVERED, DONE, FAILED, FORGOTTEN = Up.DELIVERED, Up.DONE, Up.FAILED, Up.FORGOTTEN
    FORGETTABLE = FORGETTABLE
    TRANSFERRING, HOP = Up.UPLOADING, PUSH_TO_CENTRAL
    RETRYABLE = frozenset({Up.FAILED})
    FINISHED = FINISHED

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        self.handlers = {
            Admit: self.on_admit,
            Wait: self.on_wait,
            Delivered: self.on_delivered,
            Failed: self.on_failed,
            Forget: self.on_forget,
            Open: self.on_open,
            Greeted: self.on_greeted,
        }
        self.pending: dict[str, tuple[str, float]] = {}  # name -> (signature, unchanged since)
        # name -> signature of the name's latest version in the state, as committed: a rescan skips
        # what is on its way or delivered without a query per name. The signature holds the ctime,
        # so a file never gets back a signature it had; a changed one is looked up again.
        self.relayed: dict[str, str] = {}
        # Names of file_dir the state holds no version of (as a lookup found): a new name settling
        # is not looked up again at every scan. Only `_offer` makes a version of a name.
        self.unseen: set[str] = set()
        self.bundleable: set[str] = set()  # ripe names with no version: they may go in a bundle
        # Settled names to offer, in the order found: OFFERS_PER_PASS of them a pass.
        self.ripe: dict[str, tuple[EntryStat, Metadata | None]] = {}
        self.next_scan = 0.0
        self.last_scan = 0.0
        self.scan_started = 0.0  # monotonic: when the running scan was submitted
        self.warned: set[str] = set()
        self.changed = threading.Event()
        self.watcher = DirWatcher(str(self.cfg.file_dir), self._on_change)
        self.sidecars = Sidecars(str(self.cfg.file_dir))  # read by the scan job only
        self.watching = False
        # download name -> its pinned public key (checked by the config)
        self.download_keys = {d: receipts.load_public_key(k) for d, k in cfg.download_keys().items()}
        # The second hash every entry gets beside its md5, computed in the same read (docs/checksums.md).
        self.strong = None if cfg.checksum == "md5" else cfg.checksum
        self.retention = receiptfiles.Retention(cfg.receipt_dir, cfg.receipt_keep_days)
        self.receipts = receiptfiles.Batch(cfg.receipt_dir, state.before_commit)

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.file_dir, name)

    def cleanup_target(self, entry: Entry) -> tuple[str, str]:
        return entry.name, self.path(entry.name)

    def cleanup_content(self, entry: Entry) -> cleanup.Content:
        # The entry's fingerprint holds its sidecar's: the script's check looks at the data alone.
        return cleanup.Content(entry.kind, entry.md5, data_signature(entry.signature))

    def _cleanup_ended(
        self,
        entry_id: str,
        name: str,
        result: transfer.Result | cleanup.Skipped | None,
        error: BaseException | None,
    ) -> None:
        super()._cleanup_ended(entry_id, name, result, error)
        if self.entry(entry_id).cleanup == Cleanup.DONE:
            self.state.after_commit(functools.partial(self._drop_sidecar, name))

    def _drop_sidecar(self, name: str) -> None:
        """The sidecar goes with its entry: once the cleanup script has removed (or moved) the
        entry, its sidecar is removed too. One left by a script that keeps the entry stays."""
        if os.path.lexists(self.path(name)):
            return
        try:
            if sidecars.remove(str(self.cfg.file_dir), name):
                log.info("%s: its sidecar %s removed with it", name, sidecar_of(name))
        except OSError as e:
            log.warning("%s: cannot remove its sidecar %s: %s", name, sidecar_of(name), e)

    def startup(self) -> None:
        if not self.download_keys:
            log.warning(
                "download_public_key is not set: deliveries are not proven (the cleanup script runs on "
                "central's word, without download's signed receipt); see docs/security.md, "
                "'Delivery receipts'"
            )
        self.resume_cleanups()
        self.sweep_bundles()
        # Hashes cut short by the stop start again.
        self.hash_entries([e for e in self.state.by_state(*UNSENT) if not e.md5])
        self.greet_again()
        self.watching = self.watcher.start()
        if self.watching:
            log.debug("watching %s through inotify", self.cfg.file_dir)

    def shutdown(self) -> None:
        self.watcher.stop()

    def changed_now(self) -> None:
        """Look at file_dir again soon, as if inotify had told of a change."""
        self._on_change()

    def _on_change(self) -> None:
        """Called by the watcher thread: something happened in file_dir; look soon."""
        self.changed.set()
        self.jobs.wake()

    def hash_adopted(self, entry: Entry) -> None:
        self.hash_entries([entry])

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
        return self.last_scan + MIN_SCAN_GAP if self.changed.is_set() else self.next_scan

    # noticing entries ----------------------------------------------------------------------------

    def _scanned(self, listing: Listing | None, error: BaseException | None) -> None:
        now = time.time()
        took = time.monotonic() - self.scan_started
        interval = RESCAN_INTERVAL if self.watching else SCAN_INTERVAL
        self.next_scan = now + min(max(interval, took / SCAN_SHARE[self.watching]), MAX_SCAN_GAP)
        if listing is None:
            log.error("cannot scan %s: %s", self.cfg.file_dir, error)
            return
        found = listing.found
        for known in (self.pending, self.relayed, self.ripe):
            for name in [n for n in known if n not in found]:
                del known[name]
        self.unseen.intersection_update(found)
        self.bundleable.intersection_update(self.ripe)
        looks: list[tuple[str, EntryStat]] = []
        for name, st in found.items():
            if not isinstance(st, EntryStat):
                self.pending.pop(name, None)
                self.ripe.pop(name, None)
                if st is not None:
                    self._warn_once(name, "%s: not sending it: %s", name, st)
            elif self.relayed.get(name) == st.signature:
                continue  # this content is already on its way or delivered
            elif name in self.ripe and self.ripe[name][0].signature == st.signature:
                continue  # settled, to be offered in a coming pass
            else:
                self.ripe.pop(name, None)  # changed since it settled: it settles again
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
        # Look again when the first pending entry may have settled (entries being hashed wait for that).
        deadlines = [since + self.cfg.settle_seconds for since in (s[1] for s in self.pending.values())]
        deadlines = [d for d in deadlines if d > now]
        if deadlines:
            self.next_scan = min(self.next_scan, min(deadlines))

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
            self.pending[name] = (st.signature, now)
        elif now - seen[1] >= self.cfg.settle_seconds and not self.jobs.busy(Key(NAME, name)):
            if latest is None or latest.state == Up.FAILED:
                self.pending.pop(name, None)
                self.ripe[name] = (st, meta if isinstance(meta, dict) else None)
                if latest is None:
                    self.bundleable.add(name)
            else:
                self._hash(name, st.signature)  # maybe only touched: compare before sending

    def _offer_ripe(self) -> None:
        """Offer settled entries, OFFERS_PER_PASS at most, and hash them while they travel."""
        later = self.bundle_ripe()  # for the bundles of the coming passes: not offered alone
        fresh: list[Entry] = []  # offered now, to be hashed while they travel
        for name in [n for n in self.ripe if n not in later][:OFFERS_PER_PASS]:
            st, meta = self.ripe.pop(name)
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
            self.pending[name] = (hashed.stat.signature, time.time())  # changed while hashing: settle again
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
        """Record a new version of `name` and offer it, with its metadata (md5 None: not hashed yet;
        see hash_entries), its second hash (`checksum:`) and the destinations an operator sends it
        to again (`to`; (): central's routes decide)."""
        entry = Entry(
            id=new_entry_id(),
            name=name,
            kind=st.kind,
            size=st.size,
            files=st.files,
            md5=md5,
            state=Up.OFFERED,
            peer=None if self.cfg.centrals else self.cfg.central_name,
            signature=st.signature,
        )
        # Older versions of this name not yet sent would now send the new content under the
        # old md5: withdraw them (one already pushed and being verified goes on). A name the
        # state holds no version of has none.
        if name in self.unseen:
            self.unseen.discard(name)
        else:
            for older in self.state.by_name(name, *UNSENT):
                self._withdraw(older, "superseded by a newer version")
            # One central refused for its metadata: this version, with new metadata, takes its place.
            for older in self.state.by_name(name, Up.FAILED):
                if (older.reason or "").startswith(f"{METADATA_AT_CENTRAL}: "):
                    self.forget(older, f"offered again with new metadata as entry {entry.id}")
        self.create(entry)
        self.state.put_metadata(entry.id, canonical(meta) if meta else None)
        if checksum:
            self.state.put_checksum(entry.id, checksum)
        offer = Offer(
            entry.id,
            self.name,
            name=name,
            kind=st.kind,
            size=st.size,
            files=st.files,
            meta=meta or None,
            to=to,
        )
        self.send_offer(entry, offer)
        self.pending.pop(name, None)
        self.ripe.pop(name, None)
        self.state.after_commit(functools.partial(self.relayed.__setitem__, name, st.signature))
        log.info(
            "%s: offered (%s, %s, %s%s)",
            name,
            st.kind,
            count(st.size, "byte"),
            count(st.files, "file"),
            f", md5 {md5}" if md5 else "",
        )
        return entry

    def hash_entries(self, entries: list[Entry]) -> None:
        """md5 of offered entries while they wait for admission and while they are pushed."""
        for group in hash_groups(entries):
            if len(group) == 1:
                log.debug("%s: hashing", group[0].name)
            else:
                log.debug("hashing %s", some_entries([e.name for e in group]))
            self.jobs.submit(
                Pool.HASH,
                [Key(HASHING, e.id) for e in group],
                functools.partial(
                    hash_each,
                    [self.entry_path(e) for e in group],
                    self.strong,
                    {self.entry_path(e) for e in group if e.kind == bundles.KIND},
                ),
                functools.partial(self._group_hashed, group),
            )

    def _group_hashed(
        self, group: list[Entry], results: list[Hashed | Exception] | None, error: BaseException | None
    ) -> None:
        self.record_each(group, results, error, self._entry_hashed, "its md5")

    def _entry_hashed(self, entry: Entry, result: Hashed | BaseException) -> None:
        now_entry = self.entry(entry.id)
        if now_entry.state == Up.SUPERSEDED or now_entry.md5:
            return
        if isinstance(result, Hashed) and (
            result.stat.signature == entry.signature or adopted(entry, result)
        ):
            self.state.update(now_entry, md5=result.md5, signature=result.stat.signature)
            self.state.put_checksum(now_entry.id, result.checksum)
            if now_entry.kind == bundles.KIND:
                self.bundle_hashed(now_entry, result)
            log.debug("%s: md5 %s", entry.name, result.md5)  # INFO gives it in the "delivered" line
            if now_entry.state == Up.PUSHED:
                self._sent(now_entry)
        elif now_entry.state in UNSENT:
            # Changed (or gone) since it was offered: what is being pushed is not what settled.
            # The scan offers the new content as a new version.
            why = f"cannot read it ({result})" if isinstance(result, BaseException) else "changed while sent"
            self._withdraw(now_entry, why)

    def _sent(self, entry: Entry) -> None:
        """Pushed and hashed: tell central, which verifies what arrived against the md5."""
        self.move(entry, Up.SENT, tries=0, reason=None)
        self.send_to_owner(
            entry,
            Sent(
                entry.id,
                self.name,
                attempt=entry.attempt,
                md5=entry.known_md5(),
                checksum=self.state.checksum(entry.id),
            ),
        )

    # messages ------------------------------------------------------------------------------------

    def on_admit(self, msg: Admit) -> None:
        self.take_admit(msg)
        self.on_central(msg, "dest", "staging", self.name)
        entry = self.entry_for(msg)
        if self.cfg.centrals and entry.state in _ENDS:
            # Taken from the offers queue after a central re-owned from delivered it (signed receipts).
            self.release(entry, msg.sender, "delivered already through another central (signed receipts)")
            return
        newest = self.state.latest_by_name(entry.name)
        stale = newest is not None and newest.id != entry.id
        if entry.state == Up.SUPERSEDED or (stale and entry.state in (*UNSENT, Up.SENT)):
            # Central asks again for a version that has changed since: withdraw it (again).
            self._withdraw(entry, "superseded by a newer version")
        elif entry.state in (*UNSENT, Up.SENT) and msg.attempt > entry.attempt:
            self.move(entry, Up.UPLOADING, attempt=msg.attempt, path=msg.dest, tries=0, due=0, reason=None)
            if msg.to and not dests.rows(self.state, entry.id):  # frozen at the first admission
                dests.route(self.state, entry.id, msg.to)
            self.transfer_due = True

    def on_wait(self, msg: Wait) -> None:
        known = self.state.get(msg.entry)
        if known is not None and known.state == Up.OFFERED:
            self.take_wait(known, msg.sender)  # in a pool: the central that took the offer holds it
        entry = self.entry_for(msg)
        if entry.state == Up.OFFERED:
            self.move(entry, Up.WAITING, reason=msg.reason)

    def on_delivered(self, msg: Delivered) -> None:
        late = self.late_proof(msg)  # of an older epoch, with a receipt: checked below as any other
        entry = self.entry_for(msg, *self.cfg.centrals) if late else self.entry_for(msg)
        dest = msg.destination or self.cfg.download_name
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        if dest not in rows:
            raise MessageError(
                f"delivered for entry {entry.id} to {dest!r}, which is not one of its destinations "
                f"({', '.join(rows)})"
            )
        if entry.state in (Up.DELIVERED, Up.DONE, Up.FORGOTTEN) or rows[dest].state in dests.ENDED:
            return  # a copy of one taken already, or an entry an operator forgot meanwhile
        if (entry.state in (Up.OFFERED, Up.WAITING) and not late) or (
            entry.state == Up.FAILED and not (entry.reason or "").startswith(f"{AFTER_STORE}: ")
        ):
            raise MessageError(
                f"delivered for entry {entry.id}, which is {entry.state} at upload "
                f"({shown(entry.reason or '')}): central never held a verified copy of it"
            )
        self._check_receipt(entry, msg, dest)
        self._check_proof(entry, msg, dest)
        dests.mark(self.state, entry.id, dest, dests.FETCHED, stored_as=msg.stored_as)
        if msg.receipt:
            self.state.put_receipt(entry.id, dest, msg.receipt)
        self._keep_proof(entry, msg, dest)
        rest = dests.waiting_for(dests.of(self.state, entry.id, self.cfg.download_name))
        if rest:  # the cleanup script waits for every destination's verified copy
            log.info(
                "%s: delivered to %s (as %s); waiting for %s",
                entry.name,
                dest,
                msg.stored_as,
                ", ".join(rest),
            )
            return
        owner = entry.peer
        self.delivered(entry, stored_as=msg.stored_as, reason=None, tries=0)
        log.info("%s: delivered (md5 %s, as %s at %s)", entry.name, entry.md5, msg.stored_as, dest)
        if late and owner and owner != msg.sender:
            why = f"delivered through {msg.sender} at epoch {msg.epoch} (signed receipts)"
            self.release(entry, owner, why)

    def _check_proof(self, entry: Entry, msg: Delivered, dest: str) -> None:
        """Download's receipt document, passed on by central, must be about this entry and content,
        and signed by download's pinned key (ReceiptError: dead-lettered, nothing done)."""
        if not msg.proof:
            return
        doc = msg.proof["receipt"]
        mine = self.state.checksum(entry.id)
        if doc["entry"] != entry.id or doc["md5"] != entry.md5 or (mine and doc["checksum"] != mine):
            raise receipts.ReceiptError(
                f"delivered for entry {entry.id}: its receipt document is about other content "
                f"(md5 {doc['md5']}, {doc['checksum'] or 'no second hash'})"
            )
        key = self.download_keys.get(dest)
        if key is not None:
            why = proofs.signature_problem(msg.proof, key)
            if why:
                raise receipts.ReceiptError(f"delivered for entry {entry.id}: receipt document {why}")

    def _keep_proof(self, entry: Entry, msg: Delivered, dest: str) -> None:
        """Keep upload's copy of the receipt (docs/running.md, "Receipts"): download's document as it
        signed it, and what upload knows of the entry, so that delivery can be shown after cleanup.
        With central's routes, one document per destination (`<entry id>.<destination>.json`), each
        naming its destination: never one in place of another."""
        now = time.time()
        kept = {
            "receipt": msg.proof["receipt"] if msg.proof else None,
            "signature": msg.proof["signature"] if msg.proof else "",
            "token": msg.receipt,
            "upload": {
                "agent": self.name,
                "entry": entry.id,
                "name": proofs.name_out(os.fsencode(entry.name)),
                "md5": entry.md5,
                "checksum": self.state.checksum(entry.id),
                "offered_at": entry.created,
                "delivered_at": now,
                "stored_as": proofs.name_out(os.fsencode(msg.stored_as)),
                "destination": dest,
            },
        }
        # (with the transaction's others)
        self.receipts.keep(entry.id, shown(entry.name), now, kept, msg.destination)

    def _check_receipt(self, entry: Entry, msg: Delivered, dest: str) -> None:
        """With the destination's key pinned, its delivery counts only with its signed receipt for this
        very entry and content (ReceiptError: dead-lettered, nothing done)."""
        key = self.download_keys.get(dest)
        if key is None:
            if self.download_keys:
                raise receipts.ReceiptError(
                    f"delivered for entry {entry.id} to {dest!r}, whose key download_public_key does not "
                    "pin: not believed"
                )
            return
        if not msg.receipt:
            raise receipts.ReceiptError(f"delivered for entry {entry.id} without a receipt: not believed")
        if entry.md5 is None:
            raise receipts.ReceiptError(f"delivered for entry {entry.id}, which upload has not hashed yet")
        expected = receipts.for_entry(self.cfg.id, entry, dest, msg.stored_as)
        receipts.check(msg.receipt, key, expected)

    def on_forget(self, msg: Forget) -> None:
        """`forget` with a destination: an operator at central forgot the entry there only. Upload
        stops waiting for that destination's receipt; once every other has sent one, it is delivered."""
        if not msg.destination:
            super().on_forget(msg)
            return
        entry = self.entry_for(msg)
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        if msg.destination not in rows or rows[msg.destination].state in dests.ENDED:
            return  # not one of its destinations, or ended there already: nothing to do
        dests.mark(self.state, entry.id, msg.destination, dests.FORGOTTEN, reason=msg.reason)
        log.info("%s: %s", entry.name, msg.reason)
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        if dests.all_fetched(rows) and entry.state in (*UNSENT, Up.SENT, Up.SUPERSEDED, Up.FAILED):
            stored_as = next(r.stored_as for r in rows.values() if r.state == dests.FETCHED)
            self.delivered(entry, stored_as=stored_as or entry.name, reason=None, tries=0)
            log.info("%s: delivered to every destination it still goes to", entry.name)

    def on_failed(self, msg: Failed) -> None:
        if msg.hop == BUNDLE_AT_CENTRAL:
            self.bundle_refused(msg)
            return
        entry = self.entry_for(msg)
        if msg.destination in dests.rows(self.state, entry.id):
            dests.mark(self.state, entry.id, msg.destination, dests.FAILED, reason=f"{msg.hop}: {msg.reason}")
        if entry.state not in (Up.DELIVERED, Up.DONE, Up.FAILED, Up.SUPERSEDED, Up.FORGOTTEN):
            self.move(entry, Up.FAILED, reason=f"{msg.hop}: {msg.reason}")
            log.error(
                "%s: central reports failure at %s: %s; the data stays here", entry.name, msg.hop, msg.reason
            )

    def _withdraw(self, entry: Entry, why: str) -> None:
        if entry.state != Up.SUPERSEDED:
            self.move(entry, Up.SUPERSEDED, reason=why)
            if entry.kind == bundles.KIND:
                self.bundle_withdrawn(entry)
            log.info("%s: version %s withdrawn: %s", entry.name, entry.md5 or entry.id, why)
        self.send_to_owner(entry, Withdraw(entry.id, self.name, reason=why))

    # an operator's requests ----------------------------------------------------------------------

    @classmethod
    def refusal(cls, action: str, entry: Entry, latest: bool, *, present: bool = True) -> str | None:
        action, _, to = action.partition(":")
        if to and action == RETRY:
            return (
                f"a destination's failed pull is retried at central, which keeps the verified copy: "
                f"`synkler retry ENTRY --to {to}` there"
            )
        if to and action != RESEND:
            return f"central forgets an entry at one destination: `synkler {action} ENTRY --to {to}` there"
        # Retry (of a failed entry or its cleanup script) and resend act on what the name holds now.
        if action in (RETRY, RESEND) and not latest and entry.state != Up.SUPERSEDED:
            return "a newer version of its name has come since: act on that one"
        if action == RETRY and entry.state == Up.WAITING:
            return (
                "it waits for central to admit it, which central does as soon as there is room (it looks "
                "every second): `synkler retry` on central answers what it needs"
            )
        if action == RESEND:
            why = None
            if entry.state not in (Up.DONE, Up.FORGOTTEN):
                why = f"it is {entry.state}: only a delivered or forgotten entry can be sent again"
        else:
            why = super().refusal(action, entry, latest, present=present)
        sends = action == RESEND or (action == RETRY and entry.state == Up.FAILED)
        if why is None and sends and not present:
            why = "its name is no longer in upload's file_dir: nothing to send"
        return why

    def present(self, entry: Entry) -> bool:
        if entry.kind == bundles.KIND:
            return self.bundle_present(entry)
        return os.path.lexists(self.path(entry.name))

    def peers(self, entry: Entry) -> list[str]:
        owner = self.owner(entry)
        return [owner] if owner else []

    def retry_failed(self, entry: Entry) -> str:
        """The file again as a new entry, and the failed one forgotten at every role (central drops a
        copy it kept, download what it pulled of it)."""
        if entry.kind == bundles.KIND:
            return self.retry_bundle(entry)
        new = self._offer_again(entry)
        if self.entry(entry.id).state != Up.FORGOTTEN:  # one refused for its metadata is already
            self.forget(entry, f"retried by an operator at upload: sent again as entry {new.id}")
        return f"{shown(entry.name)}: sent again as entry {new.id}; the failed entry {entry.id} is forgotten"

    def resend(self, entry: Entry, to: str | None = None) -> str:
        """Send the entry again as a new one, to the destinations it went to (`to`: that one only)."""
        rows = dests.rows(self.state, entry.id)  # {}: routed by central's download_name, as then
        found = rows or dests.of(self.state, entry.id, self.cfg.download_name)
        try:
            again = tuple(dests.acted_on(RESEND, found, to))
        except ValueError as e:
            raise Refused(f"{shown(entry.name)} (entry {entry.id}): cannot resend: {e}") from None
        where = f" to {', '.join(again)}" if rows or to else ""
        if entry.kind == bundles.KIND:
            return self.resend_bundle(entry, again if rows or to else (), where)
        new = self._offer_again(entry, again if rows or to else ())
        return f"{shown(entry.name)}: sent again{where} as entry {new.id} (entry {entry.id} stays as it was)"

    def _offer_again(self, entry: Entry, to: tuple[str, ...] = ()) -> Entry:
        """Offer what the entry's name holds as a new version, without waiting for a change.

        The new version starts from the fingerprint last recorded for the name's content, and is
        hashed on its way, as any new name: if the file changed since (or goes), the hash withdraws
        it and the scan offers what is there now.
        """
        if self.jobs.busy(Key(NAME, entry.name)):
            raise Refused(f"{shown(entry.name)}: upload is reading it right now; ask again in a moment")
        stat = EntryStat(entry.kind, entry.size, entry.files, entry.signature or "")
        new = self._offer(entry.name, stat, None, loads(self.state.metadata(entry.id)), to=to)
        self.hash_entries([new])
        return new

    # jobs ----------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.tick_greeting(now)
        greeting = self.greeting is not None  # file_dir waits until the first agent's entries are known
        if not greeting:
            self._offer_ripe()
        wakeup = None if greeting else self._scan_due()
        if wakeup is not None and now >= wakeup:
            self.changed.clear()
            self.last_scan = now
            self.scan_started = time.monotonic()
            self.jobs.submit(
                Pool.SCAN,
                [SCAN],
                functools.partial(scan, str(self.cfg.file_dir), self.watcher.take_renamed, self.sidecars),
                self._scanned,
            )
        self.reown_gone(now)
        due = self.due_for_transfer(Up.UPLOADING, now)
        for batch in self.batches(due, group=lambda e: (e.peer, e.path, e.kind == bundles.KIND)):
            self._push(batch)
        self.start_due_cleanups(now)
        self.prune_history(now)
        self.retention.tick(now)

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

    def _push(self, batch: list[Entry]) -> None:
        """One rsync run for entries admitted into the same directory on central."""
        names = [e.name for e in batch]
        what = some_entries(names)
        if len(batch) == 1:
            log.info("%s: pushing to central%s", batch[0].name, push_count(batch[0]))
        else:
            log.info("pushing %s to central", what)
        self.submit_transfer(
            [Key(ENTRY, e.id) for e in batch],
            functools.partial(
                transfer.push, self.link_cfg(batch[0]), self._source(batch[0]), names, batch[0].path or ""
            ),
            functools.partial(
                self._pushed,
                {e.id: e.attempt for e in batch},
                names[0],
                what,
                self.link_of(batch[0]),
                time.time(),
            ),
        )

    def _pushed(
        self,
        attempts: dict[str, int],
        first_name: str,
        what: str,
        link: str,
        started: float,
        result: transfer.Result | None,
        error: BaseException | None,
    ) -> None:
        self.link_result(result, started, link)
        ok = result is not None and result.ok
        why = "" if ok else repr(error) if result is None else result.summary()
        for entry_id, attempt in attempts.items():
            entry = self.entry(entry_id)
            if entry.state != Up.UPLOADING or entry.attempt != attempt:
                continue  # superseded meanwhile
            if ok and entry.md5:
                self._sent(entry)
            elif ok:
                self.move(entry, Up.PUSHED, tries=0, reason=None)  # md5 to come
            elif not self.retry_later(
                entry,
                PUSH_TO_CENTRAL,
                why,
                out_of_space=bool(result and result.out_of_space),
                link_down=bool(result and result.link_down),
                needs_person=bool(result and result.needs_person),
            ):
                self.send_to_owner(entry, Failed(entry.id, self.name, hop=PUSH_TO_CENTRAL, reason=why[:1900]))
        if ok and len(attempts) == 1:
            log.info("%s: pushed in %.1f s", first_name, time.time() - started)
        elif ok:
            log.info("pushed %s in %.1f s", what, time.time() - started)

    def _source(self, entry: Entry) -> str:
        """The directory a batch of entries is pushed from: file_dir, or for bundles their own."""
        return self.bundle_root if entry.kind == bundles.KIND else str(self.cfg.file_dir)


def adopted(entry: Entry, result: Hashed) -> bool:
    """An entry adopted from the first agent (no fingerprint of its own yet) whose name holds what
    central was offered (kind, size, files): hashed here, it is pushed (again, or on from where
    the first agent's push stopped) under its id. Anything else is withdrawn, and offered anew."""
    st = result.stat
    return entry.signature is None and (st.kind, st.size, st.files) == (entry.kind, entry.size, entry.files)


def push_count(entry: Entry) -> str:
    """Which push this is, for the log: nothing for the first, then ' (retry 2)' after local
    failures and ' (upload 2 asked by central)' when central asked for it again (a bad md5)."""
    parts = [f"retry {entry.tries}"] if entry.tries else []
    if entry.attempt > 1:
        parts.append(f"upload {entry.attempt} asked by central")
    return f" ({', '.join(parts)})" if parts else ""
