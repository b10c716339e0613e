"""A throwaway OpenSSH server on a free loopback port, for ``synkler demo`` and the test suite.

synkler moves files with rsync over ssh. Demonstrating or testing that for real needs an
sshd that accepts a key we control, on a port nobody else uses, without touching the
machine's own ``/etc/ssh`` setup or the user's ``~/.ssh``. :class:`LocalSshd` builds all of
that under one directory: host key, client key, ``authorized_keys``, ``known_hosts``,
``sshd_config``, pid file and log. Host-key checking stays on (the host key is pinned in
our own ``known_hosts``), so what the demo and the tests exercise is the same strict ssh
invocation that production code uses.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # annotations only: typing.Self needs 3.11, the package supports 3.9
    from typing_extensions import Self

__all__ = ["LocalSshd", "find_sshd"]

# How many fresh ports to try when sshd dies before answering (usually: port taken in the
# window between our probe socket closing and sshd binding it).
_PORT_ATTEMPTS = 5
# Seconds stop() waits after SIGTERM before it escalates to SIGKILL.
_STOP_GRACE = 5.0
# How long one readiness probe may block; short so the overall deadline stays accurate.
_PROBE_TIMEOUT = 0.5
# The privilege-separation chroot that a root sshd insists on; Debian creates it only when
# the packaged ssh service starts, which never happens in containers without systemd.
_PRIVSEP_DIR = Path("/run/sshd")


def find_sshd() -> str:
    """Return the absolute path of the sshd binary.

    sshd refuses to re-exec itself unless started by absolute path, and on Debian it lives
    in /usr/sbin, which a non-root PATH usually lacks, hence the fallback.
    """
    found = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin")
    if not found:
        raise RuntimeError(
            "sshd not found (looked on PATH and in /usr/sbin): install openssh-server, "
            "e.g. `apt-get install -y openssh-server` or run scripts/setup.sh"
        )
    return os.path.abspath(found)


def _free_port(host: str) -> int:
    """Ask the kernel for a currently unused TCP port on *host*.

    The socket is closed before sshd binds, so another process may grab the port in
    between; start() copes with that by retrying on a different port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _config_value(path: Path) -> str:
    """Quote *path* for sshd_config, where whitespace splits arguments.

    Double quotes make a path with spaces one argument. Characters that sshd_config would
    interpret (quotes, backslash, '#', and '%', which starts a token in some keywords but
    not in others) are refused outright rather than half-escaped.
    """
    text = str(path)
    if any(ch in text for ch in '"\\\n\r%#'):
        raise ValueError(f"LocalSshd workdir path cannot be used in sshd_config: {text!r}")
    return f'"{text}"'


def _pub(key: Path) -> Path:
    """The public half ssh-keygen writes next to a private key: the same name plus ".pub"."""
    return key.with_name(key.name + ".pub")


def _ssh_option_path(path: Path) -> str:
    """Render *path* for an ssh ``-o`` option, where whitespace separates several files.

    Double quotes keep a path with spaces (pytest's tmp dirs never have any, a user's
    demo dir might) as one file; plain paths stay unquoted so the argv reads naturally.
    """
    text = str(path)
    return f'"{text}"' if any(ch.isspace() for ch in text) else text


def _terminate(proc: subprocess.Popen[bytes], grace: float = _STOP_GRACE) -> None:
    """SIGTERM *proc*, then SIGKILL if it is still alive after *grace* seconds; reap it."""
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:  # died between poll() and terminate()
            proc.wait()


