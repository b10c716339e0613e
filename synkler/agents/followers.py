"""Central's followers: at most `limit` big files hashed while upload pushes them (synkler.hops.follow).

The main loop starts and stops them; a verify job takes its entry's follower from a worker thread,
hence the lock. A follower that gave up on its own (nothing arrived for a while) frees its place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..hops.follow import Follower


class Followers:
    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._running: dict[str, Follower] = {}  # entry id -> its follower

    def __contains__(self, entry_id: str) -> bool:
        with self._lock:
            return entry_id in self._running

    def start(
        self, entry_id: str, directory: str, name: str, kind: str, on_open: Callable[[int], None] | None
    ) -> None:
        """Follow `name` in `directory` for the entry, if there is a free place and it has none."""
        with self._lock:
            if len(self._running) >= self.limit or entry_id in self._running:
                return
            self._running[entry_id] = Follower(directory, name, kind, on_open=on_open).start()

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
