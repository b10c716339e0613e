"""Find, read and check synkler's YAML configuration file.

Every setting is described exactly once, in ``KEYS``: how to check it, its
default and whether it is required.  The loader, the list of known keys (used
for "did you mean" hints) and the defaults all come from that one table, so a
new setting cannot be half-added.

Every bad input ends up as a single ``ConfigError`` naming the file and the
key, because the agents run unattended and an operator reading a log line needs
to know exactly which line of which file to fix - not a Python traceback.
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import yaml

from synkler.errors import ConfigError
from synkler.receipts import load_public_key
from synkler.tls import TlsFileError, TlsSettings, tls_context

ENV_VAR = "SYNKLER_CONF"
#: The broker password, when the configuration names none (docs/configuration.md, "The broker password").
PASSWORD_ENV_VAR = "SYNKLER_BROKER_PASSWORD"
_PASSWORD_FILE_MAX = 4096  # bytes: a longer "password file" is some other file named by mistake
# Module level so tests can point it somewhere harmless; read at call time.
SYSTEM_CONFIG = Path("/etc/synkler.conf")
_HOME_CONFIGS = ("synkler.conf", ".config/synkler/synkler.conf")

#: Where find_config looks when no -c/--config is given, first match wins.
DEFAULT_SEARCH: tuple[str, ...] = (
    "$" + ENV_VAR,
    "~/synkler.conf",
    "~/.config/synkler/synkler.conf",
    "/etc/synkler.conf",
)

MODES = ("upload", "central", "download")

# Ids and names end up in exchange/queue names, a directory name on central and
# file names of pidfiles, so keep them to characters that are safe in all four.
_IDENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def find_config(
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Path:
    """Return the configuration file to use.

    An explicit path or ``$SYNKLER_CONF`` that does not exist is an error
    rather than a reason to keep searching: silently falling back to another
    file would run the agent with settings the operator did not ask for.
    """
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else Path(home)
    if explicit is not None:
        return _existing_file(Path(explicit), explicit, "no such file")
    named = environ.get(ENV_VAR)
    if named:
        return _existing_file(Path(named), named, f"no such file (named by ${ENV_VAR})")
    candidates = [home / rel for rel in _HOME_CONFIGS] + [SYSTEM_CONFIG]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigError(None, None, f"no configuration file found (looked in: {looked})")


def _existing_file(path: Path, shown: str, missing: str) -> Path:
    """Return ``path`` if it is a file, otherwise explain why it cannot be used."""
    if path.is_file():
        return path
    raise ConfigError(shown, None, "not a regular file" if path.exists() else missing)


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
    file_dir: Path
    keep_minutes: float
    keep_history_days: float
    pidfile: Path
    state_db: Path
    rsync: tuple[str, ...]
    rsync_opts: tuple[str, ...]
    rsync_timeout: int
    ssh_control_persist: int
    synkler_server: str
    central_host: str
    broker_tls: bool
    broker_tls_server_name: str | None
    broker_ca_file: Path | None
    broker_cert_file: Path | None
    broker_key_file: Path | None
    broker_login: str
    broker_port: int
    broker_username: str  # "" with EXTERNAL login and no name given: publishes name no user
    broker_password: str
    broker_password_file: Path | None
    broker_vhost: str
    broker_heartbeat: int
    authenticate: bool
    cleanup_script: str | None
    receipt_key: Path | None  # download: the private key that signs its delivery receipts
    download_public_key: str | None  # upload, central: download's public key (ed25519:<base64>)
    cleanup_attempts: int
    cleanup_timeout: float
    free_percent: float
    settle_seconds: float
    max_transfers: int
    max_attempts: int
    retry_max_seconds: float
    log_format: str
    daemon: bool
    log_file: Path | None
    metrics_listen: tuple[str, int] | None
    metrics_textfile: Path | None
    # Not a key: the keys the file sets (`synkler check` warns of those this role ignores).
    given: frozenset[str] = field(default=frozenset(), compare=False)
    alerts: Alerts | None = None  # notices to people (synkler.observe.alerts); None: none are sent
    # Not a key: the files that hold the broker password (this file when it sets one other than
    # guest, or broker_password_file), which the agent tells about when others can read them.
    secret_files: tuple[Path, ...] = ()

    @property
    def daemon_log(self) -> Path:
        """The log of an agent that runs as a daemon: log_file, or <stem>.log beside state_db."""
        return self.log_file or self.state_db.with_name(self.stem + ".log")

    @property
    def stem(self) -> str:
        """Base name for per-agent files, unique per (id, mode, name) so agents can share a host."""
        return _stem(self.id, self.mode, self.name)

    @property
    def cleanup_argv(self) -> tuple[str, ...]:
        """The cleanup command as argv; it is run without a shell, so it is split here, once."""
        if self.cleanup_script is None:
            return ()
        return tuple(shlex.split(self.cleanup_script))


def _stem(id_: str, mode: str, name: str) -> str:
    return f"{id_}-{mode}" if name == mode else f"{id_}-{mode}-{name}"


# --------------------------------------------------------------------------
# Checkers.  Each takes the YAML value and the load context and returns the
# converted value, or raises _Invalid with a short problem text; parse_config
# adds the file and key.  A YAML null never reaches them (null = default).


class _Invalid(Exception):
    """A value is unacceptable; the message is the problem text only. `at`: where inside a nested
    setting (``email.host`` of ``alerts``), added to the key the error names."""

    def __init__(self, problem: str, at: str | None = None):
        super().__init__(problem)
        self.at = at


class _Context(NamedTuple):
    """What checkers and derived defaults need besides the value itself."""

    base: Path  # directory of the config file, for relative paths
    home: Path
    environ: Mapping[str, str]
    check_dirs: bool


def _describe(value: object) -> str:
    """Show a YAML value the way the user wrote it, short, on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return str(value)


