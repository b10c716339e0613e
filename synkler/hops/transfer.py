"""rsync over ssh: the only module that runs rsync and ssh (the cleanup scripts run in synkler.hops.cleanup).

Every command is an argument list, never a shell line. Paths are passed absolute so a name starting
with '-' can never be taken for an option. The remote path of a hop must reach the remote rsync as
it is, never parsed by the remote shell: every run gets --protect-args (whatever the version and
the environment: RSYNC_OLD_ARGS is not passed on, --old-args is refused in the config), and an
rsync too old for it is refused. With `rrsync_root` (the agent's key is confined on central by
rrsync, which refuses --protect-args because it must see the paths to check them) the remote paths
are sent relative to that root, and rrsync, not a shell, parses them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from types import ModuleType
from typing import IO, Callable

from .. import places
from ..config import Config
from ..errors import Interrupted, SynklerError
from ..linux.process import die_with_parent
from ..private import child_env, child_umask

# What a run comes to lives in synkler.hops.outcome (sftp imports it from there); its names stay
# readable here, as transfer.Result, transfer.OutsideRoot, transfer.RRSYNC_NO_FILE.
from .checksum import STOPPING
from .outcome import PARTIAL_DIR, OutsideRoot, Result
from .outcome import RRSYNC_NO_FILE as RRSYNC_NO_FILE
from .stall import POLL as STALL_POLL
from .stall import ProcessTree, Stall

log = logging.getLogger(__name__)


def _rsh_option(opts: Sequence[str]) -> tuple[int, int, str | None]:
    """Where the remote shell is set in rsync options: (index, how many items, command)."""
    for i, opt in enumerate(opts):
        if opt.startswith("--rsh="):
            return i, 1, opt[len("--rsh=") :]
        if opt in ("--rsh", "-e") and i + 1 < len(opts):
            return i, 2, opts[i + 1]
        if opt.startswith("-e") and not opt.startswith("--"):
            return i, 1, opt[2:]
    return len(opts), 0, None


def control_dir() -> str | None:
    """A private directory for ssh control sockets (short path: sockets are limited to ~100 bytes)."""
    path = os.path.join(tempfile.gettempdir(), f"synkler-{os.getuid()}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    # Someone else's directory, or one others can write, could hand us their socket: do without.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def effective_opts(cfg: Config) -> tuple[tuple[str, ...], str | None]:
    """rsync_opts with ssh connection sharing added, and the ssh command line it uses (or None).

    One ssh master connection per agent carries every rsync run to central, so a small file does not
    pay an ssh handshake. The user's --rsh is kept: our options go after theirs, and for ssh the
    first value given for an option wins. A remote shell other than ssh is left alone.
    """
    opts = tuple(cfg.rsync_opts)
    if cfg.ssh_control_persist <= 0:
        return opts, None
    index, width, rsh = _rsh_option(opts)
    if rsh is None:
        if os.environ.get("RSYNC_RSH"):
            return opts, None
        rsh = "ssh"
    try:
        program = shlex.split(rsh)[0]
    except (ValueError, IndexError):
        return opts, None
    directory = control_dir()
    if os.path.basename(program) != "ssh" or directory is None:
        return opts, None
    tag = control_tag(cfg)
    # Keep-alives: a link that stalls without closing is noticed within a minute, even by the
    # master connection that outlives single rsync runs (rsync's --timeout covers the data).
    shared = (
        f"{rsh} -o ControlMaster=auto -o ControlPersist={cfg.ssh_control_persist} "
        f"-o ControlPath={directory}/{tag}-%C -o ServerAliveInterval=15 -o ServerAliveCountMax=4"
    )
    ciphers = preferred_ciphers(rsh, cfg.central_host)
    if ciphers:
        shared += f" -o Ciphers={ciphers}"
    return (*opts[:index], f"--rsh={shared}", *opts[index + width :]), shared


GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


@functools.lru_cache(maxsize=16)
def preferred_ciphers(rsh: str, host: str) -> str | None:
    """The ssh cipher order for bulk data: AES-GCM first on a CPU with AES instructions (or None).

    OpenSSH prefers chacha20-poly1305, which is fast on any CPU; with AES instructions AES-GCM
    moves bulk data about a third faster (docs/performance.md). Only the order changes, never the
    set, and only where nobody chose it: an ssh_config, a system crypto policy or the user's own
    -c / -o Ciphers make the effective list (`ssh -G`) differ from OpenSSH's default, and then it
    is left alone.
    """
    if not _cpu_has_aes():
        return None
    try:
        argv = shlex.split(rsh)
    except ValueError:
        return None
    mine = _ssh_ciphers([*argv, "-G", host])
    default = _ssh_ciphers([argv[0], "-F", "/dev/null", "-G", host])
    if not mine or mine != default or mine[0] in GCM:
        return None
    first = [c for c in GCM if c in mine]
    return ",".join(first + [c for c in mine if c not in first]) if first else None


def _ssh_ciphers(argv: list[str]) -> list[str] | None:
    """The `ciphers` line of `ssh -G` (the configuration ssh would use; it connects nowhere)."""
    try:
        out = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10, env=child_env()
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.stdout.splitlines() if out.returncode == 0 else ():
        key, _, value = line.partition(" ")
        if key == "ciphers":
            return value.split(",")
    return None


def _cpu_has_aes() -> bool:
    """Does /proc/cpuinfo list AES instructions (x86 `flags`, ARM `Features`)?"""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return "aes" in value.split()
    except OSError:
        pass
    return False


def _sftp(cfg: Config) -> ModuleType | None:
    """synkler.hops.sftp when this agent's hop goes over SFTP (`transport: sftp`), else None.
    Imported only then: paramiko is loaded by the agents that use it."""
    if cfg.transport != "sftp":
        return None
    from . import sftp

    return sftp


def control_tag(cfg: Config) -> str:
    """What names this agent's ssh master connection (its control socket `<tag>-%C`, and the
    master's process title): one per agent, whatever else runs on the host."""
    return hashlib.sha1(f"{cfg.id}\0{cfg.name}\0{cfg.state_db}".encode()).hexdigest()[:12]


