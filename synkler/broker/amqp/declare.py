"""Declaring the instance's objects on the broker: the shared exchanges and dead-letter queue (or,
for a user that may not declare them, checking that they exist), an agent's queue and its holder
queue; and deleting them all (the demo's and the tests' clean-up)."""

from __future__ import annotations

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ...errors import BrokerError
from ..names import (
    classic_queue_name,
    dead_name,
    exchange_name,
    holder_name,
    old_holder_exchange,
    presence_exchange,
    queue_name,
)
from ..topology import DEAD_ARGUMENTS, HOLDER_ARGUMENTS, agent_queue_arguments
from .base import ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED, Channels, log


class Declaring(Channels):
    """Declares what the instance and the agent need, each once per connection."""

    def _declare_topology(self) -> None:
        """Declare the instance's shared exchanges and dead-letter queue; a broker user that may
        not (refused: an upload or download agent's under broker-setup) checks that they exist."""
        try:
            x = exchange_name(self.instance)
            self._publisher().exchange_declare(x, exchange_type="topic", durable=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != ACCESS_REFUSED:
                raise
            self._require_shared()
            return
        ch = self._publisher()
        ch.exchange_declare(presence_exchange(self.instance), exchange_type="topic", durable=True)
        ch.exchange_declare(dead_name(self.instance), exchange_type="fanout", durable=True)
        self._declare_dead()

    def _require_shared(self) -> None:
        """BrokerError unless the shared objects exist (declared by a user that may)."""
        x, p, dead = exchange_name(self.instance), presence_exchange(self.instance), dead_name(self.instance)
        for name, declare in (
            (x, lambda ch: ch.exchange_declare(x, passive=True)),
            (p, lambda ch: ch.exchange_declare(p, passive=True)),
            (dead, lambda ch: ch.exchange_declare(dead, passive=True)),
            (dead, lambda ch: ch.queue_declare(dead, passive=True)),
        ):
            try:
                declare(self._publisher())
            except pika.exceptions.ChannelClosedByBroker as e:
                if e.reply_code != NOT_FOUND:
                    raise
                raise BrokerError(
                    f"{name} does not exist yet, and broker user {self.params.username} may not "
                    "declare it: central's user declares the instance's exchanges and dead-letter "
                    "queue (start central, or run `synkler check` with its configuration, once)"
                ) from None

    def _declare_dead(self) -> None:
        """Declare the dead-letter queue: a quorum queue, bounded. One an earlier version made (a
        classic queue, or one without the bound in bytes) refuses these arguments
        (PRECONDITION_FAILED): if empty it is made again with them; if not, it is used as it is,
        and the agent says what to do."""
        dead = dead_name(self.instance)
        try:
            self._publisher().queue_declare(dead, durable=True, arguments=DEAD_ARGUMENTS)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != PRECONDITION_FAILED:
                raise
            ch = self._publisher()
            try:
                # Only if empty, checked by the broker itself. A dead letter arriving before the
                # queue is made again is lost: a moment, once per upgrade.
                ch.queue_delete(dead, if_empty=True)
            except pika.exceptions.ChannelClosedByBroker as e2:
                if e2.reply_code != PRECONDITION_FAILED:  # not empty
                    raise
                count = self._publisher().queue_declare(dead, passive=True).method.message_count
                log.warning(
                    "the dead-letter queue %s, made by an earlier synkler, is a classic queue (not "
                    "replicated on a cluster) and holds %d messages: read and purge them "
                    "(docs/runbook.md, Troubleshooting, Dead-letter queue); the next connection "
                    "makes it again as a quorum queue",
                    dead,
                    count,
                )
                return
            self._publisher().queue_declare(dead, durable=True, arguments=DEAD_ARGUMENTS)
            log.info("made the dead-letter queue %s again, as a quorum queue", dead)
        self._publisher().queue_bind(dead, dead)

    def _declare_queue(self, ch: BlockingChannel, agent: str) -> None:
        """Declare an agent's queue, so messages to an agent that never ran yet wait for it."""
        if agent in self._declared:
            return
        q = queue_name(self.instance, agent)
        ch.queue_declare(q, durable=True, arguments=agent_queue_arguments(self.instance))
        ch.queue_bind(q, exchange_name(self.instance), routing_key=agent)
        self._declared.add(agent)

    def _holder_queue(self) -> str:
        """Declare the agent's holder queue: at most one message, the latest holder's (drop-head: a
        new one replaces the old). Written through an exchange of the instance's, so that a broker
        user limited to `^synkler:` may (not the default exchange), and a topic one, so that the
        broker's topic permissions let only the agent's own user write it."""
        ch, q = self._publisher(), holder_name(self.instance, self.agent)
        x = presence_exchange(self.instance)
        try:
            ch.queue_declare(q, durable=True, arguments=HOLDER_ARGUMENTS)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != PRECONDITION_FAILED:
                raise
            # A classic one of synkler 0.5: its record is rewritten every few seconds, so it is
            # made again as a quorum queue (the agent's user may configure its own holder queue).
            ch = self._publisher()
            ch.queue_delete(q)
            ch.queue_declare(q, durable=True, arguments=HOLDER_ARGUMENTS)
            log.info("made the holder queue %s again, as a quorum queue", q)
        ch.queue_bind(q, x, routing_key=self.agent)
        return q

    def delete_instance(self, agents: list[str]) -> None:
        """Remove every queue and exchange of this instance (demo and test clean-up)."""

        def do(ch: BlockingChannel) -> None:
            for agent in agents:
                ch.queue_delete(queue_name(self.instance, agent))
                ch.queue_delete(classic_queue_name(self.instance, agent))
                ch.queue_delete(holder_name(self.instance, agent))
            ch.queue_delete(dead_name(self.instance))
            ch.exchange_delete(exchange_name(self.instance))
            ch.exchange_delete(presence_exchange(self.instance))
            ch.exchange_delete(old_holder_exchange(self.instance))
            ch.exchange_delete(dead_name(self.instance))

        self._call(do)
