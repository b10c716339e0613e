"""Where things are on central, decided without I/O.

Central's directory of an instance, `<central's file_dir>/<id>`, is known in advance: central
announces it (the `place` of its presence report, from its own config), and upload and download
believe a path in a message only if it is that directory joined with exactly the components the
message type allows (`staging/<upload agent>`, `stored/<entry id>`, `growing/<entry id>`), compared
in full. A path that merely ends the same way names someone else's directory.

When the agent's ssh key is confined on central by rrsync (`rrsync_root`), rrsync takes paths
relative to its root: `over_ssh` gives the path as sent.
"""

from __future__ import annotations

import json

from .messages import confined


def announced(report: bytes | None, instance: str) -> str | None:
    """The `place` of central's presence report (raw JSON), if it is shaped like central's
    directory of `instance` (absolute, one spelling, ending with /<id>); else None."""
    if report is None:
        return None
    try:
        place = json.loads(report).get("place")
    except (ValueError, AttributeError):
        return None
    if not isinstance(place, str) or not confined(place, instance):
        return None
    return place.rstrip("/")


def vouched(path: str, instance: str, *parts: str) -> str | None:
    """Central's directory as a message central sent names it: `path` without `parts`, if that is
    shaped like central's directory of `instance`; else None. Believed only from a message the
    broker proved central's login published (`authenticate`), while no presence report of central
    is to be had: one that another agent's login holds unacknowledged is kept from every reader."""
    tail = "/" + "/".join(parts)
    base = path.rstrip("/")
    if not base.endswith(tail):
        return None
    base = base[: -len(tail)]
    return base if confined(base, instance) else None


def at(place: str, *parts: str) -> str:
    """The full path of `parts` in central's directory `place`."""
    return "/".join((place.rstrip("/"), *parts))


def is_exactly(path: str, place: str, *parts: str) -> bool:
    """Is `path` (from a message) the place `parts` in `place`, in full (a trailing '/' aside)?"""
    return path.rstrip("/") == at(place, *parts)


def over_ssh(path: str, root: str | None) -> str | None:
    """`path` on central as rsync sends it: as it is without confinement, relative to `root` (the
    directory rrsync confines this agent's key to; "." for the root itself) with it; None when
    `path` is not `root` or below it (rrsync would refuse it)."""
    path = path.rstrip("/") or "/"
    if root is None:
        return path
    root = root.rstrip("/")
    if path == root:
        return "."
    if root and path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return None
