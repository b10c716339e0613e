"""The C library, bound once for the Linux calls the os module does not offer (renameat2, inotify,
prctl)."""

from __future__ import annotations

import ctypes
import functools
import os


@functools.cache
def load() -> ctypes.CDLL:
    """The process's C library, with errno kept after every call for `errno_error`.

    Raises OSError where there is no C library to open by that name (not a POSIX system).
    """
    return ctypes.CDLL(None, use_errno=True)


def errno_error(filename: str | None = None, filename2: str | None = None) -> OSError:
    """The OSError (FileExistsError, ...) for the errno the last failed call through `load()` left."""
    err = ctypes.get_errno()
    if filename2 is not None:
        return OSError(err, os.strerror(err), filename, None, filename2)
    if filename is not None:
        return OSError(err, os.strerror(err), filename)
    return OSError(err, os.strerror(err))
