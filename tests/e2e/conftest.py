"""Fixtures for end-to-end tests: three real agents on the real broker, sshd and rsync."""

from __future__ import annotations

import pytest

from synkler.localrelay import ROLES, LocalRelay


@pytest.fixture
def make_relay(tmp_path, sshd, broker, instance_id):
    """Build a LocalRelay (not started) with per-role settings; everything is torn down afterwards."""
    relays: list[LocalRelay] = []

    def make(**settings) -> LocalRelay:
        relay = LocalRelay(
            tmp_path / f"relay{len(relays)}",
            sshd,
            f"{instance_id}-{len(relays)}",
            broker_host=broker.host,
            broker_port=broker.port,
            settings={role: settings.get(role, {}) for role in ROLES},
        )
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        procs = list(relay.procs.values())
        relay.close()
        assert all(p.poll() is not None for p in procs), "an agent survived the teardown"
