"""An rsync wrapper for tests: its first run copies only the small files, then fails as a cut link does.

Usage (as synkler's `rsync` setting): python cutting_rsync.py MARKER [rsync args...]
If MARKER does not exist yet, it is created and the real rsync runs with --max-size=1k (so a
directory arrives without its bigger files), after which the wrapper exits 12, rsync's status for a
connection that broke off. Later runs are the real rsync.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    marker, args = sys.argv[1], sys.argv[2:]
    if args == ["--version"]:  # synkler asks which rsync it runs: not a transfer
        os.execvp("rsync", ["rsync", "--version"])
    if os.path.exists(marker):
        os.execvp("rsync", ["rsync", *args])
    open(marker, "w").close()
    listing = sys.stdin.buffer.read()
    subprocess.run(["rsync", "--max-size=1k", *args], input=listing)
    print("rsync: connection unexpectedly closed (cut by the test)", file=sys.stderr)
    return 12


if __name__ == "__main__":
    sys.exit(main())
