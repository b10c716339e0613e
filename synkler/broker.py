"""RabbitMQ through pika: the only module that imports pika.

Topology of an instance `id`:
- exchange ``synkler.<id>`` (topic, durable): every message, routed by the receiving agent's name;
- queue ``synkler.<id>.<agent>`` (durable, one per agent) bound with routing key ``<agent>``, so a
  message sent while that agent is down waits for it;
- exchange and queue ``synkler.<id>.dead``: where rejected (malformed, hostile) messages end up.

pika's BlockingConnection is not thread-safe: the agent's main loop owns it. Other threads may only
call `wake()`. pika errors are re-raised as BrokerError so no other module sees a pika object.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from .config import Config
from .errors import BrokerError

log = logging.getLogger(__name__)

_PIKA_ERRORS = (pika.exceptions.AMQPError, OSError)
_PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")


@dataclass(frozen=True)
class BrokerParams:
    host: str
    port: int = 5672
    username: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    heartbeat: int = 30

    @classmethod
    def from_config(cls, cfg: Config) -> BrokerParams:
        return cls(
            cfg.synkler_server,
            cfg.broker_port,
            cfg.broker_username,
            cfg.broker_password,
            cfg.broker_vhost,
            cfg.broker_heartbeat,
        )


def exchange_name(instance: str) -> str:
    return f"synkler.{instance}"


def queue_name(instance: str, agent: str) -> str:
    return f"synkler.{instance}.{agent}"


def dead_name(instance: str) -> str:
    return f"synkler.{instance}.dead"


class Broker:
    """One AMQP connection with a confirming channel, consuming the agent's own queue."""

    def __init__(self, params: BrokerParams, instance: str, agent: str, *, prefetch: int = 64):
        self.params = params
        self.instance = instance
        self.agent = agent
        self.prefetch = prefetch
        self._conn: pika.BlockingConnection | None = None
        self._chan: BlockingChannel | None = None
        self._declared: set[str] = set()
        self._inbox: list[tuple[int, bytes]] = []

    # connection ----------------------------------------------------------------------------------

    def connect(self, *, consume: bool = True) -> None:
        p = self.params
        parameters = pika.ConnectionParameters(
            host=p.host,
            port=p.port,
            virtual_host=p.vhost,
            credentials=pika.PlainCredentials(p.username, p.password),
            heartbeat=p.heartbeat,
            blocked_connection_timeout=120,
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=10,
            client_properties={"connection_name": f"synkler {self.instance} {self.agent}"},
        )
        try:
            self._conn = conn = pika.BlockingConnection(parameters)
            self._chan = chan = conn.channel()
            chan.confirm_delivery()
            self._declared = set()
            self._declare_topology(chan)
            if consume:
                self._declare_queue(chan, self.agent)
                chan.basic_qos(prefetch_count=self.prefetch)
                chan.basic_consume(queue_name(self.instance, self.agent), self._on_message)
        except _PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"cannot use broker {p.host}:{p.port}: {_describe(e)}") from None

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    def close(self) -> None:
        conn, self._conn, self._chan = self._conn, None, None
        self._inbox = []
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing left to save
                pass

    def _declare_topology(self, ch: BlockingChannel) -> None:
        ch.exchange_declare(exchange_name(self.instance), exchange_type="topic", durable=True)
        ch.exchange_declare(dead_name(self.instance), exchange_type="fanout", durable=True)
        ch.queue_declare(dead_name(self.instance), durable=True)
        ch.queue_bind(dead_name(self.instance), dead_name(self.instance))

    def _declare_queue(self, ch: BlockingChannel, agent: str) -> None:
        """Declare an agent's queue, so messages to an agent that never ran yet wait for it."""
        if agent in self._declared:
            return
        q = queue_name(self.instance, agent)
        ch.queue_declare(q, durable=True, arguments={"x-dead-letter-exchange": dead_name(self.instance)})
        ch.queue_bind(q, exchange_name(self.instance), routing_key=agent)
        self._declared.add(agent)

    # consuming -----------------------------------------------------------------------------------

    def _on_message(
        self,
        _chan: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        _props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        # Only collect here: handling happens in the main loop, outside pika's dispatch.
        self._inbox.append((method.delivery_tag, body))

    def poll(self, timeout: float) -> list[tuple[int, bytes]]:
        """Run the connection (heartbeats included) for up to `timeout` s; return the deliveries."""
        conn = self._conn
        if conn is None:
            raise BrokerError("not connected to the broker")
        try:
            conn.process_data_events(time_limit=timeout)
        except _PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"lost broker connection: {_describe(e)}") from None
        batch, self._inbox = self._inbox, []
        return batch

    def ack(self, tag: int) -> None:
        self._call(lambda ch: ch.basic_ack(tag))

    def reject(self, tag: int, *, requeue: bool = False) -> None:
        """Reject a delivery; without requeue it goes to the dead-letter queue."""
        self._call(lambda ch: ch.basic_nack(tag, requeue=requeue))

    def wake(self) -> None:
        """Make a running `poll` return early; callable from any thread."""
        conn = self._conn
        if conn is not None:
            try:
                conn.add_callback_threadsafe(lambda: None)
            except Exception:  # connection closing: the main loop notices on its own
                pass

    # publishing ----------------------------------------------------------------------------------

    def publish(self, agent: str, body: bytes) -> None:
        """Publish persistently to an agent's queue and wait for the broker's confirm."""

        def do(ch: BlockingChannel) -> None:
            self._declare_queue(ch, agent)
            ch.basic_publish(
                exchange_name(self.instance), agent, body, properties=_PERSISTENT, mandatory=True
            )

        self._call(do)

    def dead_letter(self, body: bytes) -> None:
        """Put one rejected message (e.g. a bad element of a batch) on the dead-letter queue."""
        self._call(
            lambda ch: ch.basic_publish(
                dead_name(self.instance), "", body, properties=_PERSISTENT, mandatory=True
            )
        )

    def _call(self, fn: Callable[[BlockingChannel], None]) -> None:
        """Run `fn(channel)`; a pika error closes the connection and becomes a BrokerError."""
        chan = self._chan
        if chan is None or not self.connected:
            raise BrokerError("not connected to the broker")
        try:
            fn(chan)
        except _PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {_describe(e)}") from None

    # administration (tests, demo, check) ---------------------------------------------------------

    def get_dead(self) -> list[bytes]:
        """Drain the dead-letter queue (for tests and inspection)."""
        bodies: list[bytes] = []

        def do(ch: BlockingChannel) -> None:
            while True:
                method, _props, body = ch.basic_get(dead_name(self.instance), auto_ack=True)
                if method is None:
                    return
                bodies.append(body)

        self._call(do)
        return bodies

    def delete_instance(self, agents: list[str]) -> None:
        """Remove every queue and exchange of this instance (demo and test clean-up)."""

        def do(ch: BlockingChannel) -> None:
            for agent in agents:
                ch.queue_delete(queue_name(self.instance, agent))
            ch.queue_delete(dead_name(self.instance))
            ch.exchange_delete(exchange_name(self.instance))
            ch.exchange_delete(dead_name(self.instance))

        self._call(do)


def _describe(e: BaseException) -> str:
    text = str(e) or repr(e)
    return f"{type(e).__name__}: {text}" if text != type(e).__name__ else text
