"""Processes: what a child asks of the kernel about its parent (prctl(2)), and the pid a pidfile holds."""

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
