"""Copying entries over one SFTP session (synkler.hops.sftp connects): files, directories, symlinks,
with their modes and mtimes, as `rsync --archive` does.

A file of BIG bytes or more is written into a temporary file `.<name>.XXXXXX` beside its name and
renamed into place when whole (as rsync does, so central's followers and growing links work the
same). A run cut short leaves that file, or moves it into `.synkler-partial/` when it can (a stop);
the next run resumes from it only if it is a prefix of the source: no bigger, not older than the
source's last change, and the md5 of its last TAIL bytes equal to the source's at the same offset.
Anything else is removed and the file sent whole. Smaller files are written in place: a cut one
has neither the size nor the mtime of the source, so the next run (rsync's quick check: size and
mtime) writes it again, and the md5 after the hop catches anything else.

Speed: nothing waits for an answer it does not need yet. Big files go in pipelined requests of
WRITE_REQUEST / READ_REQUEST bytes with IN_FLIGHT bytes of reads in flight; small files go AHEAD at a time
(open, write or read, set mode and mtime, close, all sent before the first answer is read), so
a batch of small files costs about one round trip, not five, per file. This uses paramiko's
request machinery (`_async_request`, its table of requests in flight), stable since paramiko 1.x;
answers are read by synkler.hops.sftpwire, the data of a big file's reads straight into the file.

Names are bytes on the wire (os.fsencode), so a name that is not UTF-8 travels as it is.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import secrets
import stat
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

import paramiko
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_LSTAT,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    int64,
)

from .outcome import PARTIAL_DIR
from .sftpwire import Replies

log = logging.getLogger(__name__)

BIG = 1 << 20  # files from this size go through a temporary file and may resume
TAIL = 1 << 20  # bytes at the end of a partial file compared with the source before resuming
CHUNK = 4 << 20  # bytes read and handed to SFTP at a time (the stop is looked at between chunks)
WRITE_REQUEST = 128 << 10  # bytes per SFTP write (paramiko: 32 KiB; OpenSSH takes up to 256 KiB)
# Bytes per SFTP read: OpenSSH from 8.6 answers up to 255 KiB, older ones 64 KiB; a shorter answer
# before the end of the file sets the size of the reads that follow (`_Copier.read_size`).
READ_REQUEST = 255 << 10
# Bytes of reads in flight for a big file (64 reads, as OpenSSH's client keeps; below the window).
# Deep enough that central never waits for the next request; affordable because the answers wait
# in the channel as they came (synkler.hops.sftpwire), not in paramiko's buffer, which moved all
# it held at every read (1 MiB was its best: a 256 MiB pull at 52 MiB/s, 35 with 8 MiB).
IN_FLIGHT = 16 << 20
AHEAD = 64  # small files in flight
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

Attrs = Any  # paramiko.SFTPAttributes (paramiko has no type hints)


class Stopped(Exception):
    """The run was ended: the agent stops, or its result is no longer needed."""


class Missing(Exception):
    """The source of a run does not exist."""


def temporary(name: str) -> str:
    """A new name for the temporary file of `name`, as rsync makes them: .<name>.XXXXXX"""
    return f".{name}.{''.join(secrets.choice(_ALPHABET) for _ in range(6))}"


def is_temporary_of(candidate: str, name: str) -> bool:
    return len(candidate) == len(name) + 8 and candidate.startswith(f".{name}.")


def _same(size: int, mtime: float, other_size: int | None, other_mtime: float | None) -> bool:
    """rsync's quick check: same size and the same mtime in whole seconds."""
    return other_size == size and other_mtime is not None and int(other_mtime) == int(mtime)


def component(raw: bytes, directory: str) -> str:
    """A name the server listed in `directory`, if it is one path component (as a file system
    makes them): a name with '/' or NUL, or empty, could make a pull write outside its place, so it
    ends the run (OSError)."""
    if not raw or b"/" in raw or b"\0" in raw or raw in (b".", b".."):
        raise OSError(errno.EINVAL, f"{directory} on central lists {raw!r}, which is no file name")
    return os.fsdecode(raw)


