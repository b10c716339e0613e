"""The fault suite's verdict per destination (issue 26): where an entry routed to several downloads
stands at each, tallied in `TALLY_DEST` (conftest.py prints one summary line per destination)."""

from __future__ import annotations

import collections
import os

from support.faultkit import TALLY, script_runs, wait_until
from synkler.hops.checksum import md5_entry

# destination -> what the fault cases found there: entries routed there, delivered, lost, corrupt,
# duplicated, and its cleanup script's runs
TALLY_DEST: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
COUNTED = ("entries", "delivered", "lost", "corrupt", "duplicated", "cleanups")


def summary_lines() -> list[str]:
    """One line per destination, for the end of the run."""
    return [
        f"fault suite, to {dest}: " + " ".join(f"{k}={TALLY_DEST[dest][k]}" for k in COUNTED)
        for dest in sorted(TALLY_DEST)
    ]


def at_destination(relay, dest: str, expected: dict[str, str]) -> tuple[collections.Counter[str], list[str]]:
    """Tally one download (`expected`: name -> md5 of every entry routed there) and say what is wrong:
    each entry exactly once with its md5, nothing else in file_dir, its cleanup script once per entry
    on the delivered content, nothing left in its staging place. (What it counted, the problems.)"""
    top = relay.dirs[dest]
    staging = f".synkler-{relay.instance}"
    present = {n for n in os.listdir(top) if n != staging}
    delivered = sorted(n for n in expected if n in present and md5_entry(top / n) == expected[n])
    corrupt = sorted(n for n in expected if n in present and n not in delivered)
    lost = sorted(n for n in expected if n not in present)
    duplicated = sorted(present - set(expected))
    runs = script_runs(relay.workdir / f"cleanup-{dest}.log")
    counts = collections.Counter(
        entries=len(expected),
        delivered=len(delivered),
        lost=len(lost),
        corrupt=len(corrupt),
        duplicated=len(duplicated),
        cleanups=len(runs),
    )
    TALLY_DEST[dest].update(counts)
    problems = [f"{dest}: {what} {names}" for what, names in (("lost", lost), ("corrupt", corrupt)) if names]
    if duplicated:
        problems.append(f"{dest}: unexpected entries (duplicates?) {duplicated}")
    if sorted(runs) != sorted(expected.items()):
        problems.append(f"{dest}: cleanup script runs {sorted(runs)} are not once per entry on its content")
    if any((top / staging).iterdir()):
        problems.append(f"{dest}: its staging place is not empty: {sorted(os.listdir(top / staging))}")
    return counts, problems


def verdict(relay, to: dict[str, list[str]], md5s: dict[str, str], *, faults: int) -> None:
    """Every entry at exactly its destinations (tallied per destination), upload's cleanup script once
    per entry on its content, every agent alive, central's copies gone after the last fetch."""
    dests = sorted({d for ds in to.values() for d in ds})
    # Download removes the emptied per-entry directories by a job after the commit: soon, not at once.
    for dest in dests:
        staging = relay.dirs[dest] / f".synkler-{relay.instance}"
        wait_until(f"{dest}'s staging empty", lambda s=staging: not any(s.iterdir()), 20)
    problems: list[str] = []
    found: collections.Counter[str] = collections.Counter()
    for dest in dests:
        counts, wrong = at_destination(relay, dest, {n: md5s[n] for n, ds in to.items() if dest in ds})
        print(f"\n{relay.instance}: to {dest}: " + " ".join(f"{k}={counts[k]}" for k in COUNTED))
        found.update(counts)
        problems += wrong
    up = script_runs(relay.workdir / "cleanup-upload.log")
    if sorted(up) != sorted(md5s.items()):
        problems.append(f"upload's cleanup script runs {sorted(up)} are not once per entry on its content")
    TALLY["entries"] += len(md5s)
    TALLY["faults"] += faults
    TALLY["delivered"] += sum(1 for e in relay.entries("upload") if e.state == "done")
    for key in ("lost", "corrupt", "duplicated"):  # at any destination (each is in its own line)
        TALLY[key] += found[key]
    assert not problems, "\n".join(problems)
    stored = relay.dirs["central"] / relay.instance / "stored"
    wait_until("central's copies gone", lambda: not stored.exists() or not any(stored.iterdir()), 60)
    dead = [role for role in relay.procs if not relay.alive(role)]
    assert not dead, f"agents that died on their own: {dead}"
