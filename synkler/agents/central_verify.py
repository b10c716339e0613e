"""Central checks what upload pushed: the md5 of each staged copy (on workers, synkler.agents.staged),
a good copy moved into stored/ and its destinations asked to fetch it, a bad one asked for again
(bounded by max_attempts); and a stored copy checked again when a download got a bad one.
"""

from __future__ import annotations

import functools
import logging

from ..hops.checksum import alg_of, hop_mismatch, md5_entry
from ..hops.follow import worth_following
from ..messages import Fetch
from ..state import Entry
from . import admission, fanout
from .base import ENTRY, RECHECK, Key
from .central_admit import Admitting
from .central_states import Mid
from .facts import PUSH, STORE_AT_CENTRAL, UPLOAD_TO_CENTRAL
from .pools import Pool
from .staged import Checked, Oversize, ToCheck, check_pushed

log = logging.getLogger("synkler")


class Verifying(Admitting):
    """The md5 checks of what arrived at central and of what it stored."""

    verify_due = True

    def _verify(self, group: list[Entry]) -> None:
        """md5 of the staged copies of a group of entries, by one job (small entries share one:
        one hand-over and one wake-up of the loop instead of one per entry)."""
        items = [
            ToCheck(
                e.id,
                e.name,
                self.spool.staged(e),
                self.spool.stored(e.id),
                e.known_md5(),
                e.size,
                alg_of(self.state.checksum(e.id)),
            )
            for e in group
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
        checksum = self.state.checksum(entry.id)
        wrong = (
            hop_mismatch("central", entry.known_md5(), checksum, checked.md5, checked.checksum)
            if checked is not None
            else None
        )
        if checked is not None and wrong is None:
            if not checked.in_store:
                self.spool.store(entry)
            self.spool.drop_partial(entry)
            stored = self.spool.stored(entry.id)
            entry_now = self.move(entry_now, Mid.DOWNLOADING, tries=0, path=stored)  # leases no longer matter
            to = fanout.ask_to_fetch(self.state, self.cfg, entry, self.fetch_for(entry_now), self.send)
            log.info(
                "%s: md5 verified at central (%s); %s may fetch it", entry.name, checked.md5, ", ".join(to)
            )
            return
        if isinstance(result, Oversize):
            why = admission.oversize(entry, result.size, "found when it was verified")
            self._refuse_pushed(entry_now, why or "")
            return
        why = wrong if checked is not None and wrong else f"cannot read upload: {result}"
        if checked is not None:
            self.state.after_commit(functools.partial(self.observer.mismatch, PUSH))
        self.spool.drop_staged(entry)
        if self._copies(entry_now) >= self.cfg.max_attempts:
            self._give_up(entry_now, UPLOAD_TO_CENTRAL, why)
        else:
            log.warning("%s: %s; asking upload again", entry.name, why)
            self._admit(entry_now)

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
        # No stored copy, no fetch download may answer: a `fetched` for it now is refused.
        entry = self.state.update(entry, path=None)
        if self._copies(entry) >= self.cfg.max_attempts:
            self._give_up(entry, STORE_AT_CENTRAL, why)
            return
        log.warning("%s: %s; getting it again from upload", entry.name, why)
        self.move(entry, Mid.WAITING, reason=why)
        self.admit_due = True

    def fetch_for(self, entry: Entry) -> Fetch:
        """The `fetch` of the entry's verified, stored copy."""
        return fanout.fetch_of(self.state, self.name, entry)
