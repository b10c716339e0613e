"""Upload's entry states, where each can go next, and what observers know of them
(synkler.agents.facts); the role itself is synkler.agents.upload."""

from __future__ import annotations

from .base import Status, Transitions
from .facts import DISK_WAIT, PULL_FROM_CENTRAL, PUSH, RELAY, facts, hop


class Up(Status):
    """Upload's entry states."""

    OFFERED = "offered"
    WAITING = "waiting"
    UPLOADING = "uploading"
    PUSHED = "pushed"
    SENT = "sent"
    DELIVERED = "delivered"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    FORGOTTEN = "forgotten"


UNSENT = (Up.OFFERED, Up.WAITING, Up.UPLOADING, Up.PUSHED)  # versions a newer one withdraws
# `delivered` ends every state in which central may hold a verified copy: from the first push on
# (central's word is final, even for a version upload gave up on or withdrew after it was pushed);
# not one still offered or waiting, which central never had, except in a pool: a `delivered` of an
# older epoch with the destination's signed receipt (a central re-owned from delivered it meanwhile).
ENDS = (Up.DELIVERED, Up.DONE)
# The hop of a failure after which central still holds a verified copy: download's pull (an
# operator's retry at download may deliver it yet). The failure's reason starts with it.
AFTER_STORE = PULL_FROM_CENTRAL
# An operator may forget an entry on its way or failed (`retry` of a failed one forgets it too, and
# offers the file again as a new entry), and run a failed cleanup script again (done -> delivered).
FORGETTABLE = frozenset({*UNSENT, Up.SENT, Up.FAILED})
TRANSITIONS: Transitions = {
    # offered/waiting -> delivered/done: only a pool's late `delivered` with a signed receipt (above)
    Up.OFFERED: frozenset({Up.WAITING, Up.UPLOADING, Up.SUPERSEDED, Up.FAILED, Up.FORGOTTEN, *ENDS}),
    # ... -> offered: re-owned (a pool of centrals: its central is gone; synkler.agents.ownership)
    Up.WAITING: frozenset({Up.OFFERED, Up.UPLOADING, Up.SUPERSEDED, Up.FAILED, Up.FORGOTTEN, *ENDS}),
    Up.UPLOADING: frozenset({Up.OFFERED, Up.PUSHED, Up.SENT, Up.SUPERSEDED, Up.FAILED, Up.FORGOTTEN, *ENDS}),
    Up.PUSHED: frozenset({Up.OFFERED, Up.SENT, Up.UPLOADING, Up.SUPERSEDED, Up.FAILED, Up.FORGOTTEN, *ENDS}),
    Up.SENT: frozenset({Up.OFFERED, Up.UPLOADING, Up.SUPERSEDED, Up.FAILED, Up.FORGOTTEN, *ENDS}),
    Up.DELIVERED: frozenset({Up.DONE}),
    Up.DONE: frozenset({Up.DELIVERED}),
    Up.FAILED: frozenset({*ENDS, Up.FORGOTTEN}),
    Up.SUPERSEDED: frozenset(ENDS),
    Up.FORGOTTEN: frozenset(),
}
# The states an entry ends in at this role (pruned from the history keep_history_days later).
FINISHED = (Up.DONE, Up.SUPERSEDED, Up.FORGOTTEN)
# What observers know of these states (synkler.agents.facts).
FACTS = facts(
    "upload",
    Up,
    finished=FINISHED,
    failed=Up.FAILED,
    receiving=None,
    hashing=UNSENT,
    transferring=UNSENT,
    disk_waits=(DISK_WAIT,),
    given_up=(Up.FAILED, Up.FORGOTTEN, Up.SUPERSEDED),
    hops=(
        hop(PUSH, [Up.UPLOADING], [Up.PUSHED, Up.SENT]),  # rsync into central's staging ended well
        # central confirmed delivery: timed from the offer (the entry's creation)
        hop(RELAY, [], ENDS, during=[s for s in Up if s not in ENDS]),
    ),
)
