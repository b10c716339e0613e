"""Walking an entry: everything below a directory, listed by its lstat only, and the cheap change
fingerprint of an entry (`stat_entry`). synkler.hops.checksum reads the files of the same listing.

Nothing here follows a symbolic link, and names stay bytes (names need not be UTF-8).
"""

from __future__ import annotations

import hashlib
import operator
import os
import stat
from dataclasses import dataclass
from typing import Union

PathLike = Union[str, bytes, os.PathLike]

# Kind markers fed into the directory digest; part of the documented format.
KIND_DIR = b"d"
KIND_FILE = b"f"
KIND_LINK = b"l"


def new_md5() -> hashlib._Hash:
    """md5 is an integrity check here, not security; say so, so FIPS builds allow it."""
    try:
        return hashlib.md5(usedforsecurity=False)
    except TypeError:  # pragma: no cover - interpreters without the keyword
        return hashlib.md5()


def unsupported(path: bytes) -> ValueError:
    return ValueError(
        f"{os.fsdecode(path)!r}: unsupported file type (only regular files, directories and symlinks relay)"
    )


_first = operator.itemgetter(0)


def walk(top: bytes) -> list[tuple[bytes, bytes, bytes, os.stat_result]]:
    """List everything below a directory as (relpath, kind, fullpath, lstat), sorted by relpath bytes.

    An explicit stack instead of recursion so very deep trees do not hit
    Python's recursion limit.  Bytes paths throughout so names that are not
    valid in the filesystem encoding still hash exactly as stored.
    """
    items: list[tuple[bytes, bytes, bytes, os.stat_result]] = []
    pending: list[tuple[bytes, bytes]] = [(top, b"")]
    while pending:
        directory, rel_dir = pending.pop()
        prefix = rel_dir + b"/" if rel_dir else b""
        with os.scandir(directory) as listing:  # a bytes path: names and paths come as bytes
            for entry in listing:
                rel = prefix + entry.name
                full = entry.path
                st = entry.stat(follow_symlinks=False)
                mode = st.st_mode
                if stat.S_ISREG(mode):
                    kind = KIND_FILE
                elif stat.S_ISDIR(mode):
                    kind = KIND_DIR
                    pending.append((full, rel))
                elif stat.S_ISLNK(mode):
                    kind = KIND_LINK
                else:
                    raise unsupported(full)
                items.append((rel, kind, full, st))
    items.sort(key=_first)
    return items


@dataclass(frozen=True)
class EntryStat:
    """What an lstat-only look at an entry tells, enough to notice it is still being written.

    kind: 'file', 'dir' or 'symlink'.
    size: total bytes of regular files inside (a symlink: length of its target).
    files: number of regular files (1 for a file entry, 0 for a symlink).
    signature: hex fingerprint that changes whenever any path, kind, size,
    mtime_ns or ctime_ns inside the entry (the top included) changes.
    """

    kind: str
    size: int
    files: int
    signature: str


def _stat_record(kind: bytes, rel: bytes, st: os.stat_result) -> bytes:
    # ctime catches a file replaced by one with the same size and a preserved mtime (mv of an rsync copy).
    return b"%s\0%s\0%d\0%d\0%d\0" % (kind, rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_stat(st: os.stat_result) -> EntryStat:
    """The fingerprint stat_entry gives a regular file, from its lstat (or the fstat of the file
    opened without following a symlink: the same inode's)."""
    digest = new_md5()
    digest.update(_stat_record(KIND_FILE, b"", st))
    return EntryStat("file", st.st_size, 1, digest.hexdigest())


def stat_entry(path: PathLike) -> EntryStat:
    """Fingerprint an entry from lstat data only, reading no file content.

    Cheap enough to call repeatedly on a large tree, which is how a watcher
    decides that an upload has stopped changing before paying for md5_entry.
    """
    p = os.fsencode(path)
    st = os.lstat(p)
    if stat.S_ISREG(st.st_mode):  # the common case first: one lstat, one md5 of one record
        return file_stat(st)
    digest = new_md5()
    if stat.S_ISLNK(st.st_mode):
        digest.update(_stat_record(KIND_LINK, b"", st))
        return EntryStat("symlink", st.st_size, 0, digest.hexdigest())
    if not stat.S_ISDIR(st.st_mode):
        raise unsupported(p)
    records = [_stat_record(KIND_DIR, b"", st)]
    size = 0
    files = 0
    for rel, kind, _full, child in walk(p):
        records.append(_stat_record(kind, rel, child))
        if kind == KIND_FILE:
            size += child.st_size
            files += 1
    digest.update(b"".join(records))  # the same bytes as one update per record, in one call
    return EntryStat("dir", size, files, digest.hexdigest())
