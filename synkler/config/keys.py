"""The key table: every setting described exactly once, in ``KEYS`` (how to check it, its default,
whether it is required, which roles read it), and the Config it becomes.

The loader, the list of known keys (used for "did you mean" hints) and the defaults all come from
that one table, so a new setting cannot be half-added.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

from ..routes import Route, every_destination
from .alerts import Alerts, alerts
from .values import (
    Checker,
    Context,
    Invalid,
    boolean,
    broker_hosts,
    centrals,
    choice,
    cleanup_script,
    command,
    directory,
    file,
    host,
    identifier,
    integer,
    listen,
    names,
    number,
    path,
    public_keys,
    remote_dir,
    required_metadata,
    route_rules,
    rsync_opts,
    string,
    text,
)

MODES = ("upload", "central", "download")


@dataclass(frozen=True)
class Config:
    """A checked configuration; every field holds its final, typed value.

    Fields have no defaults here on purpose: defaults live in ``KEYS`` only, and
    a Config is meant to be built by ``parse_config``/``load_config``.
    """

    path: Path
    mode: str
    id: str
    name: str
    central_name: str  # the central agent's name (its own `name` at central)
    download_name: str  # the download agent's name (its own `name` at download)
    # upload, download: the pool of centrals, name -> ssh destination ({}: central_name at central_host)
    centrals: dict[str, str]
    uploads: tuple[str, ...]  # central: the upload agents whose offers queues it takes offers from
    reown_seconds: float  # upload: a central whose queue has no consumer this long loses its entries
    reoffer_minutes: float  # upload: an entry held waiting for room this long is offered elsewhere (0: never)
    file_dir: Path
    keep_minutes: float
    admission_lease_minutes: float
    keep_history_days: float
    pidfile: Path
    state_db: Path
    rsync: tuple[str, ...]
    rsync_opts: tuple[str, ...]
    rsync_timeout: int
    stall_seconds: float  # a transfer that moves nothing this long is stopped (0: only rsync_timeout)
    ssh_control_persist: int
    synkler_server: str
    central_host: str
    rrsync_root: str | None  # the directory of central this agent's ssh key is confined to by rrsync
    transport: str  # how this end's hop moves data: "rsync" (over ssh) or "sftp" (synkler.hops.sftp)
    sftp_port: int | None  # the SFTP transport's ssh port (None: ~/.ssh/config's, else 22)
    sftp_identity: Path | None  # its private key (None: ~/.ssh/config's IdentityFile, the agent, ~/.ssh/id_*)
    known_hosts: Path | None  # the host keys it trusts (None: ~/.ssh/known_hosts and ssh_config's)
    sftp_root: str | None  # the directory of central the SFTP account sees as / (its chroot)
    broker_tls: bool
    broker_tls_server_name: str | None
    broker_ca_file: Path | None
    broker_cert_file: Path | None
    broker_key_file: Path | None
    broker_login: str
    broker_port: int
    broker_hosts: tuple[tuple[str, int | None], ...]  # () : synkler_server alone
    broker_username: str  # "" with EXTERNAL login and no name given: publishes name no user
    broker_password: str
    broker_password_file: Path | None
    broker_vhost: str
    broker_heartbeat: int
    authenticate: bool
    cleanup_script: str | None
    receipt_key: Path | None  # download: the private key that signs its delivery receipts
    # upload, central: download's public key (ed25519:<base64>), or download name -> its key
    download_public_key: str | dict[str, str] | None
    checksum: str  # upload, download: "md5", or the second hash beside it ("sha256", "blake2b")
    receipt_dir: Path  # upload, download: where each delivery's receipt document is kept
    receipt_keep_days: float  # upload, download: how long receipt documents are kept (0: for ever)
    cleanup_attempts: int
    cleanup_timeout: float
    free_percent: float
    settle_seconds: float
    max_transfers: int
    bundle_files: int  # upload: most files in one bundle (0: no bundles; docs/architecture.md, "Bundles")
    bundle_min: int  # upload: bundle only when at least this many small files have settled at once
    bundle_file_kib: int  # upload: only files up to this size go into bundles
    bundle_mib: int  # upload: most bytes in one bundle
    max_attempts: int
    retry_max_seconds: float
    log_format: str
    daemon: bool
    log_file: Path | None
    metrics_listen: tuple[str, int] | None
    metrics_textfile: Path | None
    require_metadata: dict[str, re.Pattern[str] | None]  # central: metadata keys an entry must have
    layout: str  # download: "sidecar" (NAME.meta.json beside NAME) or "bagit" (a bag per entry)
    subdir_per_upload: bool  # download: place each entry in <file_dir>/<its upload agent>/
    routes: tuple[Route, ...]  # central: which downloads an entry goes to (empty: download_name)
    # Not a key: the keys the file sets (`synkler check` warns of those this role ignores).
    given: frozenset[str] = field(default=frozenset(), compare=False)
    alerts: Alerts | None = None  # notices to people (synkler.observe.alerts); None: none are sent
    # Not a key: the files that hold the broker password (this file when it sets one other than
    # guest, or broker_password_file), which the agent tells about when others can read them.
    secret_files: tuple[Path, ...] = ()

    @property
    def destinations(self) -> list[str]:
        """Central: every download its routes name (download_name when it has none)."""
        return every_destination(self.routes) if self.routes else [self.download_name]

    def download_keys(self) -> dict[str, str]:
        """Upload, central: the pinned public key of each download (a single key is download_name's)."""
        keys = self.download_public_key
        if keys is None:
            return {}
        return dict(keys) if isinstance(keys, Mapping) else {self.download_name: keys}

    @property
    def daemon_log(self) -> Path:
        """The log of an agent that runs as a daemon: log_file, or <stem>.log beside state_db."""
        return self.log_file or self.state_db.with_name(self.stem + ".log")

    @property
    def central_names(self) -> tuple[str, ...]:
        """The centrals an upload or download agent works with: the pool's, else central_name."""
        return tuple(self.centrals) or (self.central_name,)

    def central_host_of(self, central: str) -> str:
        """The ssh destination of a central this agent works with (central_host without a pool)."""
        return self.centrals.get(central, self.central_host) if self.centrals else self.central_host

    @property
    def stem(self) -> str:
        """Base name for per-agent files, unique per (id, mode, name) so agents can share a host."""
        return stem(self.id, self.mode, self.name)

    @property
    def cleanup_argv(self) -> tuple[str, ...]:
        """The cleanup command as argv; it is run without a shell, so it is split here, once."""
        if self.cleanup_script is None:
            return ()
        return tuple(shlex.split(self.cleanup_script))


def stem(id_: str, mode: str, name: str) -> str:
    return f"{id_}-{mode}" if name == mode else f"{id_}-{mode}-{name}"


class Derived(NamedTuple):
    """A default computed from other settings once those are known."""

    compute: Callable[[dict[str, Any], Context], Any]


class Key(NamedTuple):
    check: Checker
    default: Any = None
    required: bool = False
    roles: tuple[str, ...] = MODES  # the modes that read it (docs/configuration.md, "used by")


# The state directory of the systemd unit (StateDirectory=synkler): where `status` and the repairs
# look when they are run from a shell without the unit's $STATE_DIRECTORY.
UNIT_STATE_DIR = Path("/var/lib/synkler")


def _state_dir(ctx: Context) -> Path:
    return state_dirs(ctx.environ, ctx.home)[0]


def state_dirs(environ: Mapping[str, str], home: Path) -> list[Path]:
    """The directories an agent keeps its state in by default: first the one an agent run in
    `environ` uses, then the others it may have used when run elsewhere (by the unit, by hand)."""
    dirs: list[Path] = []
    # systemd's StateDirectory= (the unit's own directory, so no "synkler" below it); it lists one
    # path per StateDirectory= name, separated by ':'.
    systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd and os.path.isabs(systemd):
        dirs.append(Path(systemd))
    # XDG says relative values are invalid and must be ignored.
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        dirs.append(Path(xdg) / "synkler")
    dirs += [home / ".local" / "state" / "synkler", UNIT_STATE_DIR]
    return list(dict.fromkeys(dirs))


def _state_file(suffix: str) -> Derived:
    return Derived(lambda s, ctx: _state_dir(ctx) / f"{stem(s['id'], s['mode'], s['name'])}{suffix}")


_ENDS = ("upload", "download")  # the roles that run rsync and cleanup scripts


def _own_or(settings: dict[str, Any], role: str) -> str:
    """The name of the relay's `role` agent by default: this agent's own if it is that role."""
    return str(settings["name"]) if settings["mode"] == role else role


# Order matters for derived defaults: anything a Derived reads comes earlier.
KEYS: dict[str, Key] = {
    "mode": Key(choice(*MODES), required=True),
    "id": Key(identifier, "default"),
    "name": Key(identifier, Derived(lambda s, ctx: s["mode"])),
    # The names of the relay's central and download agents, which peers address: an agent's own
    # name where it is that role.
    "central_name": Key(identifier, Derived(lambda s, ctx: _own_or(s, "central")), roles=_ENDS),
    "download_name": Key(
        identifier, Derived(lambda s, ctx: _own_or(s, "download")), roles=("upload", "central")
    ),
    # A pool of centrals (docs/design-pool-and-fanout.md): their names and ssh destinations.
    "centrals": Key(centrals, {}, roles=_ENDS),
    "uploads": Key(names, (), roles=("central",)),
    "reown_seconds": Key(number(5), 40.0, roles=("upload",)),
    "reoffer_minutes": Key(number(0), 10.0, roles=("upload",)),
    "file_dir": Key(directory, required=True),
    "keep_minutes": Key(number(0), 30.0, roles=("central",)),
    "admission_lease_minutes": Key(number(0, above=True), 60.0, roles=("central",)),
    "keep_history_days": Key(number(0), 30.0),
    "pidfile": Key(path, _state_file(".pid")),
    "state_db": Key(path, _state_file(".sqlite")),
    "rsync": Key(command, ("rsync",), roles=_ENDS),
    "rsync_opts": Key(rsync_opts, (), roles=_ENDS),
    "rsync_timeout": Key(integer(1), 300, roles=_ENDS),
    "stall_seconds": Key(number(0), 60.0, roles=_ENDS),
    "ssh_control_persist": Key(integer(0, 86400), 60, roles=_ENDS),
    "synkler_server": Key(host, required=True),
    "central_host": Key(host, Derived(lambda s, ctx: s["synkler_server"]), roles=_ENDS),
    "rrsync_root": Key(remote_dir, None, roles=_ENDS),
    "transport": Key(choice("rsync", "sftp"), "rsync", roles=_ENDS),
    "sftp_port": Key(integer(1, 65535), None, roles=_ENDS),
    "sftp_identity": Key(file, None, roles=_ENDS),
    "known_hosts": Key(file, None, roles=_ENDS),
    "sftp_root": Key(remote_dir, None, roles=_ENDS),
    "broker_tls": Key(boolean, False),
    "broker_tls_server_name": Key(host, None),
    "broker_ca_file": Key(file, None),
    "broker_cert_file": Key(file, None),
    "broker_key_file": Key(file, None),
    "broker_login": Key(choice("password", "external"), "password"),
    "broker_port": Key(integer(1, 65535), Derived(lambda s, ctx: 5671 if s["broker_tls"] else 5672)),
    # A RabbitMQ cluster: its nodes, tried in turn (synkler.broker.connect); empty: synkler_server.
    "broker_hosts": Key(broker_hosts, ()),
    # With EXTERNAL login the broker takes the user from the certificate; only a name given here
    # goes into the publishes' user_id (and authenticate needs it).
    "broker_username": Key(text, Derived(lambda s, ctx: "guest" if s["broker_login"] == "password" else "")),
    "broker_password": Key(string, "guest"),
    "broker_password_file": Key(path, None),
    "broker_vhost": Key(text, "/"),
    "broker_heartbeat": Key(integer(1, 3600), 30),
    "authenticate": Key(boolean, False),
    "cleanup_script": Key(cleanup_script, None, roles=_ENDS),
    "receipt_key": Key(file, None, roles=("download",)),
    "download_public_key": Key(public_keys, None, roles=("upload", "central")),
    "checksum": Key(choice("md5", "sha256", "blake2b"), "md5", roles=_ENDS),
    # Beside the state database: a relay that moves its state keeps its receipts with it.
    "receipt_dir": Key(
        path,
        Derived(
            lambda s, ctx: Path(s["state_db"]).parent / f"{stem(s['id'], s['mode'], s['name'])}-receipts"
        ),
        roles=_ENDS,
    ),
    "receipt_keep_days": Key(number(0), 0.0, roles=_ENDS),
    "cleanup_attempts": Key(integer(1, 100), 1, roles=_ENDS),
    "cleanup_timeout": Key(number(0, above=True), 3600.0, roles=_ENDS),
    "free_percent": Key(number(0, 100), 10.0, roles=("central",)),
    "settle_seconds": Key(number(0), 1.0, roles=("upload",)),
    "max_transfers": Key(integer(1), 4),
    "bundle_files": Key(integer(0, 10000), 1000, roles=("upload",)),
    "bundle_min": Key(integer(2, 100000), 50, roles=("upload",)),
    "bundle_file_kib": Key(integer(1, 65536), 1024, roles=("upload",)),
    "bundle_mib": Key(integer(1, 4096), 64, roles=("upload",)),
    "max_attempts": Key(integer(1), 5),
    "retry_max_seconds": Key(number(0, above=True), 300.0, roles=_ENDS),
    "log_format": Key(choice("text", "json"), "text"),
    "daemon": Key(boolean, False),
    "log_file": Key(path, None),
    "metrics_listen": Key(listen, None),
    "metrics_textfile": Key(path, None),
    "require_metadata": Key(required_metadata, {}, roles=("central",)),
    "layout": Key(choice("sidecar", "bagit"), "sidecar", roles=("download",)),
    "subdir_per_upload": Key(boolean, False, roles=("download",)),
    "routes": Key(route_rules, (), roles=("central",)),
    "alerts": Key(alerts, None),
}


def ignored_keys(cfg: Config) -> list[str]:
    """The keys the configuration sets that its mode does not read, in table order."""
    return [key for key in KEYS if key in cfg.given and cfg.mode not in KEYS[key].roles]


def value_problem(key: str, value: object, base: Path) -> str | None:
    """Why ``value`` will not do for ``key`` (None if it will), without looking at the file system."""
    ctx = Context(base=base, home=Path.home(), environ={}, check_dirs=False)
    try:
        KEYS[key].check(value, ctx)
    except Invalid as exc:
        return str(exc)
    return None
