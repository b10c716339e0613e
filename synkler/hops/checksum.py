"""Content digests and cheap change fingerprints for relay entries.

synkler verifies every hop of a relay by comparing an md5 computed on the
sending side with one computed on the receiving side, so the digest of an
entry must depend only on what rsync -a reproduces faithfully (names, file
contents, symlink targets, directory structure) and never on the order in
which a filesystem happens to list a directory.  The exact directory digest is
documented in docs/checksums.md so a user can recompute it by hand.

Nothing here follows a symbolic link: a link inside an entry is part of the
data being relayed, and following it could hash (or loop through) something
outside the entry.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import Interrupted
from ..messages import STRONG
from .treewalk import KIND_DIR, KIND_FILE, KIND_LINK, PathLike, new_md5, unsupported, walk
from .treewalk import EntryStat as EntryStat  # where synkler imports them from
from .treewalk import file_stat as file_stat
from .treewalk import stat_entry as stat_entry

# Set when the agent stops: a hash under way ends at its next read with Interrupted, so that
# stopping never waits for the md5 of a big file (it is hashed again at the next start).
STOPPING = threading.Event()

# The md5 under way on each thread (thread id -> Hashing), so the agent can tell how far it got
# (synkler.observe.presence). Only the outermost md5_entry of a thread registers; reads add to its count.
_RUNNING: dict[int, Hashing] = {}


class Hashing:
    """One md5_entry under way: its path, the bytes read so far and the bytes to read."""

    __slots__ = ("path", "done", "total", "started")

    def __init__(self, path: bytes, total: int, started: float):
        self.path = path
        self.done = 0
        self.total = total
        self.started = started


def running() -> list[Hashing]:
    """The hashes under way now (a snapshot; their counts keep moving)."""
    return list(_RUNNING.values())


def new_hash(alg: str) -> hashlib._Hash:
    """A fresh hash object of `alg` (md5 or one of STRONG)."""
    if alg == "md5":
        return new_md5()
    if alg not in STRONG:
        raise ValueError(f"unknown checksum {alg!r}: one of md5, {', '.join(STRONG)}")
    return hashlib.new(alg)


class _Pair:
    """md5 and, when asked for, a second hash, fed the same bytes: one read of the data for both."""

    __slots__ = ("md5", "strong")

    def __init__(self, strong: str | None):
        self.md5 = new_md5()
        self.strong = new_hash(strong) if strong else None

    def update(self, data: Any) -> None:
        self.md5.update(data)
        if self.strong is not None:
            self.strong.update(data)

    def hexdigests(self) -> tuple[str, str | None]:
        return self.md5.hexdigest(), self.strong.hexdigest() if self.strong is not None else None


def _hash_fd(fd: int, bufsize: int) -> str:
    return _hash_fd2(fd, bufsize, None)[0]


# A file smaller than this is read with plain reads of its size: no buffer to zero, no read-ahead
# hint, no file object (for a tree of 4 KiB files, these cost more than the md5 of the data).
SMALL_FILE = 1 << 20


def _hash_fd2(fd: int, bufsize: int, strong: str | None, size: int | None = None) -> tuple[str, str | None]:
    """Hash an open file (of `size` bytes when it was opened, if known) from its start to its end."""
    if size is None:
        size = os.fstat(fd).st_size
    if size < SMALL_FILE:
        return _hash_small(fd, min(bufsize, size + 1), strong)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):  # only a hint; some filesystems refuse it
        pass
    digest = _Pair(strong)
    # One reusable buffer: large reads keep the GIL released most of the time. No bigger than the
    # file: zeroing a 4 MiB buffer costs more than hashing a small file. (A file that grows
    # meanwhile is still read to its end, in more reads.)
    buf = bytearray(max(1, min(bufsize, size + 1)))
    view = memoryview(buf)
    counter = _RUNNING.get(threading.get_ident())
    with open(fd, "rb", buffering=0, closefd=False) as stream:
        while True:
            if STOPPING.is_set():
                raise Interrupted("the agent is stopping")
            n = stream.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
            if counter is not None:
                counter.done += n
    return digest.hexdigests()


def _hash_small(fd: int, chunk: int, strong: str | None) -> tuple[str, str | None]:
    """Hash a small file in reads of `chunk` bytes (its size and one: usually one read with data and
    the one that finds the end), to its end even if it grew."""
    # md5 alone (nearly always): the md5 object itself, no pair to go through for each file
    digest: Any = new_md5() if strong is None else _Pair(strong)
    counter = _RUNNING.get(threading.get_ident())
    while True:
        if STOPPING.is_set():
            raise Interrupted("the agent is stopping")
        data = os.read(fd, chunk)
        if not data:
            return (digest.hexdigest(), None) if strong is None else digest.hexdigests()
        digest.update(data)
        if counter is not None:
            counter.done += len(data)


def _open_regular(path: bytes) -> tuple[int, int]:
    """Open a path for reading only if it is a regular file: its descriptor and its size then.

    O_NONBLOCK keeps a FIFO from blocking the open forever; it has no effect on
    reads from a regular file.  O_NOFOLLOW closes the race where a file listed
    by the walk is swapped for a symlink before we open it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{os.fsdecode(path)!r} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _md5_file_nofollow(path: bytes, bufsize: int = 4 << 20) -> str:
    return _file_nofollow(path, None, bufsize)[0]


