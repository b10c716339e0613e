"""Download's choice of a name: never over anything, and nothing twice.

An entry goes into download's file_dir under its own name if that is free; else under the first
free versioned name (`data (2).csv`, `run42 (2)` ...). A name that already holds the same kind and
md5 (and the same metadata) means the entry is already there. An entry with metadata takes a name
whose sidecar (`NAME.meta.json`) is free too; with `layout: bagit` the entry goes as a bag, a
directory named like it (synkler.hops.bagit), and a bag already there is compared by its payload.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ..hops.bagit import METADATA_FILE
from ..hops.checksum import md5_entry, stat_entry
from ..metadata import MetadataError, sidecar_of
from . import sidecars

MAX_VERSIONS = 1000
SIDECAR, BAGIT = "sidecar", "bagit"  # the layouts (`layout` on download)


def versioned_name(name: str, kind: str, n: int) -> str:
    """The n-th name tried for `name` (n = 1 is the name itself): 'data (2).csv', 'run42 (2)'."""
    if n == 1:
        return name
    stem, dot, ext = name.rpartition(".")
    if kind == "dir" or not dot or not stem:
        return f"{name} ({n})"
    return f"{stem} ({n}).{ext}"


def _same(path: str, kind: str, md5: str) -> bool:
    try:
        # The digest leaves out the top-level kind (an empty dir and an empty file agree): compare it too.
        return stat_entry(path).kind == kind and md5_entry(path) == md5
    except (OSError, ValueError):
        return False  # unreadable or odd: certainly not our content


def choose_name(
    file_dir: str,
    name: str,
    kind: str,
    md5: str,
    meta: dict[str, Any] | None = None,
    layout: str = SIDECAR,
) -> tuple[str, bool]:
    """Where a verified entry goes: (name, already_present). Reads existing same-named entries."""
    for n in range(1, MAX_VERSIONS + 1):
        if layout == BAGIT:
            candidate = versioned_name(name, "dir", n)
            path = os.path.join(file_dir, candidate)
            if not os.path.lexists(path):
                return candidate, False
            if _same(os.path.join(path, "data", name), kind, md5) and _bag_holds(path, meta):
                return candidate, True
            continue
        candidate = versioned_name(name, kind, n)
        path = os.path.join(file_dir, candidate)
        if not os.path.lexists(path):
            if meta is None or not os.path.lexists(os.path.join(file_dir, sidecar_of(candidate))):
                return candidate, False
            continue
        if _same(path, kind, md5) and (meta is None or sidecars.holds(file_dir, candidate, meta)):
            return candidate, True
    raise RuntimeError(f"{MAX_VERSIONS} entries named like {name!r} already exist")


def _bag_holds(bag: str, meta: dict[str, Any] | None) -> bool:
    """Does the bag hold this metadata (none: it has no metadata file)?"""
    path = os.path.join(bag, METADATA_FILE)
    if meta is None:
        return not os.path.lexists(path)
    try:
        return sidecars.read(path) == meta
    except (OSError, MetadataError):
        return False


def chooser(layout: str, metas: dict[tuple[str, str], dict[str, Any]]) -> Callable[..., tuple[str, bool]]:
    """choose_name for the entries of one pull: `metas` gives each (name, md5)'s metadata."""

    def choose(file_dir: str, name: str, kind: str, md5: str) -> tuple[str, bool]:
        return choose_name(file_dir, name, kind, md5, metas.get((name, md5)), layout)

    return choose
