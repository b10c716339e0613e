"""How an agent process runs: in the foreground or as a daemon, logging to stderr or to a file.

`synkler --daemon` (or `daemon: true`) detaches with python-daemon, the only module that imports it.
The launching process acquires the pidfile first, so a second start (cron, every minute) still
exits 0 at once, and it waits until the daemon has started: it exits 0 then, or shows what the
daemon wrote to its log and exits 1 if it could not start. The daemon shares the pidfile's lock
(one open file description across the forks, so it never lapses) and writes its own pid into it.

A log file takes the process's stdout and stderr, so logging, a traceback and a child's stray
output all land there. SIGHUP reopens it (logrotate renames the file, then signals); the reopen
happens on a thread of its own, never inside the signal handler, where the main thread may be in
the middle of writing.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import stat
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import ExitStatus
from ..private import AGENT_UMASK

if TYPE_CHECKING:
    from ..config import Config
    from ..runtime.loop import Runtime
    from .pidfile import Pidfile

log = logging.getLogger("synkler")

# The agent's own umask, as in the foreground (synkler.private). The log file is made 0640 whatever
# the umask, and one made again at a SIGHUP gets the mode the old one had.
UMASK = AGENT_UMASK
LOG_MODE = 0o640
WORKING_DIRECTORY = "/"  # a daemon holds no mount point busy; every configured path is absolute
_STARTED = b"started"


class LogFile:
    """The agent's log file on its stdout and stderr, reopened on request (SIGHUP)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = self._open()
        self._reopen = threading.Event()
        self._thread: threading.Thread | None = None

    def _open(self, mode: int = LOG_MODE) -> int:
        """Open the log file for appending; one that does not exist is made with `mode` (the daemon's
        umask, 077, would narrow it: a log the operator's group reads must stay readable after a
        rotation). An existing one keeps its mode: logrotate's `create` or the operator chose it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            return os.open(self.path, flags)
        try:
            os.fchmod(fd, mode)
        except OSError:
            os.close(fd)
            raise
        return fd

    def fileno(self) -> int:
        return self._fd

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def redirect(self) -> None:
        """Make stdout and stderr this file."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for target in (1, 2):
            os.dup2(self._fd, target)

    def start(self) -> None:
        """Start the thread that reopens the file when asked (threads do not survive a detach)."""
        self._thread = threading.Thread(target=self._reopener, name="log-reopen", daemon=True)
        self._thread.start()

    def request_reopen(self) -> None:
        """Safe in a signal handler: the reopen itself runs on the log-reopen thread."""
        self._reopen.set()

    def _reopener(self) -> None:
        while True:
            self._reopen.wait()
            self._reopen.clear()
            self.reopen()

    def reopen(self) -> None:
        try:
            fd = self._open(stat.S_IMODE(os.fstat(self._fd).st_mode))
        except OSError as e:
            log.error("cannot reopen the log file %s (%s); writing on to the old one", self.path, e)
            return
        old, self._fd = self._fd, fd
        self.redirect()
        os.close(old)
        log.info("log file %s reopened", self.path)


class Launch:
    """How this agent process runs; `started` once its Runtime exists, before `Runtime.run`."""

    def __init__(self, logfile: LogFile | None, report_fd: int | None = None):
        self.logfile = logfile
        self._report_fd = report_fd

    def started(self, runtime: Runtime) -> None:
        if self.logfile is not None:
            runtime.on_hangup = self.logfile.request_reopen
            self.logfile.start()
        if self._report_fd is not None:
            # The launcher waits for this line; the pipe's end closes with it.
            os.write(self._report_fd, _STARTED + b" %d" % os.getpid())
            os.close(self._report_fd)
            self._report_fd = None


def prepare(cfg: Config, pidfile: Pidfile, *, daemon: bool) -> Launch:
    """Open the log file and, for a daemon, detach: the launching process exits inside this call
    (0 once the daemon reports it started, 1 if it did not), only the daemon returns.

    In the foreground the agent logs to `log_file` when it is set, else to stderr as before.
    Raises OSError (a log file that cannot be opened) before anything is detached.
    """
    faulthandler.enable()  # a hung agent killed by systemd's watchdog (SIGABRT) shows its threads
    if not daemon:
        if cfg.log_file is None:
            return Launch(None)
        logfile = LogFile(cfg.log_file)
        logfile.redirect()
        return Launch(logfile)
    logfile = LogFile(cfg.daemon_log)
    report_fd = _detach(pidfile, logfile)
    return Launch(logfile, report_fd)


def _detach(pidfile: Pidfile, logfile: LogFile) -> int:
    import daemon  # python-daemon

    offset = logfile.size()
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    launcher_child = os.fork()
    if launcher_child:
        # The launcher: python-daemon forks twice more below and ends this child at once.
        os.close(write_fd)
        status: int = ExitStatus.FAILURE
        try:
            status = _await_daemon(read_fd, launcher_child, logfile, offset)
        except KeyboardInterrupt:  # Ctrl-C while waiting: leave; a daemon already detached goes on
            status = ExitStatus.INTERRUPTED
        finally:
            _leave(status)
    os.close(read_fd)
    context = daemon.DaemonContext(
        working_directory=WORKING_DIRECTORY,
        umask=UMASK,
        detach_process=True,  # also when started by init or from a socket, where it would not by default
        files_preserve=[pidfile.fileno(), write_fd],
        stdout=logfile,
        stderr=logfile,
        pidfile=_Adopt(pidfile),
    )
    context.open()
    return write_fd


def _leave(status: int) -> NoReturn:
    """End the launcher. Never by returning or exit(): the caller's cleanup and atexit would remove
    the pidfile the daemon now holds."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


class _Adopt:
    """python-daemon's pidfile protocol: entered in the daemon, exited at its exit."""

    def __init__(self, pidfile: Pidfile):
        self.pidfile = pidfile

    def __enter__(self) -> _Adopt:
        self.pidfile.adopt()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.pidfile.release()


def _await_daemon(read_fd: int, child: int, logfile: LogFile, offset: int) -> int:
    """In the launcher: wait for the daemon's word, or for its end; the exit status to leave with."""
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read()  # until the daemon has started, or every write end is closed
    os.waitpid(child, 0)
    if report.startswith(_STARTED):
        log.info(
            "started as a daemon (pid %s, log %s)", report[len(_STARTED) :].decode().strip(), logfile.path
        )
        return ExitStatus.OK
    try:
        with open(logfile.path, "rb") as f:
            f.seek(offset)
            said = f.read(64 * 1024)
    except OSError:
        said = b""
    sys.stderr.write(said.decode("utf-8", "replace"))
    print(
        f"synkler: the agent stopped before it had started as a daemon (log {logfile.path})", file=sys.stderr
    )
    return ExitStatus.FAILURE
