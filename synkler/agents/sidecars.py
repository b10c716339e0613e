"""Metadata sidecars on disk: ``NAME.meta.json`` beside ``NAME`` (synkler.metadata for the rules).

Upload's scan notes each sidecar's fingerprint (its lstat) and reads it only when that changes
(`Sidecars`); `synkler send` and download write them (`write`): a hidden temporary file in the same
directory, flushed, then renamed into place, so a reader never sees half a sidecar.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Union

from ..linux.fs import fsync_dir, rename_noreplace
from ..metadata import MAX_BYTES, Metadata, MetadataError, parse, pretty, sidecar_of

Read = Union[Metadata, Exception]  # a sidecar's metadata, or why it cannot be used


def none_there(e: OSError) -> bool:
    """Does `e` say there is no such sidecar? Also when the entry's name is so long (255 bytes) that
    its sidecar's name could not exist (ENAMETOOLONG): such an entry never has one."""
    return isinstance(e, FileNotFoundError) or e.errno == errno.ENAMETOOLONG


def stamp(st: os.stat_result) -> str:
    """A sidecar's fingerprint: it changes whenever the sidecar is written or replaced."""
    return f"{st.st_ino:x}.{st.st_size:x}.{st.st_mtime_ns:x}.{st.st_ctime_ns:x}"


def read(path: str) -> Metadata:
    """The metadata a sidecar holds; MetadataError if it is not valid, OSError if it cannot be read."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise MetadataError("the sidecar is not a regular file")
    with open(path, "rb") as f:
        raw = f.read(4 * MAX_BYTES + 1)
    return parse(raw)


@dataclass
class _Seen:
    stamp: str
    read: Read


class Sidecars:
    """The sidecars of upload's file_dir as the scan last read them: each is read again only when
    its fingerprint changes. Used by the scan job only (one at a time), never by the main loop."""

    def __init__(self, file_dir: str):
        self.file_dir = file_dir
        self.seen: dict[str, _Seen] = {}  # entry name -> its sidecar
        # The entries whose sidecar may be there: those the last listing of the whole directory
        # found one for, and those events told of since (None: any entry; nothing is known).
        self.maybe: set[str] | None = None

    def listed(self, stamps: Collection[str], told: Collection[str] | None) -> None:
        """A listing of the whole directory found the sidecars of these entries (`stamps`), and
        events told of these (`told`, taken before the listing; None: no events are told of)."""
        self.maybe = None if told is None else {*stamps, *told}

    def told(self, names: Collection[str] | None) -> None:
        """Events told of the sidecars of these entries (None: no events are told of)."""
        if names is None:
            self.maybe = None
        elif self.maybe is not None:
            self.maybe.update(names)

    def may_have(self, name: str) -> bool:
        """May entry `name` have a sidecar? (If not, none was written since the file system last
        said so: its creation would have been told.)"""
        return self.maybe is None or name in self.maybe

    def none_for(self, name: str) -> None:
        """The file system says entry `name` has no sidecar now."""
        if self.maybe is not None:
            self.maybe.discard(name)

    def look(self, stamps: dict[str, str], among: Collection[str] | None = None) -> dict[str, Read]:
        """The metadata of the entries whose sidecars have these fingerprints (name -> stamp), of
        all entries (`among`: of those named; what is known of the others is kept)."""
        for name in [n for n in self.seen if n not in stamps] if among is None else among:
            if name not in stamps:
                self.seen.pop(name, None)
        out: dict[str, Read] = {}
        for name, st in stamps.items():
            seen = self.seen.get(name)
            if seen is None or seen.stamp != st:
                seen = self.seen[name] = _Seen(st, _read(os.path.join(self.file_dir, sidecar_of(name))))
            out[name] = seen.read
        return out


def _read(path: str) -> Read:
    try:
        return read(path)
    except (OSError, MetadataError) as e:
        return e


def write(directory: str, name: str, meta: Metadata, *, replace: bool) -> str:
    """Write the sidecar of entry `name` in `directory`, whole or not at all: a hidden temporary file,
    flushed, renamed into place. `replace`: over a sidecar already there (`synkler send -k`), else
    FileExistsError if anything is there (download never overwrites). Its path."""
    path = os.path.join(directory, sidecar_of(name))
    tmp = os.path.join(directory, f".{uuid.uuid4().hex}.meta.tmp")
    data = pretty(meta).encode("utf-8")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            rename_noreplace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(directory)
    return path


def holds(directory: str, name: str, meta: Metadata) -> bool:
    """Does the sidecar of `name` in `directory` hold this metadata (the JSON equal)?"""
    try:
        return read(os.path.join(directory, sidecar_of(name))) == meta
    except (OSError, MetadataError):
        return False


def remove(directory: str, name: str) -> bool:
    """Remove the sidecar of `name` (its entry is gone); False if there was none."""
    try:
        os.unlink(os.path.join(directory, sidecar_of(name)))
    except OSError as e:
        if none_there(e):
            return False
        raise
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
