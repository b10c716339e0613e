"""Noticing changes in upload's file_dir at once, through Linux inotify (via ctypes, no dependency).

Only the top level is watched: a new name, a rename into the directory, a closed write, a change of
attributes or a removal. Changes deep inside a directory entry are caught by the settle re-check
that follows any change, and a slow periodic rescan stays as the backstop (and the only mechanism
where inotify is unavailable).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import threading
from typing import Callable

log = logging.getLogger(__name__)

IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_MASK = (
    IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)


class DirWatcher:
    """Calls `on_change()` from a background thread whenever something happens in `path`."""

    def __init__(self, path: str, on_change: Callable[[], None]):
        self.path = path
        self.on_change = on_change
        self._fd = -1
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Begin watching; False (and a debug line) where inotify cannot be used."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            if libc.inotify_add_watch(fd, os.fsencode(self.path), _MASK) < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, os.strerror(err))
        except (OSError, AttributeError) as e:
            log.debug("inotify unavailable for %s (%s); relying on periodic rescans", self.path, e)
            return False
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)
        self._thread = None

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                while os.read(self._fd, 64 * 1024):  # the events themselves do not matter: something changed
                    pass
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno != errno.EINTR:
                    log.warning("inotify on %s failed (%s); relying on periodic rescans", self.path, e)
                    return
            self.on_change()