def _string(value: Any, ctx: _Context) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {_describe(value)}")
    return value


def _text(value: Any, ctx: _Context) -> str:
    value = _string(value, ctx)
    if not value.strip():
        raise _Invalid("must not be empty")
    return value


def _boolean(value: Any, ctx: _Context) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {_describe(value)}")
    return value


def _choice(*options: str) -> Callable[[Any, _Context], str]:
    def check(value: Any, ctx: _Context) -> str:
        if value not in options:
            raise _Invalid(f"must be one of {', '.join(options)}, got {_describe(value)}")
        return value

    return check


def _identifier(value: Any, ctx: _Context) -> str:
    value = _string(value, ctx)
    if not _IDENT_RE.fullmatch(value):
        raise _Invalid(
            "must be 1-64 letters, digits, '_', '.' or '-', not starting with '.' or '-', "
            f"got {_describe(value)}"
        )
    return value


def _host(value: Any, ctx: _Context) -> str:
    # Handed to ssh/pika as one argument: a space or a leading '-' would turn it
    # into something else (another argument, an ssh option).
    value = _text(value, ctx)
    if value.startswith("-") or any(c.isspace() for c in value):
        raise _Invalid(f"must be a host name or user@host, got {_describe(value)}")
    return value


def _number(
    minimum: float, maximum: float | None = None, *, above: bool = False
) -> Callable[[Any, _Context], float]:
    def check(value: Any, ctx: _Context) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"must be a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise _Invalid(f"must be a finite number, got {_describe(value)}")
        _check_range(value, minimum, maximum, above)
        return float(value)

    return check


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any, _Context], int]:
    def check(value: Any, ctx: _Context) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, got {_describe(value)}")
        _check_range(value, minimum, maximum, False)
        return value

    return check


def _check_range(value: float, minimum: float, maximum: float | None, above: bool) -> None:
    if maximum is not None and not minimum <= value <= maximum:
        raise _Invalid(f"must be between {minimum:g} and {maximum:g}, got {value:g}")
    if above and value <= minimum:
        raise _Invalid(f"must be > {minimum:g}, got {value:g}")
    if value < minimum:
        raise _Invalid(f"must be >= {minimum:g}, got {value:g}")


