"""Fixtures shared by the whole suite: a private sshd, the RabbitMQ broker, unique ids.

Missing infrastructure skips the tests that need it on a developer's machine, but fails
them under CI (CI=true), where a skip would let a broken setup pass silently.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, settings
from support.workers import SuiteLock, is_alone, xdist_worker

from synkler.devkit.localrelay import ROLES, LocalRelay
from synkler.devkit.sshd import LocalSshd

# Property-based fuzzing (tests/unit/test_fuzz_*.py): few examples by default, so the suite stays
# fast; HYPOTHESIS_PROFILE=long runs many more (and `--hypothesis-seed=N` repeats a run).
settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """On xdist workers (scripts/test.sh), a test marked `alone` waits for the tests running and
    keeps the others waiting until it is done (tests/support/workers.py); around the whole protocol,
    so its fixtures (the relays it starts, a module's own) are inside too."""
    if xdist_worker() is None:
        return (yield)
    global _suite_lock
    if _suite_lock is None:  # the worker's basetemp is <the run's basetemp>/<worker id>
        _suite_lock = SuiteLock(Path(item.config.option.basetemp).parent)
    _suite_lock.take(alone=is_alone(item))
    try:
        return (yield)
    finally:
        if not (is_alone(item) and is_alone(nextitem)):  # the next `alone` test keeps it
            _suite_lock.release()


_suite_lock: SuiteLock | None = None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `scale` (20,000 entries to a million files) run only when asked for: `-m scale`.
    Tests marked `alone` go to one xdist group, to run one after the other on one worker."""
    for item in items:
        if is_alone(item):
            item.add_marker(pytest.mark.xdist_group("alone"))
    if "scale" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="a scale test: select it with -m scale")
    for item in items:
        if "scale" in item.keywords:
            item.add_marker(skip)


# Sent by an AMQP 0-9-1 client first; a broker answers it with Connection.Start (or with
# its own header if it speaks another version), so any reply means "a broker is there".
AMQP_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


def missing_infrastructure(reason: str) -> NoReturn:
    """Skip locally, fail in CI: CI must never go green by skipping everything."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class BrokerInfo:
    """Where the test broker is and how to log in; pika is left to the tests that use it."""

    host: str
    port: int
    username: str = "guest"
    password: str = "guest"
    vhost: str = "/"

    @property
    def url(self) -> str:
        """The amqp:// URL form (vhost percent-encoded, so "/" becomes "%2F")."""
        return (
            f"amqp://{quote(self.username, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(self.vhost, safe='')}"
        )


def amqp_answers(host: str, port: int, timeout: float = 5.0) -> bool:
    """True if something on host:port replies to the AMQP 0-9-1 protocol header.

    A bare TCP connect is not enough: a half-started RabbitMQ (or an unrelated service)
    can accept connections without speaking AMQP.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(AMQP_PROTOCOL_HEADER)
            return bool(sock.recv(8))
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker() -> BrokerInfo:
    """The RabbitMQ broker for integration tests (override with SYNKLER_TEST_BROKER_HOST/_PORT)."""
    host = os.environ.get("SYNKLER_TEST_BROKER_HOST", "127.0.0.1")
    port = int(os.environ.get("SYNKLER_TEST_BROKER_PORT", "5672"))
    if not amqp_answers(host, port):
        missing_infrastructure(
            f"RabbitMQ not reachable on {host}:{port} (no AMQP reply); run scripts/setup.sh to "
            "install and start it, or point SYNKLER_TEST_BROKER_HOST/_PORT at a broker"
        )
    return BrokerInfo(host=host, port=port)


@pytest.fixture(scope="session")
def broker_url(broker: BrokerInfo) -> str:
    """The same broker as an amqp:// URL, for code that takes a URL."""
    return broker.url


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSshd]:
    """One private sshd for the whole session: starting one costs ~0.5 s, not worth per test."""
    for tool, package in (("ssh", "openssh-client"), ("ssh-keygen", "openssh-client"), ("rsync", "rsync")):
        if shutil.which(tool) is None:
            missing_infrastructure(f"{tool} not installed (apt-get install {package}, or scripts/setup.sh)")
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        missing_infrastructure("sshd not installed (apt-get install openssh-server, or scripts/setup.sh)")
    server = LocalSshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def instance_id() -> str:
    """A fresh id per test, so queues/dirs named after it never collide between tests."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def rabbitmqctl(broker) -> str:
    """Path of rabbitmqctl, to act on the broker from its side (close connections)."""
    path = shutil.which("rabbitmqctl")
    if path is None:
        missing_infrastructure("rabbitmqctl not found: cannot act on the broker from its side")
    return path


@pytest.fixture
def tmpfs() -> Iterator:
    """mount(path, size_mb): a small tmpfs on `path` for full-disk tests, unmounted afterwards.

    Needs root (or CAP_SYS_ADMIN): missing that is missing infrastructure.
    """
    mounted: list[Path] = []

    def mount(path: Path, size_mb: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        argv = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)]
        run = subprocess.run(argv, capture_output=True, text=True)
        if run.returncode != 0:
            missing_infrastructure(f"cannot mount a tmpfs on {path}: {run.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True)


@pytest.fixture
def make_relay(tmp_path, sshd, broker, instance_id):
    """make(settings=None, *, verbose=True, upload={...}, central={...}, download={...}): a LocalRelay
    (not started) with per-role settings; every relay is closed (agents stopped, queues deleted)
    afterwards. `make.next_dir()` is the work directory the next relay will get."""
    relays: list[LocalRelay] = []

    def make(
        settings: dict[str, dict] | None = None,
        *,
        verbose: bool = True,
        extra: dict[str, str] | None = None,
        **by_role,
    ) -> LocalRelay:
        settings = {**(settings or {}), **by_role}
        n = len(relays)
        relay = LocalRelay(
            tmp_path / f"relay{n}",
            sshd,
            f"{instance_id}-{n}",
            broker_host=broker.host,
            broker_port=broker.port,
            settings={role: settings.get(role, {}) for role in (*ROLES, *(extra or {}))},
            verbose=verbose,
            extra=extra,
        )
        relays.append(relay)
        return relay

    make.next_dir = lambda: tmp_path / f"relay{len(relays)}"
    yield make
    for relay in relays:
        procs = list(relay.procs.values())
        relay.close()
        assert all(p.poll() is not None for p in procs), "an agent survived the teardown"


@pytest.fixture(scope="module")
def private_rabbit() -> Iterator:
    """A RabbitMQ node of the test module's own (tests/rabbitnode.py), for users and permissions."""
    from support.rabbitnode import RabbitNode

    why = RabbitNode.available()
    if why is not None:
        missing_infrastructure(why)
    node = RabbitNode(["loopback_users = none"])
    try:
        yield node.start()
    finally:
        node.stop()


@pytest.fixture
def authenticated_relay(private_rabbit, sshd, tmp_path, instance_id) -> Iterator[LocalRelay]:
    """A relay (not started) on the private node, authenticated, one least-privileged broker user per
    agent, and the attacker login mallory (tests/authrelay.py)."""
    from support.authrelay import authenticated_relay as make

    with make(private_rabbit, sshd, tmp_path, instance_id) as relay:
        yield relay
