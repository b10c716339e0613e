"""Per-destination rows: where an entry stands at each download it is routed to.

Central keeps one row per entry and destination (asked to fetch, fetched with a verified receipt,
failed, forgotten); upload keeps one per destination of the `to` central sent in `admit`, and
marks each `fetched` when that destination's receipt comes. The table lives in the agent's state
database (synkler.state creates it, in its schema, and prunes its rows with their entries); this
module holds its rows' meaning and the statements on it.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .state import State


class Dest(str, enum.Enum):
    """The state of an entry at one destination (the value is what the `state` column holds)."""

    ROUTED = "routed"  # the entry goes there; not asked to fetch yet (central), no receipt yet (upload)
    FETCHING = "fetching"  # central: `fetch` sent, waiting for its `fetched`
    FETCHED = "fetched"  # its verified copy is proven (its receipt checked, when a key is pinned)
    FAILED = "failed"  # it gave up; a person must look (`synkler retry` there)
    FORGOTTEN = "forgotten"  # an operator forgot the entry at this destination only

    def __str__(self) -> str:
        return str(self.value)


ROUTED, FETCHING, FETCHED, FAILED, FORGOTTEN = Dest
ENDED = (FETCHED, FORGOTTEN)  # nothing more to do there
OPEN = (ROUTED, FETCHING, FAILED)  # the destinations an entry still waits for


class Row(NamedTuple):
    destination: str
    state: str
    stored_as: str | None
    reason: str | None
    updated: float


def route(state: State, entry_id: str, names: Iterable[str]) -> None:
    """Record where an entry goes (frozen: rows already there are kept as they are)."""
    now = time.time()
    for name in names:
        state.rows(
            "INSERT INTO destinations (entry, destination, state, updated) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (entry, destination) DO NOTHING",
            (entry_id, name, ROUTED, now),
        )


def rows(state: State, entry_id: str) -> dict[str, Row]:
    """An entry's rows by destination ({}: routed before destinations were kept, to download_name)."""
    found = state.rows(
        "SELECT destination, state, stored_as, reason, updated FROM destinations WHERE entry = ?"
        " ORDER BY destination",
        (entry_id,),
    )
    return {r[0]: _row(r) for r in found}


def _row(r: tuple) -> Row:
    stored_as = os.fsdecode(r[2]) if r[2] is not None else None
    return Row(r[0], r[1], stored_as, r[3], r[4])


def of(state: State, entry_id: str, default: str) -> dict[str, Row]:
    """An entry's rows; an entry with none (admitted by an older synkler, or never admitted) goes
    to `default` only, as it did then, and is shown as routed there."""
    found = rows(state, entry_id)
    return found or {default: Row(default, ROUTED, None, None, 0.0)}


def mark(
    state: State,
    entry_id: str,
    destination: str,
    new: str,
    *,
    stored_as: str | None = None,
    reason: str | None = None,
) -> None:
    """Set one destination's row (made if missing: an entry of an older synkler's)."""
    stored = None if stored_as is None else os.fsencode(stored_as)
    state.rows(
        "INSERT INTO destinations (entry, destination, state, stored_as, reason, updated)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (entry, destination) DO UPDATE SET state = excluded.state,"
        " stored_as = coalesce(excluded.stored_as, stored_as), reason = excluded.reason,"
        " updated = excluded.updated",
        (entry_id, destination, new, stored, reason, time.time()),
    )


def waiting_for(found: dict[str, Row]) -> list[str]:
    """The destinations that have not proved a copy yet (forgotten ones are not waited for)."""
    return [d for d, r in found.items() if r.state in OPEN]


def all_fetched(found: dict[str, Row]) -> bool:
    """Every destination proved a copy (or was forgotten there), and at least one did."""
    return any(r.state == FETCHED for r in found.values()) and not waiting_for(found)


def counts(state: State) -> dict[tuple[str, str], int]:
    """(destination, row state) -> how many entries (the metrics' synkler_destination_entries)."""
    found = state.rows("SELECT destination, state, count(*) FROM destinations GROUP BY destination, state")
    return {(d, s): n for d, s, n in found}


def acted_on(action: str, found: dict[str, Row], to: str | None) -> list[str]:
    """The destinations an operator's `retry`, `forget` or `resend` of an entry acts on
    (docs/runbook.md, "At one destination"): `to` alone when given; without it, every destination
    the action applies to: `retry` those where the entry failed (never one that has it), `forget` and
    `resend` all of them. ValueError says why there is none: `to` is not one of the entry's, or the
    entry did not fail there."""
    if to is not None and to not in found:
        raise ValueError(f"it does not go to {to!r} (it goes to {', '.join(found)})")
    if action != "retry":
        return [to] if to is not None else list(found)
    if to is not None:
        if found[to].state != FAILED:
            why = "only a destination where it failed is retried"
            raise ValueError(f"it is {found[to].state} at {to}: {why}")
        return [to]
    failed = [d for d, r in found.items() if r.state == FAILED]
    if not failed:
        states = ", ".join(f"{d} {r.state}" for d, r in found.items())
        raise ValueError(f"it failed at none of its destinations ({states})")
    return failed
