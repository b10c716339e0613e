"""Fan-out under fire (issue 26): central's routes send most entries to two downloads (`download` and
`archive`) and some to `download` only; `archive` is killed (SIGKILL) while it pulls and restarted at
once (the long variant, SYNKLER_FAULTS=long: more entries, and `download` and central killed too).

The verdict is per destination (support/fanoutkit.py): every entry exactly at its destinations with
its md5, nothing lost, corrupt or duplicated at either, each download's cleanup script once per entry
it got, upload's once per entry; the summary line of the run has one line per destination.
"""

from __future__ import annotations

import os

import pytest
from support import fanoutkit, faultkit
from support.faultkit import recorder, wait_until
from support.relay_helpers import write_random

from synkler.hops.checksum import md5_entry

DESTS = ("download", "archive")
ROUTES = [{"name": "*.one", "to": ["download"]}, {"to": list(DESTS)}]
BWLIMIT = 3000  # KiB/s per pull: a MiB-sized entry stays in flight long enough to be hit


def _settings(workdir, rsync_opts: list[str]) -> dict[str, dict]:
    fast = {"retry_max_seconds": 2, "max_attempts": 8}
    settings: dict[str, dict] = {
        "upload": {**fast, "settle_seconds": 0.3, "cleanup_script": recorder(workdir / "cleanup-upload.log")},
        "central": {**fast, "routes": ROUTES, "keep_minutes": 0.02},
    }
    for dest in DESTS:
        settings[dest] = {
            **fast,
            "cleanup_script": recorder(workdir / f"cleanup-{dest}.log"),
            "rsync_opts": [*rsync_opts, f"--bwlimit={BWLIMIT}"],
        }
    return settings


def _workload(upload_dir, rng, profile: faultkit.Profile) -> dict[str, str]:
    """Small files (a third of them for `download` only) and a few MiB-sized ones, renamed in."""
    scratch = upload_dir.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    md5s = {}
    sizes = [rng.randint(0, 64 << 10) for _ in range(profile.small // 3)]
    sizes += [rng.randint(1 << 20, 3 << 20) for _ in range(profile.medium)]
    for i, size in enumerate(sizes):
        name = f"entry-{i:03d}.{'one' if i % 3 == 1 else 'both'}"
        write_random(scratch / name, size)
        md5s[name] = md5_entry(scratch / name)
        os.rename(scratch / name, upload_dir / name)
    return md5s


@pytest.mark.parametrize("profile", faultkit.profiles())
def test_a_download_killed_mid_run_loses_and_repeats_nothing_at_either_destination(
    make_relay, sshd, rng, profile
):
    workdir = make_relay.next_dir()
    relay = make_relay(_settings(workdir, sshd.rsync_opts()), extra={"archive": "download"}, verbose=False)
    md5s = _workload(relay.dirs["upload"], rng, profile)
    to = {n: ["download"] if n.endswith(".one") else list(DESTS) for n in md5s}
    relay.start("central", "upload", *DESTS)
    victims = ["archive"] * max(1, profile.kills_per_role // 2)
    if profile.name == "long":
        victims += ["download", "central"] * (profile.kills_per_role // 2)
        rng.shuffle(victims)
    hits = []
    for victim in victims:
        mode = "download" if victim in DESTS else victim
        # Mid-run: the victim has work on its way (a download an entry it is pulling).
        busy = "fetching" if mode == "download" else "downloading"
        try:
            wait_until(f"{victim} busy", lambda v=victim, b=busy: b in relay.states(v).values(), 60, 0.05)
        except AssertionError:
            break  # everything went through before this kill: it would hit nothing
        relay.kill(victim)
        hits.append(victim)
        relay.start(victim)
    print(f"kills during the flow: {hits}")
    assert "archive" in hits, "archive was never hit while it pulled"

    def settled() -> bool:
        up = relay.states("upload")
        return all(up.get(n) == "done" for n in md5s) and all(
            len(relay.entries(d)) == sum(d in ds for ds in to.values())
            and set(relay.states(d).values()) <= {"done"}
            for d in DESTS
        )

    relay.wait_for("every entry done at upload and at its destinations", settled, profile.deliver_timeout)
    fanoutkit.verdict(relay, to, md5s, faults=len(hits))
