"""Single-instance guard for agents started repeatedly from cron.

Cron starts an agent every few minutes; while a previous run is still alive
the new one must notice at once and exit 0.  Liveness is decided by an
exclusive flock held on the pidfile for the life of the owner, not by the pid
written in it: the kernel drops the lock when the owner dies in any way (even
SIGKILL), so a stale file never blocks a new run and a recycled pid never
fools it.  The pid inside is for humans and error messages.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
from types import TracebackType
from typing import TYPE_CHECKING, Union

from ..errors import PidfileError
from ..linux.process import read_pid
from ..private import make_dirs, tighten

if TYPE_CHECKING:  # annotations only: typing.Self needs 3.11, the package supports 3.9
    from typing_extensions import Self

PathLike = Union[str, os.PathLike]

# How many times to retry when the file is unlinked or replaced between our open and our lock.
_MAX_ATTEMPTS = 10


def holder(path: PathLike) -> int | None:
    """The pid of the live process that holds the pidfile open (its owner), or None.

    It looks and never locks: a probe that took the lock even for a moment could make an agent that
    starts right then believe another one runs, and exit. A process of another user whose open files
    cannot be read counts as the owner if it is alive.
    """
    pid = read_pid(path)
    if pid is None:
        return None
    try:
        st = os.stat(path)
        fds = os.listdir(f"/proc/{pid}/fd")
    except PermissionError:
        return pid
    except OSError:
        return None
    for fd in fds:
        try:
            opened = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (opened.st_dev, opened.st_ino) == (st.st_dev, st.st_ino):
            return pid
    return None


class Pidfile:
    """An flock-guarded pidfile; acquire() says whether this process is now the only instance.

    The lock belongs to the open file description, so a second Pidfile on the
    same path in the same process is refused just like another process is.
    After fork() the child shares the lock but release() in the child will not
    remove the parent's file.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None
        self._owner_pid: int | None = None

    @property
    def held(self) -> bool:
        """True while this object owns the pidfile."""
        return self._fd is not None

    def _fail(self, what: str, exc: OSError) -> PidfileError:
        reason = exc.strerror or str(exc)
        return PidfileError(f"{self.path}: cannot {what}: {reason}")

    def acquire(self) -> bool:
        """Take the pidfile: True if we own it now (our pid written), False if a live process holds it.

        A file left by a dead owner, or holding garbage, is simply taken over.
        Raises PidfileError when the file cannot be created or written.
        """
        if self._fd is not None:
            return True
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            make_dirs(parent)
        except FileExistsError:
            pass  # something that is not a directory: the open below reports it precisely
        except OSError as exc:
            raise self._fail(f"create directory {parent}", exc) from exc
        for _ in range(_MAX_ATTEMPTS):
            try:
                # O_NOFOLLOW: never write our pid through a symlink someone planted.
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                raise self._fail("open pidfile", exc) from exc
            try:
                taken = self._take(fd)
            except BaseException:
                try:
                    os.close(fd)
                except OSError:
                    pass
                raise
            if taken is None:
                continue
            if not taken:
                return False
            self._fd = fd
            self._owner_pid = os.getpid()
            atexit.register(self.release)
            return True
        raise PidfileError(f"{self.path}: cannot lock pidfile: it keeps being replaced by another process")

    def _take(self, fd: int) -> bool | None:
        """Lock the open pidfile `fd` and write our pid: True. False: a live process holds it; None:
        the file was replaced meanwhile, try again (both close `fd`)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                return False
            raise self._fail("lock pidfile", exc) from exc
        # The previous owner may have unlinked the file (release) between our open and
        # our lock; then we locked an orphan inode and must start again on the new one.
        try:
            current = os.lstat(self.path)
        except FileNotFoundError:
            os.close(fd)
            return None
        except OSError as exc:
            raise self._fail("stat pidfile", exc) from exc
        mine = os.fstat(fd)
        if (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev):
            os.close(fd)
            return None
        self._write_pid(fd)
        return True

    def _write_pid(self, fd: int) -> None:
        try:
            tighten(fd, self.path)  # left 0644 by an older synkler
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            os.fsync(fd)
        except OSError as exc:
            raise self._fail("write pidfile", exc) from exc

    def fileno(self) -> int:
        """The locked file's descriptor (to keep it open across a daemon's detach)."""
        if self._fd is None:
            raise PidfileError(f"{self.path}: not held")
        return self._fd

    def adopt(self) -> None:
        """In a child forked after acquire(): make this process the owner, its pid in the file.

        For a daemon's detach: the lock belongs to the open file description the processes share,
        so it never lapses between the launcher and the daemon, and a second start sees it all
        along. release() then removes the file in this process only.
        """
        fd = self.fileno()
        self._write_pid(fd)
        self._owner_pid = os.getpid()

    def release(self) -> None:
        """Remove the pidfile if we own it and drop the lock; safe to call any number of times.

        The file is unlinked while still locked, so a process waiting to take
        over sees the inode change and retries on a fresh file instead of
        believing it owns a deleted one.  A file replaced by someone else, or
        a release from a forked child, leaves the path alone.
        """
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            atexit.unregister(self.release)
            if self._owner_pid == os.getpid():
                try:
                    current = os.lstat(self.path)
                    mine = os.fstat(fd)
                    if (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                        os.unlink(self.path)
                except FileNotFoundError:
                    pass
        finally:
            self._owner_pid = None
            os.close(fd)

    def __enter__(self) -> Self:
        """Acquire or raise PidfileError naming the holder, for code that must not run twice."""
        if not self.acquire():
            pid = read_pid(self.path)
            holder = f"pid {pid}" if pid is not None else "another process"
            raise PidfileError(f"{self.path} is held by {holder}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Pidfile({self.path!r}, held={self.held})"
