"""An rsync wrapper for tests: every run copies only the files of up to 1 KiB, then fails as a cut
link does (exit 12). A directory with a bigger file never arrives whole, and the entry waits for
ever, not counted as failed: stuck.

Usage (as synkler's `rsync` setting): python stalling_rsync.py [rsync args...]
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    if sys.argv[1:] == ["--version"]:  # synkler asks which rsync it runs: not a transfer
        os.execvp("rsync", ["rsync", "--version"])
    listing = sys.stdin.buffer.read()
    subprocess.run(["rsync", "--max-size=1k", *sys.argv[1:]], input=listing)
    print("rsync: connection unexpectedly closed (stalled by the test)", file=sys.stderr)
    return 12


if __name__ == "__main__":
    sys.exit(main())
