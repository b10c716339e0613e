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

Writes are pipelined (no wait for each request's answer) and reads prefetched, in large requests.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

import paramiko
from paramiko.sftp import CMD_FSETSTAT

from .transfer import PARTIAL_DIR

log = logging.getLogger(__name__)

BIG = 1 << 20  # files from this size go through a temporary file and may resume
TAIL = 1 << 20  # bytes at the end of a partial file compared with the source before resuming
CHUNK = 4 << 20  # bytes read and handed to SFTP at a time (the stop is looked at between chunks)
WRITE_REQUEST = 128 << 10  # bytes per SFTP write (paramiko: 32 KiB; OpenSSH takes up to 256 KiB)
READ_REQUEST = 64 << 10  # bytes per SFTP read (every OpenSSH answers 64 KiB whole)
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class Stopped(Exception):
    """The run was ended: the agent stops, or its result is no longer needed."""


class Missing(Exception):
    """The source of a run does not exist."""


def temporary(name: str) -> str:
    """A new name for the temporary file of `name`, as rsync makes them: .<name>.XXXXXX"""
    return f".{name}.{''.join(secrets.choice(_ALPHABET) for _ in range(6))}"


def is_temporary_of(candidate: str, name: str) -> bool:
    return len(candidate) == len(name) + 8 and candidate.startswith(f".{name}.") and "/" not in candidate[-6:]


def _same(size: int, mtime: float, other_size: int | None, other_mtime: float | None) -> bool:
    """rsync's quick check: same size and the same mtime in whole seconds."""
    return other_size == size and other_mtime is not None and int(other_mtime) == int(mtime)


class _Copier:
    def __init__(
        self, client: paramiko.SFTPClient, stopping: Callable[[], bool], cancel: threading.Event | None = None
    ):
        self.client = client
        self.stopping = stopping
        self.cancel = cancel
        self.failures: list[Exception] = []  # entries that could not go; the others went on

    def check(self) -> None:
        if self.stopping():
            raise Stopped("the agent is stopping")
        if self.cancel is not None and self.cancel.is_set():
            raise Stopped("no longer needed")

    def _listing(self, remote_dir: str) -> dict[str, paramiko.SFTPAttributes]:
        try:
            return {a.filename: a for a in self.client.listdir_attr(remote_dir)}
        except FileNotFoundError:
            return {}

    def _remote_tail(self, path: str, offset: int, size: int) -> bytes:
        with self.client.open(path, "rb") as f:
            f.MAX_REQUEST_SIZE = READ_REQUEST
            f.seek(offset)
            f.prefetch(offset + size)
            return _read_exactly(f, size)

    def _set_attrs(self, f: paramiko.SFTPFile, mode: int, mtime: float) -> None:
        """Mode and mtime of an open remote file in one request (after the writes: in order)."""
        attr = paramiko.SFTPAttributes()
        attr.st_mode = stat.S_IMODE(mode)
        attr.st_atime = attr.st_mtime = int(mtime)
        self.client._request(CMD_FSETSTAT, f.handle, attr)


def _read_exactly(f: paramiko.SFTPFile, size: int) -> bytes:
    parts = []
    left = size
    while left > 0:
        block = f.read(min(left, CHUNK))
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def _local_tail(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _tail_matches(partial_tail: bytes, source_tail: bytes) -> bool:
    return hashlib.md5(partial_tail).digest() == hashlib.md5(source_tail).digest()


class Pusher(_Copier):
    """upload -> central."""

    def entry(self, local: str, remote: str) -> None:
        try:
            st = os.lstat(local)
        except FileNotFoundError:
            self.failures.append(Missing(local))
            return
        parent, name = remote.rsplit("/", 1)
        self._node(local, parent or "/", name, st, self._listing(parent or "/"))

    def _node(
        self, local: str, parent: str, name: str, st: os.stat_result, here: dict[str, paramiko.SFTPAttributes]
    ) -> None:
        self.check()
        remote = f"{parent.rstrip('/')}/{name}"
        there = here.get(name)
        if stat.S_ISDIR(st.st_mode):
            if there is not None and not stat.S_ISDIR(there.st_mode or 0):
                self._remove(remote, there)
                there = None
            if there is None:
                self.client.mkdir(remote, 0o700)
            inside = self._listing(remote) if there is not None else {}
            for child in sorted(os.listdir(local)):
                path = os.path.join(local, child)
                self._node(path, remote, child, os.lstat(path), inside)
            self.client.chmod(remote, stat.S_IMODE(st.st_mode))
            self.client.utime(remote, (int(st.st_atime), int(st.st_mtime)))
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(local)
            if (
                there is not None
                and stat.S_ISLNK(there.st_mode or 0)
                and self.client.readlink(remote) == target
            ):
                return
            if there is not None:
                self._remove(remote, there)
            self.client.symlink(target, remote)
        elif stat.S_ISREG(st.st_mode):
            if (
                there is not None
                and stat.S_ISREG(there.st_mode or 0)
                and _same(st.st_size, st.st_mtime, there.st_size, there.st_mtime)
            ):
                return
            if there is not None and not stat.S_ISREG(there.st_mode or 0):
                self._remove(remote, there)
            self._file(local, parent, name, st, here)
        else:
            raise OSError(errno.EINVAL, f"{local}: neither a file, a directory nor a symlink")

    def _remove(self, remote: str, attr: paramiko.SFTPAttributes) -> None:
        if stat.S_ISDIR(attr.st_mode or 0):
            for child in self.client.listdir_attr(remote):
                self._remove(f"{remote}/{child.filename}", child)
            self.client.rmdir(remote)
        else:
            self.client.remove(remote)

    def _file(
        self, local: str, parent: str, name: str, st: os.stat_result, here: dict[str, paramiko.SFTPAttributes]
    ) -> None:
        final = f"{parent.rstrip('/')}/{name}"
        if st.st_size < BIG:
            self._write(local, final, st, 0)
            return
        temp = f"{parent.rstrip('/')}/{temporary(name)}"
        offset = self._resume(local, parent, name, st, here, temp)
        self._write(local, temp, st, offset, partial=f"{parent.rstrip('/')}/{PARTIAL_DIR}/{name}")
        self.client.posix_rename(temp, final)

    def _candidates(
        self, parent: str, name: str, here: dict[str, paramiko.SFTPAttributes]
    ) -> Iterator[tuple[str, paramiko.SFTPAttributes]]:
        """What earlier runs left of `name`: its temporary files, its partial file."""
        for other, attr in here.items():
            if is_temporary_of(other, name):
                yield f"{parent.rstrip('/')}/{other}", attr
        if PARTIAL_DIR in here:
            partial_dir = f"{parent.rstrip('/')}/{PARTIAL_DIR}"
            partial = self._listing(partial_dir).get(name)
            if partial is not None:
                yield f"{partial_dir}/{name}", partial

    def _resume(
        self,
        local: str,
        parent: str,
        name: str,
        st: os.stat_result,
        here: dict[str, paramiko.SFTPAttributes],
        temp: str,
    ) -> int:
        """The offset to write from: a checked partial copy renamed to `temp`, or 0 (the others removed)."""
        best: tuple[int, str] | None = None
        for path, attr in sorted(self._candidates(parent, name, here), key=lambda c: -(c[1].st_size or 0)):
            size = attr.st_size or 0
            good = (
                best is None
                and stat.S_ISREG(attr.st_mode or 0)
                and 0 < size <= st.st_size
                and (attr.st_mtime or 0) >= int(st.st_mtime)
                and _tail_matches(
                    self._remote_tail(path, max(0, size - TAIL), min(size, TAIL)),
                    _local_tail(local, max(0, size - TAIL), min(size, TAIL)),
                )
            )
            if good:
                best = (size, path)
            else:
                self.client.remove(path)
        if best is None:
            return 0
        log.info(
            "%s: resuming the push from the %d of %d bytes an earlier run left", name, best[0], st.st_size
        )
        self.client.posix_rename(best[1], temp)
        try:
            self.client.rmdir(f"{parent.rstrip('/')}/{PARTIAL_DIR}")
        except OSError:
            pass  # not there, or holds other partial files
        return best[0]

    def _write(
        self, local: str, remote: str, st: os.stat_result, offset: int, partial: str | None = None
    ) -> None:
        """Write `local` from `offset` into `remote`; a stop moves it to `partial` (if given)."""
        with open(local, "rb") as src, self.client.open(remote, "r+b" if offset else "wb") as f:
            f.set_pipelined(True)
            f.MAX_REQUEST_SIZE = WRITE_REQUEST
            if offset:
                src.seek(offset)
                f.seek(offset)
            try:
                while True:
                    self.check()
                    block = src.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                self._set_attrs(f, st.st_mode, st.st_mtime)
            except Stopped:
                f.close()
                if partial is not None:
                    self._keep_partial(remote, partial)
                raise

    def _keep_partial(self, temp: str, partial: str) -> None:
        """A stop: the temporary file into the partial dir, which central's sweep leaves to a live
        entry (a temporary file it would sweep after a minute)."""
        try:
            self.client.mkdir(partial.rsplit("/", 1)[0], 0o700)
        except OSError:
            pass  # there already
        self.client.posix_rename(temp, partial)


class Puller(_Copier):
    """central -> download."""

    def entry(self, remote: str, local: str) -> None:
        try:
            attr = self.client.lstat(remote)
        except FileNotFoundError:
            self.failures.append(Missing(remote))
            return
        self._node(remote, local, attr)

    def _node(self, remote: str, local: str, attr: paramiko.SFTPAttributes) -> None:
        self.check()
        mode = attr.st_mode or 0
        try:
            there: os.stat_result | None = os.lstat(local)
        except FileNotFoundError:
            there = None
        if stat.S_ISDIR(mode):
            if there is not None and not stat.S_ISDIR(there.st_mode):
                os.unlink(local)
            os.makedirs(local, mode=0o700, exist_ok=True)
            for child in sorted(self.client.listdir_attr(remote), key=lambda a: a.filename):
                self._node(f"{remote}/{child.filename}", os.path.join(local, child.filename), child)
            os.chmod(local, stat.S_IMODE(mode))
            os.utime(local, (attr.st_atime or 0, attr.st_mtime or 0))
        elif stat.S_ISLNK(mode):
            target = self.client.readlink(remote)
            if there is not None and stat.S_ISLNK(there.st_mode) and os.readlink(local) == target:
                return
            if there is not None:
                os.unlink(local)
            os.symlink(target or "", local)
        elif stat.S_ISREG(mode):
            if there is not None and _same(
                attr.st_size or 0, attr.st_mtime or 0, there.st_size, there.st_mtime
            ):
                return
            self._file(remote, local, attr)
        else:
            raise OSError(errno.EINVAL, f"{remote} on central: neither a file, a directory nor a symlink")

    def _file(self, remote: str, local: str, attr: paramiko.SFTPAttributes) -> None:
        size = attr.st_size or 0
        if size < BIG:
            with open(local, "wb") as out:
                self._read_into(remote, out, 0, size)
            self._finish(local, attr)
            return
        parent, name = os.path.split(local)
        temp = os.path.join(parent, temporary(name))
        offset = self._resume(remote, parent, name, attr, temp)
        try:
            with open(temp, "r+b" if offset else "xb") as out:
                out.seek(offset)
                self._read_into(remote, out, offset, size)
        except BaseException:
            _keep_local_partial(temp, parent, name)
            raise
        self._finish(temp, attr)
        os.rename(temp, local)

    def _resume(self, remote: str, parent: str, name: str, attr: paramiko.SFTPAttributes, temp: str) -> int:
        size = attr.st_size or 0
        candidates = [os.path.join(parent, n) for n in os.listdir(parent) if is_temporary_of(n, name)]
        candidates.append(os.path.join(parent, PARTIAL_DIR, name))
        best: tuple[int, str] | None = None
        for path in candidates:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            good = (
                best is None
                and stat.S_ISREG(st.st_mode)
                and 0 < st.st_size <= size
                and st.st_mtime >= int(attr.st_mtime or 0)
                and _tail_matches(
                    _local_tail(path, max(0, st.st_size - TAIL), min(st.st_size, TAIL)),
                    self._remote_tail(remote, max(0, st.st_size - TAIL), min(st.st_size, TAIL)),
                )
            )
            if good and best is None:
                best = (st.st_size, path)
            else:
                os.unlink(path)
        if best is None:
            return 0
        log.info("%s: resuming the pull from the %d of %d bytes an earlier run left", name, best[0], size)
        os.rename(best[1], temp)
        try:
            os.rmdir(os.path.join(parent, PARTIAL_DIR))
        except OSError:
            pass
        return best[0]

    def _read_into(self, remote: str, out: BinaryIO, offset: int, size: int) -> int:
        """Append `remote` from `offset` to `size` to the open file `out`; the bytes written."""
        if size <= offset:
            return 0
        done = 0
        with self.client.open(remote, "rb") as f:
            f.MAX_REQUEST_SIZE = READ_REQUEST
            f.seek(offset)
            f.prefetch(size)
            while offset + done < size:
                self.check()
                block = f.read(min(CHUNK, size - offset - done))
                if not block:
                    break
                out.write(block)
                done += len(block)
        return done

    def _finish(self, local: str, attr: paramiko.SFTPAttributes) -> None:
        os.chmod(local, stat.S_IMODE(attr.st_mode or 0o600))
        os.utime(local, (attr.st_atime or 0, attr.st_mtime or 0))

    def append(self, remote: str, local: str) -> None:
        """Append to `local` what `remote` has beyond its length (early pulls)."""
        try:
            attr = self.client.stat(remote)
        except FileNotFoundError:
            raise Missing(remote) from None
        try:
            have = os.lstat(local).st_size
        except FileNotFoundError:
            have = 0
        with open(local, "ab") as out:
            wrote = self._read_into(remote, out, have, attr.st_size or 0)
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
