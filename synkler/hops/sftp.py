"""SFTP to central with paramiko (`transport: sftp`): the connection; with sftpcopy.py (the copies) and
sftpwire.py (the reader of answers), the only modules that import paramiko.

For a central that offers only OpenSSH's `internal-sftp` (often chrooted), where rsync cannot run.
The runs return the same `transfer.Result` as rsync's, classed the same way (a link that is down,
a disk that is full, a refusal that needs a person), and leave on central and at download what
rsync leaves: a file is written into a temporary file `.<name>.XXXXXX` beside its name and renamed
into place when whole, so central's followers and its early pull see what they see with rsync;
what a run cut short left is resumed by the next one (synkler.hops.sftpcopy).

Host keys are checked against known_hosts only (the user's, ssh_config's UserKnownHostsFile, or
`known_hosts`); an unknown or changed key is refused as ssh refuses it ("Host key verification
failed"), a condition that needs a person. Keys: `sftp_identity`, ssh_config's IdentityFile,
the ssh agent, then ~/.ssh/id_*.

paramiko's defaults are slow (a small window, one request at a time): a large window and
packets, pipelined writes and prefetched reads of large requests bring it near OpenSSH's
throughput (docs/performance.md). Sessions are kept and reused for CONTROL_PERSIST seconds
(`ssh_control_persist`), one per thread at a time, as rsync's runs share one ssh connection.
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import paramiko

from .. import places
from ..errors import Interrupted
from . import sftpcopy, sftpwire
from .checksum import STOPPING
from .outcome import OutsideRoot, Result

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

WINDOW = 32 << 20  # bytes central may send before we acknowledge (paramiko: 2 MiB)
PACKET = 256 << 10  # the largest SSH packet we accept (paramiko: 32 KiB)
CONNECT_TIMEOUT = 30.0
KEEPALIVE = 15  # seconds between keep-alives, as ssh's ServerAliveInterval for rsync
# AES-GCM first (one pass over the data, no separate MAC) where this paramiko has it.
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")

T = TypeVar("T")


class Refused(Exception):
    """ssh refused for a reason a person must fix (host key, key, host name); text as ssh's."""


class Session:
    """One ssh connection with its SFTP session (and the connections to the jump hosts it goes
    through, ssh_config's ProxyJump)."""

    def __init__(
        self,
        key: tuple[str, int, str],
        transport: paramiko.Transport,
        client: paramiko.SFTPClient,
        jumps: Sequence[paramiko.Transport] = (),
    ):
        self.key = key
        self.transport = transport
        self.sftp = client
        self.jumps = list(jumps)
        self.used = time.monotonic()

    def alive(self) -> bool:
        return self.transport.is_active()

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.cut()

    def cut(self) -> None:
        """Close the connections without a goodbye (the link may hang)."""
        for t in [self.transport, *reversed(self.jumps)]:
            t.close()


_idle: list[Session] = []
_busy: set[Session] = set()
_lock = threading.Lock()
_stops = [0]  # how many times stop_all was called: a run begun before the last one ends


def _stopping() -> Callable[[], bool]:
    """For a run beginning now: has stop_all been called since? None begins once the agent stops
    (Interrupted: checksum.STOPPING), as no rsync run does: stop_all ends only the runs going on,
    so one a job began after it would run unended (the job leaves it to the next start)."""
    begun = _stops[0]
    # Looked at after `begun` is read: the stop sets STOPPING before it calls stop_all, so a run
    # that read the count after stop_all raised it sees STOPPING here, and one before sees the count.
    if STOPPING.is_set():
        raise Interrupted("the agent is stopping")
    return lambda: _stops[0] != begun


# where and how to connect ---------------------------------------------------------------------------


def _ssh_config(host: str) -> dict[str, Any]:
    """What ~/.ssh/config says for `host` (an alias, its HostName, Port, User, IdentityFile…)."""
    path = os.path.expanduser("~/.ssh/config")
    if not os.path.isfile(path):
        return {}
    try:
        return dict(paramiko.SSHConfig.from_path(path).lookup(host))
    except (OSError, paramiko.SSHException, ValueError) as e:
        raise Refused(f"Bad configuration option in {path}: {e}") from None