class LocalSshd:
    """A private sshd on 127.0.0.1:<free port> with generated keys, for the demo and the tests.

    Only the user running this process can log in: a root sshd could serve anyone, but we
    authorise exactly one generated key, and a non-root sshd cannot switch users at all.
    """

    host: str = "127.0.0.1"

    def __init__(self, workdir: Path, sftp_chroot: Path | None = None, port: int = 0) -> None:
        """Prepare paths under *workdir* (created if needed); nothing runs until start().

        *port*: listen on this port (0: a free one, found at start). Several sshds in network
        namespaces of their own can share one port, and with it one ssh command line.

        *sftp_chroot*: serve only OpenSSH's ``internal-sftp``, chrooted there (no shell, no rsync,
        no forwarding), as an SFTP-only central does (docs/security.md). sshd wants that directory
        and every one above it owned by root and writable by nobody else: not under /tmp.
        """
        self.workdir = Path(workdir).resolve()
        self.sftp_chroot = None if sftp_chroot is None else Path(sftp_chroot).resolve()
        self.fixed_port = port
        self.port: int = 0
        # The uid sshd will run as decides who can log in; $USER/$LOGNAME may disagree with
        # it (su without -l, containers), so ask the password database instead.
        self.user: str = pwd.getpwuid(os.geteuid()).pw_name
        self.host_key: Path = self.workdir / "ssh_host_ed25519_key"
        self.client_key: Path = self.workdir / "id_ed25519"
        self.authorized_keys: Path = self.workdir / "authorized_keys"
        self.known_hosts: Path = self.workdir / "known_hosts"
        self.config: Path = self.workdir / "sshd_config"
        self.pidfile: Path = self.workdir / "sshd.pid"
        self.log: Path = self.workdir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    # -- public API ----------------------------------------------------------------------

    @property
    def target(self) -> str:
        """``user@host`` as ssh and rsync expect it."""
        return f"{self.user}@{self.host}"

    @property
    def pid(self) -> int | None:
        """PID of the running sshd, or None when it is not running."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    @property
    def running(self) -> bool:
        """Whether our sshd process is alive."""
        return self.pid is not None

    def ssh_command(self) -> list[str]:
        """The ssh argv (without destination) that logs in to this sshd non-interactively.

        Host-key checking is strict against our own known_hosts, so a wrong server is an
        error rather than a silently accepted new key. ``-F /dev/null`` keeps the user's
        ~/.ssh/config (ProxyJump, ControlMaster, other identities...) out of the picture.
        """
        if not self.port:
            raise RuntimeError("LocalSshd is not started: no port yet")
        return [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(self.client_key),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={_ssh_option_path(self.known_hosts)}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-F",
            "/dev/null",
        ]

    def rsh(self) -> str:
        """ssh_command() as one shell-quoted string, the form rsync's ``--rsh=`` takes."""
        return shlex.join(self.ssh_command())

    def rsync_opts(self) -> list[str]:
        """Extra rsync arguments that route the transfer through this sshd."""
        return [f"--rsh={self.rsh()}"]

    def start(self, timeout: float = 15) -> Self:
        """Start sshd and return once a key login has actually succeeded.

        A listening socket alone does not prove that keys, modes and privilege separation
        are right, so readiness is: SSH banner on the port, then one real ``ssh true``.
        Raises RuntimeError (with the tail of sshd.log) if that does not happen in time.
        """
        if self.running:
            return self
        deadline = time.monotonic() + timeout
        sshd = find_sshd()
        self._prepare_files()
        failures: list[str] = []
        for _attempt in range(_PORT_ATTEMPTS):
            self.port = self.fixed_port or _free_port(self.host)
            self._write_config()
            self._write_known_hosts()
            self._launch(sshd)
            outcome = self._wait_for_banner(deadline)
            if outcome == "ready":
                break
            self._stop_process()
            failures.append(f"port {self.port}: {outcome}")
            if outcome == "timeout":
                break
        else:
            outcome = "gave up"
        if outcome != "ready":
            tail = self._log_tail()
            self.port = 0
            raise RuntimeError(
                f"sshd did not come up ({'; '.join(failures)}); sshd.log ({self.log}):\n{tail}"
            )
        self._check_login(deadline)
        return self

    def stop(self) -> None:
        """Terminate sshd (SIGKILL after a grace period) and reap it; safe to call twice.

        Sessions already open (forked children) end when their clients disconnect; the
        listener goes away at once so the port is free again.
        """
        self._stop_process()

    def __enter__(self) -> Self:
        """Start on entry unless already started, so ``with LocalSshd(d) as s:`` just works."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Always stop, even when the body raised."""
        self.stop()

    def __repr__(self) -> str:
        """Show where it listens and whether it runs, for test failure messages."""
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<LocalSshd {self.target}:{self.port} {state} in {self.workdir}>"

    # -- internals -----------------------------------------------------------------------

    def _prepare_files(self) -> None:
        """Create workdir, keys and authorized_keys; reuse keys from an earlier start."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for key, comment in ((self.host_key, "synkler-local-sshd-host"), (self.client_key, "synkler-client")):
            if not key.exists() or not _pub(key).exists():
                key.unlink(missing_ok=True)
                _pub(key).unlink(missing_ok=True)
                self._run_checked(
                    ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-C", comment, "-f", str(key)],
                    what="ssh-keygen",
                )
        # Private keys must not be group/world-readable or ssh/sshd ignore them; ssh-keygen
        # creates them 0600, but a copied workdir may have lost that.
        os.chmod(self.host_key, 0o600)
        os.chmod(self.client_key, 0o600)
        self.authorized_keys.write_text(_pub(self.client_key).read_text())
        if os.geteuid() == 0 and not _PRIVSEP_DIR.is_dir():
            _PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(_PRIVSEP_DIR, 0o755)

    def _write_config(self) -> None:
        """Write an sshd_config that reads nothing from /etc/ssh and logs only errors."""
        lines = [
            f"ListenAddress {self.host}:{self.port}",
            f"HostKey {_config_value(self.host_key)}",
            f"AuthorizedKeysFile {_config_value(self.authorized_keys)}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "UsePAM no",
            # The workdir usually sits in /tmp; StrictModes would reject its permissions.
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            f"PidFile {_config_value(self.pidfile)}",
            "Subsystem sftp internal-sftp",
            # Tests open many parallel rsync sessions; the defaults (10:30:100, 10) throttle.
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "LogLevel ERROR",
            # No DNS lookups of the client: nothing to resolve on loopback, and it can stall.
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            # bash sources ~/.bashrc for every command sshd runs (each rsync is one) unless it looks
            # nested: the login account's rc file is not part of what the relay costs. (Root's here
            # runs `pyenv init`: 0.15 s of CPU per rsync run.)
            "SetEnv SHLVL=1",
        ]
        if self.sftp_chroot is not None:
            lines += [
                f"ChrootDirectory {_config_value(self.sftp_chroot)}",
                "ForceCommand internal-sftp",
                "DisableForwarding yes",
                "PermitTTY no",
            ]
        self.config.write_text("\n".join(lines) + "\n")

    def _write_known_hosts(self) -> None:
        """Pin our host key for ``[127.0.0.1]:PORT`` so StrictHostKeyChecking can stay on (ssh
        names a host on port 22 without brackets and port)."""
        keytype, blob = _pub(self.host_key).read_text().split()[:2]
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        self.known_hosts.write_text(f"{name} {keytype} {blob}\n")

    def _launch(self, sshd: str) -> None:
        """Spawn ``sshd -D -e`` (foreground, log to stderr) with stderr appended to sshd.log."""
        with open(self.log, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} port {self.port}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
            )
        # If the owner forgets stop() (crashed test, Ctrl-C in the demo), still reap sshd
        # when this object is collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, _terminate, self._proc)

    def _wait_for_banner(self, deadline: float) -> str:
        """Poll until the port sends an SSH banner; return "ready", "exited ..." or "timeout".

        The pause between probes is a wait on the process itself, so an early sshd exit
        (port taken, bad config) is noticed immediately instead of after a fixed sleep.
        """
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                return f"sshd exited with status {code}"
            if self._banner_ok():
                # Someone else might own the port and speak SSH; make sure it is our sshd.
                if self._proc.poll() is None:
                    return "ready"
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            try:
                self._proc.wait(timeout=min(0.05, remaining))
            except subprocess.TimeoutExpired:
                pass

    def _banner_ok(self) -> bool:
        """True if a TCP connect to our port gets a line starting with ``SSH-``."""
        try:
            with socket.create_connection((self.host, self.port), timeout=_PROBE_TIMEOUT) as sock:
                data = b""
                while len(data) < 4:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    data += chunk
                if not data.startswith(b"SSH-"):
                    return False
                # Answer with our own identification before hanging up: sshd logs a
                # connection that closes before it at ERROR level, filling sshd.log.
                sock.sendall(b"SSH-2.0-synkler-probe\r\n")
                return True
        except OSError:
            return False

    def _check_login(self, deadline: float) -> None:
        """Run ``ssh target true`` once; on failure stop sshd and raise with both logs."""
        remaining = max(deadline - time.monotonic(), 5.0)
        # An SFTP-only server runs no command: a session of the sftp subsystem that lists its root.
        sftp_only = self.sftp_chroot is not None
        argv = (
            [*self.ssh_command(), "-s", self.target, "sftp"]
            if sftp_only
            else [*self.ssh_command(), self.target, "true"]
        )
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=remaining,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self._fail_login(f"ssh login timed out after {remaining:.1f}s")
        if result.returncode != 0:
            err = result.stderr.decode(errors="replace").strip()
            self._fail_login(f"ssh exited with status {result.returncode}: {err}")

    def _fail_login(self, why: str) -> NoReturn:
        """Stop sshd and raise RuntimeError describing why the test login failed."""
        self._stop_process()
        tail = self._log_tail()
        port, self.port = self.port, 0
        raise RuntimeError(
            f"sshd on {self.host}:{port} answers but key login as {self.user} failed: {why}\n"
            f"sshd.log ({self.log}):\n{tail}"
        )

    def _stop_process(self) -> None:
        """Terminate and reap the current sshd, if any, and drop the safety finalizer."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _terminate(proc)

    def _log_tail(self, lines: int = 20) -> str:
        """Last lines of sshd.log, for error messages that explain themselves."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no sshd.log)"
        return "\n".join(text.splitlines()[-lines:]) or "(sshd.log is empty)"

    @staticmethod
    def _run_checked(argv: list[str], what: str) -> None:
        """Run a helper tool and turn a failure into a RuntimeError that shows its stderr."""
        try:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
            )
        except FileNotFoundError:
            raise RuntimeError(f"{what} not found: install openssh-client") from None
        if result.returncode != 0:
            err = result.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"{what} failed ({result.returncode}): {err}")
