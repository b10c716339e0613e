"""What someone who can publish to the instance's exchange can no longer do (issue 15), end to end on
the real broker, sshd and rsync: paths in messages are confined, invented senders create nothing,
reasons reach no terminal raw, and the dead-letter queue is bounded."""

from __future__ import annotations

import os
import subprocess

import pika
from support.relay_helpers import deliver, place, started, take_dead_letters

from synkler import messages
from synkler.broker.amqp import Broker
from synkler.broker.names import DEAD_MAX, dead_name, queue_name


def publisher(relay) -> Broker:
    # Central's and download's queues declared before publishing, as their peers do, so that a
    # message published before central has declared its own waits there.
    admin = Broker(relay.broker, relay.instance, "test-attacker", peers=("central", "download"))
    admin.connect(consume=False)
    return admin


def centrals_report(relay) -> bytes | None:
    peek = Broker(relay.broker, relay.instance, "test-peek")
    peek.connect(consume=False)
    try:
        return peek.peek_presence("central")
    finally:
        peek.close()


def test_an_admit_pointing_outside_centrals_staging_is_dead_lettered_and_nothing_is_pushed_there(
    make_relay, tmp_path
):
    relay = make_relay()
    # Central runs once (its report says where its directory is) and stays down: the entry stays
    # offered at upload, and only the forged admit can move it.
    started(relay, "central")
    relay.wait_for("central's first report", lambda: centrals_report(relay) is not None, 30)
    relay.stop("central")
    relay.start("upload")
    secret_md5 = place(relay.dirs["upload"], "secret.bin", b"never to be pushed anywhere else")
    relay.wait_for("the offer", lambda: relay.states("upload").get("secret.bin") == "offered")
    entry = relay.entries("upload")[0]
    target = tmp_path / "victim"
    target.mkdir()
    admin = publisher(relay)
    try:
        admin.publish(
            "upload", messages.encode(messages.Admit(entry.id, "central", attempt=9, dest=str(target)))
        )
        dead: list[bytes] = []
        relay.wait_for(
            "the dead letter",
            lambda: dead.extend(take_dead_letters(relay.broker, relay.instance)) or bool(dead),
            30,
        )
    finally:
        admin.close()
    assert os.listdir(target) == []
    assert relay.states("upload")["secret.bin"] == "offered"
    assert "is not <central's file_dir>" in relay.log_path("upload").read_text()
    relay.start("central", "download")
    md5 = place(relay.dirs["upload"], "after.bin", b"and the relay carries on")
    deliver(relay, {"after.bin": md5, "secret.bin": secret_md5})


def test_offers_from_invented_senders_create_no_queues_and_the_relay_carries_on(make_relay, broker):
    relay = make_relay(verbose=False)
    relay.start()
    admin = publisher(relay)
    invented = [f"nobody-{i}" for i in range(60)]
    try:
        for sender in invented:
            offer = messages.Offer(
                messages.new_entry_id(), sender, name=f"{sender}.dat", kind="file", size=1, files=1
            )
            admin.publish("central", messages.encode(offer))
    finally:
        admin.close()
    md5 = place(relay.dirs["upload"], "real.dat", os.urandom(2000))
    deliver(relay, {"real.dat": md5})
    relay.wait_for(
        "central to have recorded the invented offers",
        lambda: len(relay.entries("central")) == len(invented) + 1,
        30,
    )
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    try:
        for sender in invented:
            ch = conn.channel()
            try:
                ch.queue_declare(queue_name(relay.instance, sender), passive=True)
                raise AssertionError(f"a queue was declared for the invented sender {sender}")
            except pika.exceptions.ChannelClosedByBroker as e:
                assert e.reply_code == 404
    finally:
        conn.close()
    assert relay.alive("central")


def test_a_reason_with_newlines_and_terminal_escapes_is_shown_escaped_in_status_and_logs(make_relay):
    relay = make_relay()
    relay.start("upload")
    place(relay.dirs["upload"], "x.bin", b"x")
    relay.wait_for("the offer", lambda: relay.states("upload").get("x.bin") == "offered")
    entry = relay.entries("upload")[0]
    evil = "fine\n2026-12-02 00:00:00 upload[upload] ERROR all lost\x1b[2J\x1b[31m"
    admin = publisher(relay)
    try:
        admin.publish("upload", messages.encode(messages.Wait(entry.id, "central", reason=evil)))
    finally:
        admin.close()
    relay.wait_for("the reason recorded", lambda: "fine" in (relay.entries("upload")[0].reason or ""))
    status = subprocess.run(relay.command("upload", "status"), capture_output=True, text=True, timeout=60)
    assert "\x1b" not in status.stdout and "ERROR all lost" in status.stdout
    assert len(status.stdout.splitlines()) == 2, status.stdout  # the header and one entry, no forged line
    assert "\x1b" not in relay.log_path("upload").read_text()


def test_the_dead_letter_queue_keeps_at_most_its_limit_dropping_the_oldest(make_relay, broker):
    relay = make_relay()
    relay.start("central")
    relay.wait_for(
        "central connected", lambda: "connected to broker" in relay.log_path("central").read_text()
    )
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    try:
        ch = conn.channel()
        ch.confirm_delivery()  # each publish returns once the broker has it
        for i in range(DEAD_MAX + 5):
            ch.basic_publish(dead_name(relay.instance), "", str(i).encode())
        count = ch.queue_declare(dead_name(relay.instance), passive=True).method.message_count
        assert count <= DEAD_MAX
        method, _props, body = ch.basic_get(dead_name(relay.instance), auto_ack=False)
        assert method is not None and int(body) >= 5  # the oldest went
    finally:
        conn.close()
