"""The link to central as the transfers over it find it: working, or down since an outage began.

One outage is one failure, whatever number of transfers it cut: with fifteen pulls in flight, one
cut of the link fails fifteen runs at once, and counting each would push the backoff to its cap at
the first blip. So a failure of the link is counted only if the transfer began after the last failure
that was counted (a run already under way when the link went down tells nothing new) and the wait
that failure set has passed (runs that fail meanwhile, such as new entries tried at once, tell
nothing new either). Every entry that waits for the link is due when that wait ends (`next_try`):
the entries are the probes, and they go together, once. A run that reaches central ends the outage,
and the agent makes every entry that waits for the link due at once (synkler.agents.waits).

Pure: the agent gives the times (time.time(), as the entries' `due`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backoff import backoff


@dataclass
class Outage:
    """The state of one link: `failures` counted since it last worked (0: it works, as far as is
    known), when the last one was counted, and when the link is tried again."""

    failures: int = 0
    counted: float = float("-inf")
    next_try: float = 0.0

    @property
    def down(self) -> bool:
        return self.failures > 0

    def failed(self, started: float, now: float, cap: float, rand: float | None = None) -> bool:
        """A transfer that began at `started` could not reach central (it ended at `now`). True if
        that counts as one more failure of the outage (and so sets a longer wait)."""
        if self.down and (started < self.counted or now < self.next_try):
            return False
        self.failures += 1
        self.counted = now
        self.next_try = now + backoff(self.failures, cap=cap, rand=rand)
        return True

    def due(self, now: float) -> float:
        """When an entry that could not reach central now is tried again: with the others, when the
        link is next tried (at once if that time has come: the run that failed had begun before)."""
        return max(self.next_try, now)

    def works(self) -> bool:
        """A transfer reached central: the outage (if any) is over. True if there was one."""
        was_down = self.down
        self.failures, self.counted, self.next_try = 0, float("-inf"), 0.0
        return was_down
