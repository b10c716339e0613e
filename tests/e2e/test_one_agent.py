"""One agent per name, and names that cannot collide: end to end on the real broker, sshd and rsync.

A second agent of the same role and name (another host's config copied, an old cron line beside a
new systemd unit with another pidfile and state_db) waits as a standby and never touches the relay
while the first one lives. No agent name can collide with synkler's own broker objects, and a
destination the broker refuses holds back only its own messages.
"""

from __future__ import annotations

import os

import pika
from support.relay_helpers import START_UP, deliver, place, take_dead_letters
from support.standby import second_agent, second_entries

from synkler import messages
from synkler.broker.amqp import Broker, BrokerParams
from synkler.broker.names import queue_name
from synkler.hops.checksum import md5_entry


def test_a_second_central_agent_waits_as_a_standby_and_every_entry_is_delivered_by_the_first(make_relay):
    relay = make_relay(verbose=False)
    relay.start()
    relay.wait_for(
        "central connected", lambda: "connected to broker" in relay.log_path("central").read_text()
    )
    # The same file_dir: a second central that worked would take the first's files for leftovers.
    with second_agent(relay, "central") as (second, log_path):
        first_pid = relay.procs["central"].pid
        relay.wait_for(
            "the second central to wait as a standby",
            lambda: "waits as a standby" in log_path.read_text(),
            START_UP,  # it starts meanwhile
        )
        told = log_path.read_text()
        assert f"pid {first_pid}" in told and "ERROR" in told, told
        md5s = {
            f"run-{i:02d}.dat": place(relay.dirs["upload"], f"run-{i:02d}.dat", os.urandom(3000 + i))
            for i in range(20)
        }
        deliver(relay, md5s)
        assert second.poll() is None
        assert second_entries(relay, "central") == []
        admin = Broker(relay.broker, relay.instance, "test-admin")
        admin.connect(consume=False)
        try:
            assert take_dead_letters(relay.broker, relay.instance) == []
        finally:
            admin.close()
        # The first one restarts (as `systemctl restart` does): it finds its queue again, the standby
        # never takes it in between.
        relay.stop("central")
        relay.start("central")
        md5 = place(relay.dirs["upload"], "after-restart.dat", b"relayed by the first central again")
        relay.wait_for(
            "after-restart.dat delivered",
            lambda: relay.states("download").get("after-restart.dat") == "done",
            60,
        )
        assert "takes over" not in log_path.read_text()
        assert [e.name for e in relay.entries("central")].count("after-restart.dat") == 1
        # The first one stops: the standby takes over, with its own state, and relays what comes next.
        relay.stop("central")
        relay.wait_for("the standby to take over", lambda: "this one takes over" in log_path.read_text(), 90)
        md5 = place(relay.dirs["upload"], "after-takeover.dat", b"relayed by the second central")
        relay.wait_for(
            "after-takeover.dat delivered",
            lambda: relay.states("download").get("after-takeover.dat") == "done",
            60,
        )
        assert md5_entry(relay.dirs["download"] / "after-takeover.dat") == md5
        assert [e.name for e in second_entries(relay, "central")] == ["after-takeover.dat"]
        for name, md5 in md5s.items():  # the takeover lost nothing that was already delivered
            assert md5_entry(relay.dirs["download"] / name) == md5


def test_a_second_download_agent_waits_as_a_standby_and_takes_over_when_the_first_is_killed(make_relay):
    relay = make_relay(verbose=False)
    relay.start()
    relay.wait_for(
        "download connected", lambda: "connected to broker" in relay.log_path("download").read_text()
    )
    other_dir = relay.workdir / "download-2-files"
    other_dir.mkdir()
    with second_agent(relay, "download", file_dir=str(other_dir)) as (second, log_path):
        relay.wait_for(
            "the second download to wait as a standby",
            lambda: "waits as a standby" in log_path.read_text(),
            START_UP,  # it starts meanwhile
        )
        assert f"pid {relay.procs['download'].pid}" in log_path.read_text()
        md5s = {
            f"scan-{i}.tif": place(relay.dirs["upload"], f"scan-{i}.tif", os.urandom(5000 + i))
            for i in range(10)
        }
        deliver(relay, md5s)
        assert sorted(os.listdir(other_dir)) == []  # nothing split off to the second one
        assert second_entries(relay, "download") == []
        relay.kill("download")  # a crash: the broker drops its connection, the standby takes over
        relay.wait_for("the standby to take over", lambda: "this one takes over" in log_path.read_text(), 90)
        md5 = place(relay.dirs["upload"], "late.tif", b"pulled by the second download")
        relay.wait_for("late.tif at the second download", lambda: (other_dir / "late.tif").exists(), 60)
        assert md5_entry(other_dir / "late.tif") == md5
        assert second.poll() is None


