"""Fixtures of the fault suite: relays built on the shared sshd/broker fixtures, a three-node RabbitMQ
cluster, the `long` and `chaos` markers, and the summary printed at the end of the run: one line,
one per destination of the fan-out cases, and one per pool scenario."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
from support import fanoutkit, faultkit
from support.rabbitnode import RabbitCluster, RabbitNode


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "long: the long fault variant (more kills, bigger files, longer stalls); SYNKLER_FAULTS=long",
    )
    config.addinivalue_line(
        "markers",
        "chaos: the long runs on a RabbitMQ cluster (broker nodes, centrals and links failing); "
        "SYNKLER_FAULTS=chaos",
    )


def pytest_collection_modifyitems(config, items):
    chosen = os.environ.get("SYNKLER_FAULTS", "")
    for marker in ("long", "chaos"):
        if marker == chosen:
            continue
        skip = pytest.mark.skip(reason=f"{marker} fault variant: set SYNKLER_FAULTS={marker} to run it")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    t = faultkit.TALLY
    if not t["entries"]:
        return
    terminalreporter.write_line(
        f"fault suite: entries={t['entries']} faults={t['faults']} delivered={t['delivered']} "
        f"failed={t['failed']} lost={t['lost']} corrupt={t['corrupt']} duplicated={t['duplicated']} "
        f"stalled={t['stalled']}"
    )
    for line in fanoutkit.summary_lines():  # the fan-out cases: one line per destination
        terminalreporter.write_line(line)
    for line in faultkit.NOTES:  # the pool scenarios
        terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    """A three-node RabbitMQ cluster of the module's own (tests/support/rabbitnode.py), stopped after
    it, also on failure. A module that uses it joins a `rabbit-nodes-N` xdist group."""
    why = RabbitNode.available()
    if why is not None:  # as tests/conftest.py's missing_infrastructure: CI never skips it
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI=true, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(why)
    nodes = RabbitCluster(3)
    try:
        yield nodes.start()
    finally:
        nodes.stop()


@pytest.fixture
def rng(request) -> random.Random:
    """A seeded RNG per test; the seed is printed (and SYNKLER_FAULTS_SEED replays it)."""
    seed = int(os.environ.get("SYNKLER_FAULTS_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\n{request.node.name}: seed {seed} (SYNKLER_FAULTS_SEED={seed} to replay)")
    return random.Random(seed)
