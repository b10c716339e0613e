"""Download's choice of a name: never over anything, and nothing twice.

An entry goes into download's file_dir under its own name if that is free; else under the first
free versioned name (`data (2).csv`, `run42 (2)` ...). A name that already holds the same kind and
md5 (and the same metadata) means the entry is already there. An entry with metadata takes a name
whose sidecar (`NAME.meta.json`) is free too; with `layout: bagit` the entry goes as a bag, a
directory named like it (synkler.hops.bagit), and a bag already there is compared by its payload.

With `subdir_per_upload`, all of this happens in `<file_dir>/<upload agent>/` instead, and the entry's
`stored_as` is `<upload agent>/<name>`: the same name from two uploads lands in two directories. The
upload agent's name (from central's `fetch`) is used only if it is one safe path component, and the
directory only if it is a real directory (never a symlink, which could lead out of file_dir).
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any, Callable

from ..hops.bagit import METADATA_FILE
from ..hops.checksum import md5_entry, stat_entry
from ..linux.fs import fsync_dir
from ..messages import name_problem
from ..metadata import MetadataError, sidecar_of
from . import sidecars

if TYPE_CHECKING:
    from ..state import Entry

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


def upload_dir_problem(source: str) -> str | None:
    """Why entries from upload agent `source` cannot go into `<file_dir>/<source>/` (None: they can).
    It must be one path component that stays in file_dir: not empty, no '/', NUL or other control
    characters, not '.', '..' or any dot name (an entry name's rules, messages.name_problem). Pure."""
    if not source:
        return "central's fetch does not say which upload agent it came from (is central older?)"
    why = name_problem(source)
    return f"upload agent name {source!r} cannot be a directory of file_dir: {why}" if why else None


def stored_in(source: str, name: str) -> str:
    """An entry's `stored_as`: `name` in file_dir, or `<source>/<name>` with a subdirectory per upload."""
    return f"{source}/{name}" if source else name


def upload_dir(file_dir: str, source: str, *, make: bool = False) -> str | None:
    """Why `<file_dir>/<source>` cannot take entries now (None: it can): something is there that is
    not a directory (a file, a symlink). `make`: create it when it is not there (durably)."""
    why = upload_dir_problem(source)
    if why:
        return why
    path = os.path.join(file_dir, source)
    try:
        if make:
            os.mkdir(path)
            fsync_dir(file_dir)  # the entry renamed into it next must not outlive its directory
            return None
    except FileExistsError:
        pass
    except OSError as e:
        return f"cannot make {path}: {e.strerror}"
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None  # made when its first entry is placed
    except OSError as e:
        return f"cannot look at {path}: {e.strerror}"
    if not stat.S_ISDIR(mode):
        return f"{path} is there and is not a directory (a symlink or a file): rename or remove it"
    return None


def chooser(
    file_dir: str, layout: str, metas: dict[str, dict[str, Any]], sources: dict[str, str]
) -> Callable[[Entry, str], tuple[str, bool]]:
    """choose_name for the entries of one pull, as (entry, md5 verified) -> (stored_as, present):
    `metas` gives entry ids' metadata, `sources` the upload agent of those that go into a
    subdirectory per upload (checked by upload_dir before the pull)."""

    def choose(entry: Entry, md5: str) -> tuple[str, bool]:
        source = sources.get(entry.id, "")
        directory = os.path.join(file_dir, source) if source else file_dir
        name, present = choose_name(directory, entry.name, entry.kind, md5, metas.get(entry.id), layout)
        return stored_in(source, name), present

    return choose
