"""Download's choice of a name: never over anything, and nothing twice.

An entry goes into download's file_dir under its own name if that is free; else under the first
free versioned name (`data (2).csv`, `run42 (2)` ...). A name that already holds the same kind and
md5 means the entry is already there.
"""

from __future__ import annotations

import os

from ..hops.checksum import md5_entry, stat_entry

MAX_VERSIONS = 1000


def versioned_name(name: str, kind: str, n: int) -> str:
    """The n-th name tried for `name` (n = 1 is the name itself): 'data (2).csv', 'run42 (2)'."""
    if n == 1:
        return name
    stem, dot, ext = name.rpartition(".")
    if kind == "dir" or not dot or not stem:
        return f"{name} ({n})"
    return f"{stem} ({n}).{ext}"


def choose_name(file_dir: str, name: str, kind: str, md5: str) -> tuple[str, bool]:
    """Where a verified entry goes: (name, already_present). Reads existing same-named entries."""
    for n in range(1, MAX_VERSIONS + 1):
        candidate = versioned_name(name, kind, n)
        path = os.path.join(file_dir, candidate)
        if not os.path.lexists(path):
            return candidate, False
        try:
            # The digest leaves out the top-level kind (an empty dir and an empty file agree): compare it too.
            if stat_entry(path).kind == kind and md5_entry(path) == md5:
                return candidate, True
        except (OSError, ValueError):
            pass  # unreadable or odd: certainly not our content
    raise RuntimeError(f"{MAX_VERSIONS} entries named like {name!r} already exist")