def close_shared_connection(cfg: Config) -> None:
    """Ask this agent's ssh master connection to exit (agent shutdown); harmless if there is none."""
    sftp = _sftp(cfg)
    if sftp is not None:
        sftp.close_all()
        return
    _opts, shared = effective_opts(cfg)
    if shared is not None:
        run([*shlex.split(shared), "-O", "exit", cfg.central_host], timeout=10, track=False)


def retire_shared_connection(cfg: Config) -> None:
    """Let the next rsync run log in to central afresh (`ssh -O stop`: the master connection takes no
    new runs; those under way on it finish). Harmless if there is none."""
    _opts, shared = effective_opts(cfg)
    if shared is not None:
        run([*shlex.split(shared), "-O", "stop", cfg.central_host], timeout=10, track=False)


CAN_PROTECT = (3, 0, 0)  # rsync has --protect-args (-s; --secluded-args since 3.2.4, both names work)
_VERSION = re.compile(rb"version\s+v?(\d+)\.(\d+)(?:\.(\d+))?")


class RsyncTooOld(SynklerError):
    """The configured rsync cannot keep remote paths from the remote shell: the agent does not run."""


@functools.lru_cache(maxsize=8)
def rsync_protection(rsync: tuple[str, ...], confined: bool = False) -> tuple[str, ...]:
    """What `rsync` needs so that remote paths are never parsed by the remote shell: --protect-args
    (rsync 3.2.4's own quoting is undone by RSYNC_OLD_ARGS or --old-args, so it is never relied
    on alone); nothing when `confined` by rrsync on central, which refuses it and parses the paths
    itself. RsyncTooOld for an rsync older than 3.0.0 or that does not say its version."""
    try:
        out = subprocess.run(
            [*rsync, "--version"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RsyncTooOld(f"cannot run {shlex.join(rsync)} --version: {e}") from None
    found = _VERSION.search(out)
    if found is None:
        raise RsyncTooOld(f"{shlex.join(rsync)} --version does not say which version it is")
    version = tuple(int(part or 0) for part in found.groups())
    shown = ".".join(map(str, version))
    if version < CAN_PROTECT:
        raise RsyncTooOld(
            f"rsync {shown} ({shlex.join(rsync)}) cannot keep remote paths from the remote shell; "
            "synkler needs rsync 3.0.0 or newer"
        )
    return () if confined else ("--protect-args",)


def protection(cfg: Config) -> tuple[str, ...]:
    """rsync_protection for this agent's rsync and confinement (nothing over SFTP: no rsync runs)."""
    if cfg.transport == "sftp":
        return ()
    return rsync_protection(tuple(cfg.rsync), cfg.rrsync_root is not None)


def remote(cfg: Config, path: str, slash: str = "") -> str:
    """`host:path` for a place on central, as rsync is given it: relative to `rrsync_root` when
    the key is confined there. OutsideRoot when the path is not below that root."""
    sent = places.over_ssh(path, cfg.rrsync_root)
    if sent is None:
        raise OutsideRoot(
            f"central's {path} is outside rrsync_root {cfg.rrsync_root}: the forced command would "
            "refuse it; set rrsync_root to the directory of the key's `rrsync` command"
        )
    return f"{cfg.central_host}:{sent}{slash}"


# What sshd, rsync and RSYNC_RSH would take from the environment to hand paths to central's shell
# again (RSYNC_OLD_ARGS), or to turn on --protect-args where rrsync refuses it (RSYNC_PROTECT_ARGS).
_UNPASSED = ("RSYNC_OLD_ARGS", "RSYNC_PROTECT_ARGS")


def _child_env() -> dict[str, str]:
    """The agent's environment without its secrets (synkler.private) and without what would undo
    the protection of remote paths."""
    return {k: v for k, v in child_env().items() if k not in _UNPASSED}


# What rsync refuses beside --inplace, or what puts the data elsewhere than the user meant: with any
# of these in rsync_opts, the hops keep their temporary files.
_NOT_INPLACE = ("--partial-dir", "--delay-updates", "--temp-dir", "-T", "--inplace", "--append")


def may_write_in_place(cfg: Config) -> bool:
    """May a hop write its files in place (`--inplace`)? Not when the user's rsync_opts set a
    partial or temporary directory, delayed updates, or --inplace/--append themselves."""
    return not any(o == flag or o.startswith(f"{flag}=") for o in cfg.rsync_opts for flag in _NOT_INPLACE)


def rsync_argv(
    cfg: Config, src: str, dest: str, *, listed: bool = False, append: bool = False, inplace: bool = False
) -> list[str]:
    """The rsync command for one hop: archive mode, resumable, with a stall timeout.

    `listed`: the paths to copy (relative to `src`, a directory) come NUL-separated on stdin, so one
    run carries many entries and no name is ever parsed as an option or by a shell.
    `append`: add to the destination file what the source has beyond its length, in place (rsync
    refuses a partial dir with it; what arrived stays where it is).
    `inplace`: write each file under its own name, without a temporary file and a rename (a third
    less of the receiver's CPU per small file: docs/performance.md); what a run cut short wrote stays
    there, as a partial file would, for the next run to go on from. Only into a staging place of the
    receiver's own that nothing reads before its md5 is checked, and never for entries followed while
    they arrive (synkler.hops.follow watches the temporary file), nor where rsync_opts forbid it.
    The user's `rsync_opts` come last so that anything they set (e.g. --rsh with their ssh port and
    key, a --bwlimit) is honoured as given.
    """
    if append:
        writes: tuple[str, ...] = ("--append",)
    elif inplace and may_write_in_place(cfg):
        writes = ("--inplace",)
    else:
        writes = ("--partial", f"--partial-dir={PARTIAL_DIR}")
    return [
        *cfg.rsync,
        *protection(cfg),
        "--archive",
        *writes,
        f"--timeout={cfg.rsync_timeout}",
        *(("--recursive", "--from0", "--files-from=-") if listed else ()),
        *effective_opts(cfg)[0],
        src,
        dest,
    ]


def _listing(paths: Sequence[str]) -> bytes:
    """The paths for `--files-from=- --from0`. Each starts with "./": rsync skips a line of that list
    that starts with '#' or ';' as a comment, even NUL-separated, so such a name would never go."""
    return b"".join(b"./" + os.fsencode(p) + b"\0" for p in paths)


_running: set[subprocess.Popen[bytes]] = set()
_lock = threading.Lock()
CANCEL_POLL = 0.1  # seconds between looks at a run's `cancel`


def _die_with_agent() -> None:
    """In the child before exec: get SIGTERM if the agent dies, even by SIGKILL.

    Without this an rsync outlives a killed agent and races the one the restarted agent starts.
    (The signal comes when the forking thread ends; transfer threads live as long as the agent.)
    """
    die_with_parent(signal.SIGTERM)


def run(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    track: bool = True,
    input: bytes | None = None,
    cancel: threading.Event | None = None,
    stall: float = 0,
    on_stall: Callable[[], object] | None = None,
) -> Result:
    """Run a command to completion, capturing its output; a missing program is a failed Result.

    Tracked commands (transfers) are terminated by `terminate_all` when the agent stops, and none
    starts once it stops (Interrupted: checksum.STOPPING); cleanup scripts are not tracked, so a
    stop never cuts one short. `cancel` set ends the command too (a
    failed Result): looked at every CANCEL_POLL seconds. `stall` > 0: the command and everything
    it started are stopped once they moved almost nothing for that many seconds (synkler.hops.stall;
    a failed Result, `stalled`, exit STALLED), and `on_stall` is called meanwhile.
    """
    if track and STOPPING.is_set():
        # The agent is stopping (terminate_all ends the runs going on): a job that would start
        # another one (a pull whole after its early copy's run was ended) leaves it to the next start.
        raise Interrupted("the agent is stopping")
    proc = _start(argv, input, track)
    if isinstance(proc, Result):
        return proc
    if track:
        with _lock:
            _running.add(proc)
        if STOPPING.is_set():  # set meanwhile: terminate_all may have looked before the add
            proc.terminate()
    watch = Stall(stall, time.monotonic()) if stall > 0 else None
    try:
        out, stopped = _communicate(proc, input, timeout, cancel, watch, on_stall)
    finally:
        with _lock:
            _running.discard(proc)
    text = out.decode("utf-8", "replace")
    if stopped.startswith(_STALLED):
        return Result(False, STALLED, f"{text}\n{stopped}", tuple(argv), stalled=True)
    if stopped:
        return Result(False, -1, f"{text}\n{stopped}", tuple(argv))
    return Result(proc.returncode == 0, proc.returncode, text, tuple(argv))


def _start(argv: Sequence[str], input: bytes | None, track: bool) -> subprocess.Popen[bytes] | Result:
    """The command started, or a failed Result saying why it could not be."""
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_agent if track else None,
            # What rsync writes is the user's data: the agent's starting umask, not its own 077
            # (with --archive rsync gives files the sender's modes anyway; this covers --no-perms).
            umask=child_umask(),
            env=_child_env(),
        )
    except FileNotFoundError:
        return Result(False, 127, f"program not found: {argv[0]}", tuple(argv))
    except PermissionError:
        return Result(False, 126, f"program not executable: {argv[0]}", tuple(argv))
    except OSError as e:  # e.g. a script without a #! line
        return Result(False, 126, f"cannot run {argv[0]}: {e.strerror}", tuple(argv))


STALLED = 30  # the exit status of a run stopped because it stalled: rsync's own for its --timeout
_STALLED = "stalled: "


def _communicate(
    proc: subprocess.Popen[bytes],
    input: bytes | None,
    timeout: float | None,
    cancel: threading.Event | None,
    stall: Stall | None,
    on_stall: Callable[[], object] | None,
) -> tuple[bytes, str]:
    """The command's output once it ended, and why it was ended ("" if it ended by itself)."""
    if input is not None and proc.stdin is not None:
        # Written by a thread of its own: communicate() cannot go on writing it after a timeout.
        stdin, proc.stdin = proc.stdin, None
        threading.Thread(target=_feed, args=(stdin, input), name="rsync-input", daemon=True).start()
    deadline = None if timeout is None else time.monotonic() + timeout
    tree = None if stall is None else ProcessTree(proc.pid)
    polls = [p for p, wanted in ((CANCEL_POLL, cancel), (STALL_POLL, stall)) if wanted is not None]
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        wait = min([*polls, *([] if left is None else [left])], default=None)
        try:
            out, _ = proc.communicate(timeout=wait)
            return out, ""
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                # SIGTERM: rsync ends cleanly, and what it appended in place stays.
                proc.terminate()
                return proc.communicate()[0], "stopped: no longer needed"
            if deadline is not None and time.monotonic() >= deadline:
                proc.kill()
                return proc.communicate()[0], f"timed out after {timeout} s"
            if stall is not None and tree is not None and stall.seen(tree.bytes_read(), time.monotonic()):
                why = f"{_STALLED}nothing moved for {stall.seconds:g} s (stall_seconds); stopped"
                return _stop_tree(proc, tree, on_stall), why


def _feed(stdin: IO[bytes], data: bytes) -> None:
    """Write a command's input and close it (a command that ended or stopped reading ends it)."""
    try:
        stdin.write(data)
    except OSError:  # BrokenPipeError: the command no longer reads
        pass
    finally:
        try:
            stdin.close()
        except OSError:
            pass


STOP_GRACE = 5.0  # seconds a stalled command has to end after SIGTERM, then after SIGKILL


def _stop_tree(
    proc: subprocess.Popen[bytes], tree: ProcessTree, on_stall: Callable[[], object] | None
) -> bytes:
    """Stop a stalled command and what it started (rsync's receiver, ssh), which hold its output
    pipe open: SIGTERM first (rsync keeps its partial file), SIGKILL if that is not enough. The
    output so far, or nothing if the pipe never closes."""
    for signal_all in (tree.stop, tree.kill):
        signal_all()
        if on_stall is not None:
            on_stall()  # (an ssh master connection holds the pipe too: it goes here)
            on_stall = None
        try:
            return proc.communicate(timeout=STOP_GRACE)[0]
        except subprocess.TimeoutExpired:
            continue
    # Something outside the tree holds the pipe (a process that left it before it was seen): the
    # command itself has ended; what it wrote is given up rather than waited for.
    proc.kill()
    if proc.stdout is not None:
        proc.stdout.close()
    proc.wait()
    return b""


def terminate_all() -> None:
    """Stop every running transfer (agent shutdown); partial data stays for the next start to resume."""
    sftp = sys.modules.get(f"{__package__}.sftp")
    if sftp is not None:
        sftp.stop_all()
    with _lock:
        procs = list(_running)
    for proc in procs:
        try:
            proc.terminate()
        except OSError:
            pass


def _hop(
    cfg: Config, argv: Sequence[str], *, input: bytes | None = None, cancel: threading.Event | None = None
) -> Result:
    """One rsync run of a hop, stopped if it stalls for stall_seconds. The shared ssh connection is
    closed with it: it carries the stalled link (every run over it would hang until ssh's
    keep-alives end it; the next run connects afresh), and it holds the run's output pipe."""
    closing = functools.partial(close_shared_connection, cfg)
    result = run(argv, input=input, cancel=cancel, stall=cfg.stall_seconds, on_stall=closing)
    if result.needs_person:
        # What a key may do on central (its forced command) is fixed when ssh logs in: a master
        # connection that lived on would keep a refused forced command for every later run, so a
        # fixed authorized_keys took effect only once the connection had been idle for
        # ssh_control_persist, and an operator's `synkler retry` was refused again.
        retire_shared_connection(cfg)
    return result


def push(
    cfg: Config, local_dir: str, names: Sequence[str], remote_dir: str, *, inplace: bool = False
) -> Result:
    """upload -> central: copy the entries `names` of `local_dir` into `remote_dir` on central, in one
    run (`inplace`: see rsync_argv)."""
    sftp = _sftp(cfg)
    if sftp is not None:
        return sftp.push(cfg, local_dir, names, remote_dir)
    try:
        target = remote(cfg, remote_dir, "/")
    except OutsideRoot as e:
        return e.result()
    argv = rsync_argv(cfg, local_dir.rstrip("/") + "/", target, listed=True, inplace=inplace)
    return _hop(cfg, argv, input=_listing(names))


def pull(
    cfg: Config, remote_dir: str, paths: Sequence[str], local_dir: str, *, inplace: bool = False
) -> Result:
    """central -> download: copy `paths` (relative to `remote_dir` on central) into `local_dir`, in one run.

    The relative paths are kept: "<entry id>" lands in local_dir/<entry id>. `inplace`: see rsync_argv.
    """
    sftp = _sftp(cfg)
    if sftp is not None:
        return sftp.pull(cfg, remote_dir, paths, local_dir)
    try:
        source = remote(cfg, remote_dir, "/")
    except OutsideRoot as e:
        return e.result()
    os.makedirs(local_dir, mode=0o700, exist_ok=True)  # download made it private at start
    argv = rsync_argv(cfg, source, local_dir.rstrip("/") + "/", listed=True, inplace=inplace)
    return _hop(cfg, argv, input=_listing(paths))


def pull_more(
    cfg: Config, remote_path: str, local_path: str, cancel: threading.Event | None = None
) -> Result:
    """central -> download: append to `local_path` what `remote_path` on central has beyond its length.

    A file shorter on central than here is left alone; what a run cut short appended stays (also
    when `cancel` ends it).
    """
    sftp = _sftp(cfg)
    if sftp is not None:
        return sftp.pull_more(cfg, remote_path, local_path, cancel)
    try:
        return _hop(cfg, rsync_argv(cfg, remote(cfg, remote_path), local_path, append=True), cancel=cancel)
    except OutsideRoot as e:
        return e.result()


def probe_write(cfg: Config, remote_dir: str) -> Result:
    """upload's `check`: write a small file into `remote_dir` on central (central's staging of this
    agent) and delete it again, the way the pushes go (rsync over the same ssh, or SFTP)."""
    sftp = _sftp(cfg)
    if sftp is not None:
        return sftp.probe_write(cfg, remote_dir)
    mark = f".synkler-check-{os.getpid()}-{int(time.time())}"
    timeout = f"--timeout={min(cfg.rsync_timeout, 30)}"
    base = [*cfg.rsync, *protection(cfg), timeout, *cfg.rsync_opts]
    try:
        target = remote(cfg, remote_dir, "/")
    except OutsideRoot as e:
        return e.result()
    with tempfile.TemporaryDirectory(prefix="synkler-check-") as here:
        path = os.path.join(here, mark)
        with open(path, "w") as f:
            f.write("written by synkler check; removed at once\n")
        wrote = run([*base, path, target], timeout=60)
        if not wrote.ok:
            return wrote
        os.unlink(path)
        # An empty directory, synced with --delete, everything but our file excluded: only it goes.
        return run(
            [*base, "--recursive", "--delete", f"--include=/{mark}", "--exclude=*", here + "/", target],
            timeout=60,
        )


def probe_read(cfg: Config, remote_dir: str) -> Result:
    """download's `check`: list `remote_dir` on central (central's store), the way the pulls read."""
    sftp = _sftp(cfg)
    if sftp is not None:
        return sftp.probe_read(cfg, remote_dir)
    argv = [*cfg.rsync, *protection(cfg), f"--timeout={min(cfg.rsync_timeout, 30)}", *cfg.rsync_opts]
    try:
        return run([*argv, "--list-only", remote(cfg, remote_dir, "/")], timeout=60)
    except OutsideRoot as e:
        return e.result()


def probe(cfg: Config) -> Result:
    """ssh + remote rsync round trip to central, for `synkler check`: list the remote home (the
    root of an rrsync confinement; upload's may be write-only: a write there instead). Over SFTP:
    a login and an SFTP session."""
    sftp = _sftp(cfg)
    if sftp is not None:
        return sftp.probe(cfg)
    if cfg.rrsync_root is not None and cfg.mode == "upload":
        return probe_write(cfg, cfg.rrsync_root)
    argv = [*cfg.rsync, f"--timeout={min(cfg.rsync_timeout, 30)}", *cfg.rsync_opts, "--list-only"]
    return run([*argv, f"{cfg.central_host}:."], timeout=60)
