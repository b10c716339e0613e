"""Who owns an entry in a pool of centrals: epochs, and re-owning the entries of a central that is
gone (docs/architecture.md, "Who owns an entry"). Plain decisions, no I/O.

Upload is the owner of record of every entry it offers. It gives each entry to one central at a
time, numbered by an epoch (1 at the first offer): the central that takes the offer (from upload's
offers queue) owns the entry for that epoch, and every message about the entry carries it. When a
central's queue has had no consumer for `reown_seconds` in a row (looked at every REOWN_LOOK s),
upload takes back the entries that central holds, gives each the next epoch and offers it again;
messages of an older epoch are ignored wherever they arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Callable

log = logging.getLogger("synkler")

REOWN_LOOK = 5.0  # seconds between upload's looks at the queues of the centrals that hold its entries


def stale(msg_epoch: int | None, epoch: int, sender: str, owner: str | None) -> str | None:
    """Why a central's message about an entry is of an ownership that has ended, or None: it comes
    from the entry's owner at its current epoch (`owner` None: not owned yet; then any central of
    the pool at the current epoch, the one that took the offer)."""
    if msg_epoch is None:
        return f"it carries no epoch; the entry is at epoch {epoch}"
    if msg_epoch != epoch:
        return (
            f"it is of epoch {msg_epoch}; the entry is at epoch {epoch}, owned by {owner or 'no central yet'}"
        )
    if owner is not None and sender != owner:
        return f"the entry is owned by {owner} at epoch {epoch}"
    return None


def reoffers(
    waiting: Sequence[tuple[str, int, str]], rooms: Mapping[str, tuple[int, float] | None]
) -> list[tuple[str, str]]:
    """Which of the entries held waiting for room (id, size, the central that holds it), oldest
    first, to offer again, each with the central that reports room for it: one other than its
    holder, with an offer to spare and as many bytes above its reserve as the entry (each entry
    counted against the room it is given). Those that no other central has room for stay where they
    are."""
    left = {c: r for c, r in rooms.items() if r is not None}
    out = []
    for entry, size, holder in waiting:
        for central, (offers, space) in sorted(left.items(), key=lambda kv: -kv[1][1]):
            if central != holder and offers > 0 and space >= size:
                left[central] = (offers - 1, space - size)
                out.append((entry, central))
                break
    return out


class Reowner:
    """Upload's watch on the centrals that hold its entries: which of them have had no consumer on
    their queue for `grace` seconds in a row (the same rule a standby uses to take over)."""

    def __init__(self, grace: float):
        self.grace = grace
        self.next_look = 0.0
        self.gone_since: dict[str, float] = {}  # central -> since when its queue has had no consumer

    def due(self, now: float) -> bool:
        if now < self.next_look:
            return False
        self.next_look = now + REOWN_LOOK
        return True

    def gone(self, owners: set[str], consumers: Callable[[str], int | None], now: float) -> list[str]:
        """The centrals of `owners` gone for `grace` s by now (`consumers`: how many consume a
        central's queue, None when not known: then nothing is concluded)."""
        out = []
        for central in sorted(owners):
            count = consumers(central)
            if count is None or count > 0:
                if (
                    self.gone_since.pop(central, None) is not None and count
                ):  # None: not known: from zero again
                    log.info("central %s is back: its entries stay with it", central)
                continue
            since = self.gone_since.setdefault(central, now)
            if since == now:
                log.warning(
                    "central %s has no consumer on its queue: its entries are offered again "
                    "unless it is back within %.0f s",
                    central,
                    self.grace,
                )
            if now - since >= self.grace:
                out.append(central)
        for central in set(self.gone_since) - owners:
            del self.gone_since[central]
        return out
