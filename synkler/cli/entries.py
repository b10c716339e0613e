"""Entries as the commands show and name them (status, retry, forget, resend): short ids, the newest
version of a name, times."""

from __future__ import annotations

import datetime
import os
import sys

from .. import bundles
from ..config import Config
from ..config.places import find_state
from ..errors import NoState
from ..state import Entry
from ..text import shown


def agent_state(cfg: Config) -> Config:
    """`cfg` with the state database (and pidfile) of its agent, wherever the agent was run from (by
    the unit, by hand); refused, saying where it was looked for, when the agent has none."""
    place = find_state(cfg)
    for other in place.others:
        print(
            f"synkler: note: {shown(str(other))} also holds a state database of this agent (one run "
            f"from another environment); using {shown(str(place.cfg.state_db))}",
            file=sys.stderr,
        )
    if not place.found:
        raise NoState(place.missing())
    return place.cfg


def newest(entries: list[Entry]) -> dict[str, str]:
    """Name -> the id of its newest version (entries come oldest first)."""
    return {e.name: e.id for e in entries}


def present(cfg: Config, entry: Entry) -> bool:
    """Upload: is the entry's name in file_dir (what `retry` and `resend` would send)? A bundle's
    files are looked at by the agent when asked."""
    if cfg.mode != "upload" or entry.kind == bundles.KIND:
        return True
    return os.path.lexists(os.path.join(cfg.file_dir, entry.name))


def short_ids(ids: list[str]) -> dict[str, str]:
    """The shortest start of every id, at least 8 digits, that tells it from every other."""
    ordered = sorted(ids)
    length = 8
    for a, b in zip(ordered, ordered[1:]):
        length = max(length, len(os.path.commonprefix([a, b])) + 1)
    return {i: i[:length] for i in ids}


def iso(ts: float, sep: str = "T") -> str:
    """A time stamp in local time, to the second, with its UTC offset."""
    return datetime.datetime.fromtimestamp(ts).astimezone().isoformat(sep=sep, timespec="seconds")