def test_an_upload_agent_named_dead_relays_and_rejected_messages_still_reach_the_dead_letter_queue(
    make_relay,
):
    relay = make_relay(upload={"name": "dead"})
    relay.start()
    md5 = place(relay.dirs["upload"], "named-dead.bin", os.urandom(2000))
    deliver(relay, {"named-dead.bin": md5})
    admin = Broker(relay.broker, relay.instance, "test-admin")
    admin.connect(consume=False)
    try:
        admin.publish("central", b"not json at all")
        dead: list[bytes] = []
        relay.wait_for(
            "the dead letter",
            lambda: dead.extend(take_dead_letters(relay.broker, relay.instance)) or bool(dead),
            30,
        )
        assert dead == [b"not json at all"]
    finally:
        admin.close()
    md5 = place(relay.dirs["upload"], "second.bin", os.urandom(2000))
    deliver(relay, {"second.bin": md5})


def test_a_destination_the_broker_refuses_holds_back_only_its_own_messages(make_relay, broker):
    relay = make_relay(verbose=False)
    # Someone declared the queue of agent 'ghost' with other arguments: every declare of it by
    # synkler is refused (PRECONDITION_FAILED), and so is every message central sends to 'ghost'.
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    try:
        conn.channel().queue_declare(queue_name(relay.instance, "ghost"), durable=False)
        relay.start()
        # Declaring central's queue before the publish (as central's peers do), so that the offer
        # waits there if central has not declared it yet.
        admin = Broker(relay.broker, relay.instance, "test-admin", peers=("central",))
        admin.connect(consume=False)
        try:
            # An offer from 'ghost' first, so that central's reply to it is first in its outbox.
            offer = messages.Offer(
                messages.new_entry_id(), "ghost", name="ghost.dat", kind="file", size=1, files=1
            )
            admin.publish("central", messages.encode(offer))
        finally:
            admin.close()
        log = relay.log_path("central")
        relay.wait_for(
            "central to be refused", lambda: "refuses messages to agent 'ghost'" in log.read_text(), 30
        )
        md5s = {f"real-{i}": place(relay.dirs["upload"], f"real-{i}", os.urandom(1000 + i)) for i in range(5)}
        deliver(relay, md5s)
        assert log.read_text().count("refuses messages to agent 'ghost'") == 1  # told once, not a storm
        assert relay.alive("central")
    finally:
        conn.channel().queue_delete(queue_name(relay.instance, "ghost"))
        conn.close()


def test_messages_left_in_a_synkler_0_4_queue_are_moved_into_the_agents_queue(broker, instance_id):
    params = BrokerParams(broker.host, broker.port)
    old_exchange, old_queue = f"synkler.{instance_id}", f"synkler.{instance_id}.central"
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    ch = conn.channel()
    ch.exchange_declare(old_exchange, exchange_type="topic", durable=True)
    ch.queue_declare(old_queue, durable=True)
    ch.queue_bind(old_queue, old_exchange, routing_key="central")
    bodies = [f"message {i} of synkler 0.4".encode() for i in range(3)]
    for body in bodies:
        ch.basic_publish(old_exchange, "central", body, pika.BasicProperties(delivery_mode=2))
    agent = Broker(params, instance_id, "central")
    try:
        agent.connect()
        got: list[bytes] = []
        for _ in range(50):
            got += [d.body for d in agent.poll(0.1)]
            if len(got) >= 3:
                break
        assert got == bodies
        still = conn.channel()
        try:
            still.queue_declare(old_queue, passive=True)
            raise AssertionError("synkler 0.4's queue was left behind")
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404
    finally:
        agent.close()
        admin = Broker(params, instance_id, "admin")
        admin.connect(consume=False)
        admin.delete_instance(["central"])
        admin.close()
        ch = conn.channel()
        ch.exchange_delete(old_exchange)
        conn.close()
