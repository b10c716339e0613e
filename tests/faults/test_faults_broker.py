"""The broker drops every connection of the relay, then restarts, while a mixed workload flows."""

from __future__ import annotations

import faultkit
import pytest
from faultkit import (
    build_workload,
    common_settings,
    delivered_count,
    flow_for,
    rabbitmqctl_run,
    settled,
    verdict,
    wait_settled,
)


def close_connections_of(rabbitmqctl: str, instance: str) -> int:
    """Close, from the broker side, every connection of this relay (other users of the broker are spared)."""
    closed = 0
    for line in rabbitmqctl_run(rabbitmqctl, "list_connections", "pid", "client_properties").splitlines()[1:]:
        pid, _, props = line.partition("\t")
        if f'{{"connection_name","synkler {instance} ' in props:
            rabbitmqctl_run(rabbitmqctl, "close_connection", pid, "synkler fault suite")
            closed += 1
    return closed


@pytest.mark.parametrize("profile", faultkit.profiles())
def test_broker_closing_connections_and_restarting_mid_run_loses_nothing(
    make_relay, sshd, rabbitmqctl, rng, profile
):
    workdir = make_relay.next_dir()
    relay = make_relay(common_settings(workdir, profile, sshd.rsync_opts()))
    wl = build_workload(relay.dirs["upload"], rng, profile, scratch=workdir / "scratch")
    relay.start()
    relay.wait_for(
        "all three connected",
        lambda: all(
            "connected to broker" in relay.log_path(r).read_text() for r in ("upload", "central", "download")
        ),
        30,
    )
    relay.wait_for("a few entries delivered", lambda: delivered_count(relay) >= 3, 60)
    assert not settled(relay, wl)
    assert close_connections_of(rabbitmqctl, relay.instance) == 3
    faults = 1
    relay.wait_for(
        "everyone reconnecting after the close",
        lambda: all(
            "reconnecting" in relay.log_path(r).read_text() for r in ("upload", "central", "download")
        ),
        30,
    )
    relay.wait_for("more entries delivered", lambda: delivered_count(relay) >= 10, 60)
    before = delivered_count(relay)
    assert not settled(relay, wl), "the relay finished before the broker restart could hit it"
    rabbitmqctl_run(rabbitmqctl, "stop_app")
    try:
        faults += 1
        # Away for a while: the agents keep working locally (no exit), their messages wait in outboxes.
        flow_for(relay, wl, 4.0 if profile is faultkit.DEFAULT else 20.0)
    finally:
        rabbitmqctl_run(rabbitmqctl, "start_app")
    rabbitmqctl_run(rabbitmqctl, "await_startup")
    wait_settled(relay, wl, profile.deliver_timeout)
    print(f"delivered before the broker restart: {before}")
    verdict(relay, wl, faults=faults)
