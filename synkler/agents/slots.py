"""Which transfer runs of upload or download start now (pure): entries grouped into rsync runs, and
the free transfer slots shared fairly by the links to the centrals of a pool.

`max_transfers` counts every run of the agent, whichever central it goes to. Handed out oldest entry
first, the slots could all go to the centrals whose entries are oldest while another central's link
sat idle (docs/performance.md, "A pool of centrals"). So each slot goes to the link with the fewest
runs (those running and those chosen in this pass): every central that has work due and no run gets
one before any gets a second, and so on, round-robin; within a link, the oldest entry first. With
one central (one link) this is oldest first, as it always was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..state import Entry

BATCH_ENTRIES = 500  # at most this many entries in one rsync run
BATCH_BYTES = 64 << 20  # ... and about this many bytes; bigger entries get a run of their own


def runs(entries: list[Entry], group: Callable[[Entry], object]) -> list[list[Entry]]:
    """Group `entries` (oldest first) into rsync runs, in the order of their oldest entry: small
    entries of the same `group` share a run (up to BATCH_ENTRIES entries and about BATCH_BYTES), big
    ones go alone, and so does one on a second try, so that a single bad entry cannot hold a whole
    run back."""
    out: list[list[Entry]] = []
    open_runs: dict[object, tuple[list[Entry], int]] = {}
    for entry in entries:
        if entry.tries or entry.size >= BATCH_BYTES:
            out.append([entry])
            continue
        key = group(entry)
        run, size = open_runs.get(key) or ([], 0)
        if not run:
            out.append(run)
        run.append(entry)
        size += entry.size
        if len(run) >= BATCH_ENTRIES or size >= BATCH_BYTES:
            open_runs.pop(key, None)  # full: the next entry of this group starts a new run
        else:
            open_runs[key] = (run, size)
    return out


def share(
    candidates: list[list[Entry]], free: int, link: Callable[[Entry], str], running: Mapping[str, int]
) -> list[list[Entry]]:
    """Up to `free` of `candidates` (runs, oldest first, each over one link: `link` of its first
    entry), in the order they are to start: each goes to the link with the fewest runs `running` and
    chosen so far, the oldest run of that link; between links as busy, the one whose next run is
    oldest."""
    queues: dict[str, list[int]] = {}  # each link's runs, by their place in `candidates`
    for i, run in enumerate(candidates):
        queues.setdefault(link(run[0]), []).append(i)
    load = {name: running.get(name, 0) for name in queues}
    heads = dict.fromkeys(queues, 0)  # the next run of each link
    chosen: list[list[Entry]] = []
    while len(chosen) < free:
        waiting = [name for name in queues if heads[name] < len(queues[name])]
        if not waiting:
            break
        name = min(waiting, key=lambda n: (load[n], queues[n][heads[n]]))
        chosen.append(candidates[queues[name][heads[name]]])
        heads[name] += 1
        load[name] += 1
    return chosen