def target(cfg: Config) -> tuple[str, int, str, dict[str, Any]]:
    """(host name, port, user, ssh_config's settings) of central for this agent."""
    user, _, host = cfg.central_host.rpartition("@")
    conf = _ssh_config(host)
    port = cfg.sftp_port or int(conf.get("port", 22))
    return conf.get("hostname", host), port, user or conf.get("user") or getpass.getuser(), conf


def known_hosts_files(cfg: Config, conf: dict[str, Any]) -> list[str]:
    if cfg.known_hosts is not None:
        return [str(cfg.known_hosts)]
    given = conf.get("userknownhostsfile")
    files = given.split() if isinstance(given, str) else list(given or [])
    return [os.path.expanduser(f) for f in files] or [os.path.expanduser("~/.ssh/known_hosts")]


def _check_host_key(transport: paramiko.Transport, host: str, port: int, files: list[str]) -> None:
    """Refused unless central's key is the one known_hosts holds for it."""
    known = paramiko.HostKeys()
    for path in files:
        try:
            known.load(path)
        except FileNotFoundError:
            continue
        except (OSError, paramiko.SSHException) as e:
            raise Refused(f"Host key verification failed: cannot read {path}: {e}") from None
    key = transport.get_remote_server_key()
    name = host if port == 22 else f"[{host}]:{port}"
    entry = known.lookup(name)
    if entry is None:
        raise Refused(
            f"Host key verification failed: no host key is known for {name} in {', '.join(files)} "
            f"(its {key.get_name()} key is {key.fingerprint}); add it with ssh-keyscan after checking it"
        )
    if key.get_name() not in entry or entry[key.get_name()] != key:
        raise Refused(
            f"Host key verification failed: REMOTE HOST IDENTIFICATION HAS CHANGED for {name}: "
            f"it offers {key.get_name()} {key.fingerprint}, not the key in {', '.join(files)}"
        )


def _known_types(host: str, port: int, files: list[str]) -> list[str]:
    known = paramiko.HostKeys()
    for path in files:
        try:
            known.load(path)
        except (OSError, paramiko.SSHException):
            continue
    entry = known.lookup(host if port == 22 else f"[{host}]:{port}")
    return list(entry.keys()) if entry is not None else []


def _keys(cfg: Config, conf: dict[str, Any]) -> Iterator[tuple[str, paramiko.PKey]]:
    """The keys to offer, in ssh's order: the configured identity (else ssh_config's, with the
    agent's keys after them), then the default files."""
    named = [str(cfg.sftp_identity)] if cfg.sftp_identity else list(conf.get("identityfile", []))
    for path in (os.path.expanduser(p) for p in named):
        yield path, _load_key(path)
    if cfg.sftp_identity is None and conf.get("identitiesonly", "no") != "yes":
        try:
            for key in paramiko.Agent().get_keys():
                yield "the ssh agent", key
        except paramiko.SSHException:
            pass
        if not named:
            for base in ("id_ed25519", "id_ecdsa", "id_rsa"):
                path = os.path.expanduser(f"~/.ssh/{base}")
                if os.path.isfile(path):
                    try:
                        yield path, _load_key(path)
                    except Refused as e:
                        log.debug("%s", e)


def _load_key(path: str) -> paramiko.PKey:
    kinds = [paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey]
    last: Exception | None = None
    for kind in kinds:
        try:
            return kind.from_private_key_file(path)
        except paramiko.PasswordRequiredException:
            raise Refused(
                f"Load key {path}: it has a passphrase; add it to the ssh agent (ssh-add): synkler asks none"
            ) from None
        except FileNotFoundError:
            raise Refused(f"Identity file {path} not accessible: no such file") from None
        except PermissionError:
            raise Refused(f"Identity file {path} not accessible: permission denied") from None
        except (paramiko.SSHException, ValueError) as e:
            last = e
    raise Refused(f"Load key {path}: invalid format ({last})")


