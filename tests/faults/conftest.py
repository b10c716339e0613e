"""Fixtures of the fault suite: relays built on the shared sshd/broker fixtures, the `long` marker,
and the one summary line printed at the end of the run."""

from __future__ import annotations

import os
import random

import faultkit
import pytest

from synkler.localrelay import ROLES, LocalRelay


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "long: the long fault variant (more kills, bigger files, longer stalls); SYNKLER_FAULTS=long",
    )


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SYNKLER_FAULTS") == "long":
        return
    skip = pytest.mark.skip(reason="long fault variant: set SYNKLER_FAULTS=long to run it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    t = faultkit.TALLY
    if not t["entries"]:
        return
    terminalreporter.write_line(
        f"fault suite: entries={t['entries']} faults={t['faults']} delivered={t['delivered']} "
        f"failed={t['failed']} lost={t['lost']} corrupt={t['corrupt']}"
    )


@pytest.fixture
def rng(request) -> random.Random:
    """A seeded RNG per test; the seed is printed (and SYNKLER_FAULTS_SEED replays it)."""
    seed = int(os.environ.get("SYNKLER_FAULTS_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\n{request.node.name}: seed {seed} (SYNKLER_FAULTS_SEED={seed} to replay)")
    return random.Random(seed)


@pytest.fixture
def make_relay(tmp_path, sshd, broker, instance_id):
    """Build a LocalRelay (not started); it is closed (agents stopped, queues deleted) afterwards."""
    relays: list[LocalRelay] = []

    def make(settings: dict[str, dict]) -> LocalRelay:
        n = len(relays)
        relay = LocalRelay(
            tmp_path / f"relay{n}",
            sshd,
            f"{instance_id}-{n}",
            broker_host=broker.host,
            broker_port=broker.port,
            settings={role: settings.get(role, {}) for role in ROLES},
            verbose=False,
        )
        relays.append(relay)
        return relay

    make.next_dir = lambda: tmp_path / f"relay{len(relays)}"
    yield make
    for relay in relays:
        procs = list(relay.procs.values())
        relay.close()
        assert all(p.poll() is not None for p in procs), "an agent survived the teardown"
