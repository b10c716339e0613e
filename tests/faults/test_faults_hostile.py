"""Malformed and hostile messages published straight into each agent's queue while a workload flows:
each must end up in the dead-letter queue, the agents must stay up, nothing may be written outside
their directories, and the relay must deliver everything as usual."""

from __future__ import annotations

import functools
import json
import os
import time

import pika
import pytest
from support import faultkit
from support.faultkit import build_workload, common_settings, verdict, wait_settled
from support.relay_helpers import started

from synkler.broker.names import dead_name, queue_name
from synkler.messages import SCHEMA

MARK = "pwned"  # every hostile name contains it, so anything written anywhere can be found


def envelope(mtype: str, entry: str, sender: str, **body) -> dict:
    return {"v": SCHEMA, "type": mtype, "entry": entry, "from": sender, "at": time.time(), **body}


def offer(name, size=1, entry="1" * 32, **over) -> bytes:
    msg = envelope("offer", entry, "upload", name=name, kind="file", size=size, files=1)
    msg.update(over)
    return json.dumps(msg).encode()


def hostile_messages(real) -> dict[str, tuple[list[bytes], int]]:
    """Per agent: the bodies to publish and how many dead letters they must produce."""
    unknown = "f" * 32
    fetch = dict(kind="file", size=1, files=1, md5="b" * 32, attempt=1)
    duplicate_offer = envelope(
        "offer",
        real.id,
        "upload",
        name=real.name,
        kind=real.kind,
        size=real.size,
        files=real.files,
    )
    batch = [
        duplicate_offer,  # good: a duplicate of a recorded offer is simply ignored, not dead-lettered
        envelope("sent", unknown, "upload", attempt=1, md5="a" * 32),  # well-formed, unknown entry
        json.loads(offer(f"/{MARK}")),
        42,
        "a string",
    ]
    central = [
        b"not json at all",
        b"\xff\xfe\x00 binary garbage",
        b"[" * 100_000,  # nesting too deep
        b"[]",  # an empty batch
        offer(f"v1-{MARK}", v=1),  # the schema of synkler 0.1
        offer(f"v3-{MARK}", v=SCHEMA + 1),
        offer(f"md5-{MARK}", md5="a" * 32),  # 0.1's offer carried the md5: an unknown field now
        offer(f"v-string-{MARK}", v="1"),
        json.dumps(envelope("explode", unknown, "upload")).encode(),
        offer(f"a/{MARK}"),
        offer(f"../{MARK}"),
        offer(".."),
        offer(f"{MARK}\x00nul"),
        offer(f"{MARK}\x1b[31mred"),
        offer(f"{MARK}\u0085nel"),
        offer(f"{MARK}-big", size=2**63),
        offer(f"{MARK}-neg", size=-1),
        offer(f"{MARK}-float", size=1e300),
        offer(f"{MARK}-bool", size=True),
        offer(f"{MARK}-extra", evil="field"),
        json.dumps(envelope("sent", unknown, "upload", attempt=1, md5="a" * 32)).encode(),
        json.dumps(batch).encode(),
        b'{"v":1,"type":"offer","name":"' + b"x" * (3 << 20) + b'"}',  # a huge body
    ]
    upload = [
        b"\x00\x01\x02",
        json.dumps(envelope("admit", unknown, "central", attempt=1, dest=f"/tmp/{MARK}")).encode(),
        json.dumps(envelope("delivered", unknown, "central", stored_as=MARK)).encode(),
        json.dumps(
            envelope("offer", unknown, "upload", name=MARK, kind="file", size=1, files=1)
        ).encode(),  # a type upload does not take
    ]
    download = [
        b"{",
        json.dumps(
            envelope("fetch", unknown, "central", name=f"../../{MARK}", path="/etc", **fetch)
        ).encode(),
        json.dumps(envelope("fetch", unknown, "central", name=MARK, path="/tmp/../etc", **fetch)).encode(),
        json.dumps(
            envelope("fetch", unknown, "central", name=f"{MARK}\nline", path="/tmp", **fetch)
        ).encode(),
        json.dumps(envelope("fetch", unknown, "central", name=MARK, path="relative/dir", **fetch)).encode(),
        json.dumps(
            envelope("fetch", unknown, "central", name=MARK, path="/tmp", **{**fetch, "attempt": 0})
        ).encode(),
    ]
    # Every central message is dead, except that the batch's good element is handled: 4 of its 5 die.
    return {
        "central": (central, len(central) - 1 + 4),
        "upload": (upload, len(upload)),
        "download": (download, len(download)),
    }