def jump_hosts(conf: dict[str, Any]) -> list[tuple[str, int, str, dict[str, Any]]]:
    """(host name, port, user, ssh_config's settings) of each jump host of ssh_config's ProxyJump
    (`[user@]host[:port]`, several separated by commas), in the order they are gone through."""
    spec = str(conf.get("proxyjump") or "none").strip()
    if spec.lower() == "none":
        return []
    hops = []
    for hop in spec.split(","):
        user, _, rest = hop.strip().rpartition("@")
        host, port = rest, ""
        if rest.startswith("["):  # [IPv6]:port
            host, _, port = rest[1:].partition("]")
            port = port.lstrip(":")
        elif rest.count(":") == 1:
            host, _, port = rest.partition(":")
        if not host or (port and not port.isdigit()) or "://" in hop:
            raise Refused(f"Bad ProxyJump {spec!r} in ~/.ssh/config: each hop is [user@]host[:port]")
        jconf = _ssh_config(host)
        hops.append(
            (
                jconf.get("hostname", host),
                int(port or jconf.get("port", 22)),
                user or jconf.get("user") or getpass.getuser(),
                jconf,
            )
        )
    return hops


def connect(cfg: Config) -> Session:
    """A new ssh connection to central (through ssh_config's ProxyJump hosts, if any) and its SFTP
    session. Refused, or OSError/SSHException."""
    host, port, user, conf = target(cfg)
    route = [*jump_hosts(conf), (host, port, user, conf)]
    opened: list[paramiko.Transport] = []
    try:
        for h, p, u, c in route:
            carried = None
            if opened:  # through the jump host before it, as ssh -J does (a direct-tcpip channel)
                try:
                    carried = opened[-1].open_channel(
                        "direct-tcpip", (h, p), ("127.0.0.1", 0), timeout=CONNECT_TIMEOUT
                    )
                except paramiko.ChannelException as e:
                    why = f"the jump host {opened[-1].getpeername()[0]} did not connect to {h} port {p}: {e}"
                    if e.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
                        raise Refused(f"ssh: {why} (it allows no forwarding)") from None
                    raise ConnectionRefusedError(errno.ECONNREFUSED, why) from None
            opened.append(_login(cfg, h, p, u, c, carried))
        client = sftpwire.open_sftp(opened[-1], WINDOW, PACKET)
        if client is None:
            raise paramiko.SSHException("central opened no SFTP session")
        client.get_channel().settimeout(cfg.rsync_timeout)
    except BaseException:
        for t in reversed(opened):
            t.close()
        raise
    return Session((host, port, user), opened[-1], client, opened[:-1])


def _login(
    cfg: Config, host: str, port: int, user: str, conf: dict[str, Any], sock: Any = None
) -> paramiko.Transport:
    """An ssh connection to `host`, its key checked and logged in; over `sock` (a channel through
    a jump host) or a new TCP connection."""
    files = known_hosts_files(cfg, conf)
    if sock is None:
        try:
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except socket.gaierror as e:
            raise Refused(f"ssh: Could not resolve hostname {host}: {e.strerror}") from None
    transport = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=PACKET)
    try:
        options = transport.get_security_options()
        options.ciphers = tuple(
            [c for c in FAST_CIPHERS if c in options.ciphers]
            + [c for c in options.ciphers if c not in FAST_CIPHERS]
        )
        types = [t for t in options.key_types if t in _known_types(host, port, files)]
        if types:  # ask for the kind of key known_hosts holds, as ssh does
            options.key_types = tuple(types)
        transport.start_client(timeout=CONNECT_TIMEOUT)
        _check_host_key(transport, host, port, files)
        _authenticate(cfg, conf, transport, user, host)
        transport.set_keepalive(KEEPALIVE)
    except BaseException:
        transport.close()
        raise
    return transport


