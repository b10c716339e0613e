"""Central's followers: at most `limit` big files hashed while upload pushes them (synkler.hops.follow).

The main loop starts and stops them; a verify job takes its entry's follower from a worker thread,
hence the lock. A follower that gave up on its own (nothing arrived for a while) frees its place.

A follower of a file download may pull early links rsync's temporary file where download can read
it as soon as it opens it (`link`, on the follower's thread); the entries whose push has begun so
are kept for the main loop (`begun`), which tells download (`pushing`), and the loop is woken
(`wake`) so that it does at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..hops.follow import Follower

Link = Callable[[str, int], bool]  # (entry id, fd of rsync's temporary file) -> linked


class Followers:
    def __init__(self, limit: int, wake: Callable[[], None] | None = None):
        self.limit = limit
        self.wake = wake
        self._lock = threading.Lock()
        self._running: dict[str, Follower] = {}  # entry id -> its follower
        self._begun: dict[str, None] = {}  # entries whose push began and was linked, in order

    def __contains__(self, entry_id: str) -> bool:
        with self._lock:
            return entry_id in self._running

    def start(self, entry_id: str, directory: str, name: str, kind: str, link: Link | None) -> None:
        """Follow `name` in `directory` for the entry, if there is a free place and it has none;
        with `link`, link each temporary file of it that rsync begins for an early pull."""
        with self._lock:
            if len(self._running) >= self.limit or entry_id in self._running:
                return
            on_open = None if link is None else lambda fd: self._opened(entry_id, fd, link)
            self._running[entry_id] = Follower(directory, name, kind, on_open=on_open).start()

    def _opened(self, entry_id: str, fd: int, link: Link) -> None:
        """On the follower's thread: a push (or a new try of it) has begun."""
        if not link(entry_id, fd):
            return
        with self._lock:
            self._begun[entry_id] = None
        if self.wake is not None:
            self.wake()

    def begun(self) -> list[str]:
        """The entries whose push began (and was linked) since the last call, oldest first."""
        with self._lock:
            begun, self._begun = list(self._begun), {}
        return begun

    def ended(self) -> list[str]:
        """The entries whose followers stopped on their own (they still hold their places)."""
        with self._lock:
            return [entry_id for entry_id, follower in self._running.items() if follower.ended]

    def free(self) -> int:
        with self._lock:
            return self.limit - len(self._running)

    def take(self, entry_id: str) -> Follower | None:
        """The entry's follower, no longer counted here (any thread): its taker finishes it."""
        with self._lock:
            return self._running.pop(entry_id, None)

    def stop(self, entry_id: str) -> None:
        follower = self.take(entry_id)
        if follower is not None:
            follower.stop()

    def stop_all(self) -> None:
        with self._lock:
            followers, self._running = list(self._running.values()), {}
        for follower in followers:
            follower.stop()
