"""The outbox's way out: its rows published many messages per AMQP body and per publisher confirm,
in each destination's order; a destination whose publish the broker refuses is held back with a
growing pause (central or download without a queue yet: a short one) while the others' messages go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator

from .. import messages
from ..agents.base import PERSON_REPEAT
from ..backoff import backoff
from ..broker.amqp import Broker
from ..errors import NoQueueYet, PublishRefused
from ..state import State

log = logging.getLogger("synkler")

OUTBOX_BATCH = 2000  # rows read from the outbox at a time
REFUSED_CAP = 60.0  # longest pause before a refused destination is tried again
# ... and before central or download without a queue yet is looked for again (a passive declare):
# once it has started, its messages go out within seconds, not after a pause grown over its absence.
NO_QUEUE_CAP = 5.0
_CHUNK_BYTES = 256 * 1024  # an AMQP body holds about this much at most

Row = tuple[int, str, bytes]  # (seq, destination, message)
# Offers to an offers queue (a pool of centrals) go one per AMQP body: a body is taken whole by one
# central, so a batch of offers would all go to the same one.
_OFFERS = messages.OFFERS


class Outbox:
    """Publishes the outbox of one agent's state database."""

    def __init__(self, state: State, expected: Collection[str] = ()):
        """`expected`: the agents this one sends to whatever happens (central, download), whose
        queue may not exist for a while after a first start; not an upload agent named in a message."""
        self.state = state
        self.expected = frozenset(expected)
        # destination -> (refusals in a row, no publish to it before, last ERROR logged, first refusal)
        self.held: dict[str, tuple[int, float, float, float]] = {}

    def flush(self, broker: Broker) -> None:
        """Publish the outbox; rows are deleted once the broker confirms them. A BrokerError (the
        connection is lost) leaves the rest for the next flush."""
        now = time.time()
        held = {dest for dest, (_n, until, _told, _since) in self.held.items() if until > now}
        while True:
            rows = self.state.outbox(OUTBOX_BATCH, held=held)
            if not rows:
                return
            for dest, chunk in chunks(rows):
                if dest in held:
                    continue
                try:
                    broker.publish(dest, messages.encode_batch([body for _, _, body in chunk]))
                except PublishRefused as e:
                    held.add(dest)
                    self._refused(dest, e, now)
                    continue
                # Not flushed to the disk on its own: a power cut that undoes it sends these again.
                with self.state.transaction(durable=False):
                    self.state.sent([seq for seq, _, _ in chunk])
                if dest in self.held:
                    del self.held[dest]
                    log.warning("messages to agent %r go out again", dest)

    def _refused(self, dest: str, e: PublishRefused, now: float) -> None:
        """Hold `dest` back. Central or download with no queue yet (with authentication each agent
        declares its own, so one that has not run has none) is normal for a while after a first
        start: a WARNING, an ERROR only once it has lasted PERSON_REPEAT. Any other refusal (an
        upload agent without a queue included: an invented sender) is an ERROR at once."""
        refusals, _until, told, since = self.held.get(dest, (0, 0.0, float("-inf"), now))
        refusals += 1
        expected = isinstance(e, NoQueueYet) and dest in self.expected
        if expected and now - since < PERSON_REPEAT:
            if refusals == 1:
                log.warning(
                    "no queue for agent %r yet (%s): has it ever run? Its messages wait in the outbox, "
                    "in order, and the other agents' messages go on",
                    dest,
                    e,
                )
        elif now - told >= PERSON_REPEAT:
            told = now
            log.error(
                "the broker refuses messages to agent %r (%s); they wait in the outbox, in order, "
                "and the other agents' messages go on (said again every %d minutes)",
                dest,
                e,
                PERSON_REPEAT // 60,
            )
        cap = NO_QUEUE_CAP if expected else REFUSED_CAP
        self.held[dest] = (refusals, now + backoff(refusals, base=1, cap=cap), told, since)


def chunks(rows: list[Row]) -> Iterator[tuple[str, list[Row]]]:
    """Split outbox rows into per-destination chunks, keeping each destination's order."""
    by_dest: dict[str, list[Row]] = {}
    for row in rows:
        by_dest.setdefault(row[1], []).append(row)
    for dest, dest_rows in by_dest.items():
        chunk: list[Row] = []
        size = 0
        for row in dest_rows:
            full = len(chunk) >= (1 if dest.startswith(_OFFERS) else messages.MAX_BATCH)
            if chunk and (size + len(row[2]) > _CHUNK_BYTES or full):
                yield dest, chunk
                chunk, size = [], 0
            chunk.append(row)
            size += len(row[2]) + 1
        if chunk:
            yield dest, chunk
