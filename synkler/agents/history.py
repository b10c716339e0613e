"""Bounded history: finished entries leave the state database `keep_history_days` after they ended.

Each pass of the main loop may prune a few hundred of them, within a few milliseconds, so pruning
never holds the loop (or the transaction it shares) for long. The entries are walked oldest first
(by `updated`, the time of their last change, on an index), from where the last pass stopped; a role
keeps those it still needs (`Agent.kept`: upload the latest version of each name still in its
file_dir). Entries that are not finished, and `failed` ones, are never pruned: the first are on
their way, the second wait for a person.

What pruning remembers, so that a message about an entry it forgot cannot make the agent act twice
(docs/architecture.md, "Bounded history"):

- `older_than_history`: a message sent before the oldest time the history still covers. A message
  about a pruned entry is one of those: it was sent before the entry ended, and the entry ended
  more than `keep_history_days` ago.
- `may_have_pruned`: a message that starts an entry (download's `fetch`) sent no later than the
  latest `created` of the entries pruned so far (`State.pruned_until`, kept in the database). A
  copy of a fetch whose entry was pruned is one of those, however late it comes; a fetch the agent
  never got, however old, is not (its queue hands messages over in order, so the ones it has not
  got came after every one it has).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from ..messages import Message
from ..state import Ended, State

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

DAY = 86400.0
PRUNE_ROWS = 500  # finished entries looked at in one pass, at most
PRUNE_STEP = 100  # ... read from the database this many at a time
PRUNE_BUDGET = 0.02  # seconds of work one pass may do (it stops after the step that passes this)
PRUNE_INTERVAL = 300.0  # seconds between passes once every entry old enough has been looked at
PRUNE_AGAIN = 1.0  # seconds between passes while older entries are left to look at
REWALK = DAY  # the walk starts again from the oldest entries this often: some a role kept may go now
CLOCK_SKEW = 60.0  # seconds the hosts' clocks may differ (the `at` of a message is the sender's clock)


class History:
    """The pruning of one agent's finished entries, and what it remembers of them."""

    def __init__(
        self,
        cfg: Config,
        state: State,
        finished: tuple[str, ...],
        kept: Callable[[list[Ended]], set[str]],
        wait: Callable[[], bool] = lambda: False,
    ):
        self.keep = cfg.keep_history_days * DAY  # 0: keep everything
        self.state = state
        self.finished = finished  # the role's final states; `failed` is never one of them
        self.kept = kept  # the ids among these finished entries the role must keep
        self.wait = wait  # true while the role cannot tell what it must keep (the pass comes later)
        self.next_pass = 0.0
        self.next_walk = 0.0
        self.after: dict[str, tuple[float, int]] = {}  # state -> (updated, rowid) the walk has passed
        self._until: float | None = None  # State.pruned_until, read once

    @property
    def pruned_until(self) -> float:
        if self._until is None:
            self._until = self.state.pruned_until()
        return self._until

    def older_than_history(self, msg: Message, now: float | None = None) -> bool:
        """Was `msg` sent before the time this agent's history still covers? (False when history is
        kept for good, or the message was made here and has no `at`.)"""
        if not self.keep or msg.at is None:
            return False
        return msg.at < (time.time() if now is None else now) - self.keep + CLOCK_SKEW

    def may_have_pruned(self, msg: Message) -> bool:
        """Could `msg`, which would start a new entry, be a copy of one whose entry was pruned?"""
        return msg.at is not None and self.pruned_until > 0 and msg.at <= self.pruned_until + CLOCK_SKEW

    def prune(self, now: float) -> int:
        """One pass, if one is due: forget finished entries older than keep_history_days that the role
        does not keep, at most PRUNE_ROWS looked at and about PRUNE_BUDGET seconds. How many went."""
        if not self.keep or now < self.next_pass:
            return 0
        if self.wait():
            self.next_pass = now + PRUNE_AGAIN
            return 0
        if now >= self.next_walk:
            self.after.clear()
            self.next_walk = now + REWALK
        cutoff = now - self.keep
        started = time.monotonic()
        looked = pruned = 0
        left = False  # entries old enough are left for the next pass
        for state in self.finished:
            while True:
                if looked >= PRUNE_ROWS or time.monotonic() - started >= PRUNE_BUDGET:
                    left = True
                    break
                rows = self.state.ended(state, cutoff, self.after.get(state, (0.0, 0)), PRUNE_STEP)
                if not rows:
                    break
                self.after[state] = (rows[-1].updated, rows[-1].rowid)
                looked += len(rows)
                keep = self.kept(rows)
                gone = [row for row in rows if row.id not in keep]
                self.state.prune(gone)
                pruned += len(gone)
                if gone:
                    latest = max(row.created for row in gone)
                    self._until = max(self.pruned_until, latest)
            if left:
                break
        self.next_pass = now + (PRUNE_AGAIN if left else PRUNE_INTERVAL)
        if pruned:
            log.debug(
                "pruned %d finished entries older than %g days (%d looked at in %.0f ms)%s",
                pruned,
                self.keep / DAY,
                looked,
                (time.monotonic() - started) * 1000,
                "; more to look at" if left else "",
            )
        return pruned

    def forget_cache(self) -> None:
        """After a rollback: what was read of the database may not be true any more."""
        self._until = None
        self.after.clear()
