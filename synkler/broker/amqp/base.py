"""The connection's channels, which every part of the Broker uses: one consumes (and acks), one
publishes with confirms, and short-lived ones probe; a pika error leaves them as synkler's own."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Callable, NamedTuple, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ...errors import BrokerError, NoQueueYet, PublishRefused
from ..connect import Address, BrokerParams
from .words import describe

log = logging.getLogger("synkler.broker")  # the name operators filter on, as before the wings
T = TypeVar("T")

PIKA_ERRORS = (pika.exceptions.AMQPError, OSError)
ACCESS_REFUSED, NOT_FOUND, RESOURCE_LOCKED, PRECONDITION_FAILED = 403, 404, 405, 406
# Seconds the broker may take to answer a declaration, a consume or a publish's confirm. A RabbitMQ
# cluster that has lost the majority of its nodes keeps the connection alive (heartbeats flow) but
# answers nothing about its quorum queues (3.10 answered a declaration with 541 INTERNAL_ERROR only
# after about a minute). Past it the connection is ended (ERROR) and the agent reconnects with its
# backoff, to another node.
OPERATION_TIMEOUT = 30.0
PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")


class Delivery(NamedTuple):
    tag: int
    body: bytes
    # The broker user that published it, as the broker vouches: RabbitMQ refuses a publish whose
    # user_id is not the publisher's own login (unless that user is tagged impersonator).
    user: str | None


class Channels:
    """The connection and its channels, the state the parts of `Broker` share (set by its
    `__init__`), and the calls that turn a pika error into BrokerError or PublishRefused."""

    params: BrokerParams
    instance: str
    agent: str
    peers: tuple[str, ...]
    prefetch: int
    address: Address
    _conn: pika.BlockingConnection | None
    _chan: BlockingChannel | None  # consumes and acks
    _pub: BlockingChannel | None  # publishes with confirms; reopened after a refusal
    _declared: set[str]  # the queues this connection declared or found (by routing key), ":holder"
    _inbox: list[Delivery]
    _offers_chan: BlockingChannel | None  # a central of a pool: consumes offers (synkler.broker.amqp.offers)
    _offer_tags: dict[int, int]
    _offers_taken: frozenset[str] = frozenset()  # the offers queues the offers channel consumes
    _offers_looked = float("-inf")  # when the missing ones were last looked for
    _props: pika.BasicProperties

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    def _publisher(self) -> BlockingChannel:
        """The publishing channel, opened again if the broker closed it after refusing a publish."""
        pub = self._pub
        if pub is None or not pub.is_open:
            if self._conn is None:
                raise BrokerError("not connected to the broker")
            self._pub = pub = self._conn.channel()
            pub.confirm_delivery()
        return pub

    def _drop_publisher(self) -> None:
        """Close the publishing channel after a refused publish, so that the next one opens a fresh
        channel. A channel keeps its own view of each quorum queue it published to (its leader):
        on RabbitMQ 3.10, one whose publish was NACKed while a queue's leader was being elected (a
        node just died) had its later publishes to that queue refused too, for more than 90 s,
        though the queue had a new leader within a second; a fresh channel's went through 1 s
        later (tests/faults/test_faults_cluster.py)."""
        pub, self._pub = self._pub, None
        if pub is not None and pub.is_open:
            try:
                pub.close()
            except PIKA_ERRORS:
                pass

    def close(self) -> None:
        conn, self._conn, self._chan, self._pub = self._conn, None, None, None
        self._offers_chan, self._offer_tags = None, {}
        self._offers_taken, self._offers_looked = frozenset(), float("-inf")
        self._inbox = []
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing left to save
                pass

    def _on_message(
        self,
        _chan: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        # Only collect here: handling happens in the main loop, outside pika's dispatch.
        self._inbox.append(Delivery(method.delivery_tag, body, props.user_id))

    @contextlib.contextmanager
    def _bounded(self, what: str) -> Iterator[None]:
        """End the connection (a pika error where the broker's answer was awaited) unless the
        broker answers within OPERATION_TIMEOUT. pika's blocking waits have no timeout of their own;
        the timer runs on the connection's I/O loop, which those waits run."""
        conn = self._conn
        if conn is None:
            yield
            return
        impl = conn._impl  # pika's own I/O loop: the only way to bound a blocking wait
        fired = []
        seconds = OPERATION_TIMEOUT

        def expire() -> None:
            fired.append(True)
            log.error(
                "the broker has not answered %s within %.0f s (a RabbitMQ cluster without a majority "
                "of its nodes up answers nothing about its quorum queues): dropping the connection "
                "to reconnect, to another node if there is one",
                what,
                seconds,
            )
            impl._terminate_stream(
                pika.exceptions.StreamLostError(f"no answer to {what} within {seconds:.0f} s")
            )

        timer = impl._adapter_call_later(seconds, expire)
        try:
            yield
        finally:
            if not fired:
                impl._adapter_remove_timeout(timer)

    def _publish(self, fn: Callable[[BlockingChannel], None]) -> None:
        if not self.connected:
            raise BrokerError("not connected to the broker")
        try:
            pub = self._publisher()
        except PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {describe(e)}") from None
        try:
            with self._bounded("a publish (its confirm)"):
                fn(pub)
        except (
            pika.exceptions.ChannelClosedByBroker,
            pika.exceptions.UnroutableError,
            pika.exceptions.NackError,
        ) as e:
            if not self.connected:
                self.close()
                raise BrokerError(f"broker operation failed: {describe(e)}") from None
            self._drop_publisher()
            if isinstance(e, pika.exceptions.UnroutableError):
                raise NoQueueYet(describe(e)) from None
            raise PublishRefused(describe(e)) from None
        except PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {describe(e)}") from None

    def _call(self, fn: Callable[[BlockingChannel], None], chan: BlockingChannel | None = None) -> None:
        """Run `fn(channel)`; a pika error closes the connection and becomes a BrokerError."""
        chan = chan or self._pub
        if chan is None or not self.connected:
            raise BrokerError("not connected to the broker")
        try:
            fn(chan)
        except PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {describe(e)}") from None

    def _probe(self, fn: Callable[[BlockingChannel], T]) -> T | None:
        """Run `fn` on a channel of its own; None if the broker refuses (a passive declare of a
        queue that does not exist closes its channel, nothing else)."""
        if self._conn is None:
            raise BrokerError("not connected to the broker")
        try:
            probe = self._conn.channel()
        except PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {describe(e)}") from None
        try:
            result = fn(probe)
        except pika.exceptions.ChannelClosedByBroker:
            return None
        except PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {describe(e)}") from None
        try:
            probe.close()
        except PIKA_ERRORS:
            pass
        return result