def _expand(text: str, ctx: _Context) -> Path:
    """expanduser against ctx.home (so tests stay hermetic), then make absolute.

    Relative paths are taken relative to the config file's directory, not the
    current directory: an agent started from cron or systemd has an arbitrary
    working directory, the config file's location is stable.
    """
    if text == "~" or text.startswith("~/"):
        text = str(ctx.home) + text[1:]
    else:
        text = os.path.expanduser(text)  # ~otheruser
    return Path(os.path.abspath(os.path.join(ctx.base, text)))


def _path(value: Any, ctx: _Context) -> Path:
    return _expand(_text(value, ctx), ctx)


def _directory(value: Any, ctx: _Context) -> Path:
    path = _path(value, ctx)
    if ctx.check_dirs:
        if not path.exists():
            raise _Invalid(f"directory does not exist: {path}")
        if not path.is_dir():
            raise _Invalid(f"not a directory: {path}")
    return path


def _file(value: Any, ctx: _Context) -> Path:
    """A file the agent must read (a certificate, a key): there and readable, when checked."""
    path = _path(value, ctx)
    if ctx.check_dirs:
        if not path.exists():
            raise _Invalid(f"file does not exist: {path}")
        if not path.is_file():
            raise _Invalid(f"not a regular file: {path}")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise _Invalid(f"cannot read {path}: {exc.strerror or exc}") from None
    return path


