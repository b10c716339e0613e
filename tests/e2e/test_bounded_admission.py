"""Central bounded by design (issue 22, items 4 and 5), against real agents, RabbitMQ, sshd and rsync.

The attacker holds one upload agent's broker login (and, for the oversized push, its ssh key): on a
default relay (no `authenticate`) any login may publish as that agent, which is all these attacks
need. Each test checks what a user would: another upload agent's entries are still delivered, a
slot nothing is pushed for comes back, and bytes beyond what was offered are never stored.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pika
import pytest
from support.relay_helpers import deliver, place, started, tree_listing

from synkler import messages
from synkler.broker.names import exchange_name
from synkler.config import load_config
from synkler.devkit.localrelay import LocalRelay
from synkler.hops import transfer
from synkler.hops.checksum import md5_entry

FLOOD = 4500  # offers of 1 byte from one upload login: more than all 4000 slots of central


class Publisher:
    """A broker login publishing to the instance's exchange as an agent would."""

    def __init__(self, broker, relay: LocalRelay):
        self.relay = relay
        params = pika.ConnectionParameters(broker.host, broker.port)
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def publish(self, to: str, msg: messages.Message) -> None:
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        self.ch.basic_publish(
            exchange_name(self.relay.instance), to, messages.encode(msg), props, mandatory=True
        )

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def publisher(broker):
    made: list[Publisher] = []

    def make(relay: LocalRelay) -> Publisher:
        made.append(Publisher(broker, relay))
        return made[-1]

    yield make
    for p in made:
        p.close()


def central_entry(relay: LocalRelay, entry_id: str):
    return next((e for e in relay.entries("central") if e.id == entry_id), None)


def offer(pub: Publisher, sender: str, name: str, size: int) -> str:
    entry_id = uuid.uuid4().hex
    pub.publish("central", messages.Offer(entry_id, sender, name=name, kind="file", size=size, files=1))
    return entry_id


def test_a_flood_of_offers_from_one_upload_login_does_not_stall_another_upload_agent(make_relay, publisher):
    relay = make_relay(upload={"settle_seconds": 0.2})
    started(relay)
    pub = publisher(relay)
    for i in range(FLOOD):
        offer(pub, "flood", f"f{i}", 1)
    relay.wait_for(
        "the flood recorded", lambda: sum(e.peer == "flood" for e in relay.entries("central")) == FLOOD, 120
    )
    data = os.urandom(100_000)
    md5 = place(relay.dirs["upload"], "measurement.raw", data)
    deliver(relay, {"measurement.raw": md5}, timeout=120)
    assert (relay.dirs["download"] / "measurement.raw").read_bytes() == data
    flood = [e.state for e in relay.entries("central") if e.peer == "flood"]
    assert flood.count("uploading") == 2000 and flood.count("waiting") == FLOOD - 2000
    # After a restart of every agent, with the flood still recorded, the relay still delivers.
    relay.stop()
    relay.start()
    again = place(relay.dirs["upload"], "after-restart.raw", os.urandom(50_000))
    deliver(relay, {"after-restart.raw": again}, timeout=120)


def test_an_admitted_entry_never_pushed_goes_back_after_its_lease_and_is_admitted_again(
    make_relay, publisher
):
    relay = make_relay(central={"admission_lease_minutes": 0.1})  # 6 s
    started(relay, "central")
    pub = publisher(relay)
    entry_id = offer(pub, "ghost", "never-pushed", 1)

    def state_is(state: str, attempt: int) -> bool:
        e = central_entry(relay, entry_id)
        return e is not None and (e.state, e.attempt) == (state, attempt)

    relay.wait_for("admitted", lambda: state_is("uploading", 1), 30)
    relay.wait_for("its lease lapsed", lambda: state_is("waiting", 1), 40)
    lapsed = central_entry(relay, entry_id)
    assert lapsed is not None and "nothing arrived in 0.1 min" in (lapsed.reason or "")
    assert "never-pushed: admitted, but nothing arrived" in relay.log_path("central").read_text()
    relay.wait_for("admitted again, a lease later", lambda: state_is("uploading", 2), 30)


def push(relay: LocalRelay, name: str, size: int, dest: str) -> str:
    """Push `size` bytes under `name` into `dest` on central, with rsync over ssh as upload would."""
    source = relay.workdir / "attacker"
    source.mkdir(exist_ok=True)
    (source / name).write_bytes(os.urandom(size))
    result = transfer.push(load_config(relay.configs["upload"]), str(source), [name], dest)
    assert result.ok, result.summary()
    return md5_entry(source / name)


@pytest.mark.parametrize("sent_at_once", [False, True], ids=["while-arriving", "at-verification"])
def test_a_push_of_more_bytes_than_offered_is_refused_and_nothing_is_stored(
    make_relay, publisher, sent_at_once
):
    relay = make_relay()
    started(relay, "central", "download")
    pub = publisher(relay)
    entry_id = offer(pub, "lab-a", "small.dat", 10)
    relay.wait_for(
        "admitted", lambda: getattr(central_entry(relay, entry_id), "state", "") == "uploading", 30
    )
    staging = relay.dirs["central"] / relay.instance / "staging" / "lab-a"
    md5 = push(relay, "small.dat", 4 << 20, str(staging))
    if sent_at_once:
        pub.publish("central", messages.Sent(entry_id, "lab-a", attempt=1, md5=md5))
    relay.wait_for("refused", lambda: getattr(central_entry(relay, entry_id), "state", "") == "failed", 40)
    if not sent_at_once:
        pub.publish("central", messages.Sent(entry_id, "lab-a", attempt=1, md5=md5))  # too late: ignored
    failed = central_entry(relay, entry_id)
    assert failed is not None
    assert f"{4 << 20} bytes pushed" in (failed.reason or "")
    assert "more than the 10 offered: discarded, never stored" in (failed.reason or "")
    stored = relay.dirs["central"] / relay.instance / "stored"
    assert not (stored / entry_id).exists() and not (staging / "small.dat").exists()
    status = subprocess.run(relay.command("central", "status"), capture_output=True, text=True, timeout=60)
    assert "more than the 10 offered" in status.stdout
    assert "small.dat" in relay.log_path("central").read_text()
    assert relay.entries("download") == []  # nothing was handed on
    assert [p.name for p in relay.dirs["download"].iterdir()] == [f".synkler-{relay.instance}"]
    assert tree_listing(relay.dirs["download"] / f".synkler-{relay.instance}") == []
