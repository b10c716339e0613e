"""rsync over ssh and the cleanup scripts: the only module that runs subprocesses for the relay.

Every command is an argument list, never a shell line. Paths are passed absolute so a name starting
with '-' can never be taken for an option; rsync >= 3.2.4 quotes remote arguments itself, so names
with spaces, quotes and non-ASCII characters survive the remote shell.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

PARTIAL_DIR = ".synkler-partial"


@dataclass(frozen=True)
class Result:
    ok: bool
    returncode: int
    output: str
    argv: tuple[str, ...] = ()

    def summary(self) -> str:
        tail = self.output.strip().splitlines()[-3:]
        return f"exit {self.returncode}" + (f": {' / '.join(tail)}" if tail else "")


def rsync_argv(cfg, src: str, dest: str) -> list[str]:
    """The rsync command for one hop: archive mode, resumable, with a stall timeout.

    The user's `rsync_opts` come last so that anything they set (e.g. --rsh with their ssh port and
    key, a --bwlimit) is honoured as given.
    """
    return [
        *cfg.rsync,
        "--archive",
        "--partial",
        f"--partial-dir={PARTIAL_DIR}",
        f"--timeout={cfg.rsync_timeout}",
        *cfg.rsync_opts,
        src,
        dest,
    ]


_running: set[subprocess.Popen] = set()
_lock = threading.Lock()

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _die_with_agent() -> None:
    """In the child before exec: get SIGTERM if the agent dies, even by SIGKILL.

    Without this an rsync outlives a killed agent and races the one the restarted agent starts.
    (The signal comes when the forking thread ends; transfer threads live as long as the agent.)
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run(
    argv: Sequence[str], *, timeout: float | None = None, env: dict | None = None, track: bool = True
) -> Result:
    """Run a command to completion, capturing its output; a missing program is a failed Result.

    Tracked commands (transfers) are terminated by `terminate_all` when the agent stops; cleanup
    scripts are not tracked, so a stop never cuts one short.
    """
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_agent if track else None,
        )
    except FileNotFoundError:
        return Result(False, 127, f"program not found: {argv[0]}", tuple(argv))
    except PermissionError:
        return Result(False, 126, f"program not executable: {argv[0]}", tuple(argv))
    except OSError as e:  # e.g. a script without a #! line
        return Result(False, 126, f"cannot run {argv[0]}: {e.strerror}", tuple(argv))
    if track:
        with _lock:
            _running.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        text = out.decode("utf-8", "replace") + f"\ntimed out after {timeout} s"
        return Result(False, -1, text, tuple(argv))
    finally:
        with _lock:
            _running.discard(proc)
    return Result(proc.returncode == 0, proc.returncode, out.decode("utf-8", "replace"), tuple(argv))


def terminate_all() -> None:
    """Stop every running transfer (agent shutdown); partial data stays for the next start to resume."""
    with _lock:
        procs = list(_running)
    for proc in procs:
        try:
            proc.terminate()
        except OSError:
            pass


def push(cfg, local_path: str, remote_dir: str) -> Result:
    """upload -> central: copy `local_path` (file, dir or symlink) into `remote_dir` on central."""
    return run(rsync_argv(cfg, local_path, f"{cfg.central_host}:{remote_dir.rstrip('/')}/"))


def pull(cfg, remote_path: str, local_dir: str) -> Result:
    """central -> download: copy `remote_path` on central into `local_dir`."""
    os.makedirs(local_dir, exist_ok=True)
    return run(rsync_argv(cfg, f"{cfg.central_host}:{remote_path}", local_dir.rstrip("/") + "/"))


def probe(cfg) -> Result:
    """ssh + remote rsync round trip to central, for `synkler check`: list the remote home."""
    argv = [*cfg.rsync, f"--timeout={min(cfg.rsync_timeout, 30)}", *cfg.rsync_opts, "--list-only"]
    return run([*argv, f"{cfg.central_host}:."], timeout=60)


def cleanup_argv(template: Sequence[str], name: str, full_path: str) -> list[str]:
    """Substitute %f (name) and %F (full path) in each argument; %% is a literal %."""
    subst = {"%%": "%", "%f": name, "%F": full_path}
    # One pass, so a '%f' inside the substituted path is never substituted again.
    return [re.sub(r"%[%fF]", lambda m: subst[m.group()], arg) for arg in template]


def run_cleanup(cfg, name: str, full_path: str) -> Result:
    argv = cleanup_argv(cfg.cleanup_argv, name, full_path)
    return run(argv, track=False)