def _file_nofollow(path: bytes, strong: str | None, bufsize: int = 4 << 20) -> tuple[str, str | None]:
    fd, size = _open_regular(path)
    try:
        return _hash_fd2(fd, bufsize, strong, size)
    finally:
        os.close(fd)


class TooBig(Exception):
    """A directory holds more bytes than the caller allows (`limit`): nothing of it was read."""

    def __init__(self, size: int):
        super().__init__(f"{size} bytes")
        self.size = size


def _md5_dir(top: bytes, known: Mapping[bytes, Any] | None = None, limit: int | None = None) -> str:
    """Return the deterministic digest of a directory tree (format in docs/checksums.md)."""
    return _dir_digest(top, None, known, None, limit)[0]


def _dir_digest(
    top: bytes,
    strong: str | None,
    known: Mapping[bytes, Any] | None,
    records: list[FileDigest] | None,
    limit: int | None = None,
) -> tuple[str, str | None]:
    """The tree digests of a directory (md5, and `strong` if asked), each file read once for both.

    Each record is kind, relative path and payload separated and terminated by
    NUL bytes; NUL cannot occur in a file name, so two different trees can
    never produce the same byte stream. The strong tree digest is the same stream with each file's
    strong digest as its payload, hashed with the strong hash. `records`, if given, gets one
    FileDigest per regular file and symlink, in path order (what a receipt lists).
    """
    digest = _Pair(strong)
    strong_tree = new_hash(strong) if strong else None
    items = walk(top)
    counter = _RUNNING.get(threading.get_ident())
    if limit is not None or (counter is not None and counter.path == top):
        total = sum(st.st_size for _rel, kind, _full, st in items if kind == KIND_FILE)
        if limit is not None and total > limit:
            raise TooBig(total)  # from the listing the digest walks anyway: no walk of its own
        if counter is not None and counter.path == top:
            counter.total = total
    for rel, kind, full, st in items:
        second: bytes | None = None
        if kind == KIND_FILE:
            seen = known.get(rel) if known and strong is None else None
            if seen is not None and seen.matches(full):
                md5, other = seen.md5, None
            else:
                md5, other = _file_nofollow(full, strong)
            payload = md5.encode("ascii")
            second = other.encode("ascii") if other is not None else None
            if records is not None:
                records.append(FileDigest(rel, "file", st.st_size, md5, other))
        elif kind == KIND_LINK:
            payload = second = os.readlink(full)
            if records is not None:
                pair = _Pair(strong)
                pair.update(payload)
                records.append(FileDigest(rel, "link", len(payload), *pair.hexdigests()))
        else:
            payload = second = b""
        digest.md5.update(kind + b"\0" + rel + b"\0" + payload + b"\0")
        if strong_tree is not None:
            strong_tree.update(kind + b"\0" + rel + b"\0" + (second or b"") + b"\0")
    return digest.md5.hexdigest(), strong_tree.hexdigest() if strong_tree is not None else None


@dataclass(frozen=True)
class FileDigest:
    """One regular file (or symlink) of an entry: its path within the entry (b"" for the entry itself),
    kind ("file" or "link"), size (a link: the length of its target) and digests (a link: of its target)."""

    path: bytes
    kind: str
    size: int
    md5: str
    strong: str | None = None  # hex, of the entry's second hash; None: none asked for


@dataclass(frozen=True)
class EntryDigest:
    """An entry's md5, its second hash if one was asked for (`<alg>:<hex>`), and its files."""

    md5: str
    strong: str | None = None
    files: list[FileDigest] = field(default_factory=list)


def _within(st: os.stat_result, limit: int | None) -> os.stat_result:
    """An entry's lstat, if a file or symlink of it is within `limit` bytes (else TooBig); a
    directory's bytes are counted by its walk."""
    if limit is not None and not stat.S_ISDIR(st.st_mode) and st.st_size > limit:
        raise TooBig(st.st_size)
    return st


