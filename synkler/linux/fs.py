"""Filesystem primitives that never lose or overwrite data.

synkler moves entries between its spool directories by rename, and a plain
rename(2) silently replaces a file (or an empty directory) that is already at
the destination.  rename_noreplace asks the kernel to refuse instead, so an
entry that arrives twice can never clobber the first copy.  remove_tree and
the space helpers exist here so every module removes and measures trees the
same careful way.

Linux only: renameat2(2) is reached through ctypes because the os module does
not expose its flags.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import platform
import signal
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Union

from . import libc

PathLike = Union[str, bytes, os.PathLike]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1

# Raw syscall numbers, used only when the C library has no renameat2() wrapper (glibc < 2.28).
_SYS_RENAMEAT2: dict[str, int] = {"x86_64": 316, "aarch64": 276, "riscv64": 276}


@functools.cache
def _renameat2() -> Any:
    """The C library's renameat2() with its argument types set (once: setting them costs more than
    the call), or None where it has none."""
    func = getattr(libc.load(), "renameat2", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        func.restype = ctypes.c_int
    return func


def _renameat2_noreplace(src: bytes, dst: bytes) -> None:
    """Call renameat2(AT_FDCWD, src, AT_FDCWD, dst, RENAME_NOREPLACE); raise OSError on failure.

    Raises OSError(ENOSYS) when neither a libc wrapper nor a known syscall
    number is available, so the caller can fall back.
    """
    func = _renameat2()
    if func is not None:
        result = func(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE)
    else:
        number = _SYS_RENAMEAT2.get(platform.machine())
        if number is None:
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), os.fsdecode(src), None, os.fsdecode(dst))
        syscall = libc.load().syscall
        syscall.restype = ctypes.c_long
        result = syscall(
            ctypes.c_long(number),
            ctypes.c_int(_AT_FDCWD),
            ctypes.c_char_p(src),
            ctypes.c_int(_AT_FDCWD),
            ctypes.c_char_p(dst),
            ctypes.c_uint(_RENAME_NOREPLACE),
        )
    if result != 0:
        raise libc.errno_error(os.fsdecode(src), os.fsdecode(dst))


def _exists_error(dst: bytes) -> FileExistsError:
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dst))


def _rename_fallback(src: bytes, dst: bytes) -> None:
    """Best-effort no-replace rename for kernels or filesystems without RENAME_NOREPLACE.

    Files and symlinks are hard-linked to the new name first: link(2) fails
    with EEXIST atomically, so this path is as safe as renameat2.  Directories
    cannot be hard-linked, so they are checked with lexists() and then renamed:
    if something creates dst (a file, a symlink or an empty directory) in the
    instant between the check and the rename, rename(2) may replace it (an
    empty directory) or fail (anything else).  The same check-then-rename is
    used for a non-directory on a filesystem that refuses hard links.
    """
    st = os.lstat(src)
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            raise _exists_error(dst) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
        else:
            try:
                os.unlink(src)
            except BaseException:
                # Leave things as they were rather than with the data under two names.
                os.unlink(dst)
                raise
            return
    if os.path.lexists(dst):
        raise _exists_error(dst)
    os.rename(src, dst)


def rename_noreplace(src: PathLike, dst: PathLike) -> None:
    """Atomically rename src to dst, raising FileExistsError if anything at all is at dst.

    Works for files, directories and symlinks (never followed), within one
    filesystem like rename(2).  Where the kernel or filesystem lacks
    RENAME_NOREPLACE (ENOSYS, or EINVAL) a fallback is used whose only weakness
    is a short race for directories, described in _rename_fallback.
    """
    s = os.fsencode(src)
    d = os.fsencode(dst)
    if b"\0" in s or b"\0" in d:
        # ctypes would silently cut the path at the NUL and rename something else.
        raise ValueError("embedded null byte in path")
    try:
        _renameat2_noreplace(s, d)
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
        _rename_fallback(s, d)


def fsync_dir(path: PathLike) -> None:
    """fsync a directory so renames and creations inside it survive a crash.

    Filesystems that cannot fsync a directory answer EINVAL; that means there
    is nothing to flush, so it is not an error.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


WRITE_THREADS = 8  # files of one batch written at once


def write_whole(files: dict[str, bytes]) -> dict[str, OSError]:
    """Write each file (path -> bytes, 0600) whole or not at all: a temporary file beside it, fsync,
    rename; then each directory is flushed once. A few one by one, more WRITE_THREADS at once: their
    waits on the disk overlap, and a journaling file system (ext4, XFS) commits them together (200
    small files in 0.3 s instead of 1.2 s, on ext4 on the machine of docs/performance.md). What
    could not be written, with why; the others are written.
    """
    failed: dict[str, OSError] = {}
    items = list(files.items())
    if len(items) <= WRITE_THREADS // 2:
        errors = [_write_whole(item) for item in items]
    else:
        errors = list(_write_pool().map(_write_whole, items))
    for (path, _), error in zip(items, errors):
        if error is not None:
            failed[path] = error
    for directory in {os.path.dirname(path) for path in files if path not in failed}:
        try:
            fsync_dir(directory)
        except OSError as e:
            failed.update((path, e) for path in files if os.path.dirname(path) == directory)
    return failed


@functools.cache
def _write_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="write")


def _write_whole(item: tuple[str, bytes]) -> OSError | None:
    path, data = item
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return e
    return None


