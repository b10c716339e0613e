"""An rsync wrapper for tests: runs the real rsync, then flips one byte of what arrived.

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
    rc = subprocess.call(["rsync", *args])
    runs = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as f:
        f.write(str(runs + 1))
    if rc != 0 or runs >= times:
        return rc
    src, dest = args[-2], args[-1]
    dest_dir = dest.split(":", 1)[1] if ":" in dest else dest
    target = os.path.join(dest_dir, os.path.basename(src.split(":", 1)[-1].rstrip("/")))
    with open(target, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
