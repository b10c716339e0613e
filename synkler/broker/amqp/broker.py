"""The Broker: one AMQP connection to the first node of the broker that takes it, consuming the
agent's own queue alone and publishing with confirms (the parts it is made of: synkler.broker.amqp)."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Sequence

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ...errors import AgentActive, BrokerError, NoQueueYet
from ...messages import OFFERS
from ...tls import TlsFileError, explain, peer_certificate, tls_context
from ..connect import Address, BrokerParams, address_text, connection_order
from ..names import dead_name, exchange_name, queue_for
from .base import ACCESS_REFUSED, PIKA_ERRORS, Delivery
from .holder import Holding
from .legacy import Legacy
from .offers import Offering
from .presence import Reading
from .words import chain_text, describe, ssl_error


class _AddressFailed(Exception):
    """One address of the broker would not do (why, in words): the next is tried."""


class Broker(Legacy, Reading, Holding, Offering):
    """One AMQP connection with a confirming channel, consuming the agent's own queue."""

    def __init__(
        self,
        params: BrokerParams,
        instance: str,
        agent: str,
        *,
        prefetch: int = 64,
        peers: Sequence[str] = (),
        offers: Sequence[str] = (),
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
        # A pool of centrals: the upload agents whose offers queues this agent declares (upload:
        # its own, which its offers go to; central: those it takes offers from, `take_offers`).
        self.offers = tuple(offers)
        self._offers_chan: BlockingChannel | None = None  # central: consumes offers, while it has room
        self._offer_tags: dict[int, int] = {}  # the inbox's tag of an offer -> its tag on that channel
        self._next_offer_tag = -1  # offers get negative tags: never one of the agent's own queue
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
            with self._bounded("the declaration of the instance's queues"):
                self._declare_and_consume(chan, consume=consume, declare=declare)
        except AgentActive:
            raise  # closed already
        except BrokerError as e:
            self.close()
            raise _AddressFailed(str(e)) from None
        except PIKA_ERRORS as e:
            self.close()
            why = self._explain_failure(e, address) or describe(e)
            if isinstance(e, pika.exceptions.ChannelClosedByBroker) and e.reply_code == ACCESS_REFUSED:
                # E.g. users made by an older broker-setup, without the presence exchange.
                why += " (the broker user's permissions: see `synkler broker-setup`, docs/security.md)"
            raise _AddressFailed(why) from None

    def _declare_and_consume(self, chan: BlockingChannel, *, consume: bool, declare: bool) -> None:
        if declare or consume:
            self._declare_topology()
        if consume:
            pub = self._publisher()
            self._lock()
            self._declare_queue(pub, self.agent)
            self._adopt_legacy(pub)  # 0.4 compatibility: removed in 0.7
            if self.agent in self.offers:  # an upload agent of a pool: its own (a central's: take_offers)
                self._declare_offers(pub, self.agent)
            chan.basic_qos(prefetch_count=self.prefetch)
            self._consume(chan)
            self._drain_classic(chan)  # 0.5 compatibility: removed in 0.8

    def _explain_failure(self, e: BaseException, address: Address) -> str | None:
        """A failed TLS handshake or EXTERNAL login in one line (None: another failure). pika wraps
        the ssl error, sometimes only as text: dig it out."""
        p = self.params
        host, port = address
        if p.tls is None:
            return None
        error = ssl_error(e)
        peer = None
        if isinstance(error, ssl.SSLCertVerificationError):
            peer = peer_certificate(host, port, p.tls)  # for dates and names
        why = explain(error if error is not None else chain_text(e), p.tls, host, port, peer)
        if why is not None or not p.external:
            return why
        text = chain_text(e)
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

    # consuming -----------------------------------------------------------------------------------

    def poll(self, timeout: float) -> list[Delivery]:
        """Run the connection (heartbeats included) for up to `timeout` s; return the deliveries."""
        conn = self._conn
        if conn is None:
            raise BrokerError("not connected to the broker")
        try:
            conn.process_data_events(time_limit=timeout)
        except PIKA_ERRORS as e:
            self.close()
            raise BrokerError(f"lost broker connection: {describe(e)}") from None
        batch, self._inbox = self._inbox, []
        return batch

    def ack(self, tag: int) -> None:
        if tag < 0:
            self._settle_offer(tag, lambda ch, real: ch.basic_ack(real))
            return
        self._call(lambda ch: ch.basic_ack(tag), self._chan)

    def reject(self, tag: int, *, requeue: bool = False) -> None:
        """Reject a delivery; without requeue it goes to the dead-letter queue."""
        if tag < 0:
            self._settle_offer(tag, lambda ch, real: ch.basic_nack(real, requeue=requeue))
            return
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
            elif agent.startswith(OFFERS) and agent[len(OFFERS) :] in self.offers:
                self._declare_offers(ch, agent[len(OFFERS) :])
            else:
                self._find_queue(agent)
            ch.basic_publish(
                exchange_name(self.instance), agent, body, properties=self._props, mandatory=True
            )

        try:
            self._publish(do)
        except NoQueueYet:
            self._declared.discard(agent)  # deleted since: declared (or looked for) again next time
            raise

    def queue_to_find(self, agent: str) -> str | None:
        """The queue that must exist before a publish to `agent` goes out; None if this connection
        declares it itself (`peers`, its own offers queues) or has found it already.

        A publish no queue takes comes back unroutable (NoQueueYet), but only if nothing at all is
        bound to its routing key: a queue bound with `#` (an operator's tap, or anyone whose login
        may bind one) takes every message, so the broker confirms one to an agent that has never
        run (with `authenticate` each agent declares only its own queue) and that agent never gets
        it. So the queue of an agent this one does not declare is looked for first."""
        if agent in self.peers or agent in self._declared:
            return None
        if agent.startswith(OFFERS) and agent[len(OFFERS) :] in self.offers:
            return None
        return queue_for(self.instance, agent)

    def _find_queue(self, agent: str) -> None:
        """NoQueueYet unless the queue `queue_to_find` names exists (a passive declare, on a channel
        of its own: it needs no permission and creates nothing); once per connection and queue."""
        queue = self.queue_to_find(agent)
        if queue is None:
            return
        if self._probe(lambda ch: ch.queue_declare(queue, passive=True)) is None:
            raise NoQueueYet(f"queue {queue} does not exist")
        self._declared.add(agent)

    def dead_letter(self, body: bytes) -> None:
        """Put one rejected message (e.g. a bad element of a batch) on the dead-letter queue."""
        self._publish(
            lambda ch: ch.basic_publish(
                dead_name(self.instance), "", body, properties=self._props, mandatory=True
            )
        )