def open_for_writing(path: PathLike) -> bool | None:
    """Does any process hold the regular file at `path` open for writing (or mapped writable)?

    The kernel grants a read lease only while nobody has the file open for writing; the lease is
    asked for and dropped at once. None: cannot tell (not a regular file, a symlink, leases off or
    unsupported on this filesystem, neither the file's owner nor CAP_LEASE, ...).
    """
    return written_or_stat(path)[0]


def written_or_stat(path: PathLike) -> tuple[bool | None, os.stat_result | None]:
    """open_for_writing's answer and, when it is False, the file's fstat taken while the lease was
    held (no writer had it open then: the fingerprint of the whole file, without another lstat).

    The fstat is of the file opened without following a symlink, so the same inode an lstat of
    `path` would tell of (unless the name was replaced meanwhile: then of the file the answer is of).
    """
    try:
        # O_NONBLOCK: where someone holds a write lease (Samba's oplocks), fail instead of waiting.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return (True if exc.errno == errno.EWOULDBLOCK else None), None
    try:
        # A writer opening the file in the microseconds we hold the lease makes the kernel signal
        # us: SIGURG, ignored by default, instead of SIGIO, whose default action would kill us.
        # The kernel leases regular files only (EINVAL for anything else: cannot tell).
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        st = os.fstat(fd)
    except OSError as exc:
        return (True if exc.errno == errno.EAGAIN else None), None
    finally:
        os.close(fd)  # drops the lease
    return (False, st) if stat.S_ISREG(st.st_mode) else (None, None)


def free_bytes(path: PathLike) -> int:
    """Bytes an unprivileged user may still write on path's filesystem (root's reserve excluded)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def total_bytes(path: PathLike) -> int:
    """Size in bytes of path's filesystem."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def usable_bytes(path: PathLike) -> int:
    """What an unprivileged user could write on path's filesystem were it empty (its size less
    root's reserve)."""
    st = os.statvfs(path)
    return (st.f_blocks - (st.f_bfree - st.f_bavail)) * st.f_frsize


# ---------------------------------------------------------------------------
# remove_tree
# ---------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _make_writable(fd: int) -> None:
    """Give the owner rwx on an open directory so its entries can be listed and removed."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o700 != 0o700:
        os.fchmod(fd, mode | 0o700)


def _open_dir(name: str | bytes, dir_fd: int | None) -> int:
    """Open a directory for listing without following a symlink.

    On EACCES the parent may lack search permission (mode 0o600), which is
    fixed through its fd.  A directory without read permission for us (0o000,
    0o300) can't be opened to fix it through its own fd, so it is chmod-ed by
    name after lstat confirmed it is a directory; between the two a symlink
    swapped in by someone else would be followed by chmod (never by anything
    that deletes).
    """
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        if dir_fd is not None:
            _make_writable(dir_fd)
        st = os.lstat(name, dir_fd=dir_fd)
        if not stat.S_ISDIR(st.st_mode):
            raise
        os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _remove_at(name: str | bytes, dir_fd: int | None, is_dir: bool) -> None:
    """unlink/rmdir one name; on EACCES/EPERM make the parent writable and retry once.

    The top-level path (dir_fd None) is never retried: its parent is outside
    the tree and not ours to chmod.
    """
    remove = os.rmdir if is_dir else os.unlink
    try:
        remove(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except PermissionError:
        if dir_fd is None:
            raise
        _make_writable(dir_fd)
        try:
            remove(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return


class _Frame:
    """One directory being emptied: its fd, its remaining entries, and how to remove it afterwards."""

    __slots__ = ("entries", "fd", "name", "parent_fd")

    def __init__(self, fd: int, name: str | bytes, parent_fd: int | None) -> None:
        self.fd = fd
        self.name = name
        self.parent_fd = parent_fd
        with os.scandir(fd) as listing:
            self.entries = iter([(e.name, e.is_dir(follow_symlinks=False)) for e in listing])


def _push(stack: list[_Frame], fd: int, name: str | bytes, parent_fd: int | None) -> None:
    """Put the directory open as `fd` on the stack of those being emptied (`fd` closed if that fails)."""
    try:
        stack.append(_Frame(fd, name, parent_fd))
    except BaseException:
        os.close(fd)
        raise


def remove_tree(path: PathLike) -> None:
    """Delete a file, symlink or whole directory tree; a missing path is not an error.

    Symlinks are removed, never followed, at the top and inside, and all work
    inside the tree goes through directory fds opened with O_NOFOLLOW, so a
    link swapped in during the removal cannot redirect it outside the tree.
    A directory inside that refuses us (rsync -a keeps modes such as 0o555 or
    0o000) is given owner rwx and the step retried.  An explicit stack replaces recursion, so depth
    is limited only by open file descriptors (one per level).
    """
    top = os.fsencode(path)
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _remove_at(top, None, is_dir=False)
        return
    stack: list[_Frame] = []
    try:
        _push(stack, _open_dir(top, None), top, None)
        while stack:
            frame = stack[-1]
            descended = False
            for name, is_dir in frame.entries:
                if is_dir:
                    try:
                        fd = _open_dir(name, frame.fd)
                    except FileNotFoundError:
                        continue
                    _push(stack, fd, name, frame.fd)
                    descended = True
                    break
                _remove_at(name, frame.fd, is_dir=False)
            if descended:
                continue
            stack.pop()
            os.close(frame.fd)
            _remove_at(frame.name, frame.parent_fd, is_dir=True)
    finally:
        for frame in stack:
            os.close(frame.fd)
