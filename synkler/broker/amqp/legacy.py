"""Compatibility with queues of earlier versions, each shim with the version that removes it: synkler
0.4's queue of an agent (moved into its queue, removed in 0.7) and synkler 0.5's classic queue
(consumed until empty, removed in 0.8)."""

from __future__ import annotations

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ...text import count
from ..names import classic_queue_name, exchange_name, legacy_queue_name
from .base import PERSISTENT, Channels, log


class Legacy(Channels):
    """The queues earlier versions left, emptied into the agent's own when it connects."""

    def _drain_classic(self, chan: BlockingChannel) -> None:
        """Consume what synkler 0.5's classic queue of this agent still holds, beside its quorum
        queue, on the same channel: each message as it was published (its user_id too, which a
        move would lose). Unbound first, so that nothing new goes to it; deleted once empty (at a
        connection that finds it so). A 0.5 compatibility shim: removed in synkler 0.8."""
        old = classic_queue_name(self.instance, self.agent)
        assert self._conn is not None
        probe = self._conn.channel()
        try:
            waiting = probe.queue_declare(old, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return  # no such queue: the usual case
        probe.queue_unbind(old, exchange_name(self.instance), routing_key=self.agent)
        if waiting == 0:
            try:
                probe.queue_delete(old, if_empty=True)
                probe.close()
                log.info("deleted synkler 0.5's queue %s (empty)", old)
                return
            except pika.exceptions.ChannelClosedByBroker:
                pass  # one arrived meanwhile: consume it
        else:
            probe.close()
        chan.basic_consume(old, self._on_message, exclusive=True)
        log.info(
            "consuming synkler 0.5's queue %s (%s) until empty, then deleting it",
            old,
            count(waiting, "message"),
        )

    def _adopt_legacy(self, ch: BlockingChannel) -> None:
        """Move what synkler 0.4's queue of this agent still holds into its queue, then delete it.
        A 0.4 compatibility shim: removed in synkler 0.7 (with `legacy_queue_name`)."""
        old = legacy_queue_name(self.instance, self.agent)
        if old is None:
            return
        assert self._conn is not None
        probe = self._conn.channel()
        try:
            probe.queue_declare(old, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return  # no such queue: the usual case
        moved = 0
        while True:
            method, _props, body = probe.basic_get(old, auto_ack=False)
            if method is None:
                break
            ch.basic_publish(
                exchange_name(self.instance), self.agent, body, properties=PERSISTENT, mandatory=True
            )
            probe.basic_ack(method.delivery_tag)
            moved += 1
        probe.queue_delete(old, if_empty=True)
        probe.close()
        log.info("moved %s from synkler 0.4's queue %s and deleted it", count(moved, "message"), old)
