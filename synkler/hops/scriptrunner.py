"""Runs one cleanup script on behalf of an agent, and outlives the agent if it has to.

Usage: python -m synkler.hops.scriptrunner STATUS_FILE [--timeout SECONDS] [--lock-fd FD] -- COMMAND [ARG...]

Writes its pid to STATUS_FILE.pid before the script starts and STATUS_FILE (JSON: exit status and
output) after it ends. An agent killed while the script runs finds at its next start either the
result (and records it), a runner still going (and waits for it), or a pid file whose runner is gone
(the script was interrupted: it is not run again). No pid in the file and no result means the
script never started, so starting it then is still "exactly once".

The agent makes STATUS_FILE.pid itself, empty, and holds an flock on it before it starts the runner,
which inherits the lock as --lock-fd and writes its pid into that file. So from before the runner
exists until it ends, the file is locked: an agent restarted while the runner is still starting
(Python takes a moment) waits for it instead of starting the script a second time.

With --each JOURNAL MANIFEST it runs the scripts of a bundle's members one after another (MANIFEST:
a JSON list of [number, [COMMAND, ARG...]]), with one interpreter for them all: it appends a line
{"start": N} to JOURNAL and flushes it to the disk before script N starts, and {"end": N, "returncode":
…, "output": …} once it has ended. A number that has a line in JOURNAL already is not run again. The
agent holds an flock on JOURNAL.lock, which the runner inherits (--lock-fd) and keeps until it exits:
an agent restarted meanwhile waits for it, then reads JOURNAL: an end is a result, a start without an
end a script interrupted (not run again), no line a script that never started
(synkler.hops.cleanup.run_members).

A script still running after --timeout seconds is stopped: SIGTERM to its whole process group,
SIGKILL 10 s later. It then counts as failed (exit status -15 or -9), with a note in its output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from ..linux.fs import fsync_dir

MAX_OUTPUT = 64 * 1024
KILL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL for a script over its time limit


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    # 0600 whatever the umask: the runner has the agent's starting umask, which is the script's.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def run(command: list[str], timeout: float | None) -> tuple[int, str]:
    """Run the script in a process group of its own; (exit status, output)."""
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError:
        return 127, f"program not found: {command[0]}"
    except PermissionError:
        return 126, f"program not executable: {command[0]}"
    except OSError as e:  # e.g. a script without a #! line
        return 126, f"cannot run {command[0]}: {e.strerror}"
    try:
        out, _ = proc.communicate(timeout=timeout)
        note = ""
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        note = f"\nsynkler: stopped after {timeout:g} s (cleanup_timeout)"
    return proc.returncode, out.decode("utf-8", "replace") + note


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def journal_lines(path: str) -> list[dict]:
    """The lines of a journal (--each), a torn last one left out."""
    try:
        with open(path, "rb") as f:
            raw = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in raw:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def run_each(journal: str, manifest: str, timeout: float | None) -> int:
    """--each: the scripts of MANIFEST, each once, each recorded in JOURNAL."""
    with open(manifest, "rb") as f:
        todo = json.load(f)
    seen = {item.get("start") for item in journal_lines(journal)}
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fsync_dir(os.path.dirname(journal) or ".")
        for number, command in todo:
            if number in seen:
                continue
            os.write(fd, json.dumps({"start": number}).encode() + b"\n")
            os.fdatasync(fd)  # a script that started is never started again, even after a power cut
            rc, output = run(command, timeout)
            line = {"end": number, "returncode": rc, "output": output[-MAX_OUTPUT:]}
            os.write(fd, json.dumps(line).encode() + b"\n")
    finally:
        os.fsync(fd)
        os.close(fd)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "--each":
        journal, manifest, rest = argv[1], argv[2], argv[3:]
        timeout = float(rest[1]) if len(rest) >= 2 and rest[0] == "--timeout" else None
        return run_each(journal, manifest, timeout)  # the lock fd (--lock-fd) is held by inheritance
    timeout = lock_fd = None
    if len(argv) >= 3 and argv[1] == "--timeout":
        timeout, argv = float(argv[2]), [argv[0], *argv[3:]]
    if len(argv) >= 3 and argv[1] == "--lock-fd":
        lock_fd, argv = int(argv[2]), [argv[0], *argv[3:]]
    if len(argv) < 3 or argv[1] != "--":
        print(
            "usage: python -m synkler.hops.scriptrunner STATUS_FILE [--timeout SECONDS] [--lock-fd FD] "
            "-- COMMAND [ARG...]",
            file=sys.stderr,
        )
        return 2
    status, command = argv[0], argv[2:]
    pid = f"{os.getpid()}\n".encode()
    if lock_fd is None:
        _write(f"{status}.pid", pid)
    else:  # the agent's locked, empty pid file: fill it in where it is, keeping the lock
        os.pwrite(lock_fd, pid, 0)
        os.fsync(lock_fd)
    rc, output = run(command, timeout)
    _write(status, json.dumps({"returncode": rc, "output": output[-MAX_OUTPUT:]}).encode())
    os.unlink(f"{status}.pid")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