def marked_paths(*tops) -> list[str]:
    found = []
    for top in tops:
        for root, dirs, files in os.walk(top):
            found += [os.path.join(root, n) for n in dirs + files if MARK in n]
    return found


@pytest.mark.parametrize("profile", faultkit.profiles())
def test_hostile_messages_are_dead_lettered_and_the_relay_carries_on(
    make_relay, sshd, broker, rng, tmp_path, profile
):
    workdir = make_relay.next_dir()
    relay = make_relay(common_settings(workdir, profile, sshd.rsync_opts()), verbose=False)
    wl = build_workload(relay.dirs["upload"], rng, profile, scratch=workdir / "scratch")
    started(relay)  # all three connected
    relay.wait_for("an offer recorded at central", lambda: bool(relay.entries("central")), 30)
    before_tmp = set(marked_paths("/tmp")) if os.path.isdir("/tmp") else set()
    messages = hostile_messages(relay.entries("central")[0])
    dead_queue = dead_name(relay.instance)
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    try:
        chan = conn.channel()
        chan.confirm_delivery()
        assert chan.queue_declare(dead_queue, passive=True).method.message_count == 0
        sent = 0
        for agent, (bodies, _dead) in messages.items():
            for body in bodies:
                chan.basic_publish(
                    "",
                    queue_name(relay.instance, agent),
                    body,
                    properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"),
                    mandatory=True,
                )
                sent += 1
        expected = sum(dead for _bodies, dead in messages.values())

        def dead_count() -> int:
            return chan.queue_declare(dead_queue, passive=True).method.message_count

        relay.wait_for(f"{expected} dead letters", lambda: dead_count() >= expected, 60)
        wait_settled(relay, wl, profile.deliver_timeout)
        assert dead_count() == expected
        # Each dead letter names the queue it came from, and the bodies are kept: count them per queue.
        per_queue: dict[str, int] = {}
        while True:
            method, props, body = chan.basic_get(dead_queue, auto_ack=True)
            if method is None:
                break
            deaths = (props.headers or {}).get("x-death") or [{"queue": "(published by the agent)"}]
            queue = deaths[0]["queue"]
            per_queue[queue] = per_queue.get(queue, 0) + 1
        print(f"published {sent} hostile messages; dead letters per queue: {per_queue}")
        q = functools.partial(queue_name, relay.instance)
        assert per_queue == {
            q("central"): len(messages["central"][0]) - 1,  # all but the batch are rejected whole
            q("upload"): len(messages["upload"][0]),
            q("download"): len(messages["download"][0]),
            "(published by the agent)": 4,  # the batch's bad elements, one by one
        }
    finally:
        conn.close()
    verdict(relay, wl, faults=sent)
    for role in ("upload", "central", "download"):
        assert "dead-lettering" in relay.log_path(role).read_text(), role
    assert marked_paths(tmp_path) == []
    assert set(marked_paths("/tmp")) == before_tmp
    assert not os.path.exists(f"/{MARK}") and not os.path.exists(f"/etc/{MARK}")
    # Only the workload's files (or bundles of them) were recorded at central: no hostile offer.
    assert relay.entries("central") and all(
        e.name in wl.names or (e.kind == "bundle" and MARK not in e.name) for e in relay.entries("central")
    )
