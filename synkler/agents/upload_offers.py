"""Upload's versions: each recorded and offered the one way (single entries and bundles alike),
hashed while they travel, and `sent` once both the push and the hash are done; a version whose
content changed on its way is withdrawn (synkler.agents.upload)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import bundles
from ..hops.checksum import EntryStat
from ..messages import Failed, Offer, Sent, Withdraw
from ..metadata import Metadata, canonical
from ..state import Entry, State
from ..text import some_entries
from .base import HASHING, Jobs, Key, hash_groups
from .listing import Hashed, hash_each
from .pools import Pool
from .upload_pool import PoolUpload
from .upload_states import UNSENT, Up

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")


class Offering(PoolUpload):
    """A version's way from its offer to `sent`; which names to offer is Upload's scan
    (synkler.agents.upload_scan), whose knowledge of the names in file_dir starts here."""

    strong: str | None  # the second hash beside the md5 (set by Upload)

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        self.pending: dict[str, tuple[str, float]] = {}  # name -> (signature, unchanged since)
        # name -> signature of the name's latest version in the state, as committed: a rescan skips
        # what is on its way or delivered without a query per name. The signature holds the ctime,
        # so a file never gets back a signature it had; a changed one is looked up again.
        self.relayed: dict[str, str] = {}
        # Names of file_dir the state holds no version of (as a lookup found): a new name settling
        # is not looked up again at every scan. Only an offer makes a version of a name.
        self.unseen: set[str] = set()
        # Settled names to offer, in the order found: OFFERS_PER_PASS of them a pass.
        self.ripe: dict[str, tuple[EntryStat, Metadata | None]] = {}
        # Those of them that may go in a bundle (small files with no metadata and no version: name ->
        # size), in the same order: a pass takes the first ones, however many wait (a flood).
        self.bundleable: dict[str, int] = {}

    def entry_path(self, entry: Entry) -> str:
        raise NotImplementedError

    def bundle_refused(self, msg: Failed) -> None:
        """Central does not take this bundle (BundleUpload)."""
        raise NotImplementedError

    def offer_version(
        self,
        entry_id: str,
        name: str,
        st: EntryStat,
        *,
        kind: str | None = None,
        md5: str | None = None,
        meta: Metadata | None = None,
        checksum: str = "",
        to: tuple[str, ...] = (),
    ) -> Entry:
        """Record a new version and offer it: its fingerprint `st` (`kind`: another kind than the
        fingerprint's, a bundle's), its md5 (None: not hashed yet; see hash_entries), its metadata,
        its second hash (`checksum:`) and the destinations an operator sends it to again (`to`; ():
        central's routes decide)."""
        entry = Entry(
            id=entry_id,
            name=name,
            kind=kind or st.kind,
            size=st.size,
            files=st.files,
            md5=md5,
            state=Up.OFFERED,
            peer=None if self.cfg.centrals else self.cfg.central_name,
            signature=st.signature,
        )
        self.create(entry)
        self.state.put_metadata(entry.id, canonical(meta) if meta else None)
        if checksum:
            self.state.put_checksum(entry.id, checksum)
        offer = Offer(
            entry.id,
            self.name,
            name=name,
            kind=entry.kind,
            size=st.size,
            files=st.files,
            meta=meta or None,
            to=to,
        )
        self.send_offer(entry, offer)
        return entry

    def ripen(self, name: str, st: EntryStat, meta: Metadata | None, *, fresh: bool) -> None:
        """The name has settled: to be offered in this pass or a coming one; in a bundle, if it is a
        small file with no metadata and its name has no version yet (`fresh`)."""
        self.ripe[name] = (st, meta)
        small = st.kind == "file" and st.size <= self.cfg.bundle_file_kib * 1024 and meta is None
        if fresh and small and self.cfg.bundle_files:
            self.bundleable[name] = st.size
        else:
            self.bundleable.pop(name, None)

    def unripe(self, name: str) -> None:
        """Not (or no longer) to be offered as settled: changed, gone, or offered."""
        self.ripe.pop(name, None)
        self.bundleable.pop(name, None)

    def name_offered(self, name: str, signature: str) -> None:
        """The name's content is on its way (alone or in a bundle): it no longer settles, and once
        committed the scan knows it as relayed."""
        self.pending.pop(name, None)
        self.unripe(name)
        self.unseen.discard(name)
        self.state.after_commit(functools.partial(self.relayed.__setitem__, name, signature))

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

    def hash_adopted(self, entry: Entry) -> None:
        self.hash_entries([entry])

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
                self.sent(now_entry)
        elif now_entry.state in UNSENT:
            # Changed (or gone) since it was offered: what is being pushed is not what settled.
            # The scan offers the new content as a new version.
            why = f"cannot read it ({result})" if isinstance(result, BaseException) else "changed while sent"
            self.withdraw(now_entry, why)
            if now_entry.kind != bundles.KIND:  # (a bundle's members are looked at again: bundle_withdrawn)
                self.state.after_commit(functools.partial(self.look_again_at, [now_entry.name]))

    def bundle_hashed(self, entry: Entry, hashed: Hashed) -> None:
        raise NotImplementedError

    def sent(self, entry: Entry) -> None:
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

    def withdraw(self, entry: Entry, why: str) -> None:
        if entry.state != Up.SUPERSEDED:
            self.move(entry, Up.SUPERSEDED, reason=why)
            if entry.kind == bundles.KIND:
                self.bundle_withdrawn(entry)
            log.info("%s: version %s withdrawn: %s", entry.name, entry.md5 or entry.id, why)
        self.send_to_owner(entry, Withdraw(entry.id, self.name, reason=why))

    def bundle_withdrawn(self, entry: Entry) -> None:
        raise NotImplementedError

    def look_again_at(self, names: Iterable[str]) -> None:
        """Look at these names of file_dir again soon (the scan's)."""
        raise NotImplementedError


def adopted(entry: Entry, result: Hashed) -> bool:
    """An entry adopted from the first agent (no fingerprint of its own yet) whose name holds what
    central was offered (kind, size, files): hashed here, it is pushed (again, or on from where
    the first agent's push stopped) under its id. Anything else is withdrawn, and offered anew."""
    st = result.stat
    return entry.signature is None and (st.kind, st.size, st.files) == (entry.kind, entry.size, entry.files)
