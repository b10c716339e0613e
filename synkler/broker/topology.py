"""The kind and arguments of every queue of an instance: pure, no pika (synkler.broker.amqp declares
them, the tests and docs/reliability.md read them).

Every queue that holds work (each agent's queue, the dead-letter queue) and every record another
agent reads (the holder queues) is a *quorum queue*: replicated on a RabbitMQ cluster, so the loss
of a minority of its nodes loses no message and stops no agent; on a single node it behaves as a
durable queue. Each has an explicit delivery limit, so that no broker version's default drops a
message quietly (RabbitMQ 4.x sets 20 on quorum queues without one; 3.x none), and each agent's
queue dead-letters to the instance's dead-letter exchange what goes past it or is rejected.

Only the lock queue is classic: exclusive to its connection (quorum queues cannot be), it makes
the agent the only active one of its name. RabbitMQ 3.10 does not enforce an exclusive consumer
on a quorum queue, so the lock, not the consumer, is what refuses a second agent.

The arguments are part of a queue's identity: a declare with other values is refused
(PRECONDITION_FAILED), so they never change within a name. A queue of an earlier version of
another kind gets a new name (the agent's queue: `synkler:<id>:agent:` became `:inbox:`) or is
made again (the holder queue, a record rewritten every few seconds; the dead-letter queue when
empty).
"""

from __future__ import annotations

from typing import Any

from .names import DEAD_MAX, DEAD_MAX_BYTES, dead_name

# How many times a message of an agent's queue is delivered before the broker dead-letters it. A
# message is redelivered when a connection closes before its ack (an agent that stops or crashes,
# a broker node that goes down), up to `prefetch` of them at each; an agent handles a message at
# its first delivery (acks after commit) unless it crashes on it, so only a message that crashes
# its agent again and again reaches the limit. High enough that restarts and failovers never do.
DELIVERY_LIMIT = 1000

QUORUM = {"x-queue-type": "quorum"}


def agent_queue_arguments(instance: str) -> dict[str, Any]:
    """An agent's queue: quorum, the explicit delivery limit, dead-lettered to the instance's
    dead-letter exchange (what its agent rejects, and what goes past the limit)."""
    return {
        **QUORUM,
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": dead_name(instance),
    }


# The holder queue: the latest record of who holds the agent's queue (its presence report), a new
# one replacing the old (drop-head). Read with get-and-requeue, which counts as a delivery: past the
# limit the record goes (no dead-lettering: nobody needs an old one) until the next report.
HOLDER_ARGUMENTS: dict[str, Any] = {
    **QUORUM,
    "x-max-length": 1,
    "x-overflow": "drop-head",
    "x-delivery-limit": DELIVERY_LIMIT,
}

# The dead-letter queue: the end of the line (no dead-letter target of its own), bounded in count
# and bytes, the oldest going first.
DEAD_ARGUMENTS: dict[str, Any] = {
    **QUORUM,
    "x-max-length": DEAD_MAX,
    "x-max-length-bytes": DEAD_MAX_BYTES,
    "x-overflow": "drop-head",
    "x-delivery-limit": DELIVERY_LIMIT,
}
