"""Runs one cleanup script on behalf of an agent, and outlives the agent if it has to.

Usage: python -m synkler.scriptrunner STATUS_FILE -- COMMAND [ARG...]

Writes STATUS_FILE.pid before the script starts and STATUS_FILE (JSON: exit status and output)
after it ends, each by an atomic rename. An agent killed while the script runs finds at its next
start either the result (and records it), a runner still going (and waits for it), or a pid file
whose runner is gone (the script was interrupted: it is not run again). No pid file and no result
means the script never started, so starting it then is still "exactly once".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .fsutil import fsync_dir

MAX_OUTPUT = 64 * 1024


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m synkler.scriptrunner STATUS_FILE -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    status, command = argv[0], argv[2:]
    _write(f"{status}.pid", f"{os.getpid()}\n".encode())
    try:
        proc = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        rc, output = proc.returncode, proc.stdout.decode("utf-8", "replace")
    except FileNotFoundError:
        rc, output = 127, f"program not found: {command[0]}"
    except PermissionError:
        rc, output = 126, f"program not executable: {command[0]}"
    except OSError as e:  # e.g. a script without a #! line
        rc, output = 126, f"cannot run {command[0]}: {e.strerror}"
    _write(status, json.dumps({"returncode": rc, "output": output[-MAX_OUTPUT:]}).encode())
    os.unlink(f"{status}.pid")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