def _authenticate(
    cfg: Config, conf: dict[str, Any], transport: paramiko.Transport, user: str, host: str
) -> None:
    tried = []
    for where, key in _keys(cfg, conf):
        tried.append(where)
        try:
            transport.auth_publickey(user, key)
        except paramiko.AuthenticationException:
            continue
        if transport.is_authenticated():
            return
    keys = ", ".join(tried) or "none"
    raise Refused(f"{user}@{host}: Permission denied (publickey): no key was accepted (tried {keys})")


# sessions -------------------------------------------------------------------------------------------


@contextmanager
def session(cfg: Config) -> Iterator[Session]:
    """A session to central for this thread alone: a kept one, else a new one. It is kept for the
    next run if it ends well, closed if not."""
    key = target(cfg)[:3]
    now = time.monotonic()
    found = None
    with _lock:
        for s in list(_idle):
            if now - s.used > max(cfg.ssh_control_persist, 0) or not s.alive():
                _idle.remove(s)
                s.close()
            elif found is None and s.key == key:
                _idle.remove(s)
                found = s
    s = found or connect(cfg)
    with _lock:
        _busy.add(s)
    ok = False
    try:
        yield s
        ok = True
    finally:
        with _lock:
            _busy.discard(s)
            s.used = time.monotonic()
            if ok and cfg.ssh_control_persist > 0 and s.alive():
                _idle.append(s)
            elif ok:
                s.close()
            else:  # the link may hang: no goodbye on it, just the socket closed
                s.cut()


def close_all() -> None:
    """Close the kept sessions (the agent stops)."""
    with _lock:
        idle, _idle[:] = list(_idle), []
    for s in idle:
        s.close()


def stop_all(grace: float = 2.0) -> None:
    """The agent stops: runs end at their next chunk (a push moves its temporary file to the
    partial dir); those still blocked after `grace` seconds have their connection closed."""
    _stops[0] += 1

    def cut() -> None:
        with _lock:
            busy = list(_busy)
        for s in busy:
            s.cut()

    timer = threading.Timer(grace, cut)
    timer.daemon = True
    timer.start()
    close_all()


# runs -----------------------------------------------------------------------------------------------


def remote_path(cfg: Config, path: str) -> str:
    """A path on central as the SFTP account sees it: below `sftp_root` (its chroot) from "/"."""
    sent = places.over_ssh(path, cfg.sftp_root)
    if sent is None:
        raise OutsideRoot(
            f"central's {path} is outside sftp_root {cfg.sftp_root}: the SFTP account cannot reach it; "
            "set sftp_root to the directory the account is chrooted to"
        )
    if cfg.sftp_root is None:
        return sent
    return "/" if sent == "." else "/" + sent


def _run(cfg: Config, what: str, work: Callable[[paramiko.SFTPClient], T]) -> tuple[Result, T | None]:
    """Run `work` on a session; its failures as rsync's would be classed."""
    argv = ("sftp", cfg.central_host, what)
    try:
        with session(cfg) as s:
            return Result(True, 0, "", argv), work(s.sftp)
    except Refused as e:
        return Result(False, 255, str(e), argv), None
    except OutsideRoot as e:
        return Result(False, 12, str(e), argv), None
    except sftpcopy.Stopped as e:
        return Result(False, -1, f"stopped: {e}", argv), None
    except sftpcopy.Missing as e:
        return Result(False, 23, f"sftp: {e}: No such file or directory", argv), None
    except OSError as e:
        return Result(False, *_os_error(e), argv), None
    except (paramiko.SSHException, EOFError) as e:
        return Result(
            False, 255, f"ssh: connection to {cfg.central_host} failed: {e or type(e).__name__}", argv
        ), None


def _os_error(e: OSError) -> tuple[int, str]:
    """(exit code as rsync's, words) for an OSError of a run: the link, a full disk, or else."""
    if isinstance(e, (socket.timeout, ConnectionError, TimeoutError)) or e.errno in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
    ):
        return 255, f"ssh: connect to central failed or broke: {e}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return 11, f"sftp: {e.filename or ''}: {os.strerror(e.errno)} ({e.errno})"
    if isinstance(e, IOError) and e.errno is None and "closed" in str(e).lower():
        return 255, f"ssh: the connection to central closed: {e}"
    return 23, f"sftp: {e.strerror or e}" + (f": {e.filename}" if e.filename else "")


