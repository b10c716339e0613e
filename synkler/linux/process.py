"""What a child process asks of the kernel about its parent, through prctl(2)."""

from __future__ import annotations

from collections.abc import Callable

from . import libc

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
