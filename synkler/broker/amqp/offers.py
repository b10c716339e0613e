"""A pool of centrals (docs/architecture.md, "A pool of centrals"): the upload agents' offers queues,
declared by upload (its own) and by each central (those it takes offers from), and consumed by a
central on a channel of their own while it has room; offers get negative delivery tags, so the
inbox acks each on the channel it came by.

Under `synkler broker-setup`'s users a central's user may not declare an upload agent's offers
queue (nor so delete it): it consumes the queue once that agent has declared it, looking again every
OFFERS_LOOK seconds for one that does not exist yet."""

from __future__ import annotations

import logging
import time
from typing import Callable

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ...errors import BrokerError
from ..names import exchange_name, offers_key, offers_queue
from ..topology import agent_queue_arguments
from .base import ACCESS_REFUSED, PIKA_ERRORS, Channels, Delivery
from .words import describe

log = logging.getLogger("synkler.broker")

OFFERS_LOOK = 5.0  # seconds between a central's looks for an offers queue that does not exist yet


class Offering(Channels):
    offers: tuple[str, ...]
    _next_offer_tag: int
    _may_declare_offers = True  # False once the broker refused this user a declare of one
    _offers_missing_told: frozenset[str] = frozenset()

    def _declare_offers(self, ch: BlockingChannel, upload: str) -> None:
        """Declare an upload agent's offers queue, bound to its offers' routing key."""
        q = offers_queue(self.instance, upload)
        ch.queue_declare(q, durable=True, arguments=agent_queue_arguments(self.instance))
        ch.queue_bind(q, exchange_name(self.instance), routing_key=offers_key(upload))

    def _offers_exist(self, upload: str) -> bool:
        """A central: declare the upload agent's offers queue where its user may, else check that it
        exists (declared by the upload agent's own user)."""
        if self._may_declare_offers:
            code = self._refusal(lambda ch: self._declare_offers(ch, upload))
            if code != ACCESS_REFUSED:
                return code == 0
            self._may_declare_offers = False
        q = offers_queue(self.instance, upload)
        return self._refusal(lambda ch: ch.queue_declare(q, passive=True)) == 0

    def _refusal(self, fn: Callable[[BlockingChannel], object]) -> int:
        """Run `fn` on a channel of its own: 0, or the code the broker closed the channel with."""
        code = 0

        def do(ch: BlockingChannel) -> None:
            nonlocal code
            try:
                fn(ch)
            except pika.exceptions.ChannelClosedByBroker as e:
                code = int(e.reply_code)

        self._probe(do)
        return code

    @property
    def taking_offers(self) -> bool:
        return self._offers_chan is not None

    def take_offers(self, room: int) -> None:
        """Consume every upload agent's offers queue (`offers`), at most `room` unacked at a time
        (a competing consumer: the broker gives each offer to one central that asks); room 0 cancels
        the consumers (the offers go to the other centrals meanwhile)."""
        if room > 0 and self.offers:
            missing = [u for u in self.offers if u not in self._offers_taken]
            now = time.monotonic()
            if not missing or now - self._offers_looked < OFFERS_LOOK:
                return
            self._offers_looked = now
            ready = [u for u in missing if self._offers_exist(u)]
            self._tell_missing(frozenset(missing) - set(ready))
            if ready:
                self._consume_offers(room, ready)
        elif room <= 0 and self._offers_chan is not None:
            chan, self._offers_chan = self._offers_chan, None
            # Closing the channel requeues the offers it holds unacked: every one taken was
            # recorded and acked in the pass that took it, before this.
            self._offer_tags, self._offers_taken, self._offers_looked = {}, frozenset(), float("-inf")
            self._inbox = [d for d in self._inbox if d.tag >= 0]
            self._call(lambda ch: ch.close(), chan)

    def _consume_offers(self, room: int, uploads: list[str]) -> None:
        """Consume these offers queues on the offers channel (opened, with a prefetch of `room`)."""
        conn = self._conn
        if conn is None:
            raise BrokerError("not connected to the broker")
        chan = self._offers_chan
        if chan is None:
            try:
                chan = conn.channel()
            except PIKA_ERRORS as e:
                self.close()
                raise BrokerError(f"broker operation failed: {describe(e)}") from None
            self._offers_taken = frozenset()

        def do(ch: BlockingChannel) -> None:
            if not self._offers_taken:
                ch.basic_qos(prefetch_count=room)
            for upload in uploads:
                ch.basic_consume(offers_queue(self.instance, upload), self._on_offer)

        with self._bounded("the consume of the offers queues"):
            self._call(do, chan)
        self._offers_chan = chan
        self._offers_taken |= set(uploads)

    def _tell_missing(self, missing: frozenset[str]) -> None:
        """Say once which offers queues do not exist yet (their upload agents never ran)."""
        new = missing - self._offers_missing_told
        self._offers_missing_told = missing
        if new:
            log.info(
                "no offers queue of upload agent(s) %s yet (it has not run, and this central's broker "
                "user may not declare it): taking its offers once it exists",
                ", ".join(sorted(new)),
            )

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