@contextmanager
def _hashing(p: bytes, st: os.stat_result) -> Iterator[None]:
    """Count this thread's hash of `p` as under way (`running`, the progress figures), unless an
    outer hash on the same thread counts it already."""
    thread = threading.get_ident()
    outermost = thread not in _RUNNING
    if outermost:
        _RUNNING[thread] = Hashing(p, st.st_size if stat.S_ISREG(st.st_mode) else 0, time.time())
    try:
        yield
    finally:
        if outermost:
            del _RUNNING[thread]


def digest_entry(
    path: PathLike,
    strong: str | None = None,
    known: Mapping[bytes, Any] | None = None,
    limit: int | None = None,
) -> EntryDigest:
    """md5_entry, and in the same read of the data the second hash `strong` (one of STRONG, or None)
    and each file's digests (for a receipt). `known` stands in for reading a file only when no second
    hash is asked for (what a follower read gave an md5 only). `limit`: as for md5_entry."""
    p = os.fsencode(path)
    st = _within(os.lstat(p), limit)
    label = (lambda hexdigest: f"{strong}:{hexdigest}") if strong else (lambda hexdigest: None)
    if stat.S_ISLNK(st.st_mode):
        pair = _Pair(strong)
        pair.update(os.readlink(p))
        md5, other = pair.hexdigests()
        return EntryDigest(md5, label(other), [FileDigest(b"", "link", st.st_size, md5, other)])
    with _hashing(p, st):
        if stat.S_ISREG(st.st_mode):
            md5, other = _file_nofollow(p, strong)
            return EntryDigest(md5, label(other), [FileDigest(b"", "file", st.st_size, md5, other)])
        if stat.S_ISDIR(st.st_mode):
            records: list[FileDigest] = []
            md5, other = _dir_digest(p, strong, known, records, limit)
            return EntryDigest(md5, label(other), records)
        raise unsupported(p)


def md5_entry(path: PathLike, known: Mapping[bytes, Any] | None = None, limit: int | None = None) -> str:
    """Return the digest synkler compares between hops for one entry.

    A regular file gives the md5 of its content (what md5sum prints), a
    top-level symlink the md5 of its target string (the link is relayed, not
    what it points to), a directory the tree digest described in docs/checksums.md.  The digest
    does not encode the top-level kind, so compare EntryStat.kind as well.

    `known`: for a directory, digests of some files already taken (synkler.hops.follow), by path within
    the directory; each is used instead of reading the file only while its `matches(path)` holds.

    `limit`: the most bytes the entry may hold, counted as stat_entry counts its size (the bytes of
    its regular files; a symlink, its target's length); more raise TooBig before anything is read
    (a directory: from the listing its digest walks anyway, not from a walk of its own).
    """
    p = os.fsencode(path)
    st = _within(os.lstat(p), limit)
    if stat.S_ISLNK(st.st_mode):
        digest = new_md5()
        digest.update(os.readlink(p))
        return digest.hexdigest()
    with _hashing(p, st):
        if stat.S_ISREG(st.st_mode):
            return _md5_file_nofollow(p)
        if stat.S_ISDIR(st.st_mode):
            return _md5_dir(p, known, limit)
        raise unsupported(p)


def alg_of(checksum: str) -> str | None:
    """The algorithm of a second hash `<alg>:<hex>` ("" : None, md5 only)."""
    return checksum.partition(":")[0] if checksum else None


def hop_mismatch(where: str, md5: str, checksum: str, got_md5: str, got_checksum: str | None) -> str | None:
    """Why the copy at a hop is not the entry (None: it is): its md5 must match, and so must the second
    hash when the entry carries one. Either mismatch fails the copy alike (asked again, then failed).
    A second hash named without a digest (`sha256:`) is one this hop computes for its own record only."""
    if got_md5 != md5:
        return f"md5 mismatch at {where}: expected {md5}, got {got_md5}"
    if checksum and not checksum.endswith(":") and got_checksum != checksum:
        return f"{alg_of(checksum)} mismatch at {where}: expected {checksum}, got {got_checksum or 'none'}"
    return None


def list_entry(path: PathLike) -> list[FileDigest]:
    """The files and symlinks of an entry with their sizes, from lstat only (digests left empty), in
    the order digest_entry lists them."""
    p = os.fsencode(path)
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        return [FileDigest(b"", "link", st.st_size, "")]
    if stat.S_ISREG(st.st_mode):
        return [FileDigest(b"", "file", st.st_size, "")]
    if not stat.S_ISDIR(st.st_mode):
        raise unsupported(p)
    return [
        FileDigest(rel, "file" if kind == KIND_FILE else "link", child.st_size, "")
        for rel, kind, _full, child in walk(p)
        if kind != KIND_DIR
    ]
