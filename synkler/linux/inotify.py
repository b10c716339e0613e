"""Linux inotify through ctypes (no dependency): watches on directories and their events.

Upload's DirWatcher (synkler.agents.watch) and the md5 followers (synkler.hops.follow) read events
through `Inotify`.
"""

from __future__ import annotations

import errno
import os
import struct

from . import libc

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


def max_queued_events() -> int | None:
    """The kernel's limit of events queued on one inotify instance (fs.inotify.max_queued_events;
    16,384 by default), beyond which it drops them and queues IN_Q_OVERFLOW; None if unknown."""
    try:
        with open("/proc/sys/fs/inotify/max_queued_events") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class Inotify:
    """One inotify instance: watches on directories, and their events with the names in them.

    Raises OSError where inotify cannot be used (not Linux, out of watches or instances).
    """

    def __init__(self) -> None:
        try:
            self._libc = libc.load()
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except AttributeError as e:
            raise OSError(errno.ENOSYS, f"no inotify here ({e})") from None
        if fd < 0:
            raise libc.errno_error()
        self.fd = fd

    def watch(self, path: str, mask: int) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise libc.errno_error(path)
        return wd

    def events(self) -> list[tuple[int, int, int, bytes]]:
        """The events queued now, as (watch, mask, cookie, name); [] if there are none. Never blocks."""
        out: list[tuple[int, int, int, bytes]] = []
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return out
            if not data:
                return out
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                out.append((wd, mask, cookie, data[offset : offset + length].rstrip(b"\0")))
                offset += length

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
