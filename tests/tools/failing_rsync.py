"""An rsync wrapper for tests: its first run fails as rsync does when it could not transfer what it
was given (exit 23, a failure that counts toward max_attempts); later runs are the real rsync.

Usage (as synkler's `rsync` setting): python failing_rsync.py MARKER [rsync args...]
If MARKER does not exist yet, it is created and the wrapper fails without copying anything.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    marker, args = sys.argv[1], sys.argv[2:]
    if args == ["--version"]:  # synkler asks which rsync it runs: not a transfer
        os.execvp("rsync", ["rsync", "--version"])
    if os.path.exists(marker):
        os.execvp("rsync", ["rsync", *args])
    open(marker, "w").close()
    sys.stdin.buffer.read()
    print(
        "rsync error: some files/attrs were not transferred (failed by the test) (code 23)", file=sys.stderr
    )
    return 23


if __name__ == "__main__":
    sys.exit(main())
