"""Central's admission rules, as plain decisions (no I/O): which waiting entries are admitted now, how
many each upload agent may have on their way, and what becomes of an admission nothing was pushed for.

Every limit here is per upload agent, so that one agent's flood (or one stolen upload login) cannot
starve the others; each is far above what honest work needs (thousands of files per run are normal):
- at most MAX_ADMITTED entries are admitted and not yet verified, and at most MAX_ADMITTED_PER_AGENT
  of them of one upload agent: whatever one agent holds, the others have as many slots again;
- an admission pass looks at the oldest MAX_ADMITTED_PER_AGENT waiting entries of each agent (a
  backlog of any size costs each pass the same; the rest wait their turn in offer order);
- an agent may have at most MAX_OPEN_PER_AGENT entries on their way at central (waiting, admitted,
  being verified) or failed there: offers beyond that are refused with the reason, not recorded;
- an admission is a lease (`admission_lease_minutes`): an entry admitted and not pushed in that time
  (no `sent`, nothing arriving in its upload agent's staging, for it or another of its entries)
  goes back to waiting, not admitted again for as long, and its slot is free for others; the upload
  agent is told again when it is admitted again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..state import Entry, State

# In the reason of an entry that waits for room above the reserve: the relay view counts those as
# waiting for disk (central's FACTS.disk_waits).
ROOM_WAIT, ABOVE_RESERVE = "waiting for room", "available above the"

log = logging.getLogger("synkler")

MAX_ADMITTED = 4000  # entries admitted and not yet verified, all upload agents together
MAX_ADMITTED_PER_AGENT = 2000  # ... of one upload agent; free space is the other limit
MAX_OPEN_PER_AGENT = 100_000  # entries of one upload agent on their way at central, or failed there
RECOUNT = 1.0  # seconds: the entries per agent are counted again at most this often
REFUSAL_REPEAT = 60.0  # seconds between WARNING lines about one agent's refused offers
ARRIVAL_LOOK = 10.0  # seconds between looks at what has arrived of admitted entries (at least)
# seconds an entry that only waits its turn (the caps on admitted entries are reached) waits before
# its upload agent is told (`wait`): in a burst of small files most are admitted within that time,
# and a `wait` each (a message, a state change and a log line at both ends) would cost the relay
# as much as a step of their own. Central records the reason at once; a wait for room is told at once.
TURN_TELL = 10.0


@dataclass(frozen=True)
class Verdict:
    """What an admission pass decides for one waiting entry: admit it (`why` None), let it wait
    (`why`), or fail it at once (`never`: it can never fit)."""

    entry: Entry
    why: str | None = None
    never: bool = False
    turn: bool = False  # it only waits its turn behind the caps on admitted entries (see TURN_TELL)


@dataclass
class Room:
    """What admission has to share out in one pass."""

    space: float  # bytes free above the reserve, minus what admitted entries have yet to bring
    capacity: float  # bytes the file system could ever hold above the reserve
    free_percent: float


def admission_pass(
    waiting: list[Entry], active: list[Entry], room: Room, overtaken: dict[str, int], now: float
) -> Iterator[Verdict]:
    """Decide for waiting entries, oldest first (`active`: the admitted and verifying ones).

    Room: at most MAX_ADMITTED entries between admission and verification, MAX_ADMITTED_PER_AGENT
    of one upload agent, one version of a name per upload agent at a time (they share a staging
    path), and the free space. An entry whose lease lapsed waits until its `due`.

    An entry bigger than the whole filesystem above the reserve can never be admitted. One that does
    not fit now waits, and later entries that fit may pass it, until together they have taken as
    many bytes as it needs (`overtaken`, updated here); then later entries wait behind it until it
    fits. So a big entry neither blocks the relay while space is there nor waits for ever behind
    smaller ones.
    """
    count = len(active)
    per_agent: dict[str, int] = {}
    for e in active:
        per_agent[e.peer or ""] = per_agent.get(e.peer or "", 0) + 1
    busy_names = {(e.peer, e.name) for e in active}
    space = room.space
    first: Entry | None = None  # the oldest entry that waits for room; later ones may pass it
    blocked = None  # once set, later entries queue behind the entry that set it
    for entry in waiting:
        peer = entry.peer or ""
        if entry.size > room.capacity:
            yield Verdict(entry, never_fits(entry, room), never=True)
            continue
        if entry.due > now:
            continue  # its lease lapsed: not admitted again before `due` (its reason says so)
        turn = False
        if blocked:
            why = f"older entries are {ROOM_WAIT}"
            turn = ABOVE_RESERVE not in blocked  # behind the cap, not behind an entry waiting for room
        elif count >= MAX_ADMITTED:
            why = blocked = f"{count} entries admitted and not yet verified"
            turn = True
        elif per_agent.get(peer, 0) >= MAX_ADMITTED_PER_AGENT:
            why = f"{per_agent[peer]} entries of {peer} admitted and not yet verified, the most for one agent"
            turn = True
        elif (entry.peer, entry.name) in busy_names:
            why = "another version of this name is still being uploaded"
        elif entry.size > space:
            available = max(0, int(space))
            why = f"needs {entry.size} bytes, {available} {ABOVE_RESERVE} {room.free_percent}% reserve"
            if first is None:
                first = entry
                if overtaken.get(entry.id, 0) >= entry.size:
                    blocked = why  # others have had their turn: now they wait for this one
        else:
            yield Verdict(entry)
            if first is not None:
                overtaken[first.id] = overtaken.get(first.id, 0) + entry.size
            count += 1
            per_agent[peer] = per_agent.get(peer, 0) + 1
            busy_names.add((entry.peer, entry.name))
            space -= entry.size
            continue
        yield Verdict(entry, why, turn=turn)


def never_fits(entry: Entry, room: Room) -> str:
    return (
        f"needs {entry.size} bytes, more than central's file system can ever hold: "
        f"{max(0, int(room.capacity))} bytes above the {room.free_percent}% reserve"
    )


def oversize(entry: Entry, size: int, when: str) -> str | None:
    """Why what arrived of an entry is refused, or None: more bytes than upload offered is never
    stored, whoever pushed them."""
    if size <= entry.size:
        return None
    return f"{size} bytes pushed ({when}), more than the {entry.size} offered: discarded, never stored"


def lease_lapsed(entry: Entry, changed: float, now: float, lease: float) -> float | None:
    """The lease of an admitted entry (`due`: when it ends) given the last change seen in its upload
    agent's staging: None if it has lapsed (nothing arrived for `lease` seconds), else when it ends
    now (pushed data renews it)."""
    if now < entry.due:
        return entry.due
    renewed = changed + lease
    return renewed if renewed > now else None


class Offers:
    """The cap on entries per upload agent at central: counted from the state, kept in memory
    between counts (an offer taken adds one; entries that end are seen at the next count, which is
    made only when an agent seems to be at its cap), and the refusals said once a minute per agent."""

    def __init__(self, state: State, states: tuple[str, ...]):
        self.state = state
        self.states = states  # the states an entry counts in
        self.counts: dict[str, int] = {}
        self.counted = -float("inf")  # monotonic
        self.refused: dict[str, tuple[int, float]] = {}  # agent -> (refusals not said yet, when said)

    def refusal(self, peer: str) -> str | None:
        """Why an offer from upload agent `peer` is refused now, or None (then it counts)."""
        now = time.monotonic()
        at_cap = self.counts.get(peer, 0) >= MAX_OPEN_PER_AGENT
        if self.counted == -float("inf") or (at_cap and now - self.counted >= RECOUNT):
            self.counts, self.counted = self.state.count_per_peer(*self.states), now
        n = self.counts.get(peer, 0)
        if n < MAX_OPEN_PER_AGENT:
            self.counts[peer] = n + 1
            return None
        self._said(peer, now)
        return (
            f"{peer} has {n} entries on their way at central or failed there, the most for one "
            "upload agent: offer it again once fewer are (a failed entry needs a person)"
        )

    def _said(self, peer: str, now: float) -> None:
        """Count a refusal; say it (with those not said yet) at most once every REFUSAL_REPEAT s."""
        pending, said = self.refused.get(peer, (0, -float("inf")))
        pending += 1
        if now - said < REFUSAL_REPEAT:
            self.refused[peer] = (pending, said)
            return
        self.refused[peer] = (0, now)
        log.warning(
            "refused %d offer%s from %s: it has %d entries on their way at central or failed there, "
            "the most for one upload agent (said again at most once a minute)",
            pending,
            "s" if pending > 1 else "",
            peer,
            self.counts.get(peer, 0),
        )
