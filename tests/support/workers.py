"""Tests that must run alone while the suite runs on several pytest-xdist workers (scripts/test.sh).

Most end-to-end tests wait on timers, so several run at once, each with its own instance id, temp
directories, sshd and ports. A test marked `alone` cannot share the machine: it stops the shared
broker (every other relay would see it go), or its timing is what it checks. It holds the suite's
lock exclusively; every other test holds it shared. Whoever wants it exclusively first takes a
turnstile that new shared takers must pass, so it waits only for the tests already running, never
for an endless stream of them (flock alone lets readers starve a writer).

tests/conftest.py puts every `alone` test in one xdist group, so they run one after the other on one
worker, and that worker keeps the lock from the first to the last of them: the others wait once.

The lock files live in the run's base temporary directory, which all workers of one run share and
no other run sees. Without xdist there is nothing to share with, and no lock is taken.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest


def xdist_worker() -> str | None:
    """This process's xdist worker id (gw0, gw1...), or None outside xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def is_alone(item: pytest.Item | None) -> bool:
    return item is not None and item.get_closest_marker("alone") is not None


class SuiteLock:
    """This worker's hold on the suite's lock: none, shared or exclusive."""

    def __init__(self, run_dir: Path):
        self.turnstile = run_dir / "suite-turnstile.lock"
        self.lock = run_dir / "suite.lock"
        self.held: list[int] = []  # open fds: flocks go with them, also if the worker dies
        self.alone = False

    def _flock(self, path: Path, how: int) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, how)  # blocks until granted
        return fd

    def take(self, alone: bool) -> None:
        """Hold the lock for the next test: exclusively if `alone`, else shared with the others."""
        if self.held and self.alone == alone:
            return
        self.release()
        if alone:
            self.held.append(self._flock(self.turnstile, fcntl.LOCK_EX))
            self.held.append(self._flock(self.lock, fcntl.LOCK_EX))
        else:
            os.close(self._flock(self.turnstile, fcntl.LOCK_EX))  # waits while an `alone` test does
            self.held.append(self._flock(self.lock, fcntl.LOCK_SH))
        self.alone = alone

    def release(self) -> None:
        while self.held:
            os.close(self.held.pop())
