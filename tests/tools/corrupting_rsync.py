"""An rsync wrapper for tests: runs the real rsync, then flips one byte of what it delivered.

Usage (as synkler's `rsync` setting): python corrupting_rsync.py FLIPLOG TIMES [--source] [rsync args...]
The first TIMES successful runs flip a byte in the middle of the first non-empty regular file among
the entries they copied (a directory entry is searched inside), at the destination. A run given no
list of entries on stdin (download's early pulls: one file, source and destination) flips a byte
of its destination file. With --source, the flip is done at the source before copying instead, as
if central's stored copy had gone bad.
Both ends are on this machine (the tests' central is loopback). Each flip appends the entry's
listed path to FLIPLOG.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys


def main() -> int:
    fliplog, times, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    source = args[:1] == ["--source"]
    args = args[1:] if source else args
    if args == ["--version"]:  # synkler asks which rsync it runs: not a transfer
        os.execvp("rsync", ["rsync", "--version"])
    listing = sys.stdin.buffer.read()  # synkler passes the entries as a NUL-separated list
    if source:
        corrupt(args[-2], listing, fliplog, times)
    rc = subprocess.run(["rsync", *args], input=listing).returncode
    if not source and rc == 0:
        corrupt(args[-1], listing, fliplog, times)
    return rc


def corrupt(location: str, listing: bytes, fliplog: str, times: int) -> None:
    """Flip a byte of the first listed entry that has one, under `location` (a path or host:path),
    unless `times` flips are logged already. Runs of an agent go in parallel: one flips at a time."""
    top = location.split(":", 1)[1] if ":" in location else location
    with open(fliplog + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = len(open(fliplog).read().splitlines()) if os.path.exists(fliplog) else 0
        if done >= times:
            return
        for item in filter(None, listing.split(b"\0")) if listing else [b""]:
            rel = os.fsdecode(item.removeprefix(b"./"))  # synkler lists each path as ./<path>
            target = first_nonempty_file(os.path.join(top, rel) if rel else top)
            rel = rel or os.path.basename(top)
            if target is not None:
                flip(target)
                with open(fliplog, "a") as f:
                    f.write(rel + "\n")
                return


def first_nonempty_file(path: str) -> str | None:
    if os.path.islink(path):
        return None
    if os.path.isfile(path):
        return path if os.path.getsize(path) > 0 else None
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                if not os.path.islink(full) and os.path.getsize(full) > 0:
                    return full
    return None


def flip(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


if __name__ == "__main__":
    sys.exit(main())
