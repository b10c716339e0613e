"""Where and how an agent connects to the broker: pure, no pika (synkler.broker.amqp connects).

A relay on a RabbitMQ cluster lists its nodes (`broker_hosts`); an agent tries them in a random
order at each connection (so the agents spread over the nodes, and one that is down costs one
refused or timed-out try), and the first that takes the connection is used. A lost connection
is followed by another try over all of them, with the agent's backoff between rounds
(synkler.runtime.consumer): the pattern of pika's documentation, "connection attempts" over a list
of endpoints. TLS and login settings apply to every address.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Config
from ..tls import TlsSettings

Address = tuple[str, int]


@dataclass(frozen=True)
class BrokerParams:
    host: str
    port: int = 5672
    username: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    heartbeat: int = 30
    tls: TlsSettings | None = None  # None: plain AMQP
    external: bool = False  # log in with the client certificate (EXTERNAL), not a password
    # Believe a presence report only if its agent's broker user published it (`authenticate`).
    authenticate: bool = False
    # The nodes of a cluster, (host, port) each; empty: host:port alone.
    cluster: tuple[Address, ...] = ()

    @property
    def addresses(self) -> tuple[Address, ...]:
        return self.cluster or ((self.host, self.port),)

    @property
    def where(self) -> str:
        """The addresses as a person reads them: `host:port`, or `host:port, host2:port2, …`."""
        return ", ".join(address_text(a) for a in self.addresses)

    @classmethod
    def from_config(cls, cfg: Config) -> BrokerParams:
        cluster = tuple((host, port or cfg.broker_port) for host, port in cfg.broker_hosts)
        host, port = cluster[0] if cluster else (cfg.synkler_server, cfg.broker_port)
        return cls(
            host,
            port,
            cfg.broker_username,
            cfg.broker_password,
            cfg.broker_vhost,
            cfg.broker_heartbeat,
            tls_settings(cfg),
            cfg.broker_login == "external",
            cfg.authenticate,
            cluster if len(cluster) > 1 else (),
        )


def address_text(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connection_order(addresses: Sequence[Address], rng: random.Random | None = None) -> list[Address]:
    """The order in which to try the addresses this time: shuffled (pika's documentation does the
    same), so that the agents of a relay spread over a cluster's nodes."""
    order = list(addresses)
    (rng or random).shuffle(order)
    return order


def tls_settings(cfg: Config) -> TlsSettings | None:
    """The TLS settings of a configuration, None if it does not use TLS."""
    if not cfg.broker_tls:
        return None
    return TlsSettings.of(
        cfg.broker_ca_file, cfg.broker_cert_file, cfg.broker_key_file, cfg.broker_tls_server_name
    )
