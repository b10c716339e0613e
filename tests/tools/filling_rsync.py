"""An rsync wrapper for tests: before its first run it fills a file system, then runs the real rsync.

Usage (as synkler's `rsync` setting): python filling_rsync.py MARKER BALLAST [rsync args...]
If MARKER does not exist yet, BALLAST is written with zeros until its file system is full (ENOSPC)
and MARKER is created; every run then execs the real rsync, which finds the disk full until the test
removes BALLAST.
"""

from __future__ import annotations

import os
import sys


def fill(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for block in (bytes(1 << 20), bytes(4096)):
            try:
                while os.write(fd, block):
                    pass
            except OSError:  # ENOSPC: the file system is full; keep what was written
                pass
    finally:
        os.close(fd)


def main() -> int:
    marker, ballast, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if args == ["--version"]:  # synkler asks which rsync it runs: not a transfer
        os.execvp("rsync", ["rsync", "--version"])
    if not os.path.exists(marker):
        fill(ballast)
        open(marker, "w").close()
    os.execvp("rsync", ["rsync", *args])


if __name__ == "__main__":
    sys.exit(main())
