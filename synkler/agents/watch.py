"""Noticing changes in upload's file_dir at once, through Linux inotify (synkler.linux.inotify).

Only the top level is watched: a new name, a rename into the directory, a closed write, a change of
attributes or a removal. The watcher keeps the names events told of, for upload to look at those
names only (not the whole directory); changes deep inside a directory entry are caught by the
settle re-check that follows any change, and a slow periodic rescan stays as the backstop (and the
only mechanism where inotify is unavailable). When files come faster than inotify can queue their
events (fs.inotify.max_queued_events, 16,384 by default), the kernel drops events and says so
(IN_Q_OVERFLOW): the watcher then asks for a listing of the whole directory, so nothing is missed;
it says so in the log once (again at most every OVERFLOW_REPEAT s, with the number of overflows
since). An event about the directory itself (moved, removed, its attributes) asks for a whole
listing too. The watcher also remembers which files were renamed into the directory and left alone
since, so upload can tell a file put in place whole from one still being written where it stands.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from typing import Callable

from ..linux.inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    Inotify,
    max_queued_events,
)
from ..metadata import entry_of, is_sidecar
from ..text import shown

log = logging.getLogger(__name__)

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


OVERFLOW_REPEAT = 600.0  # seconds between two log lines about lost events


class DirWatcher:
    """Calls `on_change()` from a background thread whenever something happens in `path`."""

    def __init__(self, path: str, on_change: Callable[[], None]):
        self.path = path
        self.on_change = on_change
        # Files whose last event was their rename into `path` (nothing written, changed, created
        # or removed under that name since); emptied by take_renamed and by a lost event.
        self._renamed: set[str] = set()
        self._names: set[str] = set()  # names events told of since take_changes
        # Entries whose sidecars events told of since take_sidecars (None: events were lost since).
        self._sidecars: set[str] | None = set()
        self._whole = False  # events were lost (or were about the directory): list it whole
        self._lock = threading.Lock()
        self._inotify: Inotify | None = None
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None
        self.overflows = 0  # times the kernel dropped events since the start
        self._overflow_said = float("-inf")  # when the log last said so
        self._overflows_said = 0  # overflows the log has told of

    def start(self) -> bool:
        """Begin watching; False (and a debug line) where inotify cannot be used."""
        inotify = None
        try:
            inotify = Inotify()
            inotify.watch(self.path, _MASK)
        except OSError as e:
            if inotify is not None:
                inotify.close()
            log.debug("inotify unavailable for %s (%s); relying on periodic rescans", self.path, e)
            return False
        self._inotify = inotify
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, args=(inotify,), name="watch", daemon=True)
        self._thread.start()
        return True

    def take_renamed(self) -> set[str]:
        """The names of files renamed into the directory with no event on them since, as far as the
        events read so far tell; each name is handed out once."""
        with self._lock:
            names, self._renamed = self._renamed, set()
        return names

    def take_sidecars(self) -> set[str] | None:
        """The entries whose sidecars (NAME.meta.json) events told of since the last call (written,
        replaced or removed), each handed out once; None if events were lost (or were about the
        directory) since: any entry may have one. Upload's scan asks the file system for the
        sidecars of these and of those it found before, not for every name (synkler.agents.listing)."""
        with self._lock:
            names, self._sidecars = self._sidecars, set()
        return names

    def take_changes(self) -> tuple[set[str], bool]:
        """The names events told of since the last call, and whether the directory must be listed
        whole (events were lost, or one was about the directory itself); each is handed out once."""
        with self._lock:
            names, self._names = self._names, set()
            whole, self._whole = self._whole, False
        return names, whole

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join()
        if self._inotify is not None:
            self._inotify.close()
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        self._thread = None

    def _run(self, inotify: Inotify) -> None:
        while True:
            ready, _, _ = select.select([inotify.fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                events = inotify.events()
            except OSError as e:
                if e.errno != errno.EINTR:
                    log.warning("inotify on %s failed (%s); relying on periodic rescans", self.path, e)
                    return
                events = []
            with self._lock:
                for _wd, mask, _cookie, name in events:
                    self._take(mask, os.fsdecode(name) if name else "")
            self.on_change()

    def _take(self, mask: int, name: str) -> None:
        """One event (under the lock)."""
        if mask & IN_Q_OVERFLOW:
            self._renamed.clear()  # events were lost: no name is known to be whole
            self._sidecars = None  # nor known to have no sidecar
            self._whole = True
            self._overflowed()
            return
        if not name:  # the directory itself (moved, removed, its attributes)
            self._sidecars = None
            self._whole = True
            return
        self._names.add(name)
        if self._sidecars is not None and is_sidecar(name):
            self._sidecars.add(entry_of(name))
        if mask & IN_MOVED_TO and not mask & IN_ISDIR:
            self._renamed.add(name)
        else:
            self._renamed.discard(name)

    def _overflowed(self) -> None:
        """The kernel dropped events: the scan that follows finds what they told of. Said once, not
        at every overflow of a burst of files (there is one each time the queue fills)."""
        self.overflows += 1
        now = time.monotonic()
        if now - self._overflow_said < OVERFLOW_REPEAT:
            return
        since = self.overflows - self._overflows_said
        self._overflow_said, self._overflows_said = now, self.overflows
        limit = max_queued_events()
        log.warning(
            "files came faster than inotify could tell of them (its queue of %s events overflowed%s) in "
            "%s: rescanning the directory whole, so none is missed, only noticed later. Said at most "
            "every %d minutes; raise fs.inotify.max_queued_events if this comes often",
            "unknown" if limit is None else f"{limit:,}",
            "" if since == 1 else f" {since:,} times since this was last said",
            shown(self.path),
            OVERFLOW_REPEAT // 60,
        )
