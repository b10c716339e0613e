"""What the agents tell each other through the broker besides messages: the agent's presence
report (published into its holder queue) and what `synkler status --relay` and `synkler check` read
of the others: their reports, their queues' counts, the dead-letter queue's."""

from __future__ import annotations

import json

from pika.adapters.blocking_connection import BlockingChannel

from ..names import broker_user, dead_name, holder_name, offers_queue, presence_exchange, queue_name
from .base import log
from .declare import Declaring
from .holder import TOKEN


class Reading(Declaring):
    """Presence reports written and read, and the counts of queues, each on a channel of its own."""

    # presence (synkler.observe.presence, synkler.observe.relayview) ---------------------------------

    def publish_presence(self, report: dict[str, object]) -> None:
        """Replace the agent's record in its holder queue with its presence report (confirmed).

        PublishRefused and BrokerError as `publish`; the report is a superset of the holder record
        (host, pid, since, token), so a refused standby still names this agent.
        """
        body = json.dumps({**report, "token": TOKEN}, ensure_ascii=True, separators=(",", ":")).encode()

        def do(ch: BlockingChannel) -> None:
            if ":holder" not in self._declared:
                self._holder_queue()
                self._declared.add(":holder")  # ":" cannot occur in an agent name
            ch.basic_publish(
                presence_exchange(self.instance),
                self.agent,
                body,
                properties=self._props,
                mandatory=True,
            )

        self._publish(do)

    def peek_presence(self, agent: str) -> bytes | None:
        """The latest presence report (or holder record) of an agent, left in place; None if it
        has none (never ran under this id). Declares nothing."""

        def do(ch: BlockingChannel) -> bytes | None:
            # Usually one message; should a report published while another reader held the old one
            # have made two, the last is the newest. All go back.
            latest, tag, user = None, None, None
            for _ in range(4):
                method, props, body = ch.basic_get(holder_name(self.instance, agent), auto_ack=False)
                if method is None:
                    break
                latest, tag, user = bytes(body), method.delivery_tag, props.user_id
            if tag is not None:
                ch.basic_nack(tag, multiple=True, requeue=True)
            own = broker_user(self.instance, agent)
            if latest is not None and self.params.authenticate and user != own:
                # Another login wrote it (a broker without broker-setup's topic permissions):
                # the agent's own report is gone, so there is none to show.
                log.warning(
                    "ignoring a presence report of %r published by %s, not by %s",
                    agent,
                    repr(user) if user else "a publisher that did not say who it is",
                    own,
                )
                return None
            return latest

        return self._probe(do)

    def queue_info(self, agent: str) -> tuple[int, int] | None:
        """(messages, consumers) of an agent's queue, or None if it does not exist. Declares nothing."""

        def do(ch: BlockingChannel) -> tuple[int, int]:
            m = ch.queue_declare(queue_name(self.instance, agent), passive=True).method
            return int(m.message_count), int(m.consumer_count)

        return self._probe(do)

    def offers_info(self, upload: str) -> tuple[int, int] | None:
        """(messages ready, consumers) of an upload agent's offers queue (a pool), or None if it does
        not exist. Declares nothing."""

        def do(ch: BlockingChannel) -> tuple[int, int]:
            m = ch.queue_declare(offers_queue(self.instance, upload), passive=True).method
            return int(m.message_count), int(m.consumer_count)

        return self._probe(do)

    def dead_count(self) -> int | None:
        """Messages in the dead-letter queue, or None if it does not exist."""
        return self._probe(
            lambda ch: int(ch.queue_declare(dead_name(self.instance), passive=True).method.message_count)
        )
