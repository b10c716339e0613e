"""A relay on a three-node RabbitMQ cluster (issue 25): a broker node dies while entries flow.

The cluster runs on this machine (tests/support/rabbitnode.py, RabbitCluster: own node names, ports
and data directories, one Erlang cookie), started once for the module and stopped after it, also
on failure. The agents list the three nodes (`broker_hosts`). The node most agents are connected to
is killed (SIGKILL, as a crash) while entries flow; the agents on it must reconnect to the others
and the relay keep delivering while it is down; it is started again (it rejoins from its data
directory), then the node most agents are on now is killed and restarted the same way. Then the
fault suite's verdict: lost 0, corrupt 0, duplicated 0, every cleanup script exactly once; and
nothing reached the dead-letter queue (no delivery limit dropped a message).

The `chaos` variant (SYNKLER_FAULTS=chaos) kills a node every 20 s, 8 times, each up to 6 s after
the relay was seen delivering without it, over about 300 entries of mixed sizes (a wave of new ones
before each kill).
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from support import faultkit
from support.chaos import connections
from support.faultkit import Profile, build_workload, common_settings, delivered_count, settled, verdict
from support.rabbitnode import RabbitCluster, RabbitNode
from support.relay_helpers import place

from synkler.broker.amqp import Broker, BrokerParams
from synkler.devkit.localrelay import ROLES, LocalRelay

# A cluster of RabbitMQ nodes of its own: one such module of its group at a time
# (two groups, balanced by their run time: one would hold a worker for most of the run).
pytestmark = pytest.mark.xdist_group("rabbit-nodes-2")

DEFAULT = Profile("cluster", small=24, medium=2, big_mb=20, bwlimit=8000, deliver_timeout=240.0)
CHAOS = Profile("chaos", small=120, medium=6, big_mb=100, bwlimit=20000, deliver_timeout=900.0)


def kill_busiest(relay: LocalRelay, cluster: RabbitCluster) -> RabbitNode:
    """Kill the node most agents are connected to; wait until each of them is connected to another."""
    before = connections(relay)
    tally = Counter(p for _count, p in before.values())
    # The node most agents are on; of equals, central's (the one every entry goes through).
    port = max(tally, key=lambda p: (tally[p], p == before["central"][1]))
    node = cluster.node_on(port)
    on_it = sorted(role for role, (_count, p) in before.items() if p == port)
    print(f"killing the node on port {port}, which {', '.join(on_it)} are connected to")
    node.kill()
    try:
        relay.wait_for(
            f"{', '.join(on_it)} connected to another node",
            lambda: all(
                (now := connections(relay).get(role)) is not None
                and now[0] > before[role][0]
                and now[1] != port
                for role in on_it
            ),
            60,
        )
    except BaseException:
        cluster.restart(node)
        raise
    return node


def wave(relay: LocalRelay, wl: faultkit.Workload, number: int, n: int) -> None:
    """`n` more small entries in upload's file_dir."""
    for i in range(n):
        name = f"wave{number}-{i:03d}.dat"
        wl.md5s[name] = place(relay.dirs["upload"], name, os.urandom(1 + (i * 7919) % (200 << 10)))
        wl.kinds[name] = "file"


def profiles():
    return [pytest.param(DEFAULT, id="default"), pytest.param(CHAOS, id="chaos", marks=pytest.mark.chaos)]


@pytest.mark.parametrize("profile", profiles())
def test_a_relay_on_a_cluster_loses_nothing_when_broker_nodes_die(
    cluster, sshd, tmp_path, instance_id, rng, profile
):
    cluster.heal()
    settings = common_settings(tmp_path, profile, sshd.rsync_opts())
    for role in ROLES:
        settings[role]["broker_hosts"] = cluster.addresses
    relay = LocalRelay(
        tmp_path,
        sshd,
        instance_id,
        broker_host="127.0.0.1",
        broker_port=cluster.nodes[0].port,
        settings=settings,
        verbose=False,
    )
    with relay:
        wl = build_workload(relay.dirs["upload"], rng, profile, scratch=tmp_path / "scratch")
        relay.start()
        relay.wait_for("all three connected", lambda: len(connections(relay)) == 3, 60)
        relay.wait_for("a few entries delivered", lambda: delivered_count(relay) >= 3, 120)
        assert not settled(relay, wl), "the relay finished before a node could die under it"
        faults = 0
        rounds = 2 if profile is DEFAULT else 8
        for round_ in range(rounds):
            if round_:  # more entries, so that the relay still has work when the next node dies
                wave(relay, wl, round_, 12 if profile is DEFAULT else 25)
            before = delivered_count(relay)
            killed_at = time.monotonic()
            node = kill_busiest(relay, cluster)
            faults += 1
            try:
                # While the node is down (a minority): the relay goes on delivering.
                relay.wait_for(
                    "entries delivered with a node down",
                    lambda before=before: delivered_count(relay) >= before + 2 or settled(relay, wl),
                    90,
                )
                if profile is CHAOS:
                    faultkit.flow_for(relay, wl, rng.uniform(0, 6))
            finally:
                cluster.restart(node)
            if profile is CHAOS:  # the next node dies 20 s after this one did
                faultkit.flow_for(relay, wl, max(0.0, 20 - (time.monotonic() - killed_at)))
        last_fault = time.monotonic()
        faultkit.wait_settled(relay, wl, profile.deliver_timeout)
        print(f"settled {time.monotonic() - last_fault:.0f} s after the last node came back")
        for role in ROLES:  # what a failover cost, as the agents tell it
            for line in relay.log_path(role).read_text(errors="replace").splitlines():
                if "refuses messages" in line or "go out again" in line or "still holds" in line:
                    print(line)
        verdict(relay, wl, faults=faults)
        admin = Broker(BrokerParams("127.0.0.1", cluster.nodes[0].port), relay.instance, "admin")
        admin.connect(consume=False, declare=False)
        try:
            assert admin.dead_count() == 0, "a message was dead-lettered"
        finally:
            admin.close()


def test_without_a_majority_an_agent_waits_a_bounded_time_for_the_broker_and_says_why(cluster, monkeypatch):
    """Two nodes of three down: the last one keeps the connection alive but answers nothing about the
    quorum queues. The declaration is bounded (OPERATION_TIMEOUT, made short here): the connection
    is dropped with an ERROR saying why, so the agent reconnects with its backoff instead of waiting
    for ever. Both nodes come back after (the next test of the module needs the whole cluster)."""
    from synkler.broker.amqp import base
    from synkler.errors import BrokerError

    monkeypatch.setattr(base, "OPERATION_TIMEOUT", 3.0)
    first, *others = cluster.nodes
    instance = f"nomajority-{os.getpid()}"
    setup = Broker(BrokerParams("127.0.0.1", first.port), instance, "central")
    setup.connect()  # the queues exist, as in a relay that ran before the outage
    setup.close()
    for node in others:
        node.kill()
    try:
        started = time.monotonic()
        broker = Broker(BrokerParams("127.0.0.1", first.port), instance, "central")
        with pytest.raises(BrokerError, match="no answer to"):
            broker.connect()
        assert time.monotonic() - started < 30
    finally:
        for node in others:
            cluster.restart(node)
    admin = Broker(BrokerParams("127.0.0.1", first.port), instance, "admin")
    admin.connect(consume=False)
    admin.delete_instance(["central"])
    admin.close()
