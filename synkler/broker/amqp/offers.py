"""A pool of centrals (docs/architecture.md, "A pool of centrals"): the upload agents' offers queues,
declared by upload (its own) and by each central (those it takes offers from), and consumed by a
central on a channel of their own while it has room; offers get negative delivery tags, so the
inbox acks each on the channel it came by."""

from __future__ import annotations

from typing import Callable

import pika
from pika.adapters.blocking_connection import BlockingChannel

from ...errors import BrokerError
from ..names import exchange_name, offers_key, offers_queue
from ..topology import agent_queue_arguments
from .base import PIKA_ERRORS, Channels, Delivery
from .words import describe


class Offering(Channels):
    offers: tuple[str, ...]
    _next_offer_tag: int

    def _declare_offers(self, ch: BlockingChannel, upload: str) -> None:
        """Declare an upload agent's offers queue, bound to its offers' routing key."""
        q = offers_queue(self.instance, upload)
        ch.queue_declare(q, durable=True, arguments=agent_queue_arguments(self.instance))
        ch.queue_bind(q, exchange_name(self.instance), routing_key=offers_key(upload))

    @property
    def taking_offers(self) -> bool:
        return self._offers_chan is not None

    def take_offers(self, room: int) -> None:
        """Consume every upload agent's offers queue (`offers`), at most `room` unacked at a time
        (a competing consumer: the broker gives each offer to one central that asks); room 0 cancels
        the consumers (the offers go to the other centrals meanwhile)."""
        if room > 0 and self._offers_chan is None and self.offers:
            conn = self._conn
            if conn is None:
                raise BrokerError("not connected to the broker")

            def do(ch: BlockingChannel) -> None:
                ch.basic_qos(prefetch_count=room)
                for upload in self.offers:
                    ch.basic_consume(offers_queue(self.instance, upload), self._on_offer)

            try:
                chan = conn.channel()
            except PIKA_ERRORS as e:
                self.close()
                raise BrokerError(f"broker operation failed: {describe(e)}") from None
            with self._bounded("the consume of the offers queues"):
                self._call(do, chan)
            self._offers_chan = chan
        elif room <= 0 and self._offers_chan is not None:
            chan, self._offers_chan = self._offers_chan, None
            # Closing the channel requeues the offers it holds unacked: every one taken was
            # recorded and acked in the pass that took it, before this.
            self._offer_tags = {}
            self._inbox = [d for d in self._inbox if d.tag >= 0]
            self._call(lambda ch: ch.close(), chan)

    def _on_offer(
        self,
        _chan: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        tag, self._next_offer_tag = self._next_offer_tag, self._next_offer_tag - 1
        self._offer_tags[tag] = method.delivery_tag
        self._inbox.append(Delivery(tag, body, props.user_id))

    def _settle_offer(self, tag: int, fn: Callable[[BlockingChannel, int], None]) -> None:
        """Ack or reject an offer on the channel it came by; one of a channel closed since is back
        in its queue already (nothing to do)."""
        real = self._offer_tags.pop(tag, None)
        if real is None or self._offers_chan is None:
            return
        chan = self._offers_chan
        self._call(lambda ch: fn(ch, real), chan)
