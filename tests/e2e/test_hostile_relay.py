"""The attacks of issue 15, each published against a running, authenticated relay on a RabbitMQ node of
its own (tests/authrelay.py), with the real sshd and rsync.

The attacker is `mallory`: a login to the broker with broad permissions (configure, write and read on
every object) but no agent's identity. Each test publishes one attack to the instance's exchange, as
anyone with such a login can, and checks what a user would: the message is dead-lettered (counted),
the entry's state is unchanged, no cleanup script ran, nothing was written or read outside the
agents' directories (decoys stay byte-identical, nothing arrives where it should not), the agents are
alive, and a legitimate entry is delivered afterwards, byte-exact.

Out of scope: an attacker holding an agent's own identity (its broker password, or its host). The
broker vouches for the user that publishes; synkler cannot tell a stolen login from its owner.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pika
import pytest
from support.authrelay import UPLOAD, Attacker, connect
from support.relay_helpers import deliver, place

from synkler import messages
from synkler.broker.names import broker_user, exchange_name, queue_name
from synkler.devkit.localrelay import LocalRelay
from synkler.hops.checksum import md5_entry

# A RabbitMQ node of its own (private_rabbit): one such module of its group at a time
# (two groups, balanced by their run time: one would hold a worker for most of the run).
pytestmark = pytest.mark.xdist_group("rabbit-nodes-1")

AUTHORIZED_KEYS = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeepThisExactlyAsItIs owner@host\n"


@pytest.fixture
def relay(authenticated_relay) -> LocalRelay:
    return authenticated_relay


@pytest.fixture
def attacker(relay, private_rabbit):
    with Attacker(private_rabbit, relay) as a:
        yield a


def only_entry(relay: LocalRelay, role: str):
    entries = relay.entries(role)
    assert len(entries) == 1, entries
    return entries[0]


def settle_a_little() -> None:
    """Time for an agent that took a forged message for real to act on it (its loop passes every
    0.5 s): the checks that follow would then see the harm."""
    time.sleep(1.5)


def decoy_tree(top: Path) -> dict[str, bytes]:
    """Every file under `top`, with its bytes."""
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


def start(relay: LocalRelay, *roles: str) -> None:
    """Start agents and wait until each is connected (and has declared the exchange and its queue)."""
    relay.start(*roles)
    for role in roles or ("upload", "central", "download"):
        relay.wait_for(
            f"{role} connected", lambda role=role: "connected to broker" in relay.log_path(role).read_text()
        )


def listen_to_everything(attacker: Attacker, relay: LocalRelay) -> tuple[Any, str]:
    """What anyone whose login may read the exchange can do: bind a queue of its own with `#`."""
    listen = attacker.conn.channel()
    heard = listen.queue_declare("", exclusive=True).method.queue
    listen.queue_bind(heard, exchange_name(relay.instance), "#")
    return listen, heard


def heard_so_far(listen: Any, heard: str) -> list[messages.Message]:
    out: list[messages.Message] = []
    while True:
        method, _props, body = listen.basic_get(heard, auto_ack=True)
        if method is None:
            return out
        out += [m for _, m in messages.decode_many(body) if isinstance(m, messages.Message)]


def assert_alive(relay: LocalRelay, *roles: str) -> None:
    for role in roles:
        assert relay.alive(role), relay.log_tail(role)


def deliver_another(relay: LocalRelay, *also: tuple[str, str]) -> None:
    """Start whatever is not running and deliver a new entry (and `also`'s (name, md5)), byte-exact."""
    relay.start()
    md5 = place(relay.dirs["upload"], "after.dat", os.urandom(4096))
    deliver(relay, {"after.dat": md5, **dict(also)})


def cleanup_runs(log: object) -> list[str]:
    path = Path(str(log))
    return path.read_text().splitlines() if path.exists() else []


def test_a_forged_delivered_to_upload_runs_no_cleanup_script_on_an_undelivered_entry(relay, attacker):
    relay.start("upload")  # central is down: only a forged message could move the entry on
    md5 = place(relay.dirs["upload"], "precious.raw", b"the only copy")
    relay.wait_for("the offer", lambda: relay.states("upload").get("precious.raw") == "offered")
    entry = only_entry(relay, "upload")
    attacker.publish(UPLOAD, messages.Delivered(entry.id, "central", stored_as="precious.raw"))
    attacker.wait_dead(1)
    settle_a_little()
    assert relay.states("upload") == {"precious.raw": "offered"}
    assert cleanup_runs(relay.up_log) == []
    assert (relay.dirs["upload"] / "precious.raw").read_bytes() == b"the only copy"
    assert_alive(relay, "upload")
    deliver_another(relay, ("precious.raw", md5))
    # Its cleanup script ran once, after the real delivery.
    assert sorted(cleanup_runs(relay.up_log)) == ["after.dat", "precious.raw"]


def test_a_forged_fetched_while_download_is_down_does_not_expire_centrals_copy(relay, attacker):
    # keep_minutes 0: were the forged `fetched` believed, central would remove its copy at once.
    relay.write_config("central", {**_settings(relay, "central"), "keep_minutes": 0})
    relay.start("upload", "central")
    md5 = place(relay.dirs["upload"], "only-at-central.raw", os.urandom(8192))
    relay.wait_for(
        "the entry stored at central",
        lambda: relay.states("central").get("only-at-central.raw") == "downloading",
    )
    entry = only_entry(relay, "central")
    stored = relay.dirs["central"] / relay.instance / "stored" / entry.id
    forged = messages.Fetched(entry.id, "download", stored_as="only-at-central.raw", outcome="placed")
    attacker.publish("central", forged)
    attacker.wait_dead(1)
    settle_a_little()
    assert relay.states("central") == {"only-at-central.raw": "downloading"}
    assert md5_entry(stored) == md5
    assert relay.states("upload") == {"only-at-central.raw": "sent"}
    assert cleanup_runs(relay.up_log) == []
    assert_alive(relay, "upload", "central")
    deliver_another(relay, ("only-at-central.raw", md5))


def test_a_forged_admit_into_an_ssh_directory_pushes_nothing_there_and_authorized_keys_stays_intact(
    relay, attacker, tmp_path
):
    victim = tmp_path / "victim"
    (victim / ".ssh").mkdir(parents=True)
    (victim / ".ssh" / "authorized_keys").write_bytes(AUTHORIZED_KEYS)
    # Also a place shaped like central's staging directory, which upload's own check would let pass.
    (victim / relay.instance / "staging" / UPLOAD).mkdir(parents=True)
    before = decoy_tree(victim)
    relay.start("upload")
    md5 = place(relay.dirs["upload"], "authorized_keys", b"ssh-rsa AAAA attacker@evil\n")
    relay.wait_for("the offer", lambda: relay.states("upload").get("authorized_keys") == "offered")
    entry = only_entry(relay, "upload")
    for dest in (victim / ".ssh", victim / relay.instance / "staging" / UPLOAD):
        attacker.publish(UPLOAD, messages.Admit(entry.id, "central", attempt=9, dest=str(dest)))
    attacker.wait_dead(2)
    settle_a_little()
    assert decoy_tree(victim) == before
    assert sorted(os.listdir(victim / relay.instance / "staging" / UPLOAD)) == []
    assert relay.states("upload") == {"authorized_keys": "offered"}
    assert_alive(relay, "upload")
    deliver_another(relay, ("authorized_keys", md5))
    assert decoy_tree(victim) == before


def secret_at_central(relay: LocalRelay, top: Path, kind: str, entry_id: str, data: bytes) -> Path:
    """A file of central's host outside its file_dir, at a path shaped like one of its own
    (`<...>/<id>/stored/<entry id>`), which download's own check would let pass."""
    path = top / relay.instance / kind / entry_id
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def test_a_forged_fetch_makes_download_copy_no_file_of_central_and_run_no_cleanup_script(
    relay, attacker, tmp_path
):
    fake = messages.new_entry_id()
    secret = b"central's private key\n"
    path = secret_at_central(relay, tmp_path / "elsewhere", "stored", fake, secret)
    start(relay, "download")
    forged = messages.Fetch(
        fake,
        "central",
        name="authorized_keys",
        kind="file",
        size=len(secret),
        files=1,
        md5=md5_entry(path),
        attempt=1,
        path=str(path),
    )
    attacker.publish("download", forged)
    attacker.wait_dead(1)
    settle_a_little()
    assert relay.entries("download") == []
    assert os.listdir(relay.dirs["download"]) == [f".synkler-{relay.instance}"]
    assert os.listdir(relay.dirs["download"] / f".synkler-{relay.instance}") == []
    assert cleanup_runs(relay.down_log) == []
    assert path.read_bytes() == secret
    assert_alive(relay, "download")
    deliver_another(relay)
    assert not (relay.dirs["download"] / "authorized_keys").exists()
    assert cleanup_runs(relay.down_log) == ["after.dat"]


def test_a_forged_pushing_makes_download_pull_nothing_early(relay, attacker, tmp_path):
    fake = messages.new_entry_id()
    path = secret_at_central(relay, tmp_path / "elsewhere", "growing", fake, os.urandom(1 << 16))
    start(relay, "download")
    attacker.publish("download", messages.Pushing(fake, "central", size=128 << 20, path=str(path)))
    attacker.wait_dead(1)
    settle_a_little()
    assert os.listdir(relay.dirs["download"] / f".synkler-{relay.instance}") == []
    assert "pulling entry" not in relay.log_path("download").read_text()
    assert_alive(relay, "download")
    deliver_another(relay)


def test_a_forged_fetch_with_a_wrong_md5_draws_no_corrupt_reply_that_would_leak_a_files_md5(
    relay, attacker, tmp_path
):
    fake = messages.new_entry_id()
    path = secret_at_central(relay, tmp_path / "elsewhere", "stored", fake, b"what is my md5?")
    # The attacker listens to everything the exchange carries (its broad permissions allow that):
    # had download pulled the file, its `corrupt` reply would tell the file's md5 here.
    start(relay, "download")
    listen, heard = listen_to_everything(attacker, relay)
    forged = messages.Fetch(
        fake, "central", name="x", kind="file", size=15, files=1, md5="0" * 32, attempt=1, path=str(path)
    )
    attacker.publish("download", forged)
    attacker.wait_dead(1)
    settle_a_little()
    # Only the forgery itself went through the exchange: download answered nothing.
    assert heard_so_far(listen, heard) == [messages.decode(messages.encode(forged))]
    assert relay.entries("download") == []
    assert_alive(relay, "download")
    deliver_another(relay)


def test_a_forged_corrupt_makes_central_neither_recheck_nor_fetch_its_copy_again(relay, attacker):
    relay.start("upload", "central")
    md5 = place(relay.dirs["upload"], "intact.raw", os.urandom(8192))
    relay.wait_for("the entry stored", lambda: relay.states("central").get("intact.raw") == "downloading")
    entry = only_entry(relay, "central")
    attacker.publish("central", messages.Corrupt(entry.id, "download", got="0" * 32))
    attacker.wait_dead(1)
    settle_a_little()
    now = only_entry(relay, "central")
    assert (now.state, now.attempt) == ("downloading", entry.attempt)
    assert "checking central's copy" not in relay.log_path("central").read_text()
    assert_alive(relay, "upload", "central")
    deliver_another(relay, ("intact.raw", md5))


def test_forged_withdraw_and_failed_end_no_entry_at_central_or_upload(relay, attacker):
    # The offer waits in central's queue while central is down; then upload is stopped, so central's
    # admit waits in upload's queue and the entry stays `uploading` at central.
    start(relay, "central")
    relay.stop("central")
    relay.start("upload")
    md5 = place(relay.dirs["upload"], "keep-going.raw", os.urandom(8192))
    central_queue = queue_name(relay.instance, "central")
    relay.wait_for(
        "the offer in central's queue",
        lambda: attacker.ch.queue_declare(central_queue, passive=True).method.message_count == 1,
    )
    relay.stop("upload")
    relay.start("central")
    relay.wait_for("the admission", lambda: relay.states("central").get("keep-going.raw") == "uploading")
    entry = only_entry(relay, "central")
    attacker.publish("central", messages.Withdraw(entry.id, UPLOAD, reason="superseded"))
    attacker.publish("central", messages.Failed(entry.id, UPLOAD, hop="push to central", reason="gave up"))
    attacker.publish("central", messages.Failed(entry.id, "download", hop="pull from central", reason="x"))
    attacker.wait_dead(3)
    # Upload is down: this one waits in its queue, and upload refuses it when it starts.
    attacker.publish(UPLOAD, messages.Failed(entry.id, "central", hop="upload to central", reason="x"))
    settle_a_little()
    assert relay.states("central") == {"keep-going.raw": "uploading"}
    assert_alive(relay, "central")
    deliver_another(relay, ("keep-going.raw", md5))
    attacker.wait_dead(4)
    assert "reports failure" not in relay.log_path("central").read_text()
    assert "reports failure" not in relay.log_path("upload").read_text()


def test_offers_from_invented_senders_are_dead_lettered_and_declare_no_queue(relay, attacker):
    start(relay)
    invented = [f"nobody-{i}" for i in range(50)]
    for sender in invented:
        offer = messages.Offer(
            messages.new_entry_id(), sender, name=f"{sender}.dat", kind="file", size=1, files=1
        )
        attacker.publish("central", offer)
    attacker.wait_dead(len(invented))
    deliver_another(relay)
    assert [e.name for e in relay.entries("central")] == ["after.dat"]
    for sender in invented:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as missing:
            attacker.conn.channel().queue_declare(queue_name(relay.instance, sender), passive=True)
        assert missing.value.reply_code == 404


def test_a_forged_reason_with_newlines_and_terminal_escapes_reaches_no_log_and_no_status_raw(relay, attacker):
    relay.start("upload")
    md5 = place(relay.dirs["upload"], "x.bin", b"x")
    relay.wait_for("the offer", lambda: relay.states("upload").get("x.bin") == "offered")
    entry = only_entry(relay, "upload")
    evil = "fine\n2026-12-02 00:00:00,000 upload[lab-a] ERROR all lost\x1b[2J\x1b[31m"
    attacker.publish(UPLOAD, messages.Wait(entry.id, "central", reason=evil))
    attacker.publish(UPLOAD, messages.Failed(entry.id, "central", hop=evil, reason=evil))
    attacker.wait_dead(2)
    settle_a_little()
    now = only_entry(relay, "upload")
    assert (now.state, now.reason) == ("offered", None)
    status = subprocess.run(relay.command("upload", "status"), capture_output=True, text=True, timeout=60)
    assert "\x1b" not in status.stdout and "all lost" not in status.stdout
    assert len(status.stdout.splitlines()) == 2, status.stdout  # the header and one entry
    log = relay.log_path("upload").read_text()
    assert "\x1b" not in log
    assert not any(line.startswith("2026-12-02 00:00:00,000") for line in log.splitlines())
    assert_alive(relay, "upload")
    deliver_another(relay, ("x.bin", md5))


def test_a_broker_login_without_permissions_can_neither_read_nor_publish_anything_of_the_relay(
    relay, private_rabbit
):
    start(relay)
    node, instance = private_rabbit, relay.instance
    node.ctl("add_user", "eve", "eve-pw")
    try:
        # No permissions on the virtual host at all: not even a connection.
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            connect(node, "eve", "eve-pw")
        # Permissions that match nothing (what a login for some other application has here).
        node.ctl("set_permissions", "-p", "/", "eve", "^$", "^$", "^$")
        conn = connect(node, "eve", "eve-pw")
        try:
            refused = []
            attempts = {
                "publish": lambda ch: ch.basic_publish(
                    exchange_name(instance), "central", messages.encode(_an_offer()), mandatory=True
                ),
                "bind": lambda ch: ch.queue_bind(
                    ch.queue_declare("", exclusive=True).method.queue, exchange_name(instance), "#"
                ),
                "read": lambda ch: ch.basic_get(queue_name(instance, "central")),
                "delete": lambda ch: ch.queue_delete(queue_name(instance, "download")),
            }
            for what, attempt in attempts.items():
                ch = conn.channel()
                ch.confirm_delivery()
                with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                    attempt(ch)
                refused.append((what, e.value.reply_code))
            assert refused == [(what, 403) for what in attempts]
        finally:
            conn.close()
    finally:
        node.ctl("delete_user", "eve")
    deliver_another(relay)
    for role in ("upload", "central", "download"):
        assert "dead-lettering" not in relay.log_path(role).read_text(), role


def test_a_broker_login_with_broad_permissions_reads_every_entry_but_makes_no_agent_act(
    relay, attacker, private_rabbit
):
    start(relay)
    listen, heard = listen_to_everything(attacker, relay)
    md5 = place(relay.dirs["upload"], "seen.dat", os.urandom(3000))
    deliver(relay, {"seen.dat": md5})
    seen = heard_so_far(listen, heard)
    # Can: read every entry's id, name, md5 and path (what broker-setup gives an agent's user, and a
    # login with no permissions, cannot).
    fetch = next(m for m in seen if isinstance(m, messages.Fetch))
    assert (fetch.name, fetch.md5) == ("seen.dat", md5) and fetch.path.endswith(f"/stored/{fetch.entry}")
    # Cannot: claim an agent's user (the broker refuses), or make an agent act (dead-lettered).
    claiming = attacker.conn.channel()
    claiming.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        claiming.basic_publish(
            exchange_name(relay.instance),
            UPLOAD,
            messages.encode(messages.Failed(fetch.entry, "central", hop="h", reason="r")),
            pika.BasicProperties(user_id=broker_user(relay.instance, "central")),
        )
    assert refused.value.reply_code == 406
    # A fetch that download, believing it, would record (and try to pull).
    other = messages.new_entry_id()
    path = fetch.path[: -len(fetch.entry)] + other
    attacker.publish("download", messages.Fetch(**{**_fields(fetch), "entry": other, "path": path}))
    attacker.wait_dead(1)
    settle_a_little()
    assert relay.states("download") == {"seen.dat": "done"}
    assert sorted(os.listdir(relay.dirs["download"])) == [f".synkler-{relay.instance}", "seen.dat"]
    assert cleanup_runs(relay.down_log) == ["seen.dat"]
    deliver_another(relay, ("seen.dat", md5))


def test_a_queue_bound_to_every_message_swallows_no_offer_to_a_central_that_never_ran(relay, attacker):
    # A queue bound with `#` (an operator's tap, or a login with broad permissions) takes every
    # message: a publish to a central that has never run (with `authenticate` each agent declares
    # only its own queue) is then not returned unroutable but confirmed into that queue alone, and
    # central never gets it. Upload and central started at the same moment (systemd) meet this when
    # upload offers first. Upload holds the offer back until central's queue exists.
    listen, heard = listen_to_everything(attacker, relay)
    start(relay, "upload", "download")
    md5 = place(relay.dirs["upload"], "early.dat", os.urandom(4096))
    relay.wait_for(
        "upload to hold the offer back",
        lambda: "no queue for agent 'central' yet" in relay.log_path("upload").read_text(),
    )
    assert heard_so_far(listen, heard) == []
    start(relay, "central")
    deliver(relay, {"early.dat": md5})


# helpers ------------------------------------------------------------------------------------------


def _an_offer() -> messages.Offer:
    return messages.Offer(messages.new_entry_id(), UPLOAD, name="n.dat", kind="file", size=1, files=1)


def _fields(msg: messages.Message) -> dict:
    return {"entry": msg.entry, "sender": msg.sender, **messages.body(msg)}


def _settings(relay: LocalRelay, role: str) -> dict:
    import yaml

    return yaml.safe_load(relay.configs[role].read_text())