def _b(path: str) -> bytes:
    return os.fsencode(path)


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def _attrs(mode: int, mtime: float, atime: float | None = None) -> Attrs:
    attr = paramiko.SFTPAttributes()
    attr.st_mode = stat.S_IMODE(mode)
    attr.st_mtime = int(mtime)
    attr.st_atime = int(mtime if atime is None else atime)
    return attr


class _Copier:
    def __init__(
        self, client: paramiko.SFTPClient, stopping: Callable[[], bool], cancel: threading.Event | None = None
    ):
        self.client = client
        self.stopping = stopping
        self.cancel = cancel
        self.replies = Replies(client)
        self.failures: list[Exception] = []  # entries that could not go; the others went on
        self.read_size = READ_REQUEST  # what central answers whole

    def check(self) -> None:
        if self.stopping():
            raise Stopped("the agent is stopping")
        if self.cancel is not None and self.cancel.is_set():
            raise Stopped("no longer needed")

    def listdir(self, path: str) -> dict[str, Attrs]:
        """Names (as os.fsdecode makes them of the bytes) and attributes in a remote directory;
        empty if it does not exist."""
        r = self.replies
        try:
            handle = r.wait(r.send(CMD_OPENDIR, _b(path)), CMD_HANDLE).get_binary()
        except FileNotFoundError:
            return {}
        found: dict[str, Attrs] = {}
        try:
            while True:
                try:
                    msg = r.wait(r.send(CMD_READDIR, handle), CMD_NAME)
                except EOFError:
                    break
                for _ in range(msg.get_int()):
                    raw = msg.get_string()
                    msg.get_string()  # the long name, for people
                    attr = paramiko.SFTPAttributes._from_msg(msg)
                    if raw not in (b".", b".."):
                        found[component(raw, path)] = attr
        finally:
            r.wait(r.send(CMD_CLOSE, handle), CMD_STATUS)
        return found

    def readlink(self, path: str) -> str:
        target = self.client.readlink(_b(path))
        return os.fsdecode(target) if isinstance(target, bytes) else target or ""

    def open(self, path: str, flags: int) -> bytes:
        r = self.replies
        return bytes(
            r.wait(r.send(CMD_OPEN, _b(path), flags, paramiko.SFTPAttributes()), CMD_HANDLE).get_binary()
        )

    def close(self, handle: bytes) -> None:
        self.replies.wait(self.replies.send(CMD_CLOSE, handle), CMD_STATUS)

    def read_into(self, handle: bytes, out: BinaryIO, offset: int, size: int) -> int:
        """Write to `out` the remote file's bytes from `offset` to `size` (or its end, if shorter),
        IN_FLIGHT bytes of requests in flight; the bytes written."""
        r = self.replies
        pending: deque[tuple[int, int]] = deque()
        ask = done = offset
        while done < size:
            while ask < size and len(pending) * self.read_size < IN_FLIGHT:
                n = min(self.read_size, size - ask)
                pending.append((r.send(CMD_READ, handle, int64(ask), n), n))
                ask += n
            num, n = pending.popleft()
            try:
                got = r.stream(num, out)
            except EOFError:
                got = 0
            done += got
            if got < n:  # a short answer or the end: drop what is in flight, go on from here
                if got and done < size:
                    self.read_size = max(got, 4096)  # central's limit
                for later, _ in pending:
                    try:
                        r.wait(later, CMD_DATA)
                    except EOFError:
                        pass
                pending.clear()
                if not got:
                    break
                ask = done
            if (done - offset) % CHUNK < self.read_size:
                self.check()
        return done - offset

    def write_from(self, src: BinaryIO, handle: bytes, offset: int) -> None:
        """Write what `src` holds from `offset` into the remote file, pipelined."""
        r = self.replies
        pending: deque[int] = deque()
        at = offset
        src.seek(offset)
        while True:
            self.check()
            block = src.read(CHUNK)
            if not block:
                break
            for i in range(0, len(block), WRITE_REQUEST):
                pending.append(r.send(CMD_WRITE, handle, int64(at + i), block[i : i + WRITE_REQUEST]))
            at += len(block)
            while len(pending) > 2 * CHUNK // WRITE_REQUEST:
                r.wait(pending.popleft(), CMD_STATUS)
        while pending:
            r.wait(pending.popleft(), CMD_STATUS)

    def remote_tail(self, path: str, offset: int, size: int) -> bytes:
        handle = self.open(path, SFTP_FLAG_READ)
        try:
            out = io.BytesIO()
            self.read_into(handle, out, offset, offset + size)
            return out.getvalue()
        finally:
            self.close(handle)


