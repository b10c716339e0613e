"""The cleanup scripts of a bundle's members, at upload and at download (`BundleCleanups`).

A bundle (synkler.bundles) is one entry, but each of its files gets its own cleanup script, exactly
once, with %f and %F its own name and path. The bundle's entry goes through the usual cleanup
states (pending, running, then done, failed, skipped …); its members have a cleanup state each, in
the members table. 'running' is committed for the members before their scripts start; the scripts
run a few dozen to a job, through the same runner as an entry's (synkler.hops.cleanup), which keeps
each result on disk until the agent has recorded it: an agent killed at any moment collects, at
its next start, what ran, and runs only what never started.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from .. import bundles
from ..errors import Refused
from ..hops import cleanup
from ..hops.transfer import Result
from ..state import Entry
from ..text import count, shown, some_entries
from .base import CLEANUP, Cleanup, Key
from .endpoint import Endpoint
from .pools import Pool

log = logging.getLogger("synkler")

SCRIPTS_A_JOB = 100  # members' cleanup scripts run one after another by one job (and one runner)
# What the bundle's own cleanup state is once no member's script is pending or running.
_WORST = (Cleanup.FAILED, Cleanup.INTERRUPTED, Cleanup.SKIPPED)


class BundleCleanups(Endpoint):
    """Runs each member's cleanup script of a delivered bundle (the agent's other entries: Endpoint)."""

    def member_target(self, member: bundles.Member) -> tuple[str, str]:
        """(%f, %F) of a member's cleanup script on this host."""
        raise NotImplementedError

    def member_content(self, member: bundles.Member) -> cleanup.Content:
        """What a member's %F must hold for its cleanup script to run: the file delivered."""
        return cleanup.Content("file", member.md5, member.signature)

    def member_cleanups_due(self, entry: Entry) -> None:
        """The bundle is delivered: the scripts of its members here are due (called before the
        bundle's entry moves to delivered)."""
        raise NotImplementedError

    def delivered(self, entry: Entry, **changes: Any) -> None:
        if entry.kind == bundles.KIND and self.cfg.cleanup_script:
            self.member_cleanups_due(entry)
        super().delivered(entry, **changes)

    def start_cleanup(self, entry: Entry, *, resume: bool = False) -> None:
        if entry.kind != bundles.KIND:
            super().start_cleanup(entry, resume=resume)
            return
        if not resume:
            self.state.update(entry, cleanup=Cleanup.RUNNING)
            bundles.set_all(self.state, entry.id, cleanup=Cleanup.RUNNING, where=(Cleanup.PENDING,))
        running = bundles.of(self.state, entry.id, cleanup=Cleanup.RUNNING)
        if not running:
            self._bundle_cleaned(entry)
            return
        for i in range(0, len(running), SCRIPTS_A_JOB):
            chunk = running[i : i + SCRIPTS_A_JOB]
            scripts = [(m.seq, *self.member_target(m), self.member_content(m)) for m in chunk]
            self.jobs.submit(
                Pool.SCRIPT,
                [Key(CLEANUP, bundles.script_key(entry.id, chunk[0].seq))],
                functools.partial(cleanup.run_members, self.cfg, entry.id, scripts),
                functools.partial(self._members_cleaned, entry.id, chunk),
            )

    def _members_cleaned(
        self,
        entry_id: str,
        chunk: Sequence[bundles.Member],
        outcomes: list[cleanup.Outcome] | None,
        error: BaseException | None,
    ) -> None:
        entry = self.entry(entry_id)
        if outcomes is None and self.jobs.stopping:
            return  # cut short by the stop: they stay running, and are collected at the next start
        if outcomes is None:  # the job itself failed: every script of it counts as failed
            failure = error if isinstance(error, Exception) else RuntimeError(f"no outcome: {error!r}")
            outcomes = [failure] * len(chunk)
        states: list[tuple[int, object]] = []
        reasons: list[tuple[int, object]] = []
        ran: list[str] = []
        for member, outcome in zip(chunk, outcomes):
            state, why = _member_outcome(outcome)
            states.append((member.seq, state))
            reasons.append((member.seq, why))
            name = self.member_target(member)[0]
            if state == Cleanup.DONE:
                ran.append(name)
            elif state == Cleanup.SKIPPED:
                log.warning("%s: cleanup script not run: not the delivered content: %s", name, why)
            elif state == Cleanup.INTERRUPTED:
                log.warning("%s: cleanup script interrupted (its runner died); not running it again", name)
            else:
                log.error("%s: cleanup script failed (%s)", name, why)
        bundles.set_each(self.state, entry_id, "cleanup", states)
        bundles.set_each(self.state, entry_id, "reason", reasons)
        if ran:
            log.info(
                "cleanup script ran (exit 0) for %s of %s", some_entries(ran, noun="file"), shown(entry.name)
            )
        if entry.state == self.DELIVERED and not bundles.of(self.state, entry_id, cleanup=Cleanup.RUNNING):
            self._bundle_cleaned(entry)

    def _bundle_cleaned(self, entry: Entry) -> None:
        """Every member's script has ended: the bundle is done, its cleanup as its worst member's."""
        counts = bundles.count(self.state, entry.id)
        worst = next((c for c in _WORST if counts.get(c)), Cleanup.DONE)
        reason = None
        if worst != Cleanup.DONE:
            reason = f"cleanup script {worst} for {count(counts[worst], 'member')} of {entry.files}"
        self.move(entry, self.DONE, cleanup=worst, reason=reason)
        # Its journal is read no more: every member's script is recorded.
        self.state.after_commit(functools.partial(cleanup.forget_journal, self.cfg, entry.id))

    def retry_cleanup(self, entry: Entry) -> str:
        if entry.kind == bundles.KIND:
            if not self.cfg.cleanup_script:
                raise Refused(f"{shown(entry.name)}: no cleanup_script is set (any more)")
            cleanup.forget_journal(self.cfg, entry.id)  # the failed runs are recorded: run them anew
            again = bundles.set_all(
                self.state, entry.id, cleanup=Cleanup.PENDING, where=(Cleanup.FAILED, Cleanup.INTERRUPTED)
            )
            told = super().retry_cleanup(entry)
            return f"{told} (for {count(again, 'member')})"
        return super().retry_cleanup(entry)


def _member_outcome(outcome: cleanup.Outcome) -> tuple[str, str | None]:
    """A member script's cleanup state and reason."""
    if isinstance(outcome, cleanup.Skipped):
        return Cleanup.SKIPPED, outcome.why
    if outcome is None:
        return Cleanup.INTERRUPTED, "cleanup script interrupted"
    if isinstance(outcome, Result):
        if outcome.ok:
            return Cleanup.DONE, None
        output = outcome.output.strip()
        return Cleanup.FAILED, f"cleanup script: {outcome.summary()}{': ' + output if output else ''}"[:1900]
    return Cleanup.FAILED, f"cleanup script: {outcome!r}"[:1900]
