"""A pool of two centrals with `authenticate: true`, on a RabbitMQ node of its own with the broker users
`synkler broker-setup` makes from upload's config (tests/support/pool.py, `authenticated_pool`): the
centrals share the offers and every entry is delivered once, each message proven by its sender's own
login; and each login's attempts on the queues of the others (their agent queues, lock and presence
report queues, the upload agent's offers queue) are refused by the broker, while the pool delivers
on (docs/security.md, "The users of a pool").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from support.authrelay import Attacker, connect, queue_attacks, refused
from support.pool import AUTH_UPLOAD, authenticated_pool, cleanups, put, start_centrals, takers
from support.relay_helpers import place

from synkler import messages
from synkler.broker.names import exchange_name, offers_key, offers_queue, queue_name
from synkler.devkit.localrelay import LocalRelay
from synkler.hops.checksum import md5_entry
from synkler.messages import Admit

# A RabbitMQ node of its own (private_rabbit): one such module of its group at a time.
pytestmark = pytest.mark.xdist_group("rabbit-nodes-1")

AGENTS = ("central-a", "central-b", "download", AUTH_UPLOAD)


@pytest.fixture
def pool(private_rabbit, sshd, tmp_path, instance_id) -> Iterator[LocalRelay]:
    with authenticated_pool(private_rabbit, sshd, tmp_path, instance_id) as relay:
        yield relay


def offers_consumers(node: Any, relay: LocalRelay) -> int:
    conn = connect(node, "guest", "guest")
    try:
        ok = conn.channel().queue_declare(offers_queue(relay.instance, AUTH_UPLOAD), passive=True)
        return int(ok.method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0  # not declared yet
    finally:
        conn.close()


def start_pool(relay: LocalRelay, node: Any) -> None:
    """Both centrals, then upload and download; until both centrals consume the offers queue
    (which only upload's user may declare: they look for it every few seconds)."""
    start_centrals(relay)
    relay.start("upload", "download")
    relay.wait_for(
        "both centrals taking offers", lambda: offers_consumers(node, relay) == 2, 60, interval=0.5
    )


def test_two_authenticated_centrals_share_the_offers_and_deliver_each_entry_once(pool, private_rabbit):
    relay = pool
    start_pool(relay, private_rabbit)
    md5s = put(relay, [f"lot-{i}.dat" for i in range(12)])
    relay.wait_for("every entry delivered", lambda: relay.all_done(set(md5s)), 120)
    held = takers(relay, set(md5s))
    assert held["central"] and held["central-b"], held  # both took offers
    assert held["central"] | held["central-b"] == set(md5s) and not held["central"] & held["central-b"]
    down = relay.dirs["download"]
    for name, md5 in md5s.items():
        assert md5_entry(down / name) == md5, name
    relay.wait_for(
        "every cleanup script run",
        lambda: (
            len(cleanups(relay.records["upload"])) >= 12 and len(cleanups(relay.records["download"])) >= 12
        ),
    )
    assert cleanups(relay.records["upload"]) == sorted(md5s)  # each exactly once
    assert cleanups(relay.records["download"]) == sorted(md5s)

    # Every genuine message was believed (none dead-lettered); one that claims another central's
    # name, published with central-a's login, is not.
    user, password = relay.logins["central-a"]
    with Attacker(private_rabbit, relay, user, password) as a:
        assert a.dead() == 0
        entry = next(e for e in relay.entries("upload") if e.name in held["central-b"])
        forged = Admit(entry.id, "central-b", attempt=9, dest="/tmp/elsewhere", epoch=1)
        props = pika.BasicProperties(delivery_mode=2, user_id=user)
        a.ch.basic_publish(exchange_name(relay.instance), AUTH_UPLOAD, messages.encode(forged), props)
        a.wait_dead(1)
    said = relay.log_path("upload").read_text(errors="replace")
    assert f"claims to come from 'central-b', but broker user '{user}' published it" in said
    for key in ("central", "central-b", "download"):
        assert "claims to come from" not in relay.log_path(key).read_text(errors="replace"), key


def offers_attacks(relay: LocalRelay, name: str) -> dict[str, Callable[[Any], object]]:
    """What a login might try on the upload agent's offers queue, and on the centrals through the
    exchange (`name`: the login's agent)."""
    x, q = exchange_name(relay.instance), offers_queue(relay.instance, AUTH_UPLOAD)
    body = b"{}"
    out: dict[str, Callable[[Any], object]] = {
        "bind the offers queue under central-a's name": lambda ch: ch.queue_bind(q, x, "central-a"),
    }
    if name != AUTH_UPLOAD:
        out |= {
            "delete the offers queue": lambda ch: ch.queue_delete(q),
            "re-declare the offers queue as a classic queue": lambda ch: ch.queue_declare(q, durable=True),
            "publish an offer": lambda ch: ch.basic_publish(x, offers_key(AUTH_UPLOAD), body, mandatory=True),
        }
    if name == "download":
        out["read the offers queue"] = lambda ch: ch.basic_get(q)
        out["purge the offers queue"] = lambda ch: ch.queue_purge(q)
    elif name != AUTH_UPLOAD:
        other = "central-b" if name == "central-a" else "central-a"
        out[f"publish to {other}"] = lambda ch: ch.basic_publish(x, other, body, mandatory=True)
    return out


def test_each_login_of_a_pool_is_refused_the_others_queues_and_the_pool_delivers_on(pool, private_rabbit):
    relay = pool
    start_pool(relay, private_rabbit)
    before = put(relay, [f"before-{i}.dat" for i in range(4)])
    relay.wait_for("the first entries delivered", lambda: relay.all_done(set(before)), 120)
    # Every queue exists now; the agents are down, so that their lock queues are free to be taken.
    relay.stop()
    conns = {name: connect(private_rabbit, *relay.logins[name]) for name in AGENTS}
    try:
        outcomes = {}
        for name, conn in conns.items():
            everything = offers_attacks(relay, name)
            for other in set(AGENTS) - {name}:
                everything |= queue_attacks(relay.instance, other)
            outcomes |= {f"{name}: {what}": refused(conn, attack) for what, attack in everything.items()}
        assert outcomes == {what: 403 for what in outcomes}  # ACCESS_REFUSED, every one
        # What a central needs it keeps: it reads the offers queue (nothing in it now).
        assert (
            refused(
                conns["central-b"],
                lambda ch: ch.queue_declare(offers_queue(relay.instance, AUTH_UPLOAD), passive=True),
            )
            == 0
        )
        # With the attackers' connections open, the pool delivers on.
        start_pool(relay, private_rabbit)
        md5 = place(relay.dirs["upload"], "during.dat", os.urandom(3000))
        relay.wait_for("delivered after the attacks", lambda: relay.all_done({"during.dat"}), 120)
        assert md5_entry(relay.dirs["download"] / "during.dat") == md5
    finally:
        for conn in conns.values():
            conn.close()
    for name in AGENTS:  # every agent's queue survived
        assert offers_consumers(private_rabbit, relay) == 2
        conn = connect(private_rabbit, "guest", "guest")
        try:
            conn.channel().queue_declare(queue_name(relay.instance, name), passive=True)
        finally:
            conn.close()