def _split(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise _Invalid(f"cannot be split into words ({exc}): {_describe(text)}") from None


def _string_list(value: list, ctx: _Context) -> tuple[str, ...]:
    for index, item in enumerate(value, 1):
        if not isinstance(item, str) or not item:
            raise _Invalid(f"item {index} must be a non-empty string, got {_describe(item)}")
    return tuple(value)


def _command(value: Any, ctx: _Context) -> tuple[str, ...]:
    # A string is split like a shell would (so "/usr/bin/env rsync" works);
    # a list is taken word for word.
    if isinstance(value, list):
        words = _string_list(value, ctx)
    else:
        words = _split(_text(value, ctx))
    if not words:
        raise _Invalid("must not be empty")
    return words


def _rsync_opts(value: Any, ctx: _Context) -> tuple[str, ...]:
    # The original synkler took a comma-separated string; csv (not str.split)
    # lets an option that itself holds a comma be quoted.  Spaces around items
    # are dropped and empty items ignored, because rsync would take " --foo" or
    # "" as a file name, which is never what the user meant.
    if isinstance(value, list):
        return _string_list(value, ctx)
    text = _string(value, ctx)
    try:
        rows = list(csv.reader([text], skipinitialspace=True))
    except csv.Error as exc:
        raise _Invalid(f"cannot be read as comma-separated options ({exc})") from None
    return tuple(item.strip() for row in rows for item in row if item.strip())


def _listen(value: Any, ctx: _Context) -> tuple[str, int]:
    """`host:port` (`[v6 address]:port`) for the metrics HTTP server: (host, port)."""
    text = _text(value, ctx).strip()
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _Invalid(f"must be host:port (e.g. 127.0.0.1:9310, [::1]:9310), got {_describe(value)}")
    if host.startswith("-") or any(c.isspace() for c in host):
        raise _Invalid(f"must be host:port, got {_describe(value)}")
    return host, int(port)


def _public_key(value: Any, ctx: _Context) -> str:
    """download_public_key: an Ed25519 public key as `synkler keygen` prints it."""
    text = _text(value, ctx).strip()
    try:
        load_public_key(text)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    return text


def _cleanup_script(value: Any, ctx: _Context) -> str:
    # Kept as written (it is shown in logs), but split now so a broken quote is
    # reported at start-up rather than after the first delivery.
    text = _text(value, ctx)
    _split(text)
    return text


# --------------------------------------------------------------------------
# alerts: a nested mapping (docs/configuration.md, "Alerts"). Its own small table per level, so a
# mistake names the full key (alerts.email.host).


@dataclass(frozen=True)
class WebhookChannel:
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0


@dataclass(frozen=True)
class EmailChannel:
    host: str
    to: tuple[str, ...]
    sender: str  # the From address (key `from`)
    port: int = 587
    tls: str = "starttls"  # starttls | ssl | none
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None  # a CA to trust besides the system's (a private mail relay)
    timeout: float = 10.0


@dataclass(frozen=True)
class CommandChannel:
    argv: tuple[str, ...]
    timeout: float = 10.0


@dataclass(frozen=True)
class Alerts:
    """Where notices go and when conditions count (synkler.observe.alerts)."""

    webhook: WebhookChannel | None = None
    email: EmailChannel | None = None
    command: CommandChannel | None = None
    stuck_minutes: float = 240.0
    silent_minutes: float = 10.0
    disk_warn_percent: float = 90.0
    check_seconds: float = 30.0  # how often conditions are looked at
    group_seconds: float = 30.0  # notices that start within this long go out together
    max_per_hour: int = 10  # messages per channel per hour; more are held and sent together

    @property
    def channels(self) -> dict[str, WebhookChannel | EmailChannel | CommandChannel]:
        found = {"webhook": self.webhook, "email": self.email, "command": self.command}
        return {name: ch for name, ch in found.items() if ch is not None}


def _section(
    value: Any, ctx: _Context, keys: Mapping[str, Callable[[Any, _Context], Any]], required: tuple[str, ...]
) -> dict[str, Any]:
    """Check a nested mapping against `keys`; _Invalid names the sub-key (`at`)."""
    if not isinstance(value, Mapping):
        raise _Invalid(f"must be a mapping of 'key: value' lines, got {_describe(value)}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise _Invalid(f"unknown key{hint}", at=str(key))
        if item is None:
            continue
        try:
            out[key] = keys[key](item, ctx)
        except _Invalid as exc:
            raise _Invalid(str(exc), at=key if exc.at is None else f"{key}.{exc.at}") from None
    for key in required:
        if key not in out:
            raise _Invalid("is required", at=key)
    return out


def _url(value: Any, ctx: _Context) -> str:
    value = _text(value, ctx)
    if not re.match(r"https?://[^/\s]+", value) or any(c.isspace() for c in value):
        raise _Invalid(f"must be an http:// or https:// URL, got {_describe(value)}")
    return value


def _headers(value: Any, ctx: _Context) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise _Invalid(f"must be a mapping of header: value, got {_describe(value)}")
    out = []
    for k, v in value.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z0-9-]+", k):
            raise _Invalid(f"{_describe(k)} is not a header name")
        if not isinstance(v, str) or "\n" in v or "\r" in v:
            raise _Invalid(f"{k}: must be a one-line string, got {_describe(v)}")
        out.append((k, v))
    return tuple(out)


def _addresses(value: Any, ctx: _Context) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, str) or not re.fullmatch(r"[^@\s,<>]+@[^@\s,<>]+", item.strip()):
            raise _Invalid(f"must be an email address or a list of them, got {_describe(item)}")
        out.append(item.strip())
    if not out:
        raise _Invalid("must name at least one address")
    return tuple(out)


def _address(value: Any, ctx: _Context) -> str:
    if isinstance(value, list):
        raise _Invalid("must be one email address")
    return _addresses(value, ctx)[0]


_WEBHOOK = {"url": _url, "headers": _headers, "timeout": _number(0, 300, above=True)}
_EMAIL = {
    "host": _host,
    "port": _integer(1, 65535),
    "from": _address,
    "to": _addresses,
    "tls": _choice("starttls", "ssl", "none"),
    "username": _text,
    "password": _string,
    "password_file": _path,
    "ca_file": _path,
    "timeout": _number(0, 300, above=True),
}
_COMMAND = {"argv": _command, "timeout": _number(0, 3600, above=True)}


def _alerts(value: Any, ctx: _Context) -> Alerts:
    channels = {
        "webhook": lambda v, c: WebhookChannel(**_section(v, c, _WEBHOOK, ("url",))),
        "email": _email,
        "command": lambda v, c: CommandChannel(**_section(v, c, _COMMAND, ("argv",))),
    }
    limits = {
        "stuck_minutes": _number(0, above=True),
        "silent_minutes": _number(0, above=True),
        "disk_warn_percent": _number(0, 100),
        "check_seconds": _number(0, 3600, above=True),
        "group_seconds": _number(0, 3600),
        "max_per_hour": _integer(1, 3600),
    }
    return Alerts(**_section(value, ctx, {**channels, **limits}, ()))


