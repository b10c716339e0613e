"""What a stolen agent login can do to the broker itself (issue 22, items 2 and 7), against a relay
set up with `synkler broker-setup`'s users on a RabbitMQ node of its own (tests/support/authrelay.py),
and the dead-letter queue's bounds on the shared broker.

With an upload or download agent's broker login, an attacker tries what took the relay down before:
delete or re-declare (as another type, or without its limits) the instance's topic exchange, its
presence exchange and its dead-letter queue, purge the dead letters, write a presence report as
another agent, and, on every other agent's queues (its quorum queue, its lock queue, its presence
report queue, 0.5's name of its queue), delete, purge, read, re-declare or take them. The broker
refuses each; the relay delivers while the attacker's connection is open, after the attack and after
a restart of every agent.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

import pika
import pytest
from support.authrelay import UPLOAD, connect, queue_attacks, refused
from support.relay_helpers import deliver, place, started

from synkler.broker.amqp import DEAD_ARGUMENTS, Broker, BrokerParams
from synkler.broker.names import (
    DEAD_MAX_BYTES,
    dead_name,
    exchange_name,
    holder_name,
    presence_exchange,
    queue_name,
)
from synkler.config import load_config
from synkler.devkit.localrelay import LocalRelay
from synkler.hops.checksum import md5_entry

# A RabbitMQ node of its own (private_rabbit): one such module of its group at a time
# (two groups, balanced by their run time: one would hold a worker for most of the run).
pytestmark = pytest.mark.xdist_group("rabbit-nodes-2")

MiB = 1024 * 1024


@pytest.fixture
def relay(authenticated_relay) -> LocalRelay:
    return authenticated_relay


def login(relay: LocalRelay, role: str) -> tuple[str, str]:
    cfg = load_config(relay.configs[role], check_dirs=False)
    return cfg.broker_username, cfg.broker_password


def attacks(instance: str, name: str) -> dict[str, Callable[[Any], object]]:
    """What took the relay down with an agent's login before (`name`: that agent's)."""
    x, p, dead = exchange_name(instance), presence_exchange(instance), dead_name(instance)
    return {
        "delete the topic exchange": lambda ch: ch.exchange_delete(x),
        "re-declare the topic exchange as fanout": lambda ch: ch.exchange_declare(x, "fanout", durable=True),
        "re-declare the topic exchange as it is": lambda ch: ch.exchange_declare(x, "topic", durable=True),
        "delete the presence exchange": lambda ch: ch.exchange_delete(p),
        "re-declare the presence exchange as direct": lambda ch: ch.exchange_declare(p, "direct"),
        "delete the dead-letter exchange": lambda ch: ch.exchange_delete(dead),
        "delete the dead-letter queue": lambda ch: ch.queue_delete(dead),
        "re-declare the dead-letter queue unbounded": lambda ch: ch.queue_declare(dead, durable=True),
        "purge the dead letters": lambda ch: ch.queue_purge(dead),
        "write central's presence report": lambda ch: ch.basic_publish(
            p, "central", b'{"host": "fake"}', pika.BasicProperties(delivery_mode=2), mandatory=True
        ),
        "bind its own report queue under central's name": lambda ch: ch.queue_bind(
            holder_name(instance, name), p, "central"
        ),
        "bind its own queue to the topic exchange under central's name": lambda ch: ch.queue_bind(
            queue_name(instance, name), x, "central"
        ),
    }


def status_relay(relay: LocalRelay, role: str) -> str:
    done = subprocess.run(
        relay.command(role, "status", "--relay", "--json"), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("role", ["upload", "download"])
def test_an_agents_login_can_neither_delete_nor_redeclare_the_shared_objects_and_the_relay_delivers_on(
    relay, private_rabbit, role
):
    relay.start()
    deliver(relay, {"before.dat": place(relay.dirs["upload"], "before.dat", os.urandom(3000))})
    # The agents are down while the attacker acts (so their lock queues are free to be taken), and
    # its connection stays open while they start again and deliver: a lock queue it took, or a queue
    # it deleted or re-declared, would show there.
    relay.stop()
    user, password = login(relay, role)
    name = UPLOAD if role == "upload" else "download"
    everything = attacks(relay.instance, name)
    for other in {"central", "download", UPLOAD} - {name}:
        everything.update(queue_attacks(relay.instance, other))
    conn = connect(private_rabbit, user, password)
    try:
        outcomes = {what: refused(conn, attack) for what, attack in everything.items()}
        assert outcomes == {what: 403 for what in outcomes}  # ACCESS_REFUSED, every one
        relay.start()
        deliver(relay, {"during.dat": place(relay.dirs["upload"], "during.dat", os.urandom(3000))})
    finally:
        conn.close()
    # Still a topic exchange, and a dead-letter queue with its limits: declaring them as they are
    # passes (with mallory's broad login), any difference would be PRECONDITION_FAILED.
    x, dead = exchange_name(relay.instance), dead_name(relay.instance)
    admin = connect(private_rabbit, "mallory", "mallory-pw")
    try:
        assert refused(admin, lambda ch: ch.exchange_declare(x, "topic", durable=True)) == 0
        assert refused(admin, lambda ch: ch.queue_declare(dead, durable=True, arguments=DEAD_ARGUMENTS)) == 0
    finally:
        admin.close()
    deliver(relay, {"after.dat": place(relay.dirs["upload"], "after.dat", os.urandom(3000))})
    relay.stop()
    relay.start()
    deliver(relay, {"restarted.dat": place(relay.dirs["upload"], "restarted.dat", os.urandom(3000))})
    for agent in ("upload", "central", "download"):
        assert "does not exist yet" not in relay.log_path(agent).read_text(), agent


def test_a_presence_report_written_by_another_login_is_not_shown_as_the_agents(relay, private_rabbit):
    relay.start()
    deliver(relay, {"seen.dat": place(relay.dirs["upload"], "seen.dat", os.urandom(3000))})
    relay.stop("central")  # an orderly stop writes its last report; no newer one replaces the forgery
    # mallory, whose login the broker did not restrict by topic (not one of broker-setup's users),
    # writes a report claiming to be central with a failed entry: the broker takes it.
    conn = connect(private_rabbit, "mallory", "mallory-pw")
    try:
        forged = {"host": "forged-central", "role": "central", "name": "central", "at": 0, "entries": []}
        assert (
            refused(
                conn,
                lambda ch: ch.basic_publish(
                    presence_exchange(relay.instance), "central", json.dumps(forged).encode(), mandatory=True
                ),
            )
            == 0
        )
    finally:
        conn.close()
    shown = status_relay(relay, "download")
    assert "forged-central" not in shown
    # What download's login reads: the forgery is there, and only the user_id check keeps it out.
    user, password = login(relay, "download")
    reports = {}
    for authenticate in (False, True):
        params = BrokerParams("127.0.0.1", private_rabbit.port, user, password, authenticate=authenticate)
        reader = Broker(params, relay.instance, "download")
        reader.connect(consume=False, declare=False)
        try:
            reports[authenticate] = reader.peek_presence("central")
        finally:
            reader.close()
    assert b"forged-central" in (reports[False] or b"")
    assert reports[True] is None
    relay.start("central")
    relay.wait_for("central's own report again", lambda: '"central"' in status_relay(relay, "download"))


def test_an_agent_whose_shared_objects_do_not_exist_yet_waits_for_central_and_then_delivers(
    private_rabbit, sshd, tmp_path
):
    from support.authrelay import authenticated_relay

    instance = "fresh" + os.urandom(4).hex()
    with authenticated_relay(private_rabbit, sshd, tmp_path, instance, declare=False) as relay:
        relay.start("upload", "download")
        relay.wait_for(
            "upload says what it waits for",
            lambda: "does not exist yet" in relay.log_path("upload").read_text(),
        )
        relay.start("central")
        deliver(relay, {"late.dat": place(relay.dirs["upload"], "late.dat", os.urandom(3000))}, timeout=120)


# the dead-letter queue's bounds (the shared broker, guest) ------------------------------------------


def test_the_dead_letter_queue_keeps_at_most_its_bytes_dropping_the_oldest(broker, instance_id):
    params = BrokerParams(broker.host, broker.port)
    agent = Broker(params, instance_id, "central")
    agent.connect(consume=False)
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        big = 8 * MiB
        for i in range(DEAD_MAX_BYTES // big + 2):
            ch.basic_publish(dead_name(instance_id), "", str(i).encode().ljust(big, b"."))
        count = ch.queue_declare(dead_name(instance_id), passive=True).method.message_count
        assert count * big <= DEAD_MAX_BYTES
        method, _props, body = ch.basic_get(dead_name(instance_id), auto_ack=True)
        assert method is not None and int(body.rstrip(b".")) >= 2  # the oldest went
    finally:
        conn.close()
        agent.delete_instance(["central"])
        agent.close()


def test_a_dead_letter_queue_made_without_the_bound_in_bytes_is_made_again_once_empty(
    broker, instance_id, caplog
):
    dead = dead_name(instance_id)
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    params = BrokerParams(broker.host, broker.port)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        # As the previous version declared it: bounded by count only, and holding a dead letter.
        ch.exchange_declare(dead, "fanout", durable=True)
        ch.queue_declare(dead, durable=True, arguments={"x-max-length": 10_000})
        ch.queue_bind(dead, dead)
        ch.basic_publish(dead, "", b"evidence")
        agent = Broker(params, instance_id, "central")
        agent.connect(consume=False)  # no PRECONDITION_FAILED: the agent carries on with it
        agent.close()
        assert "holds 1 messages" in caplog.text
        assert ch.queue_declare(dead, passive=True).method.message_count == 1  # nothing lost
        ch.queue_purge(dead)  # the operator read and purged it, as the warning says
        agent = Broker(params, instance_id, "central")
        agent.connect(consume=False)
        assert refused(conn, lambda c: c.queue_declare(dead, durable=True, arguments=DEAD_ARGUMENTS)) == 0
        agent.delete_instance(["central"])
        agent.close()
    finally:
        conn.close()


@pytest.mark.parametrize("role", ["upload", "download"])
def test_an_agents_login_that_keeps_taking_centrals_presence_reports_does_not_stall_the_relay(
    relay, private_rabbit, role
):
    """Every agent's user may read the others' presence reports (`status --relay`), and reading
    includes consuming: a standing consumer that never acks holds each of central's reports as it
    comes. Upload and download learn where central's directory is from that report (the `place`
    they compare every path with), so an agent started meanwhile must still deliver."""
    relay.start()
    deliver(relay, {"before.dat": place(relay.dirs["upload"], "before.dat", os.urandom(3000))})
    relay.stop("upload", "download")
    user, password = login(relay, role)
    conn = connect(private_rabbit, user, password)
    taken: list[bytes] = []
    try:
        ch = conn.channel()
        reports = holder_name(relay.instance, "central")
        ch.basic_consume(reports, lambda _c, _m, _p, body: taken.append(body), auto_ack=False)
        conn.process_data_events(1)
        started(relay, "upload", "download")
        md5 = place(relay.dirs["upload"], "during.dat", os.urandom(3000))

        def delivered() -> bool:
            conn.process_data_events(0)  # keeps taking reports (and answers the broker's heartbeats)
            return relay.states("download").get("during.dat") == "done"

        relay.wait_for("delivered while central's reports are taken", delivered, timeout=30)
        assert taken  # the attacker did hold central's reports
    finally:
        conn.close()
    assert md5_entry(relay.dirs["download"] / "during.dat") == md5
