"""SIGKILL the agents at random moments while a mixed workload flows; restart each one at once."""

from __future__ import annotations

import dataclasses

import pytest
from support import faultkit
from support.faultkit import build_workload, common_settings, flow_for, verdict, wait_settled


@pytest.mark.parametrize("profile", faultkit.profiles())
def test_agents_killed_at_random_moments_lose_nothing_and_repeat_nothing(make_relay, sshd, rng, profile):
    profile = dataclasses.replace(profile, bwlimit=20000)  # KiB/s: keep the big file in flight for a while
    workdir = make_relay.next_dir()
    relay = make_relay(common_settings(workdir, profile, sshd.rsync_opts()), verbose=False)
    wl = build_workload(relay.dirs["upload"], rng, profile, scratch=workdir / "scratch")
    relay.start()
    victims = [role for role in ("upload", "central", "download") for _ in range(profile.kills_per_role)]
    rng.shuffle(victims)
    hits: list[str] = []
    for victim in victims:
        pause = rng.uniform(0.3, 3.0)
        if flow_for(relay, wl, pause):
            break  # everything settled before the next kill: further kills would hit nothing
        relay.kill(victim)
        hits.append(victim)
        relay.start(victim)
    print(f"kills during the flow: {hits}")
    wait_settled(relay, wl, profile.deliver_timeout)
    verdict(relay, wl, faults=len(hits))
    assert faultkit.bundled(relay, wl) > 0, "no small files crossed in bundles"
    assert set(hits) == {"upload", "central", "download"}, f"not every role was killed mid-flow: {hits}"
