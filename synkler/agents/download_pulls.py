"""Download's pulls: one rsync run for a batch of entries stored under one directory on central, the
early pull of a big file while it is pushed, and the wait for disk space when a pull found it full.
The pulls themselves are in synkler.hops.pull."""

from __future__ import annotations

import functools
import logging
import time

from ..hops.pull import Early, Mismatch, NotPulled, PullRun, pull, pull_early
from ..linux.fs import free_bytes, remove_tree
from ..messages import Corrupt, Failed, Pushing
from ..metadata import loads
from ..state import Entry
from ..text import shown, some_entries
from . import waits
from .base import ENTRY, Key
from .download_place import Placing
from .facts import PULL, PULL_FROM_CENTRAL
from .naming import chooser, upload_dir

log = logging.getLogger("synkler")

DISK_LOOK = 1.0  # seconds between looks at the free space while pulls wait for it
DISK_FREED = 1 << 20  # bytes that must come free after a pull found the disk full to try again at once


class Pulls(Placing):
    """Pulls from central, early or whole, and what comes of them."""

    early: dict[str, Early]  # entry id -> its early pull (memory only)
    early_forgotten: set[str]  # early pulls still running for entries central forgot
    full_at: int | None  # free bytes in staging when a pull last found the disk full
    next_disk_look: float

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
        # Big files go alone (slots.BATCH_BYTES): one pulled early has a batch of its own.
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
            self.link_of(batch[0]),
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
            self.move(entry, self.FAILED, reason=why)
            self.send(entry.peer or "", Failed(entry.id, self.name, hop=PULL_FROM_CENTRAL, reason=why[:1900]))
        return sources

    def _pulled(
        self, batch: list[Entry], started: float, run: PullRun | None, error: BaseException | None
    ) -> None:
        self.link_result(run.result if run else None, started, self.link_of(batch[0]))
        if run is not None and run.early is not None and self.entry(batch[0].id).state == self.FETCHING:
            self.early[batch[0].id] = run.early  # the next try goes on from it
        for entry in batch:
            entry_now = self.entry(entry.id)
            if entry_now.state != self.FETCHING:
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
