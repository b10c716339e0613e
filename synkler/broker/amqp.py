"""RabbitMQ through pika: the only module that imports pika.

Topology of an instance `id` (':' cannot occur in an id or an agent name, so no name of one
object can be the name of another, of this instance or of any other):
- exchange ``synkler:<id>`` (topic, durable): every message, routed by the receiving agent's name;
- queue ``synkler:<id>:inbox:<agent>`` (a quorum queue, one per agent: synkler.broker.topology has
  the arguments of every queue) bound with routing key ``<agent>``, so a message sent while that
  agent is down waits for it. Its agent consumes it alone: it first declares its exclusive lock
  queue ``synkler:<id>:lock:<agent>``, which the broker refuses to a second connection
  (AgentActive: that agent waits as a standby);
- exchange ``synkler:<id>:presence`` (topic) and queue ``synkler:<id>:holder:<agent>`` (quorum,
  at most one message) bound with routing key ``<agent>``: who consumes the agent's queue (host,
  pid, since when), so that the refused one can name it; the agent's presence report
  (synkler.observe.presence) replaces it every few seconds, a superset of it, which `synkler status
  --relay` reads. A topic exchange so that the broker's topic permissions (broker-setup) let each
  agent's user write only its own report; with `authenticate` a reader also believes a report only
  from its agent's user (`user_id`). (The direct exchange ``synkler:<id>:holder`` of earlier
  versions is no longer used.);
- exchange and queue ``synkler:<id>:dead`` (quorum): where rejected (malformed, hostile) messages
  end up, bounded in count and bytes.

The broker may be a cluster (synkler.broker.connect): `connect` tries its nodes in turn.

The instance's exchanges and dead-letter queue are shared: whoever may declares them (central's
user under broker-setup, any user on a broker without per-agent users); a user that may not (an
upload or download agent's) only checks that they exist, so that no agent login can delete,
re-declare or re-type what the others rely on.
synkler 0.4 named them ``synkler.<id>``, ``synkler.<id>.<agent>`` and ``synkler.<id>.dead``; an agent
moves what its old queue still holds into its new one when it connects (`_adopt_legacy`). That
shim (`legacy_queue_name`, `_adopt_legacy`) is removed in synkler 0.7: a relay upgraded from 0.4
starts a 0.5 or 0.6 agent once first (docs/upgrading.md). synkler 0.5 named an agent's queue
``synkler:<id>:agent:<agent>``, a classic queue: the agent consumes what it still holds and deletes
it once empty (`_drain_classic`, removed in synkler 0.8).

The connection has two channels: one consumes (and acks), one publishes with confirms. A publish
the broker refuses (a queue declared by someone else with other arguments, a queue that rejects
messages) closes only the publishing channel and raises PublishRefused, so the caller can hold back
that destination and go on with the others; the consumer is not disturbed.

pika's BlockingConnection is not thread-safe: the agent's main loop owns it. Other threads may only
call `wake()`. pika errors are re-raised as BrokerError so no other module sees a pika object.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, NamedTuple, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from .. import __version__
from ..errors import AgentActive, BrokerError, NoQueueYet, PublishRefused
from ..text import count
from ..tls import TlsFileError, explain, peer_certificate, tls_context
from .connect import Address, BrokerParams, address_text, connection_order, tls_settings
from .names import (
    broker_user,
    classic_queue_name,
    dead_name,
    exchange_name,
    holder_name,
    legacy_queue_name,
    lock_name,
    old_holder_exchange,
    presence_exchange,
    queue_name,
)
from .topology import DEAD_ARGUMENTS, HOLDER_ARGUMENTS, agent_queue_arguments

__all__ = ["DEAD_ARGUMENTS", "Broker", "BrokerParams", "Delivery", "Holder", "tls_settings"]

log = logging.getLogger("synkler.broker")  # the name operators filter on, as before the wings
T = TypeVar("T")

_PIKA_ERRORS = (pika.exceptions.AMQPError, OSError)
_ACCESS_REFUSED, _NOT_FOUND, _RESOURCE_LOCKED, _PRECONDITION_FAILED = 403, 404, 405, 406
_PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")


class Delivery(NamedTuple):
    tag: int
    body: bytes
    # The broker user that published it, as the broker vouches: RabbitMQ refuses a publish whose
    # user_id is not the publisher's own login (unless that user is tagged impersonator).
    user: str | None


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


class _AddressFailed(Exception):
    """One address of the broker would not do (why, in words): the next is tried."""


# One per process: an agent refused by a connection of its own that the broker has not yet seen
# die (a cut link, until the heartbeat times out) waits for it instead of taking it for a rival.
TOKEN = uuid.uuid4().hex


class Broker:
    """One AMQP connection with a confirming channel, consuming the agent's own queue."""

    def __init__(
        self,
        params: BrokerParams,
        instance: str,
        agent: str,
        *,
        prefetch: int = 64,
        peers: Sequence[str] = (),
    ):
        self.params = params
        # The agents whose queues this one declares before its first publish to them, so that
        # messages to one that never ran yet wait for it: central and download, by their names
        # (not with authentication, where each agent's broker user may declare its own queue only:
        # messages to an agent that never ran are then held back in the outbox until it has). An
        # upload agent's queue is declared only by that agent itself, never because a message named
        # it: an offer from an invented sender cannot make central create a durable queue (a
        # publish to it is refused instead: PublishRefused).
        self.peers = tuple(peers)
        self.instance = instance
        self.agent = agent
        self.prefetch = prefetch
        self._conn: pika.BlockingConnection | None = None
        self._chan: BlockingChannel | None = None  # consumes and acks
        self._pub: BlockingChannel | None = None  # publishes with confirms; reopened after a refusal
        self._declared: set[str] = set()
        self._inbox: list[Delivery] = []
        self.address: Address = params.addresses[0]  # the node connected to (last)
        # Every publish says who publishes it; the broker checks that it is this connection's user.
        # With EXTERNAL login and no broker_username, synkler does not know that user's name (the
        # broker takes it from the certificate): then publishes say nothing (not authenticated).
        self._props = pika.BasicProperties(
            delivery_mode=2, content_type="application/json", user_id=params.username or None
        )

    # connection ----------------------------------------------------------------------------------

    def connect(self, *, consume: bool = True, declare: bool = True) -> None:
        """Connect to the first node that takes the connection, of the broker's addresses in
        `connection_order`; `consume`: the agent's own queue, exclusively. `declare` False (with
        consume False): declare nothing, only look (`synkler status --relay` of a mistyped id
        creates nothing). BrokerError if no node will do, saying why for each; AgentActive at once
        (another agent of this name holds the queue, whichever node one asks)."""
        failures: list[str] = []
        for address in connection_order(self.params.addresses):
            try:
                self._connect_to(address, consume=consume, declare=declare)
            except _AddressFailed as e:
                failures.append(f"{address_text(address)}: {e}")
                continue
            self.address = address
            return
        if len(failures) == 1:
            raise BrokerError(f"cannot use broker {failures[0]}")
        raise BrokerError(f"cannot use any node of the broker ({'; '.join(sorted(failures))})")

    def _parameters(self, address: Address) -> pika.ConnectionParameters:
        p = self.params
        host, port = address
        ssl_options = None
        if p.tls is not None:
            try:
                ssl_options = pika.SSLOptions(tls_context(p.tls), p.tls.server_name or host)
            except TlsFileError as e:  # changed since the configuration was read
                raise _AddressFailed(f"TLS: {e.key}: {e}") from None
        credentials: pika.PlainCredentials | pika.credentials.ExternalCredentials
        if p.external:
            credentials = pika.credentials.ExternalCredentials()
        else:
            credentials = pika.PlainCredentials(p.username, p.password)
        return pika.ConnectionParameters(
            host=host,
            port=port,
            virtual_host=p.vhost,
            credentials=credentials,
            ssl_options=ssl_options,
            heartbeat=p.heartbeat,
            blocked_connection_timeout=120,
            connection_attempts=1,  # the other nodes next, then the agent's backoff
            socket_timeout=5,
            stack_timeout=10,
            client_properties={
                "connection_name": f"synkler {self.instance} {self.agent} on {socket.gethostname()}"
                f" pid {os.getpid()}"
            },
        )

    def _connect_to(self, address: Address, *, consume: bool, declare: bool) -> None:
        parameters = self._parameters(address)
        try:
            self._conn = conn = pika.BlockingConnection(parameters)
            self._chan = chan = conn.channel()
            self._declared = set()
            if declare or consume:
                self._declare_topology()
            if consume:
                pub = self._publisher()
                self._lock()
                self._declare_queue(pub, self.agent)
                self._adopt_legacy(pub)  # 0.4 compatibility: removed in 0.7
                chan.basic_qos(prefetch_count=self.prefetch)
                self._consume(chan)
                self._drain_classic(chan)  # 0.5 compatibility: removed in 0.8
        except AgentActive:
            raise  # closed already
        except BrokerError as e:
            self.close()
            raise _AddressFailed(str(e)) from None
        except _PIKA_ERRORS as e:
            self.close()
            why = self._explain_failure(e, address) or _describe(e)
            if isinstance(e, pika.exceptions.ChannelClosedByBroker) and e.reply_code == _ACCESS_REFUSED:
                # E.g. users made by an older broker-setup, without the presence exchange.
                why += " (the broker user's permissions: see `synkler broker-setup`, docs/security.md)"
            raise _AddressFailed(why) from None

    def _explain_failure(self, e: BaseException, address: Address) -> str | None:
        """A failed TLS handshake or EXTERNAL login in one line (None: another failure). pika wraps
        the ssl error, sometimes only as text: dig it out."""
        p = self.params
        host, port = address
        if p.tls is None:
            return None
        error = _ssl_error(e)
        peer = None
        if isinstance(error, ssl.SSLCertVerificationError):
            peer = peer_certificate(host, port, p.tls)  # for dates and names
        why = explain(error if error is not None else _chain_text(e), p.tls, host, port, peer)
        if why is not None or not p.external:
            return why
        text = _chain_text(e)
        if isinstance(e, pika.exceptions.AuthenticationError) or "no acceptable" in text.lower():
            return (
                "the broker does not offer EXTERNAL login (RabbitMQ: enable the plugin "
                "rabbitmq_auth_mechanism_ssl and list EXTERNAL in auth_mechanisms)"
            )
        if "mechanism EXTERNAL" in text:
            return (
                f"the broker refused EXTERNAL login with the certificate {p.tls.cert_file}: it has no "
                "user of the name it takes from it (ssl_cert_login_from), or that user may not use "
                f"vhost {p.vhost}"
            )
        return None

    def _lock(self) -> None:
        """Declare the agent's lock queue, exclusive to this connection: the broker refuses it to a
        second one (RESOURCE_LOCKED) while this one lives, on whichever node it asks, and deletes
        it with the connection. AgentActive if another connection holds it."""
        assert self._conn is not None
        probe = self._conn.channel()
        try:
            probe.queue_declare(lock_name(self.instance, self.agent), exclusive=True, auto_delete=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != _RESOURCE_LOCKED:
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
            if e.reply_code != _ACCESS_REFUSED:  # "in exclusive use"
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
            if e.reply_code != _PRECONDITION_FAILED:
                raise
            # A classic one of synkler 0.5: its record is rewritten every few seconds, so it is
            # made again as a quorum queue (the agent's user may configure its own holder queue).
            ch = self._publisher()
            ch.queue_delete(q)
            ch.queue_declare(q, durable=True, arguments=HOLDER_ARGUMENTS)
            log.info("made the holder queue %s again, as a quorum queue", q)
        ch.queue_bind(q, x, routing_key=self.agent)
        return q

    def consumers(self) -> tuple[int, Holder | None]:
        """How many consume the agent's queue (0 if it does not exist yet), and who holds it."""
        assert self._conn is not None
        probe = self._conn.channel()
        try:
            count = probe.queue_declare(queue_name(self.instance, self.agent), passive=True).method
            n = int(count.consumer_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0, None  # no such queue
        except _PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {_describe(e)}") from None
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
        except (*_PIKA_ERRORS, ValueError, KeyError, TypeError):
            return None

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

    def _probe(self, fn: Callable[[BlockingChannel], T]) -> T | None:
        """Run `fn` on a channel of its own; None if the broker refuses (a passive declare of a
        queue that does not exist closes its channel, nothing else)."""
        if self._conn is None:
            raise BrokerError("not connected to the broker")
        try:
            probe = self._conn.channel()
        except _PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {_describe(e)}") from None
        try:
            result = fn(probe)
        except pika.exceptions.ChannelClosedByBroker:
            return None
        except _PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {_describe(e)}") from None
        try:
            probe.close()
        except _PIKA_ERRORS:
            pass
        return result

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

    def dead_count(self) -> int | None:
        """Messages in the dead-letter queue, or None if it does not exist."""
        return self._probe(
            lambda ch: int(ch.queue_declare(dead_name(self.instance), passive=True).method.message_count)
        )

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
                exchange_name(self.instance), self.agent, body, properties=_PERSISTENT, mandatory=True
            )
            probe.basic_ack(method.delivery_tag)
            moved += 1
        probe.queue_delete(old, if_empty=True)
        probe.close()
        log.info("moved %s from synkler 0.4's queue %s and deleted it", count(moved, "message"), old)

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
            except _PIKA_ERRORS:
                pass

    def close(self) -> None:
        conn, self._conn, self._chan, self._pub = self._conn, None, None, None
        self._inbox = []
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing left to save
                pass

    def _declare_topology(self) -> None:
        """Declare the instance's shared exchanges and dead-letter queue; a broker user that may
        not (refused: an upload or download agent's under broker-setup) checks that they exist."""
        try:
            x = exchange_name(self.instance)
            self._publisher().exchange_declare(x, exchange_type="topic", durable=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != _ACCESS_REFUSED:
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
                if e.reply_code != _NOT_FOUND:
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
            if e.reply_code != _PRECONDITION_FAILED:
                raise
            ch = self._publisher()
            try:
                # Only if empty, checked by the broker itself. A dead letter arriving before the
                # queue is made again is lost: a moment, once per upgrade.
                ch.queue_delete(dead, if_empty=True)
            except pika.exceptions.ChannelClosedByBroker as e2:
                if e2.reply_code != _PRECONDITION_FAILED:  # not empty
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

    # consuming -----------------------------------------------------------------------------------

    def _on_message(
        self,
        _chan: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        # Only collect here: handling happens in the main loop, outside pika's dispatch.
        self._inbox.append(Delivery(method.delivery_tag, body, props.user_id))

    def poll(self, timeout: float) -> list[Delivery]:
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
        self._call(lambda ch: ch.basic_ack(tag), self._chan)

    def reject(self, tag: int, *, requeue: bool = False) -> None:
        """Reject a delivery; without requeue it goes to the dead-letter queue."""
        self._call(lambda ch: ch.basic_nack(tag, requeue=requeue), self._chan)

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
        """Publish persistently to an agent's queue and wait for the broker's confirm.

        PublishRefused: the broker refused this publish (the connection is fine; other agents'
        messages can go); BrokerError: the connection is lost.
        """

        def do(ch: BlockingChannel) -> None:
            if agent in self.peers:
                self._declare_queue(ch, agent)
            ch.basic_publish(
                exchange_name(self.instance), agent, body, properties=self._props, mandatory=True
            )

        self._publish(do)

    def dead_letter(self, body: bytes) -> None:
        """Put one rejected message (e.g. a bad element of a batch) on the dead-letter queue."""
        self._publish(
            lambda ch: ch.basic_publish(
                dead_name(self.instance), "", body, properties=self._props, mandatory=True
            )
        )

    def _publish(self, fn: Callable[[BlockingChannel], None]) -> None:
        if not self.connected:
            raise BrokerError("not connected to the broker")
        try:
            pub = self._publisher()
        except _PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {_describe(e)}") from None
        try:
            fn(pub)
        except (
            pika.exceptions.ChannelClosedByBroker,
            pika.exceptions.UnroutableError,
            pika.exceptions.NackError,
        ) as e:
            if not self.connected:
                self.close()
                raise BrokerError(f"broker operation failed: {_describe(e)}") from None
            self._drop_publisher()
            if isinstance(e, pika.exceptions.UnroutableError):
                raise NoQueueYet(_describe(e)) from None
            raise PublishRefused(_describe(e)) from None
        except _PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {_describe(e)}") from None

    def _call(self, fn: Callable[[BlockingChannel], None], chan: BlockingChannel | None = None) -> None:
        """Run `fn(channel)`; a pika error closes the connection and becomes a BrokerError."""
        chan = chan or self._pub
        if chan is None or not self.connected:
            raise BrokerError("not connected to the broker")
        try:
            fn(chan)
        except _PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"broker operation failed: {_describe(e)}") from None

    # administration (tests, demo) ---------------------------------------------------------------

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


def _causes(e: BaseException) -> list[BaseException]:
    """`e` and what it wraps: causes, contexts, exceptions among its args (pika's way)."""
    seen: list[BaseException] = []
    todo = [e]
    while todo:
        x = todo.pop(0)
        if any(x is s for s in seen):
            continue
        seen.append(x)
        wrapped = (x.__cause__, x.__context__, getattr(x, "exception", None), *x.args)
        todo += [a for a in wrapped if isinstance(a, BaseException)]
        todo += [a for a in getattr(x, "exceptions", None) or () if isinstance(a, BaseException)]
    return seen


def _ssl_error(e: BaseException) -> ssl.SSLError | None:
    return next((x for x in _causes(e) if isinstance(x, ssl.SSLError)), None)


def _chain_text(e: BaseException) -> str:
    return " ".join(f"{x!r} {x}" for x in _causes(e))


def _describe(e: BaseException) -> str:
    """A pika exception as one line a person reads: what happened in words, the broker's reply code
    and text, or the socket's error, never pika's nested reprs."""
    x = pika.exceptions
    if isinstance(e, x.ProbableAuthenticationError):
        return f"login refused by the broker: {_plain(str(e))}"
    if isinstance(e, x.ProbableAccessDeniedError):
        return f"access denied by the broker: {_plain(str(e))}"
    if isinstance(e, (x.ConnectionClosedByBroker, x.ChannelClosedByBroker)):
        what = "channel" if isinstance(e, x.ChannelClosedByBroker) else "connection"
        return f"the broker closed the {what}: {e.reply_code} {e.reply_text}"
    if isinstance(e, x.StreamLostError):
        return f"connection to the broker lost: {_plain(str(e))}"
    inner = next((c for c in reversed(_causes(e)) if isinstance(c, OSError)), None)
    if inner is not None:
        return _os_text(inner)
    text = _plain(str(e))
    if isinstance(e, x.AMQPConnectionError) and not text:
        return "cannot connect"
    return text or type(e).__name__


# pika wraps the broker's reply and socket errors in reprs: "ConnectionClosedByBroker: (403) 'X'",
# "(404, 'X')", "ConnectionResetError(104, 'Connection reset by peer')".
_REPLY = re.compile(r"""^(?:\w+: )?\((\d+)\)?,? ?['"](.*)['"]\)?$""")
_OS_REPR = re.compile(r"""\b\w*(?:Error|Exception)\((?:-?\d+, )?['"]([^'"]*)['"]\)""")


def _plain(text: str) -> str:
    text = _OS_REPR.sub(r"\1", text.strip())
    m = _REPLY.match(text)
    return f"{m.group(1)} {m.group(2)}" if m else text


def _os_text(e: OSError) -> str:
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the broker's host name ({e.strerror})"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "timed out"
    return _plain(e.strerror or str(e)) or type(e).__name__
