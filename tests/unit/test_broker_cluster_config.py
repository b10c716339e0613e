"""A RabbitMQ cluster in the configuration (issue 25): `broker_hosts`, the connection parameters
made of it (synkler.broker.connect), and the queue arguments every declaration uses
(synkler.broker.topology). Pure: the cluster itself is in tests/faults/test_faults_cluster.py."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from synkler.broker.connect import BrokerParams, address_text, connection_order
from synkler.broker.names import dead_name
from synkler.broker.topology import DEAD_ARGUMENTS, DELIVERY_LIMIT, HOLDER_ARGUMENTS, agent_queue_arguments
from synkler.config import parse_config
from synkler.errors import ConfigError


@pytest.fixture
def parse(tmp_path: Path):
    """parse_config on a minimal valid upload configuration updated with the given keys."""
    (tmp_path / "files").mkdir()
    (tmp_path / "home").mkdir()

    def run(**keys: object):
        data = {"mode": "upload", "file_dir": str(tmp_path / "files"), "synkler_server": "broker.example"}
        data.update(keys)
        return parse_config(data, tmp_path / "synkler.conf", environ={}, home=tmp_path / "home")

    return run


def test_without_broker_hosts_the_broker_is_synkler_server_as_before(parse) -> None:
    params = BrokerParams.from_config(parse(broker_port=5999))
    assert params.addresses == (("broker.example", 5999),)
    assert params.where == "broker.example:5999"


def test_broker_hosts_lists_the_nodes_with_broker_port_where_none_is_given(parse) -> None:
    cfg = parse(broker_hosts=["r1", "r2:5673", "[::1]:5674", "fe80::1"], broker_tls=True)
    params = BrokerParams.from_config(cfg)
    assert params.addresses == (("r1", 5671), ("r2", 5673), ("::1", 5674), ("fe80::1", 5671))
    assert params.where == "r1:5671, r2:5673, [::1]:5674, [fe80::1]:5671"
    assert params.tls is not None  # the same TLS settings for every node


def test_broker_hosts_may_be_one_string_and_one_host_is_a_single_broker(parse) -> None:
    assert BrokerParams.from_config(parse(broker_hosts="r1, r2 r3:1")).addresses == (
        ("r1", 5672),
        ("r2", 5672),
        ("r3", 1),
    )
    assert BrokerParams.from_config(parse(broker_hosts=["solo:5673"])).addresses == (("solo", 5673),)


@pytest.mark.parametrize(
    "value,problem",
    [
        ([], "must be a list"),
        (5, "must be a list"),
        (["r1", ""], "item 2"),
        (["r1:0"], "port must be 1 to 65535"),
        (["r1:x"], "port must be 1 to 65535"),
        (["-oProxy"], "item 1 must be host"),
        (["[::1"], "[v6 address]"),
        (["r1", "r1"], "repeats r1"),
    ],
)
def test_a_bad_broker_hosts_is_refused_naming_the_key_and_item(parse, value, problem) -> None:
    with pytest.raises(ConfigError) as err:
        parse(broker_hosts=value)
    assert "broker_hosts" in str(err.value) and problem in str(err.value)


def test_every_node_is_tried_in_a_shuffled_order() -> None:
    nodes = (("a", 1), ("b", 2), ("c", 3))
    orders = {tuple(connection_order(nodes, random.Random(seed))) for seed in range(50)}
    assert all(sorted(o) == sorted(nodes) for o in orders)
    assert len({o[0] for o in orders}) == 3  # each node comes first for some agent
    assert address_text(("::1", 5672)) == "[::1]:5672"


def test_every_queue_that_holds_work_is_a_quorum_queue_with_an_explicit_delivery_limit() -> None:
    agent = agent_queue_arguments("lab")
    assert agent == {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": dead_name("lab"),
    }
    for arguments in (HOLDER_ARGUMENTS, DEAD_ARGUMENTS):
        assert arguments["x-queue-type"] == "quorum"
        assert arguments["x-delivery-limit"] == DELIVERY_LIMIT
        assert arguments["x-overflow"] == "drop-head"  # reject-publish would refuse new dead letters
    # Above RabbitMQ 4.x's default (20): restarts and failovers never reach it.
    assert DELIVERY_LIMIT > 20
