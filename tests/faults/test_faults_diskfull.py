"""Central's filesystem is full: entries must wait at central (not fail, not be pushed into a full
disk) and all flow once space is freed. Central's file_dir is a small tmpfs filled with ballast."""

from __future__ import annotations

import os

import pytest
from support import faultkit
from support.faultkit import (
    build_workload,
    common_settings,
    flow_for,
    verdict,
    wait_settled,
)
from support.relay_helpers import write_random


@pytest.mark.parametrize("profile", faultkit.profiles())
def test_entries_wait_while_central_is_full_and_flow_once_space_is_freed(
    tmpfs,
    make_relay,
    sshd,
    rng,
    profile,  # tmpfs first: unmounted after the relay is closed
):
    size_mb = 400 if profile is faultkit.DEFAULT else 700
    workdir = make_relay.next_dir()
    settings = common_settings(workdir, profile, sshd.rsync_opts())
    settings["central"]["free_percent"] = 10
    relay = make_relay(settings, verbose=False)
    central = tmpfs(relay.dirs["central"], size_mb)
    # Ballast: leave only the free_percent reserve plus 4 MiB, so the big file cannot be admitted.
    st = os.statvfs(central)
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    ballast = central / "ballast"
    write_random(ballast, free - total // 10 - (4 << 20))
    wl = build_workload(relay.dirs["upload"], rng, profile, scratch=workdir / "scratch")
    big = next(n for n in wl.names if n.startswith("big-"))
    relay.start()
    relay.wait_for(
        "the big file waiting at central and upload",
        lambda: (
            relay.states("central").get(big) == "waiting" and relay.states("upload").get(big) == "waiting"
        ),
        60,
    )
    assert not flow_for(relay, wl, 3.0)
    waiting = sorted(n for n, s in relay.states("central").items() if s == "waiting")
    assert big in waiting
    assert all(relay.states("upload")[n] == "waiting" for n in waiting)
    assert all(e.tries == 0 and e.state != "failed" for e in relay.entries("upload"))
    print(f"{len(waiting)} entries waiting at central while it is full")
    ballast.unlink()
    wait_settled(relay, wl, profile.deliver_timeout)
    verdict(relay, wl, faults=1)
    assert faultkit.bundled(relay, wl) > 0, "no small files crossed in bundles"
