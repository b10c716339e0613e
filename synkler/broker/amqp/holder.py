"""One agent per name: the agent's exclusive lock queue, its exclusive consumer, and the record of
who holds its queue (host, pid, since when), so that an agent refused as a second one can name the
first (AgentActive) and tell a stale connection of its own from a rival."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ... import __version__
from ...errors import AgentActive, BrokerError
from ..names import lock_name, presence_exchange, queue_name
from .base import ACCESS_REFUSED, PIKA_ERRORS, RESOURCE_LOCKED
from .declare import Declaring
from .words import describe


@dataclass(frozen=True)
class Holder:
    """Who consumes an agent's queue: written by the agent that holds it, read by one refused."""

    host: str
    pid: int
    since: float
    token: str  # one per agent process: tells its own stale connection from another agent

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {when}"


# One per process: an agent refused by a connection of its own that the broker has not yet seen
# die (a cut link, until the heartbeat times out) waits for it instead of taking it for a rival.
TOKEN = uuid.uuid4().hex


class Holding(Declaring):
    """The lock, the exclusive consumer and the holder record of the agent's own queue."""

    def _lock(self) -> None:
        """Declare the agent's lock queue, exclusive to this connection: the broker refuses it to a
        second one (RESOURCE_LOCKED) while this one lives, on whichever node it asks, and deletes
        it with the connection. AgentActive if another connection holds it."""
        assert self._conn is not None
        probe = self._conn.channel()
        try:
            probe.queue_declare(lock_name(self.instance, self.agent), exclusive=True, auto_delete=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != RESOURCE_LOCKED:
                raise
            self._refused()
        probe.close()

    def _refused(self) -> None:
        holder = self._read_holder()
        self.close()
        queue = queue_name(self.instance, self.agent)
        raise AgentActive(queue, holder, mine=holder is not None and holder.token == TOKEN) from None

    def _consume(self, chan: BlockingChannel) -> None:
        """Consume the agent's own queue, alone: the lock refused any other agent of this name, and
        the consumer is exclusive too (which RabbitMQ 3.10 enforces on classic queues only)."""
        try:
            chan.basic_consume(queue_name(self.instance, self.agent), self._on_message, exclusive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != ACCESS_REFUSED:  # "in exclusive use"
                raise
            self._refused()
        body = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": time.time(),
                "token": TOKEN,
                "version": __version__,
            }
        ).encode()
        self._holder_queue()
        self._publisher().basic_publish(
            presence_exchange(self.instance), self.agent, body, properties=self._props, mandatory=True
        )

    def consumers(self) -> tuple[int, Holder | None]:
        """How many consume the agent's queue (0 if it does not exist yet), and who holds it."""
        assert self._conn is not None
        probe = self._conn.channel()
        try:
            count = probe.queue_declare(queue_name(self.instance, self.agent), passive=True).method
            n = int(count.consumer_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0, None  # no such queue
        except PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {describe(e)}") from None
        probe.close()
        return n, self._read_holder() if n else None

    def _read_holder(self) -> Holder | None:
        """Who holds the agent's queue, as it wrote itself down (None if that cannot be told)."""
        try:
            ch = self._publisher()
            method, _props, body = ch.basic_get(self._holder_queue(), auto_ack=False)
            if method is None:
                return None
            ch.basic_nack(method.delivery_tag, requeue=True)
            d = json.loads(body)
            return Holder(str(d["host"]), int(d["pid"]), float(d["since"]), str(d["token"]))
        except (*PIKA_ERRORS, ValueError, KeyError, TypeError):
            return None