def push(cfg: Config, local_dir: str, names: Sequence[str], remote_dir: str) -> Result:
    """upload -> central: the entries `names` of `local_dir` into `remote_dir`, on one session."""
    stopping = _stopping()

    def work(client: paramiko.SFTPClient) -> None:
        dest = remote_path(cfg, remote_dir)
        copier = sftpcopy.Pusher(client, stopping)
        copier.entries(local_dir, list(names), dest)
        if copier.failures:
            raise copier.failures[0]

    return _run(cfg, f"push {len(names)} into {remote_dir}", work)[0]


def push_bundle(cfg: Config, local_dir: str, names: Sequence[str], remote_dir: str, bundle: str) -> Result:
    """upload -> central: the files `names` of `local_dir` into the directory `bundle` of `remote_dir`
    (0755), on one session (transfer.push_bundle)."""
    stopping = _stopping()

    def work(client: paramiko.SFTPClient) -> None:
        copier = sftpcopy.Pusher(client, stopping)
        copier.listed(local_dir, list(names), remote_path(cfg, remote_dir), bundle)
        if copier.failures:
            raise copier.failures[0]

    return _run(cfg, f"push bundle {bundle} of {len(names)} into {remote_dir}", work)[0]


def pull(cfg: Config, remote_dir: str, paths: Sequence[str], local_dir: str) -> Result:
    """central -> download: `paths` (relative to `remote_dir`) into `local_dir`, on one session."""
    stopping = _stopping()
    os.makedirs(local_dir, mode=0o700, exist_ok=True)

    def work(client: paramiko.SFTPClient) -> None:
        source = remote_path(cfg, remote_dir)
        copier = sftpcopy.Puller(client, stopping)
        copier.entries(source, list(paths), local_dir)
        if copier.failures:
            raise copier.failures[0]

    return _run(cfg, f"pull {len(paths)} from {remote_dir}", work)[0]


def pull_more(
    cfg: Config, remote_file: str, local_path: str, cancel: threading.Event | None = None
) -> Result:
    """central -> download: append to `local_path` what `remote_file` has beyond its length."""
    stopping = _stopping()

    def work(client: paramiko.SFTPClient) -> None:
        sftpcopy.Puller(client, stopping, cancel).append(remote_path(cfg, remote_file), local_path)

    return _run(cfg, f"append from {remote_file}", work)[0]


def probe_write(cfg: Config, remote_dir: str) -> Result:
    """upload's `check`: write a small file into `remote_dir` on central and remove it."""

    def work(client: paramiko.SFTPClient) -> None:
        where = remote_path(cfg, remote_dir)
        try:
            client.mkdir(where, 0o700)  # as rsync makes the last directory of a target (central's own)
        except OSError:
            pass  # there already (or the write below says why not)
        path = f"{where.rstrip('/')}/.synkler-check-{os.getpid()}-{int(time.time())}"
        with client.open(path, "wx") as f:
            f.write(b"written by synkler check; removed at once\n")
        client.remove(path)

    return _run(cfg, f"write into {remote_dir}", work)[0]


def probe_read(cfg: Config, remote_dir: str) -> Result:
    """download's `check`: list `remote_dir` on central (central's store)."""
    result, listed = _run(cfg, f"list {remote_dir}", lambda c: c.listdir(remote_path(cfg, remote_dir)))
    if result.ok:
        return Result(True, 0, f"{len(listed or [])} entries", result.argv)
    return result


def probe(cfg: Config) -> Result:
    """Login and an SFTP session to central, for `synkler check`: its working directory."""
    result, where = _run(cfg, "login", lambda c: c.normalize("."))
    return Result(True, 0, f"SFTP session in {where}", result.argv) if result.ok else result
