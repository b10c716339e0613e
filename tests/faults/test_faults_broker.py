"""The broker drops every connection of the relay, then restarts, while a mixed workload flows."""

from __future__ import annotations

import pytest
from support import faultkit
from support.faultkit import (
    build_workload,
    common_settings,
    delivered_count,
    flow_for,
    rabbitmqctl_run,
    settled,
    verdict,
    wait_settled,
)
from support.relay_helpers import close_connections_of, every_log_says, started

# It stops the shared broker, which every other relay would see go.
pytestmark = pytest.mark.alone


@pytest.mark.parametrize("profile", faultkit.profiles())
def test_broker_closing_connections_and_restarting_mid_run_loses_nothing(
    make_relay, sshd, rabbitmqctl, rng, profile
):
    workdir = make_relay.next_dir()
    relay = make_relay(common_settings(workdir, profile, sshd.rsync_opts()), verbose=False)
    wl = build_workload(relay.dirs["upload"], rng, profile, scratch=workdir / "scratch")
    started(relay)  # all three connected
    relay.wait_for("a few entries delivered", lambda: delivered_count(relay) >= 3, 60)
    assert not settled(relay, wl)
    assert close_connections_of(rabbitmqctl, relay.instance) == 3
    faults = 1
    relay.wait_for("everyone reconnecting after the close", lambda: every_log_says(relay, "reconnecting"), 30)
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