def _email(value: Any, ctx: _Context) -> EmailChannel:
    got = _section(value, ctx, _EMAIL, ("host", "from", "to"))
    got["sender"] = got.pop("from")
    if "password" in got and "password_file" in got:
        raise _Invalid("give password or password_file, not both", at="password_file")
    if "password_file" in got:
        try:
            got["password"] = _read_secret(got["password_file"])
        except _Invalid as exc:
            raise _Invalid(str(exc), at="password_file") from None
    if "password" in got and "username" not in got:
        raise _Invalid("a password needs a username", at="username")
    if got.get("username") and got.get("tls", "starttls") == "none":
        raise _Invalid("a login needs tls: starttls or ssl (a password is never sent in clear)", at="tls")
    return EmailChannel(**got)


# --------------------------------------------------------------------------
# The table.


class _Derived(NamedTuple):
    """A default computed from other settings once those are known."""

    compute: Callable[[dict[str, Any], _Context], Any]


class _Key(NamedTuple):
    check: Callable[[Any, _Context], Any]
    default: Any = None
    required: bool = False
    roles: tuple[str, ...] = MODES  # the modes that read it (docs/configuration.md, "used by")


def _state_dir(ctx: _Context) -> Path:
    # systemd's StateDirectory= (the unit's own directory, so no "synkler" below it); it lists one
    # path per StateDirectory= name, separated by ':'.
    systemd = ctx.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd and os.path.isabs(systemd):
        return Path(systemd)
    # XDG says relative values are invalid and must be ignored.
    xdg = ctx.environ.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "synkler"
    return ctx.home / ".local" / "state" / "synkler"


def _state_file(suffix: str) -> _Derived:
    return _Derived(lambda s, ctx: _state_dir(ctx) / f"{_stem(s['id'], s['mode'], s['name'])}{suffix}")


_ENDS = ("upload", "download")  # the roles that run rsync and cleanup scripts

# Order matters for derived defaults: anything a _Derived reads comes earlier.
KEYS: dict[str, _Key] = {
    "mode": _Key(_choice(*MODES), required=True),
    "id": _Key(_identifier, "default"),
    "name": _Key(_identifier, _Derived(lambda s, ctx: s["mode"])),
    "file_dir": _Key(_directory, required=True),
    "keep_minutes": _Key(_number(0), 30.0, roles=("central",)),
    "keep_history_days": _Key(_number(0), 30.0),
    "pidfile": _Key(_path, _state_file(".pid")),
    "state_db": _Key(_path, _state_file(".sqlite")),
    "rsync": _Key(_command, ("rsync",), roles=_ENDS),
    "rsync_opts": _Key(_rsync_opts, (), roles=_ENDS),
    "rsync_timeout": _Key(_integer(1), 300, roles=_ENDS),
    "ssh_control_persist": _Key(_integer(0, 86400), 60, roles=_ENDS),
    "synkler_server": _Key(_host, required=True),
    "central_host": _Key(_host, _Derived(lambda s, ctx: s["synkler_server"]), roles=_ENDS),
    "broker_tls": _Key(_boolean, False),
    "broker_tls_server_name": _Key(_host, None),
    "broker_ca_file": _Key(_file, None),
    "broker_cert_file": _Key(_file, None),
    "broker_key_file": _Key(_file, None),
    "broker_login": _Key(_choice("password", "external"), "password"),
    "broker_port": _Key(_integer(1, 65535), _Derived(lambda s, ctx: 5671 if s["broker_tls"] else 5672)),
    # With EXTERNAL login the broker takes the user from the certificate; only a name given here
    # goes into the publishes' user_id (and authenticate needs it).
    "broker_username": _Key(
        _text, _Derived(lambda s, ctx: "guest" if s["broker_login"] == "password" else "")
    ),
    "broker_password": _Key(_string, "guest"),
    "broker_password_file": _Key(_path, None),
    "broker_vhost": _Key(_text, "/"),
    "broker_heartbeat": _Key(_integer(1, 3600), 30),
    "authenticate": _Key(_boolean, False),
    "cleanup_script": _Key(_cleanup_script, None, roles=_ENDS),
    "receipt_key": _Key(_file, None, roles=("download",)),
    "download_public_key": _Key(_public_key, None, roles=("upload", "central")),
    "cleanup_attempts": _Key(_integer(1, 100), 1, roles=_ENDS),
    "cleanup_timeout": _Key(_number(0, above=True), 3600.0, roles=_ENDS),
    "free_percent": _Key(_number(0, 100), 10.0, roles=("central",)),
    "settle_seconds": _Key(_number(0), 1.0, roles=("upload",)),
    "max_transfers": _Key(_integer(1), 4),
    "max_attempts": _Key(_integer(1), 5),
    "retry_max_seconds": _Key(_number(0, above=True), 300.0, roles=_ENDS),
    "log_format": _Key(_choice("text", "json"), "text"),
    "daemon": _Key(_boolean, False),
    "log_file": _Key(_path, None),
    "metrics_listen": _Key(_listen, None),
    "metrics_textfile": _Key(_path, None),
    "alerts": _Key(_alerts, None),
}


