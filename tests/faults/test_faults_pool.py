"""A pool of two centrals under fire (issue 25; SYNKLER_FAULTS=chaos): three waves of entries of
mixed sizes while the centrals are killed (SIGKILL) in turn: central-a for a moment (back before
upload gives up on it), central-b for longer than `reown_seconds` (its entries re-owned by
central-a, then it comes back to dropped copies), and central-a for good. The verdict: every entry
at download with its md5, nothing else there, each cleanup script run exactly once on each side.
The short, exact proof of the same rules is tests/e2e/test_pool.py.
"""

from __future__ import annotations

import time

import pytest
from support.pool import cleanups, pool_relay, put, start_centrals, takers

from synkler.agents.central import Mid
from synkler.devkit.localrelay import LocalRelay
from synkler.hops.checksum import md5_entry

# Found by this test: a central that comes back after its entries were re-owned may read download's
# `fetched` before upload's re-own `forget` and deliver an entry at the old epoch. Upload believes it
# on download's signed receipt (the relay pins download's key) and the new owner drops its copy; a
# central offered an entry it holds delivered answers with its receipt (docs/architecture.md, "A late
# `delivered`").
pytestmark = pytest.mark.chaos

SIZES = (4096, 300_000, 2_000_000)


def wave(relay: LocalRelay, label: str, n: int) -> dict[str, str]:
    md5s: dict[str, str] = {}
    for i in range(n):
        md5s.update(put(relay, [f"{label}-{i:02d}.dat"], size=SIZES[i % len(SIZES)]))
    return md5s


def holds_some(relay: LocalRelay, key: str, names: set[str]) -> bool:
    """Has this central taken some of these entries and not yet finished them?"""
    busy = (Mid.WAITING, Mid.UPLOADING, Mid.VERIFYING, Mid.DOWNLOADING)
    return any(e.state in busy for e in relay.entries(key) if e.name in names)


def test_a_pool_loses_nothing_while_its_centrals_are_killed_in_turn(make_relay):
    relay, records = pool_relay(make_relay, signed=True)  # a late `delivered` counts on its receipt
    start_centrals(relay)
    relay.start("upload", "download")
    md5s: dict[str, str] = {}

    first = wave(relay, "a", 20)
    md5s.update(first)
    relay.wait_for("central-a busy", lambda: holds_some(relay, "central", set(first)), 60)
    relay.kill("central")  # a moment only: back before upload gives up on it
    time.sleep(1)  # the outage itself (not a wait for a result)
    relay.start("central")

    second = wave(relay, "b", 20)
    md5s.update(second)
    relay.wait_for("central-b busy", lambda: holds_some(relay, "central-b", set(second)), 60)
    relay.kill("central-b")
    relay.wait_for(
        "upload re-owning central-b's entries",
        lambda: "central-b was gone" in relay.log_path("upload").read_text(errors="replace"),
        60,
    )
    relay.start("central-b")

    third = wave(relay, "c", 20)
    md5s.update(third)
    relay.wait_for("central-a busy again", lambda: holds_some(relay, "central", set(third)), 60)
    relay.kill("central")  # for good

    relay.wait_for("every entry delivered", lambda: relay.all_done(set(md5s)), 300)
    relay.wait_for(
        "every cleanup script run",
        lambda: (
            len(cleanups(records["upload"])) >= len(md5s) and len(cleanups(records["download"])) >= len(md5s)
        ),
        60,
    )
    down = relay.dirs["download"]
    assert sorted(p.name for p in down.iterdir() if not p.name.startswith(".")) == sorted(md5s)
    for name, md5 in md5s.items():
        assert md5_entry(down / name) == md5, name
    assert cleanups(records["upload"]) == sorted(md5s)
    assert cleanups(records["download"]) == sorted(md5s)
    assert takers(relay, set(md5s))["central-b"]
