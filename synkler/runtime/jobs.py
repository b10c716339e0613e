"""Jobs: the worker pools, the keys running jobs hold busy, and the results waiting for the main loop.

A job runs on a worker thread and never touches the broker or the database: it returns a value (or
raises), which waits in a queue until the main loop hands it to the job's callback, inside a
transaction. A job starts only once the state change that led to it is committed.
"""

from __future__ import annotations

import functools
import logging
import queue
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from ..agents.base import Done, Key
from ..agents.pools import Pool
from ..errors import Interrupted
from ..state import State

T = TypeVar("T")

log = logging.getLogger("synkler")


class Workers:
    """The worker pools of one agent, and what its running jobs hold."""

    def __init__(self, state: State, max_transfers: int, wake: Callable[[], None]):
        self.state = state
        self.wake = wake  # makes the main loop pass soon (from a worker thread)
        # finished jobs: (pool, keys, done, outcome, error)
        self._done: queue.Queue[tuple[Pool, tuple[Key, ...], Done[Any], Any, BaseException | None]] = (
            queue.Queue()
        )
        threads = {
            Pool.TRANSFER: max_transfers,
            Pool.HASH: 2,
            # Its own thread, so noticing new entries never waits behind the md5 of a big one.
            Pool.SCAN: 1,
            Pool.SCRIPT: 1,
            Pool.REMOVE: 1,
            # Notices (synkler.observe.alerts): a send that hangs never holds up the relay, nor its stop.
            Pool.ALERT: 1,
        }
        self._pools = {
            pool: ThreadPoolExecutor(n, thread_name_prefix=pool.value) for pool, n in threads.items()
        }
        self._busy: set[Key] = set()  # what running jobs hold
        self.transfers = 0  # rsync runs going on

    def submit(self, pool: Pool, keys: Sequence[Key], work: Callable[[], T], done: Done[T]) -> None:
        """Run `work` on a worker thread; `done(outcome, error)` then runs in the main loop, in a
        transaction (`record`). `keys` are busy until `done` has run.

        The job starts only once the state change that led here is committed (State.after_commit);
        a rolled-back change starts nothing and leaves nothing busy.
        """
        self.state.after_commit(functools.partial(self._start, pool, tuple(keys), work, done))

    def busy(self, key: Key) -> bool:
        return key in self._busy

    def _start(self, pool: Pool, keys: tuple[Key, ...], work: Callable[[], T], done: Done[T]) -> None:
        self._busy.update(keys)
        if pool == Pool.TRANSFER:
            self.transfers += 1
        self._pools[pool].submit(self._run, pool, keys, work, done)

    def _run(self, pool: Pool, keys: tuple[Key, ...], work: Callable[[], T], done: Done[T]) -> None:
        """On a worker thread: run the job and hand its outcome to the main loop."""
        try:
            outcome, error = work(), None
        except BaseException as e:  # handed to the main loop, which decides
            outcome, error = None, e
        self._done.put((pool, keys, done, outcome, error))
        self.wake()

    def finished(self) -> bool:
        """Are there results to record?"""
        return not self._done.empty()

    def record(self) -> None:
        """Record every finished job's result, each in its own savepoint of the current transaction."""
        while True:
            try:
                pool, keys, done, outcome, error = self._done.get_nowait()
            except queue.Empty:
                return
            self._busy.difference_update(keys)
            if pool == Pool.TRANSFER:
                self.transfers -= 1
            if isinstance(error, Interrupted):
                continue  # cut short by the stop: nothing to record, the next start does it again
            try:
                with self.state.savepoint():
                    done(outcome, error)
            except Exception:
                log.exception("bug while recording a job's result")

    def shutdown(self) -> None:
        """Cancel the jobs not started, in every pool, then wait for the running ones (the stop has
        cut them short), except a notice being sent: unsent, it stays queued for the next start.
        Every pool first: a pool whose queue waited for another pool's running job would go on
        starting its jobs meanwhile (cleanup scripts, one after the other, while a pull ends)."""
        for executor in self._pools.values():
            executor.shutdown(wait=False, cancel_futures=True)
        for pool, executor in self._pools.items():
            if pool != Pool.ALERT:
                executor.shutdown(wait=True)
