"""An rsync wrapper for tests: runs the real rsync, then flips one byte of the first entry it copied.

Usage (as synkler's `rsync` setting): python corrupting_rsync.py COUNTER TIMES [rsync args...]
The first TIMES runs corrupt their result; the later ones are plain rsync. The destination is on
this machine (the test's central is loopback), so the file can be reached directly.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    counter, times, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    listing = sys.stdin.buffer.read()  # synkler passes the entries as a NUL-separated list
    rc = subprocess.run(["rsync", *args], input=listing).returncode
    runs = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as f:
        f.write(str(runs + 1))
    if rc != 0 or runs >= times:
        return rc
    dest = args[-1]
    dest_dir = dest.split(":", 1)[1] if ":" in dest else dest
    first = os.fsdecode(listing.split(b"\0")[0])
    with open(os.path.join(dest_dir, first), "r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0xFF]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