def _local_tail(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _tail_matches(partial_tail: bytes, source_tail: bytes) -> bool:
    return hashlib.md5(partial_tail).digest() == hashlib.md5(source_tail).digest()


def _prefix(size: int, mtime: float, source_size: int, source_mtime: float) -> bool:
    """Could a partial copy of `size` and `mtime` hold the start of the source? (Then its tail
    is compared.) Not empty, no bigger, and written after the source last changed."""
    return 0 < size <= source_size and mtime >= int(source_mtime)


class Pusher(_Copier):
    """upload -> central."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.small: list[tuple[str, str, os.stat_result]] = []
        self.listings: dict[str, dict[str, Attrs]] = {}

    def entries(self, local_dir: str, names: list[str], remote_dir: str) -> None:
        self._nodes(local_dir, names, remote_dir, self.listdir(remote_dir))
        self.flush()

    def listed(self, local_dir: str, names: list[str], remote_dir: str, directory: str) -> None:
        """The files `names` of `local_dir` into `remote_dir`/`directory` (made if missing, then 0755:
        a bundle's). A name missing is a failure (Missing), as rsync's exit 23; the others go."""
        where = _join(remote_dir, directory)
        there = self.listdir(remote_dir).get(directory)
        if there is not None and not stat.S_ISDIR(there.st_mode or 0):
            self._remove(where, there)
            there = None
        if there is None:
            self.client.mkdir(_b(where), 0o700)
        self._nodes(local_dir, names, where, self.listdir(where) if there is not None else {})
        self.flush()
        self.client.chmod(_b(where), 0o755)

    def _nodes(self, local_dir: str, names: list[str], parent: str, here: dict[str, Attrs]) -> None:
        """Each of `names` of `local_dir` into `parent` (whose listing is `here`); one missing is a
        failure (Missing), the others go."""
        for name in names:
            local = os.path.join(local_dir, name)
            try:
                st = os.lstat(local)
            except FileNotFoundError:
                self.failures.append(Missing(local))
                continue
            self._node(local, parent, name, st, here)

    def _node(self, local: str, parent: str, name: str, st: os.stat_result, here: dict[str, Attrs]) -> None:
        self.check()
        remote = _join(parent, name)
        there = here.get(name)
        if there is not None and stat.S_IFMT(there.st_mode or 0) != stat.S_IFMT(st.st_mode):
            self._remove(remote, there)
            there = None
        if stat.S_ISDIR(st.st_mode):
            if there is None:
                self.client.mkdir(_b(remote), 0o700)
            inside = self.listdir(remote) if there is not None else {}
            for child in sorted(os.listdir(local)):
                path = os.path.join(local, child)
                self._node(path, remote, child, os.lstat(path), inside)
            self.flush()  # the files in it first: their writes change the directory's mtime
            self.client.chmod(_b(remote), stat.S_IMODE(st.st_mode))
            self.client.utime(_b(remote), (int(st.st_atime), int(st.st_mtime)))
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(local)
            if there is not None and self.readlink(remote) == target:
                return
            if there is not None:
                self.client.remove(_b(remote))
            self.client.symlink(_b(target), _b(remote))
        elif stat.S_ISREG(st.st_mode):
            if there is not None and _same(st.st_size, st.st_mtime, there.st_size, there.st_mtime):
                return
            if st.st_size < BIG:
                self.small.append((local, remote, st))
                if len(self.small) >= 4 * AHEAD:
                    self.flush()
            else:
                self._big(local, parent, name, st, here)
        else:
            raise OSError(errno.EINVAL, f"{local}: neither a file, a directory nor a symlink")

    def _remove(self, remote: str, attr: Attrs) -> None:
        if stat.S_ISDIR(attr.st_mode or 0):
            for name, child in self.listdir(remote).items():
                self._remove(_join(remote, name), child)
            self.client.rmdir(_b(remote))
        else:
            self.client.remove(_b(remote))

    def flush(self) -> None:
        """Write the small files gathered so far, AHEAD at a time, in place."""
        jobs, self.small = self.small, []
        r = self.replies
        opening: deque[tuple[int, str, os.stat_result]] = deque()
        closing: deque[list[int]] = deque()
        todo = iter(jobs)

        def open_next() -> None:
            job = next(todo, None)
            if job is not None:
                local, remote, st = job
                flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC
                opening.append((r.send(CMD_OPEN, _b(remote), flags, paramiko.SFTPAttributes()), local, st))

        for _ in range(AHEAD):
            open_next()
        while opening:
            self.check()
            num, local, st = opening.popleft()
            handle = r.wait(num, CMD_HANDLE).get_binary()
            with open(local, "rb") as f:
                data = f.read(st.st_size + 1)
            if len(data) != st.st_size:
                raise OSError(errno.EAGAIN, f"{local} changed while it was pushed")
            nums = [
                r.send(CMD_WRITE, handle, int64(at), data[at : at + WRITE_REQUEST])
                for at in range(0, len(data), WRITE_REQUEST)
            ]
            nums.append(r.send(CMD_FSETSTAT, handle, _attrs(st.st_mode, st.st_mtime, st.st_atime)))
            nums.append(r.send(CMD_CLOSE, handle))
            closing.append(nums)
            open_next()
            while len(closing) > AHEAD:
                for n in closing.popleft():
                    r.wait(n, CMD_STATUS)
        for nums in closing:
            for n in nums:
                r.wait(n, CMD_STATUS)

    def _big(self, local: str, parent: str, name: str, st: os.stat_result, here: dict[str, Attrs]) -> None:
        temp = _join(parent, temporary(name))
        offset = self._resume(local, parent, name, st, here, temp)
        partial = _join(_join(parent, PARTIAL_DIR), name)
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | (0 if offset else SFTP_FLAG_TRUNC)
        handle = self.open(temp, flags)
        try:
            with open(local, "rb") as src:
                self.write_from(src, handle, offset)
            r = self.replies
            r.wait(r.send(CMD_FSETSTAT, handle, _attrs(st.st_mode, st.st_mtime, st.st_atime)), CMD_STATUS)
        except Stopped:
            self.close(handle)
            self._keep_partial(temp, partial)
            raise
        self.close(handle)
        self.client.posix_rename(_b(temp), _b(_join(parent, name)))

    def _candidates(self, parent: str, name: str, here: dict[str, Attrs]) -> list[tuple[str, Attrs]]:
        """What earlier runs left of `name`: its temporary files, its partial file; biggest first."""
        found = [(_join(parent, other), attr) for other, attr in here.items() if is_temporary_of(other, name)]
        if PARTIAL_DIR in here:
            partial = self.listdir(_join(parent, PARTIAL_DIR)).get(name)
            if partial is not None:
                found.append((_join(_join(parent, PARTIAL_DIR), name), partial))
        return sorted(found, key=lambda c: -(c[1].st_size or 0))

    def _resume(
        self, local: str, parent: str, name: str, st: os.stat_result, here: dict[str, Attrs], temp: str
    ) -> int:
        """The offset to write from: a checked partial copy renamed to `temp`, or 0 (the others removed)."""
        best: tuple[int, str] | None = None
        for path, attr in self._candidates(parent, name, here):
            size = attr.st_size or 0
            at, n = max(0, size - TAIL), min(size, TAIL)
            good = (
                best is None
                and stat.S_ISREG(attr.st_mode or 0)
                and _prefix(size, attr.st_mtime or 0, st.st_size, st.st_mtime)
                and _tail_matches(self.remote_tail(path, at, n), _local_tail(local, at, n))
            )
            if good:
                best = (size, path)
            else:
                self.client.remove(_b(path))
        if best is not None:
            log.info(
                "%s: resuming the push from the %d of %d bytes an earlier run left", name, best[0], st.st_size
            )
            self.client.posix_rename(_b(best[1]), _b(temp))
        if PARTIAL_DIR in here:
            try:
                self.client.rmdir(_b(_join(parent, PARTIAL_DIR)))
                del here[PARTIAL_DIR]
            except OSError:
                pass  # holds other partial files
        return 0 if best is None else best[0]

    def _keep_partial(self, temp: str, partial: str) -> None:
        """A stop: the temporary file into the partial dir, which central's sweep leaves to a live
        entry (a temporary file it would sweep after a minute)."""
        try:
            self.client.mkdir(_b(partial.rsplit("/", 1)[0]), 0o700)
        except OSError:
            pass  # there already
        self.client.posix_rename(_b(temp), _b(partial))


class Puller(_Copier):
    """central -> download."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.small: list[tuple[str, str, Attrs]] = []

    def entries(self, remote_dir: str, paths: list[str], local_dir: str) -> None:
        r = self.replies
        asked = [(p, r.send(CMD_LSTAT, _b(_join(remote_dir, p)))) for p in paths]
        for rel, num in asked:
            try:
                attr = paramiko.SFTPAttributes._from_msg(r.wait(num, CMD_ATTRS))
            except FileNotFoundError:
                self.failures.append(Missing(_join(remote_dir, rel)))
                continue
            self._node(_join(remote_dir, rel), os.path.join(local_dir, rel), attr)
        self.flush()

    def _node(self, remote: str, local: str, attr: Attrs) -> None:
        self.check()
        mode = attr.st_mode or 0
        try:
            there: os.stat_result | None = os.lstat(local)
        except FileNotFoundError:
            there = None
        if there is not None and stat.S_IFMT(there.st_mode) != stat.S_IFMT(mode):
            if stat.S_ISDIR(there.st_mode):
                raise OSError(errno.EISDIR, f"{local} is a directory, central has a file")
            os.unlink(local)
            there = None
        if stat.S_ISDIR(mode):
            self._directory(remote, local, attr)
        elif stat.S_ISLNK(mode):
            target = self.readlink(remote)
            if there is not None and os.readlink(local) == target:
                return
            if there is not None:
                os.unlink(local)
            os.symlink(target, local)
        elif stat.S_ISREG(mode):
            if there is not None and _same(
                attr.st_size or 0, attr.st_mtime or 0, there.st_size, there.st_mtime
            ):
                return
            if (attr.st_size or 0) < BIG:
                self.small.append((remote, local, attr))
                if len(self.small) >= 4 * AHEAD:
                    self.flush()
            else:
                self._big(remote, local, attr)
        else:
            raise OSError(errno.EINVAL, f"{remote} on central: neither a file, a directory nor a symlink")

    def _directory(self, remote: str, local: str, attr: Attrs) -> None:
        os.makedirs(local, mode=0o700, exist_ok=True)
        for name, child in sorted(self.listdir(remote).items()):
            self._node(_join(remote, name), os.path.join(local, name), child)
        self.flush()  # the files in it first: writing them changes the directory's mtime
        os.chmod(local, stat.S_IMODE(attr.st_mode or 0o700))
        os.utime(local, (attr.st_atime or 0, attr.st_mtime or 0))

    def flush(self) -> None:
        """Read the small files gathered so far, AHEAD at a time, into place."""
        jobs, self.small = self.small, []
        r = self.replies
        opening: deque[tuple[int, str, str, Attrs]] = deque()
        todo = iter(jobs)

        def open_next() -> None:
            job = next(todo, None)
            if job is not None:
                remote, local, attr = job
                num = r.send(CMD_OPEN, _b(remote), SFTP_FLAG_READ, paramiko.SFTPAttributes())
                opening.append((num, remote, local, attr))

        for _ in range(AHEAD):
            open_next()
        reading: deque[tuple[list[int], int, str, Attrs]] = deque()
        while opening or reading:
            self.check()
            if opening:
                num, remote, local, attr = opening.popleft()
                handle = r.wait(num, CMD_HANDLE).get_binary()
                size = attr.st_size or 0
                step = self.read_size
                reads = [
                    r.send(CMD_READ, handle, int64(at), min(step, size - at)) for at in range(0, size, step)
                ]
                reading.append((reads, r.send(CMD_CLOSE, handle), local, attr))
                open_next()
            if reading and (len(reading) > AHEAD or not opening):
                reads, close, local, attr = reading.popleft()
                data = b"".join(r.wait(n, CMD_DATA).get_string() for n in reads)
                r.wait(close, CMD_STATUS)
                if len(data) != (attr.st_size or 0) and len(reads) > 1:
                    data = self._reread(remote, attr)  # central answers reads shorter than asked
                if len(data) != (attr.st_size or 0):
                    raise OSError(errno.EAGAIN, f"{local}: central's copy changed while it was pulled")
                with open(local, "wb") as out:
                    out.write(data)
                self._finish(local, attr)

    def _reread(self, remote: str, attr: Attrs) -> bytes:
        handle = self.open(remote, SFTP_FLAG_READ)
        try:
            out = io.BytesIO()
            self.read_into(handle, out, 0, attr.st_size or 0)
            return out.getvalue()
        finally:
            self.close(handle)

    def _big(self, remote: str, local: str, attr: Attrs) -> None:
        size = attr.st_size or 0
        parent, name = os.path.split(local)
        temp = os.path.join(parent, temporary(name))
        offset = self._resume(remote, parent, name, attr, temp)
        try:
            handle = self.open(remote, SFTP_FLAG_READ)
            try:
                with open(temp, "r+b" if offset else "xb") as out:
                    out.seek(offset)
                    self.read_into(handle, out, offset, size)
            finally:
                self.close(handle)
        except BaseException:
            _keep_local_partial(temp, parent, name)
            raise
        self._finish(temp, attr)
        os.rename(temp, local)

    def _resume(self, remote: str, parent: str, name: str, attr: Attrs, temp: str) -> int:
        size = attr.st_size or 0
        candidates = [os.path.join(parent, n) for n in os.listdir(parent) if is_temporary_of(n, name)]
        candidates.append(os.path.join(parent, PARTIAL_DIR, name))
        best: tuple[int, str] | None = None
        for path in candidates:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            at, n = max(0, st.st_size - TAIL), min(st.st_size, TAIL)
            good = (
                best is None
                and stat.S_ISREG(st.st_mode)
                and _prefix(st.st_size, st.st_mtime, size, attr.st_mtime or 0)
                and _tail_matches(_local_tail(path, at, n), self.remote_tail(remote, at, n))
            )
            if good:
                best = (st.st_size, path)
            else:
                os.unlink(path)
        if best is not None:
            log.info("%s: resuming the pull from the %d of %d bytes an earlier run left", name, best[0], size)
            os.rename(best[1], temp)
        try:
            os.rmdir(os.path.join(parent, PARTIAL_DIR))
        except OSError:
            pass  # not there, or holds other partial files
        return 0 if best is None else best[0]

    def _finish(self, local: str, attr: Attrs) -> None:
        os.chmod(local, stat.S_IMODE(attr.st_mode or 0o600))
        os.utime(local, (attr.st_atime or 0, attr.st_mtime or 0))

    def append(self, remote: str, local: str) -> None:
        """Append to `local` what `remote` has beyond its length (early pulls)."""
        try:
            attr = self.client.stat(_b(remote))
        except FileNotFoundError:
            raise Missing(remote) from None
        try:
            have = os.lstat(local).st_size
        except FileNotFoundError:
            have = 0
        if (attr.st_size or 0) <= have:
            return
        handle = self.open(remote, SFTP_FLAG_READ)
        try:
            with open(local, "ab") as out:
                wrote = self.read_into(handle, out, have, attr.st_size or 0)
        finally:
            self.close(handle)
        if wrote:
            self._finish(local, attr)


def _keep_local_partial(temp: str, parent: str, name: str) -> None:
    """A pull cut short: its temporary file into the partial dir, which download keeps."""
    try:
        if os.path.getsize(temp) == 0:
            os.unlink(temp)
            return
        os.makedirs(os.path.join(parent, PARTIAL_DIR), mode=0o700, exist_ok=True)
        os.replace(temp, os.path.join(parent, PARTIAL_DIR, name))
    except OSError:
        pass