def ignored_keys(cfg: Config) -> list[str]:
    """The keys the configuration sets that its mode does not read, in table order."""
    return [key for key in KEYS if key in cfg.given and cfg.mode not in KEYS[key].roles]


def value_problem(key: str, value: object, base: Path) -> str | None:
    """Why ``value`` will not do for ``key`` (None if it will), without looking at the file system."""
    ctx = _Context(base=base, home=Path.home(), environ={}, check_dirs=False)
    try:
        KEYS[key].check(value, ctx)
    except _Invalid as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------
# Loading.


def load_config(
    path: str | Path,
    *,
    check_dirs: bool = True,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Config:
    """Read, parse and check the file at ``path``.

    Mistakes of people coming from synkler 0.0.x (an INI file, a file in another encoding) get a
    hint saying what to do rather than the YAML parser's own words.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, _not_utf8(raw, exc)) from None
    try:
        data = _parse_yaml(text, path)
    except ConfigError as exc:
        if exc.key is None and looks_like_ini(text):
            raise ConfigError(path, None, _ini_hint(path)) from None
        raise ConfigError(path, exc.key, exc.problem + _yaml_hint(exc.problem)) from None
    if data is not None and not isinstance(data, Mapping):
        if looks_like_ini(text):
            raise ConfigError(path, None, _ini_hint(path))
        if isinstance(data, str) and re.search(r"^[A-Za-z_]+:[^\s]", text, re.MULTILINE):
            raise ConfigError(
                path, None, "must be 'key: value' lines, with a space after each colon ('mode: upload')"
            )
    return parse_config(data, path, check_dirs=check_dirs, environ=environ, home=home)


# The keys of synkler 0.0.x's INI file, all kept (docs/upgrading.md).
OLD_KEYS = frozenset(
    ("mode", "file_dir", "keep_minutes", "pidfile", "rsync", "rsync_opts", "synkler_server")
    + ("cleanup_script", "free_percent")
)
_SECTION_RE = re.compile(r"^\[[^\]\[,]+\][ \t]*$", re.MULTILINE)
_INI_KEY_RE = re.compile(r"^[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*=", re.MULTILINE)


def looks_like_ini(text: str) -> bool:
    """Whether text that is no YAML mapping reads like an INI file: synkler 0.0.x's format, with a
    ``[section]`` line or ``key = value`` lines of its keys."""
    if _SECTION_RE.search(text):
        return True
    return any(
        m.group(1).lower() in OLD_KEYS or m.group(1).lower() in KEYS for m in _INI_KEY_RE.finditer(text)
    )


def _ini_hint(path: Path) -> str:
    return (
        "this is an INI file, the format of synkler 0.0.x; synkler now reads YAML. "
        f"Convert it with: synkler config migrate {shlex.quote(str(path))} -o NEW.conf "
        "(see docs/upgrading.md)"
    )


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    before = raw[: exc.start]
    line = before.count(b"\n") + 1
    column = exc.start - (before.rfind(b"\n") + 1) + 1
    return (
        f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}, column {column}); "
        "save it as UTF-8, e.g. iconv -f latin1 -t utf-8 OLD > NEW"
    )


def _yaml_hint(problem: str) -> str:
    if "'\\t'" in problem:  # PyYAML's "found character '\\t' that cannot start any token"
        return " (YAML takes no tabs for indentation: use spaces)"
    return ""


def _parse_yaml(text: str, path: Path) -> object:
    """safe_load, plus a check for keys given twice.

    PyYAML silently keeps the last of two equal keys; in a config file that is
    nearly always an edit gone wrong, so it is reported with both line numbers.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str":
                    line = key_node.start_mark.line + 1
                    if key_node.value in seen:
                        raise ConfigError(
                            path, key_node.value, f"given twice (lines {seen[key_node.value]} and {line})"
                        )
                    seen[key_node.value] = line
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(path, None, _yaml_problem(exc)) from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line from PyYAML's multi-line message: what and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    problem = " ".join(problem.split())
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


def parse_config(
    data: object,
    path: str | Path,
    *,
    check_dirs: bool = True,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Config:
    """Check already-parsed YAML ``data`` and build a Config.

    Separate from load_config so tests can feed plain dicts; the only outside
    world it touches is ``file_dir`` (when ``check_dirs``), ``environ`` and
    ``home``, and both of those can be passed in.
    """
    path = Path(path)
    ctx = _Context(
        base=Path(os.path.abspath(path)).parent,
        home=Path.home() if home is None else Path(home),
        environ=os.environ if environ is None else environ,
        check_dirs=check_dirs,
    )
    if data is None:  # empty file
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path, None, f"must be a mapping of 'key: value' lines, got {_describe(data)}")

    for key in data:
        if not isinstance(key, str):
            raise ConfigError(path, str(key), "keys must be strings")
        if key not in KEYS:
            close = [key.lower()] if key.lower() in KEYS else difflib.get_close_matches(key, KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(path, key, f"unknown key{hint}")

    settings: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        try:
            settings[key] = KEYS[key].check(value, ctx)
        except _Invalid as exc:
            raise ConfigError(path, key if exc.at is None else f"{key}.{exc.at}", str(exc)) from None

    for key, spec in KEYS.items():
        if key in settings:
            continue
        if spec.required:
            raise ConfigError(path, key, "is required")
        default = spec.default
        settings[key] = default.compute(settings, ctx) if isinstance(default, _Derived) else default

    secret_files = _broker_password(data, settings, path, ctx)
    if settings["mode"] != "upload" and settings["name"] != settings["mode"]:
        # Peers address central and download by their role's name; several of them come later.
        raise ConfigError(
            path, "name", f"a {settings['mode']} agent must be named '{settings['mode']}' (for now)"
        )
    if settings["mode"] == "upload" and settings["name"] in ("central", "download"):
        raise ConfigError(path, "name", f"an upload agent cannot be named {settings['name']!r}")
    _check_tls(settings, path, check_dirs)
    own_user = f"{settings['name']}@{settings['id']}"
    if (
        settings["authenticate"]
        and settings["broker_login"] == "external"
        and not settings["broker_username"]
    ):
        raise ConfigError(
            path,
            "broker_username",
            f"with authenticate: true and broker_login: external it must be given, {own_user!r}, the user "
            "the broker takes from the certificate (its CN, with ssl_cert_login_from = common_name)",
        )
    if settings["authenticate"] and settings["broker_username"] != own_user:
        # Peers believe a message only from the broker user of the agent it claims to come from.
        raise ConfigError(
            path,
            "broker_username",
            f"with authenticate: true it must be {own_user!r} (<name>@<id>: peers know this agent's "
            f"messages by it), got {settings['broker_username']!r}",
        )
    alerts = settings["alerts"]
    if alerts is not None and alerts.email is not None and alerts.email.password_file is not None:
        secret_files += (alerts.email.password_file,)
    elif alerts is not None and alerts.email is not None and alerts.email.password:
        secret_files += (path,) if path not in secret_files else ()
    given = frozenset(key for key, value in data.items() if value is not None)
    return Config(path=path, **settings, given=given, secret_files=secret_files)


_TLS_KEYS = ("broker_tls_server_name", "broker_ca_file", "broker_cert_file", "broker_key_file")


def _check_tls(settings: dict[str, Any], path: Path, check_dirs: bool) -> None:
    """The TLS settings fit together, and (when files are checked) the files hold what they should:
    a mistake here is found at start, not at the first connect."""
    if not settings["broker_tls"]:
        # Set without TLS is a connection someone believes is protected and is not.
        for key in _TLS_KEYS:
            if settings[key] is not None:
                raise ConfigError(path, key, "is set but broker_tls is not true")
        if settings["broker_login"] == "external":
            raise ConfigError(path, "broker_login", "external needs broker_tls: true (a client certificate)")
        return
    cert, key = settings["broker_cert_file"], settings["broker_key_file"]
    if cert is not None and key is None:
        raise ConfigError(path, "broker_key_file", "is required with broker_cert_file")
    if key is not None and cert is None:
        raise ConfigError(path, "broker_cert_file", "is required with broker_key_file")
    if settings["broker_login"] == "external" and cert is None:
        raise ConfigError(
            path,
            "broker_login",
            "external needs a client certificate: set broker_cert_file and broker_key_file",
        )
    if check_dirs:
        tls = TlsSettings.of(settings["broker_ca_file"], cert, key, settings["broker_tls_server_name"])
        try:
            tls_context(tls)
        except TlsFileError as exc:
            raise ConfigError(path, exc.key, exc.problem) from None


def _broker_password(
    data: Mapping[str, Any], settings: dict[str, Any], path: Path, ctx: _Context
) -> tuple[Path, ...]:
    """Settle broker_password: broker_password or broker_password_file in the file (not both), else
    $SYNKLER_BROKER_PASSWORD, else guest. Returns the files that hold it.

    The file comes before the environment: it is the one place that says what this agent does,
    and an environment variable reaches every agent started from the same shell or unit.
    """
    secret_file = settings["broker_password_file"]
    given = data.get("broker_password") is not None
    if secret_file is not None:
        if given:
            raise ConfigError(
                path, "broker_password_file", "give broker_password or broker_password_file, not both"
            )
        settings["broker_password"] = _read_password(secret_file, path)
        return (secret_file,)
    if given:
        return (path,) if settings["broker_password"] != "guest" else ()
    settings["broker_password"] = ctx.environ.get(PASSWORD_ENV_VAR) or settings["broker_password"]
    return ()


def _read_password(secret_file: Path, path: Path) -> str:
    """The broker password in `secret_file`."""
    try:
        return _read_secret(secret_file)
    except _Invalid as exc:
        raise ConfigError(path, "broker_password_file", str(exc)) from None


def _read_secret(secret_file: Path) -> str:
    """The password in `secret_file`: its one line, without the newline that ends it."""

    def bad(problem: str) -> _Invalid:
        return _Invalid(f"{problem}: {secret_file}")

    try:
        # O_NONBLOCK: a FIFO named by mistake must not hang the agent; the fstat below refuses it.
        fd = os.open(secret_file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise bad(f"cannot read ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise bad("not a regular file")
        raw = os.read(fd, _PASSWORD_FILE_MAX + 1)
    except OSError as exc:
        raise bad(f"cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(raw) > _PASSWORD_FILE_MAX:
        raise bad(f"longer than {_PASSWORD_FILE_MAX} bytes, so not a password file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    for end in ("\r\n", "\n"):
        if text.endswith(end):
            text = text[: -len(end)]
            break
    if not text:
        raise bad("empty")
    if "\n" in text or "\r" in text:
        raise bad("holds more than one line (the password must be its only line)")
    return text
