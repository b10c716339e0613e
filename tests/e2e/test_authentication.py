"""An authenticated relay on a RabbitMQ node of its own: one least-privileged broker user per agent,
made with the commands `synkler broker-setup` prints, and `authenticate: true` everywhere. Someone
with a login to the broker (but not an agent's) publishes forged messages: nothing is acted on.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pika
import pytest
from support.authrelay import UPLOAD, connect
from support.relay_helpers import deliver, place

from synkler import messages
from synkler.broker.names import broker_user, dead_name, exchange_name, queue_name
from synkler.devkit.localrelay import LocalRelay
from synkler.hops.checksum import md5_entry

# A RabbitMQ node of its own (private_rabbit): one such module of its group at a time
# (two groups, balanced by their run time: one would hold a worker for most of the run).
pytestmark = pytest.mark.xdist_group("rabbit-nodes-2")


@pytest.fixture
def relay(authenticated_relay) -> LocalRelay:
    return authenticated_relay


def test_an_authenticated_relay_delivers_with_one_least_privileged_broker_user_per_agent(relay):
    relay.start()
    md5s = {
        f"run-{i}.dat": place(relay.dirs["upload"], f"run-{i}.dat", os.urandom(5000 + i)) for i in range(5)
    }
    deliver(relay, md5s)
    for role in ("upload", "central", "download"):
        text = relay.log_path(role).read_text()
        assert "not authenticated" not in text, role
        assert "dead-lettering" not in text, role


def test_a_delivered_forged_by_another_broker_user_is_dead_lettered_and_no_cleanup_runs(
    relay, private_rabbit
):
    relay.start("upload")  # central is down: only a forged message could move the entry on
    place(relay.dirs["upload"], "precious.raw", b"the only copy")
    relay.wait_for("the offer", lambda: relay.states("upload").get("precious.raw") == "offered")
    entry = relay.entries("upload")[0]
    forged = messages.encode(messages.Delivered(entry.id, "central", stored_as="precious.raw"))
    conn = connect(private_rabbit, "mallory", "mallory-pw")
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        # Without a user_id: published, then refused by upload as not from central's user.
        ch.basic_publish(exchange_name(relay.instance), UPLOAD, forged, mandatory=True)
        # Claiming central's user: the broker itself refuses it (user_id must be the login).
        claiming = conn.channel()
        claiming.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            claiming.basic_publish(
                exchange_name(relay.instance),
                UPLOAD,
                forged,
                pika.BasicProperties(user_id=broker_user(relay.instance, "central")),
            )
        assert refused.value.reply_code == 406
        ch = conn.channel()

        def dead() -> int:
            return ch.queue_declare(dead_name(relay.instance), passive=True).method.message_count

        relay.wait_for("the forged message dead-lettered", lambda: dead() == 1, 30)
    finally:
        conn.close()
    assert relay.states("upload")["precious.raw"] == "offered"
    assert not Path(relay.up_log).exists()  # type: ignore[attr-defined]
    assert (relay.dirs["upload"] / "precious.raw").read_bytes() == b"the only copy"
    assert "published it, not 'central@" in relay.log_path("upload").read_text()


def test_an_upload_agents_broker_user_can_neither_reach_download_nor_read_centrals_queue(
    relay, private_rabbit
):
    relay.start("central", "download")
    relay.wait_for(
        "download connected", lambda: "connected to broker" in relay.log_path("download").read_text()
    )
    user = broker_user(relay.instance, UPLOAD)
    password = yaml_password(relay, "upload")
    conn = connect(private_rabbit, user, password)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            ch.basic_publish(exchange_name(relay.instance), "download", b"{}")
        assert refused.value.reply_code == 403  # topic permission: upload sends only to central
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            conn.channel().basic_get(queue_name(relay.instance, "central"))
        assert refused.value.reply_code == 403
    finally:
        conn.close()


def yaml_password(relay, role: str) -> str:
    import yaml

    return yaml.safe_load(relay.configs[role].read_text())["broker_password"]


def test_the_relay_view_works_with_an_agents_own_least_privileged_user(relay):
    import json
    import subprocess

    relay.start()
    md5 = place(relay.dirs["upload"], "seen.dat", os.urandom(3000))
    deliver(relay, {"seen.dat": md5})

    def view(role: str) -> dict:
        out = subprocess.run(
            relay.command(role, "status", "--relay", "--json"), capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        return {a["name"]: a["status"] for a in json.loads(out.stdout)["agents"]}

    everyone = {"central": "running", "download": "running", UPLOAD: "running"}
    for role in ("upload", "download"):
        # Central names its upload agents in its next report (every 5 s).
        relay.wait_for(f"the relay view from {role}", lambda role=role: view(role) == everyone, 30)


def test_a_relay_whose_every_agent_has_a_name_of_its_own_delivers_and_is_seen_by_those_names(
    private_rabbit, sshd, tmp_path, instance_id
):
    # Central "hub-1" and download "archive": messages, broker users, receipts and the relay view
    # all go by those names (the users made as `synkler broker-setup` makes them for these names).
    from support.authrelay import authenticated_relay

    with authenticated_relay(
        private_rabbit, sshd, tmp_path, instance_id, central_name="hub-1", download_name="archive"
    ) as relay:
        relay.start()
        tree = tmp_path / "tree"
        tree.mkdir()
        (tree / "inside.dat").write_bytes(os.urandom(300))
        md5s = {"tree": md5_entry(tree), "one.dat": place(relay.dirs["upload"], "one.dat", os.urandom(7000))}
        os.rename(tree, relay.dirs["upload"] / "tree")
        deliver(relay, md5s)
        assert sorted(relay.up_log.read_text().split()) == ["one.dat", "tree"]  # each cleanup once
        assert sorted(relay.down_log.read_text().split()) == ["one.dat", "tree"]
        for role in ("upload", "central", "download"):
            text = relay.log_path(role).read_text()
            assert "dead-lettering" not in text and "not proven" not in text, role
        # Upload checked download's receipts, which name their destination "archive".
        status = subprocess.run(
            relay.command("upload", "status", "--all", "--json"), capture_output=True, text=True
        )
        assert status.returncode == 0, status.stderr
        listed = json.loads(status.stdout)
        assert sorted(e["name"] for e in listed if set(e.get("receipts", {})) == {"archive"}) == [
            "one.dat",
            "tree",
        ]

        def view() -> dict:
            out = subprocess.run(
                relay.command("download", "status", "--relay", "--json"),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            return {(a["role"], a["name"]): a["status"] for a in json.loads(out.stdout)["agents"]}

        everyone = {
            ("upload", UPLOAD): "running",
            ("central", "hub-1"): "running",
            ("download", "archive"): "running",
        }
        relay.wait_for("the relay view by the agents' names", lambda: view() == everyone, 30)
