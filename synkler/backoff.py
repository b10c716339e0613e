"""Retry timing: exponential backoff with jitter, as a pure function."""

from __future__ import annotations

import random


def backoff(attempt: int, *, base: float = 1.0, cap: float = 300.0, rand: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1 = first retry).

    Doubles from `base` up to `cap`, then keeps the upper half of that span at random ("equal jitter")
    so that agents which failed together do not retry together, yet never retry faster than half the
    nominal delay. `rand` (0..1) makes it deterministic for tests.
    """
    if attempt < 1:
        return 0.0
    nominal = min(cap, base * 2 ** min(attempt - 1, 60))
    r = random.random() if rand is None else rand
    return nominal / 2 + nominal / 2 * r
