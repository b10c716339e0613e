"""A byte flips in central's staged copy and in download's staging copy before they are verified:
the md5 check must catch each one, discard the copy, redo the hop and deliver the right bytes."""

from __future__ import annotations

import shlex
import sys

import pytest
from support import faultkit
from support.faultkit import build_workload, common_settings, verdict, wait_settled
from support.relay_helpers import TOOLS

WRAPPER = TOOLS / "corrupting_rsync.py"


@pytest.mark.parametrize("profile", faultkit.profiles())
def test_bytes_flipped_at_central_and_at_download_are_caught_and_redone(make_relay, sshd, rng, profile):
    workdir = make_relay.next_dir()
    settings = common_settings(workdir, profile, sshd.rsync_opts())
    flips = {side: workdir / f"flips-{side}.log" for side in ("upload", "download")}
    for side, log in flips.items():
        settings[side]["rsync"] = shlex.join(
            [sys.executable, str(WRAPPER), str(log), str(profile.corrupt_times)]
        )
    relay = make_relay(settings, verbose=False)
    wl = build_workload(relay.dirs["upload"], rng, profile, scratch=workdir / "scratch")
    relay.start()
    wait_settled(relay, wl, profile.deliver_timeout)
    flipped = {side: log.read_text().splitlines() if log.exists() else [] for side, log in flips.items()}
    print(f"flipped: {flipped}")
    faults = sum(len(v) for v in flipped.values())
    verdict(relay, wl, faults=faults)
    assert faultkit.bundled(relay, wl) > 0, "no small files crossed in bundles"
    assert {side: len(v) for side, v in flipped.items()} == {
        "upload": profile.corrupt_times,
        "download": profile.corrupt_times,
    }
    # Each flip was caught by the md5 check of the hop it corrupted, for the very entry it hit.
    # The wrapper logs the path it was given: the name for a push, the entry id for a pull.
    # Download's early pulls of the big file (several runs, one check after the fetch) may flip one
    # copy twice before it is checked: one mismatch for both.
    # A flip in a bundle (small files as one entry) is caught by the bundle's md5, over its files.
    name_of = {e.id: e.name for e in relay.entries("download")}
    md5_of = {**{e.name: e.md5 for e in relay.entries("upload") if e.kind == "bundle"}, **wl.md5s}
    for side, checker in (("upload", "central"), ("download", "download")):
        text = relay.log_path(checker).read_text()
        for rel in flipped[side]:
            name = rel if side == "upload" else name_of[rel]
            assert f"md5 mismatch at {checker}: expected {md5_of[name]}" in text, (side, name)
        checks = text.count(f"md5 mismatch at {checker}")
        assert len(set(flipped[side])) <= checks <= len(flipped[side]), (side, checks)
