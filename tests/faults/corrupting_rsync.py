"""An rsync wrapper for the fault suite: runs the real rsync, then flips one byte of what it delivered.

Usage (as synkler's `rsync` setting): python corrupting_rsync.py FLIPLOG TIMES [rsync args...]
The first TIMES successful runs flip a byte in the middle of the first non-empty regular file among
the entries they copied (a directory entry is searched inside), at the destination, which is on this
machine (the test's central is loopback). Each flip appends the entry's listed path to FLIPLOG.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    fliplog, times, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    listing = sys.stdin.buffer.read()  # synkler passes the entries as a NUL-separated list
    rc = subprocess.run(["rsync", *args], input=listing).returncode
    done = len(open(fliplog).read().splitlines()) if os.path.exists(fliplog) else 0
    if rc != 0 or done >= times:
        return rc
    dest = args[-1].split(":", 1)[1] if ":" in args[-1] else args[-1]
    for item in filter(None, listing.split(b"\0")):
        rel = os.fsdecode(item)
        target = first_nonempty_file(os.path.join(dest, rel))
        if target is not None:
            flip(target)
            with open(fliplog, "a") as f:
                f.write(rel + "\n")
            break
    return rc


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
