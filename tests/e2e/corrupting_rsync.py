"""An rsync wrapper for tests: runs the real rsync, then flips one byte of the first entry it copied.

Usage (as synkler's `rsync` setting): python corrupting_rsync.py COUNTER TIMES [--source] [rsync args...]
The first TIMES runs corrupt their result (with --source: the first entry at the source, before
copying, as if central's stored copy had gone bad); the later ones are plain rsync. The destination is on
this machine (the test's central is loopback), so the file can be reached directly.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    counter, times, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    source = args[:1] == ["--source"]
    args = args[1:] if source else args
    listing = sys.stdin.buffer.read()  # synkler passes the entries as a NUL-separated list
    runs = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as f:
        f.write(str(runs + 1))
    first = os.fsdecode(listing.split(b"\0")[0])
    if source and runs < times:
        flip(args[-2], first)
    rc = subprocess.run(["rsync", *args], input=listing).returncode
    if not source and rc == 0 and runs < times:
        flip(args[-1], first)
    return rc


def flip(location: str, relpath: str) -> None:
    """Flip the first byte of location/relpath (a local path or host:path on this machine)."""
    directory = location.split(":", 1)[1] if ":" in location else location
    with open(os.path.join(directory, relpath), "r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0xFF]))


if __name__ == "__main__":
    sys.exit(main())
