"""An authenticated relay on a private RabbitMQ node (tests/rabbitnode.py): one least-privileged broker
user per agent, made with the commands `synkler broker-setup` prints, the instance's shared objects
declared by central's user, `authenticate: true` everywhere, a cleanup script at upload and at
download that records each run, and delivery receipts: download signs with a key made as `synkler
keygen` makes it, upload and central pin its public key. Beside the agents' users, the node has
`mallory`, a broker login with broad permissions (configure, write and read on everything, no topic
permissions) but no agent's identity: the attacker of tests/e2e/test_authentication.py and
tests/e2e/test_hostile_relay.py. The fixture `authenticated_relay` (tests/conftest.py) builds it."""

from __future__ import annotations

import secrets
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import pika

from synkler import receipts
from synkler.broker.amqp import Broker, BrokerParams
from synkler.broker.names import (
    broker_user,
    classic_queue_name,
    dead_name,
    exchange_name,
    holder_name,
    lock_name,
    queue_name,
)
from synkler.broker.users import commands
from synkler.devkit.localrelay import LocalRelay
from synkler.messages import Message, encode

UPLOAD = "lab-a"  # the upload agent's name (not the role's): its broker user is lab-a@<id>
MALLORY = ("mallory", "mallory-pw")
# A cleanup script that appends its %f to a file: how many times it ran, and for what.
RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


@contextmanager
def authenticated_relay(
    node: Any,
    sshd: Any,
    workdir: Path,
    instance: str,
    *,
    declare: bool = True,
    central_name: str = "central",
    download_name: str = "download",
) -> Iterator[LocalRelay]:
    """The relay (not started), with `up_log` and `down_log`: what each cleanup script recorded.
    `declare` False: the instance's shared objects are not declared (central has never run).
    `central_name`, `download_name`: the names of those agents. Its users, and mallory, are
    deleted afterwards."""
    names = [central_name, download_name, UPLOAD]
    passwords = {broker_user(instance, n): secrets.token_urlsafe(16) for n in names}
    passwords[broker_user(instance, central_name)] = "-" + secrets.token_urlsafe(16)  # as one in 64 starts
    ends = {"central": central_name, "download": download_name}
    for argv in commands(instance, [UPLOAD], passwords=passwords, **ends):
        node.ctl(*argv)
    # Central's user declares the instance's shared objects (as central's first start would): the
    # other agents' users may not, and tests start them before central.
    central = broker_user(instance, central_name)
    if declare:
        params = BrokerParams("127.0.0.1", node.port, central, passwords[central])
        admin = Broker(params, instance, central_name)
        admin.connect(consume=False)
        admin.close()
    node.ctl("add_user", *MALLORY)
    node.ctl("set_permissions", "-p", "/", MALLORY[0], ".*", ".*", ".*")

    def auth(name: str) -> dict[str, Any]:
        user = broker_user(instance, name)
        return {"authenticate": True, "broker_username": user, "broker_password": passwords[user]}

    def recorder(log: Path) -> str:
        return shlex.join([sys.executable, "-c", RECORD, str(log), "%f"])

    up_log, down_log = workdir / "upload-cleanup.log", workdir / "download-cleanup.log"
    key = receipts.new_key()
    key_file = workdir / "receipt.key"
    key_file.write_bytes(receipts.private_bytes(key))
    key_file.chmod(0o600)
    pinned = {"download_public_key": receipts.public_text(key)}
    named = {"central_name": central_name, "download_name": download_name}
    relay = LocalRelay(
        workdir / "relay",
        sshd,
        instance,
        broker_port=node.port,
        settings={
            "upload": {
                **auth(UPLOAD),
                "name": UPLOAD,
                **named,
                "settle_seconds": 0.2,
                "cleanup_script": recorder(up_log),
                **pinned,
            },
            "central": {**auth(central_name), **pinned, "name": central_name, "download_name": download_name},
            "download": {
                **auth(download_name),
                "name": download_name,
                "central_name": central_name,
                "cleanup_script": recorder(down_log),
                "receipt_key": str(key_file),
            },
        },
    )
    relay.up_log = up_log  # type: ignore[attr-defined]
    relay.down_log = down_log  # type: ignore[attr-defined]
    relay.receipt_key = key  # type: ignore[attr-defined]
    try:
        yield relay
    finally:
        relay.close()
        for name in names:
            node.ctl("delete_user", broker_user(instance, name))
        node.ctl("delete_user", MALLORY[0])


def connect(node: Any, user: str, password: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", node.port, credentials=pika.PlainCredentials(user, password))
    )


def refused(conn: Any, attack: Callable[[Any], object]) -> int:
    """Run `attack` on a channel of its own; the reply code the broker closed it with (0: it did not)."""
    ch = conn.channel()
    ch.confirm_delivery()  # a refused publish then raises here, not later
    try:
        attack(ch)
    except pika.exceptions.ChannelClosedByBroker as e:
        return int(e.reply_code)
    ch.close()
    return 0


def queue_attacks(instance: str, other: str) -> dict[str, Callable[[Any], object]]:
    """What an agent's login might try on another agent's queues (synkler 0.6: quorum queues, lock
    queues, presence report queues, and 0.5's name of the agent's queue)."""
    inbox, lock = queue_name(instance, other), lock_name(instance, other)
    report, old = holder_name(instance, other), classic_queue_name(instance, other)
    return {
        f"delete {other}'s queue": lambda ch: ch.queue_delete(inbox),
        f"purge {other}'s queue": lambda ch: ch.queue_purge(inbox),
        f"re-declare {other}'s queue as a classic queue": lambda ch: ch.queue_declare(inbox, durable=True),
        f"read {other}'s queue": lambda ch: ch.basic_get(inbox),
        f"take {other}'s lock queue": lambda ch: ch.queue_declare(lock, exclusive=True),
        f"delete {other}'s presence report queue": lambda ch: ch.queue_delete(report),
        f"re-declare {other}'s report queue unbounded": lambda ch: ch.queue_declare(report, durable=True),
        f"declare {other}'s queue under synkler 0.5's name": lambda ch: ch.queue_declare(old, durable=True),
    }


class Attacker:
    """A broker login that is no agent's (mallory by default): publishes forged messages to the
    instance's exchange, as anyone with that login can, and counts the dead letters."""

    def __init__(self, node: Any, relay: LocalRelay, user: str = MALLORY[0], password: str = MALLORY[1]):
        self.relay = relay
        self.conn = connect(node, user, password)
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()  # each publish returns once the broker has routed it

    def publish(self, to: str, msg: Message | bytes) -> None:
        """Publish to agent `to` through the exchange, as an agent would (persistent, mandatory)."""
        body = encode(msg) if isinstance(msg, Message) else msg
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        self.ch.basic_publish(exchange_name(self.relay.instance), to, body, props, mandatory=True)

    def dead(self) -> int:
        """Messages in the instance's dead-letter queue."""
        return int(self.ch.queue_declare(dead_name(self.relay.instance), passive=True).method.message_count)

    def wait_dead(self, count: int, timeout: float = 30) -> None:
        """Wait until the dead-letter queue holds `count` messages; then it must hold no more."""
        self.relay.wait_for(f"{count} dead letters", lambda: self.dead() >= count, timeout)
        assert self.dead() == count

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()

    def __enter__(self) -> Attacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
