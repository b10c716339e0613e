"""What central checks of what upload pushed, on worker threads: the md5 of staged copies, and the
bytes that have arrived so far (synkler.agents.spool.arrived). Central decides what follows."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..hops.checksum import TooBig, digest_entry
from ..hops.follow import Follower, verified_md5
from .spool import Arrival, arrivals

log = logging.getLogger("synkler")


@dataclass(frozen=True)
class Checked:
    """The md5 of what upload pushed; `in_store`: found already moved to stored/ (a crash between
    that rename and its commit)."""

    md5: str
    in_store: bool
    checksum: str = ""  # the second hash of the copy, when the entry carries one


@dataclass(frozen=True)
class ToCheck:
    """A staged copy to check: where it is (or, after a crash, was moved to) and its expected md5."""

    entry_id: str
    name: str
    staged: str
    stored: str
    expected: str
    size: int  # as offered
    strong: str | None = None  # the second hash to compute beside the md5, in the same read


class Oversize(Exception):
    """More bytes arrived than upload offered."""

    def __init__(self, size: int):
        super().__init__(f"{size} bytes arrived")
        self.size = size


def measure_arrivals(places: dict[str, tuple[str, str]]) -> tuple[dict[str, Arrival], dict[str, float]]:
    """What has arrived of each entry (id -> its staging directory and name); and for each staging
    directory (one per upload agent) the last change seen in it: to it, or to any entry measured.
    Each staging directory is listed once for all its entries."""
    names: dict[str, list[str]] = {}
    for staging, name in places.values():
        names.setdefault(staging, []).append(name)
    seen = {staging: arrivals(staging, these) for staging, these in names.items()}
    found = {entry_id: seen[staging][name] for entry_id, (staging, name) in places.items()}
    latest: dict[str, float] = {}
    for staging, arrived in seen.items():
        try:
            latest[staging] = os.stat(staging).st_ctime
        except OSError:
            latest[staging] = 0.0
        latest[staging] = max([latest[staging], *(a.changed for a in arrived.values())])
    return found, latest


def check_pushed(
    items: list[ToCheck], take_follower: Callable[[str], Follower | None]
) -> list[Checked | Exception]:
    """md5 of staged copies, each on its own (one that cannot be read does not stop the others). A
    big file's follower usually has the md5 already (synkler.hops.follow)."""
    results: list[Checked | Exception] = []
    for item in items:
        follower = take_follower(item.entry_id)
        try:
            followed = follower.finish() if follower else None
            in_store = not os.path.lexists(item.staged) and os.path.lexists(item.stored)
            # More bytes than offered are found before any is read (`limit`), from the listing the
            # md5 walks anyway: a tree of 100,000 files is listed once, not twice.
            if in_store or item.strong:
                # What a follower read has its md5 only: with a second hash, both come from one read.
                digest = digest_entry(item.stored if in_store else item.staged, item.strong, limit=item.size)
                results.append(Checked(digest.md5, in_store, digest.strong or ""))
            else:
                md5, unread = verified_md5(item.staged, item.expected, followed, limit=item.size)
                if unread:
                    log.debug("%s: hashed while it arrived", item.name)
                results.append(Checked(md5, False))
        except TooBig as e:
            results.append(Oversize(e.size))
        except Exception as e:  # this entry only; the others of the group go on
            results.append(e)
    return results
