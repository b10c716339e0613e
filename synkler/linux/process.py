"""Processes: what a child asks of the kernel about its parent (prctl(2)), the pid a pidfile holds,
and what /proc tells of a running process (its children, when it started, the bytes it has read)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Union

from . import libc

PathLike = Union[str, bytes, os.PathLike]

_PR_SET_PDEATHSIG = 1

# Looked up at import: die_with_parent runs between fork and exec, where only async-signal-safe work
# is sound, and opening a library or looking up a symbol is not.
_prctl: Callable[..., int] | None
try:
    _prctl = libc.load().prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent(sig: int) -> None:
    """In a child before exec: get `sig` when the parent dies, even by SIGKILL; a no-op where there
    is no prctl (not Linux).

    The kernel sends it when the thread that forked the child ends, not the whole process.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, sig)


def read_pid(path: PathLike) -> int | None:
    """Return the pid stored in a pidfile, or None if it is missing, unreadable or not a positive integer.

    Informational only: whether that process still holds the lock is what
    Pidfile.acquire tells.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(64)
    except OSError:
        return None
    try:
        pid = int(data.strip())
    except ValueError:
        return None
    return pid if pid > 0 else None


def children(pid: int) -> list[int]:
    """The processes `pid` started that still run (or are not yet reaped), as /proc lists them;
    empty if it is gone or the kernel does not list children."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(child) for child in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def start_time(pid: int) -> int | None:
    """When the process `pid` started (clock ticks after boot): with the pid, it names one process
    even after the pid is reused. None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # The command name (field 2) is in parentheses and may hold anything: count after its end.
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def bytes_read(pid: int) -> int | None:
    """How many bytes the process `pid` has read so far, from files, pipes and sockets alike
    (`rchar` of /proc/PID/io); None if that cannot be read."""
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
