"""From synkler 0.5's classic queues to quorum queues (issue 25), on the shared broker.

A broker left as 0.5 left it: the agent's classic queue `synkler:<id>:agent:<name>` with messages in
it, a classic holder queue, a classic dead-letter queue. The agent consumes the old queue's messages
as they were published (user_id too), routes nothing new to it, and deletes it once empty; its own
queue, holder queue and the dead-letter queue are quorum queues afterwards. And a second agent of the
same name is refused (the lock), which the broker does not do for a quorum queue's consumer alone.
"""

from __future__ import annotations

import subprocess

import pika
import pytest

from synkler.broker.amqp import Broker, BrokerParams
from synkler.broker.names import (
    classic_queue_name,
    dead_name,
    exchange_name,
    holder_name,
    presence_exchange,
    queue_name,
)
from synkler.errors import AgentActive


def queue_types(rabbitmqctl: str, instance: str) -> dict[str, str]:
    out = subprocess.run(
        [rabbitmqctl, "-q", "list_queues", "name", "type", "--no-table-headers"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    pairs = (line.split("\t") for line in out.splitlines() if line.strip())
    return {name: kind for name, kind in pairs if name.startswith(f"synkler:{instance}:")}


def receive(agent: Broker, n: int) -> list:
    got: list = []
    for _ in range(100):
        got += agent.poll(0.1)
        if len(got) >= n:
            break
    return got


@pytest.fixture
def old_broker(broker, instance_id):
    """The shared broker with instance_id's objects as synkler 0.5 declared them."""
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    ch = conn.channel()
    x, dead = exchange_name(instance_id), dead_name(instance_id)
    ch.exchange_declare(x, exchange_type="topic", durable=True)
    ch.exchange_declare(presence_exchange(instance_id), exchange_type="topic", durable=True)
    ch.exchange_declare(dead, exchange_type="fanout", durable=True)
    ch.queue_declare(dead, durable=True, arguments={"x-max-length": 10_000, "x-max-length-bytes": 64 << 20})
    ch.queue_bind(dead, dead)
    old = classic_queue_name(instance_id, "central")
    ch.queue_declare(old, durable=True, arguments={"x-dead-letter-exchange": dead})
    ch.queue_bind(old, x, routing_key="central")
    ch.queue_declare(
        holder_name(instance_id, "central"),
        durable=True,
        arguments={"x-max-length": 1, "x-overflow": "drop-head"},
    )
    try:
        yield conn
    finally:
        admin = Broker(BrokerParams(broker.host, broker.port), instance_id, "admin")
        admin.connect(consume=False)
        admin.delete_instance(["central"])
        admin.close()
        conn.close()


def test_an_agent_empties_its_0_5_classic_queue_and_declares_quorum_queues(
    old_broker, broker, rabbitmqctl, instance_id
):
    conn = old_broker
    x, old = exchange_name(instance_id), classic_queue_name(instance_id, "central")
    props = pika.BasicProperties(delivery_mode=2, user_id="guest")
    bodies = [f"message {i} of synkler 0.5".encode() for i in range(3)]
    for body in bodies:
        conn.channel().basic_publish(x, "central", body, props)
    assert queue_types(rabbitmqctl, instance_id)[old] == "classic"

    params = BrokerParams(broker.host, broker.port)
    agent = Broker(params, instance_id, "central")
    try:
        agent.connect()
        got = receive(agent, 3)
        assert [d.body for d in got] == bodies
        assert {d.user for d in got} == {"guest"}  # as published: not re-sent by the agent
        for d in got:
            agent.ack(d.tag)
        # Nothing new goes to the old queue: a message sent now is in the quorum queue.
        conn.channel().basic_publish(x, "central", b"after the upgrade", props)
        later = receive(agent, 1)
        assert [d.body for d in later] == [b"after the upgrade"]
        agent.ack(later[0].tag)
        assert conn.channel().queue_declare(old, passive=True).method.message_count == 0

        # A second agent of the same name: refused, though a quorum queue would take its consumer.
        rival = Broker(params, instance_id, "central")
        with pytest.raises(AgentActive):
            rival.connect()
        assert not rival.connected
    finally:
        agent.close()

    again = Broker(params, instance_id, "central")
    try:
        again.connect()  # finds the old queue empty: deletes it
    finally:
        again.close()
    types = queue_types(rabbitmqctl, instance_id)
    assert old not in types, "synkler 0.5's queue was left behind"
    assert types[queue_name(instance_id, "central")] == "quorum"
    assert types[holder_name(instance_id, "central")] == "quorum"
    assert types[dead_name(instance_id)] == "quorum"
