"""Checkers of single values: each takes the YAML value and the load context and returns the converted
value, or raises Invalid with a short problem text; the caller adds the file and the key. A YAML null
never reaches them (null means the default)."""

from __future__ import annotations

import csv
import math
import os
import re
import shlex
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple

from .. import routes
from ..metadata import key_problem
from ..receipts import load_public_key

# Ids and names end up in exchange/queue names, a directory name on central and
# file names of pidfiles, so keep them to characters that are safe in all four.
_IDENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_PASSWORD_FILE_MAX = 4096  # bytes: a longer "password file" is some other file named by mistake


class Invalid(Exception):
    """A value is unacceptable; the message is the problem text only. `at`: where inside a nested
    setting (``email.host`` of ``alerts``), added to the key the error names."""

    def __init__(self, problem: str, at: str | None = None):
        super().__init__(problem)
        self.at = at


class Context(NamedTuple):
    """What checkers and derived defaults need besides the value itself."""

    base: Path  # directory of the config file, for relative paths
    home: Path
    environ: Mapping[str, str]
    check_dirs: bool


Checker = Callable[[Any, Context], Any]


def describe(value: object) -> str:
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


def string(value: Any, ctx: Context) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, got {describe(value)}")
    return value


def text(value: Any, ctx: Context) -> str:
    value = string(value, ctx)
    if not value.strip():
        raise Invalid("must not be empty")
    return value


def boolean(value: Any, ctx: Context) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {describe(value)}")
    return value


def choice(*options: str) -> Callable[[Any, Context], str]:
    def check(value: Any, ctx: Context) -> str:
        if value not in options:
            raise Invalid(f"must be one of {', '.join(options)}, got {describe(value)}")
        return value

    return check


def identifier(value: Any, ctx: Context) -> str:
    value = string(value, ctx)
    if not _IDENT_RE.fullmatch(value):
        raise Invalid(
            "must be 1-64 letters, digits, '_', '.' or '-', not starting with '.' or '-', "
            f"got {describe(value)}"
        )
    return value


def host(value: Any, ctx: Context) -> str:
    # Handed to ssh/pika as one argument: a space or a leading '-' would turn it
    # into something else (another argument, an ssh option).
    value = text(value, ctx)
    if value.startswith("-") or any(c.isspace() for c in value):
        raise Invalid(f"must be a host name or user@host, got {describe(value)}")
    return value


def centrals(value: Any, ctx: Context) -> dict[str, str]:
    """`centrals`: the pool of centrals an upload or download agent works with, each central's agent
    name mapped to its ssh destination (host or user@host). Empty: one central, `central_name` at
    `central_host`, as without the key."""
    if not isinstance(value, Mapping) or not value:
        raise Invalid(
            f"must be a mapping of central names to ssh destinations (e.g. {{central-a: host-a}}), "
            f"got {describe(value)}"
        )
    out: dict[str, str] = {}
    for name, destination in value.items():
        identifier(name, ctx)
        try:
            out[name] = host(destination, ctx)
        except Invalid as e:
            raise Invalid(str(e), at=str(name)) from None
    return out


def names(value: Any, ctx: Context) -> tuple[str, ...]:
    """A list of agent names (or one string, separated by commas or spaces)."""
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise Invalid(f"must be a list of agent names, got {describe(value)}")
    return tuple(dict.fromkeys(identifier(item, ctx) for item in items))


def broker_hosts(value: Any, ctx: Context) -> tuple[tuple[str, int | None], ...]:
    """The nodes of a RabbitMQ cluster: a list (or one string, separated by commas or spaces) of
    `host`, `host:port` or `[v6 address]:port`; a port left out is broker_port's."""
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise Invalid(
            f"must be a list of host or host:port (e.g. [rabbit1, rabbit2:5673]), got {describe(value)}"
        )
    out: list[tuple[str, int | None]] = []
    for index, item in enumerate(items, 1):
        if not isinstance(item, str) or not item.strip():
            raise Invalid(f"item {index} must be host or host:port, got {describe(item)}")
        written = item.strip()
        name, port = written, None
        if written.startswith("["):
            name, close, rest = written[1:].partition("]")
            if not close or (rest and not rest.startswith(":")):
                raise Invalid(f"item {index} must be [v6 address] or [v6 address]:port, got {describe(item)}")
            port_text = rest[1:] if rest else None
        elif written.count(":") == 1:
            name, _, port_text = written.partition(":")
        else:  # a bare IPv6 address, or a plain name
            port_text = None
        if port_text is not None:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise Invalid(f"item {index}: the port must be 1 to 65535, got {describe(item)}")
            port = int(port_text)
        if not name or name.startswith("-") or any(c.isspace() for c in name):
            raise Invalid(f"item {index} must be host or host:port, got {describe(item)}")
        if (name, port) in out:
            raise Invalid(f"item {index} repeats {written}")
        out.append((name, port))
    return tuple(out)


def number(
    minimum: float, maximum: float | None = None, *, above: bool = False
) -> Callable[[Any, Context], float]:
    def check(value: Any, ctx: Context) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"must be a number, got {describe(value)}")
        if not math.isfinite(value):
            raise Invalid(f"must be a finite number, got {describe(value)}")
        _check_range(value, minimum, maximum, above)
        return float(value)

    return check


def integer(minimum: int, maximum: int | None = None) -> Callable[[Any, Context], int]:
    def check(value: Any, ctx: Context) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be an integer, got {describe(value)}")
        _check_range(value, minimum, maximum, False)
        return value

    return check


def _check_range(value: float, minimum: float, maximum: float | None, above: bool) -> None:
    if maximum is not None and not minimum <= value <= maximum:
        raise Invalid(f"must be between {minimum:g} and {maximum:g}, got {value:g}")
    if above and value <= minimum:
        raise Invalid(f"must be > {minimum:g}, got {value:g}")
    if value < minimum:
        raise Invalid(f"must be >= {minimum:g}, got {value:g}")


def _expand(text: str, ctx: Context) -> Path:
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


def path(value: Any, ctx: Context) -> Path:
    return _expand(text(value, ctx), ctx)


def directory(value: Any, ctx: Context) -> Path:
    found = path(value, ctx)
    if ctx.check_dirs:
        if not found.exists():
            raise Invalid(f"directory does not exist: {found}")
        if not found.is_dir():
            raise Invalid(f"not a directory: {found}")
    return found


def file(value: Any, ctx: Context) -> Path:
    """A file the agent must read (a certificate, a key): there and readable, when checked."""
    found = path(value, ctx)
    if ctx.check_dirs:
        if not found.exists():
            raise Invalid(f"file does not exist: {found}")
        if not found.is_file():
            raise Invalid(f"not a regular file: {found}")
        try:
            with open(found, "rb"):
                pass
        except OSError as exc:
            raise Invalid(f"cannot read {found}: {exc.strerror or exc}") from None
    return found


def _split(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise Invalid(f"cannot be split into words ({exc}): {describe(text)}") from None


def _string_list(value: list, ctx: Context) -> tuple[str, ...]:
    for index, item in enumerate(value, 1):
        if not isinstance(item, str) or not item:
            raise Invalid(f"item {index} must be a non-empty string, got {describe(item)}")
    return tuple(value)


def command(value: Any, ctx: Context) -> tuple[str, ...]:
    # A string is split like a shell would (so "/usr/bin/env rsync" works);
    # a list is taken word for word.
    if isinstance(value, list):
        words = _string_list(value, ctx)
    else:
        words = _split(text(value, ctx))
    if not words:
        raise Invalid("must not be empty")
    return words


def rsync_opts(value: Any, ctx: Context) -> tuple[str, ...]:
    # The original synkler took a comma-separated string; csv (not str.split)
    # lets an option that itself holds a comma be quoted.  Spaces around items
    # are dropped and empty items ignored, because rsync would take " --foo" or
    # "" as a file name, which is never what the user meant.
    if isinstance(value, list):
        opts = _string_list(value, ctx)
    else:
        written = string(value, ctx)
        try:
            rows = list(csv.reader([written], skipinitialspace=True))
        except csv.Error as exc:
            raise Invalid(f"cannot be read as comma-separated options ({exc})") from None
        opts = tuple(item.strip() for row in rows for item in row if item.strip())
    for opt in opts:
        if opt.split("=", 1)[0] in UNPROTECTING:
            raise Invalid(
                f"{opt} would let central's shell parse remote paths (a path could run a command "
                "there): synkler always protects them; remove it"
            )
    return opts


# rsync options that hand remote paths to the remote shell again (synkler.hops.transfer passes
# --protect-args, or, confined by rrsync, relies on rsync's own quoting: these undo either).
UNPROTECTING = frozenset({"--old-args", "--no-protect-args", "--no-secluded-args", "--no-s"})


def remote_dir(value: Any, ctx: Context) -> str:
    """An absolute directory on central, spelled one way only (compared in full with the places
    central announces)."""
    written = text(value, ctx)
    parts = written.rstrip("/").split("/")
    if not written.startswith("/") or any(p in ("", ".", "..") for p in parts[1:]) or len(parts) < 2:
        raise Invalid(
            f"must be an absolute directory on central without '.', '..' or '//', got {describe(value)}"
        )
    if any(c.isspace() or ord(c) < 32 for c in written):
        raise Invalid(f"must not hold spaces or control characters, got {describe(value)}")
    return written.rstrip("/")


def listen(value: Any, ctx: Context) -> tuple[str, int]:
    """`host:port` (`[v6 address]:port`) for the metrics HTTP server: (host, port)."""
    written = text(value, ctx).strip()
    name, sep, port = written.rpartition(":")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not sep or not name or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise Invalid(f"must be host:port (e.g. 127.0.0.1:9310, [::1]:9310), got {describe(value)}")
    if name.startswith("-") or any(c.isspace() for c in name):
        raise Invalid(f"must be host:port, got {describe(value)}")
    return name, int(port)


def public_key(value: Any, ctx: Context) -> str:
    """An Ed25519 public key as `synkler keygen` prints it."""
    written = text(value, ctx).strip()
    try:
        load_public_key(written)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return written


def public_keys(value: Any, ctx: Context) -> str | dict[str, str]:
    """download_public_key: one key (download_name's), or a mapping of download agent names to keys
    (a relay with several downloads)."""
    if not isinstance(value, Mapping):
        return public_key(value, ctx)
    if not value:
        raise Invalid(
            "must be a public key or a mapping of download names to public keys, got an empty mapping"
        )
    out: dict[str, str] = {}
    for name, key in value.items():
        name = str(name)
        try:
            identifier(name, ctx)
            out[name] = public_key(key, ctx)
        except Invalid as exc:
            raise Invalid(str(exc), at=name) from None
    return out


def route_rules(value: Any, ctx: Context) -> tuple[routes.Route, ...]:
    """routes: central's rules of which downloads an entry goes to (synkler.routes)."""
    try:
        return routes.parse(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def cleanup_script(value: Any, ctx: Context) -> str:
    # Kept as written (it is shown in logs), but split now so a broken quote is
    # reported at start-up rather than after the first delivery.
    written = text(value, ctx)
    _split(written)
    return written


def read_secret(secret_file: Path) -> str:
    """The password in `secret_file`: its one line, without the newline that ends it."""

    def bad(problem: str) -> Invalid:
        return Invalid(f"{problem}: {secret_file}")

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
        secret = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    for end in ("\r\n", "\n"):
        if secret.endswith(end):
            secret = secret[: -len(end)]
            break
    if not secret:
        raise bad("empty")
    if "\n" in secret or "\r" in secret:
        raise bad("holds more than one line (the password must be its only line)")
    return secret


def required_metadata(value: Any, ctx: Context) -> dict[str, re.Pattern[str] | None]:
    """`require_metadata`: the keys an entry's metadata must have, each with a regular expression its
    value must match (searched: ^ and $ anchor it) or null (any value). A list of keys is accepted."""
    if isinstance(value, list):
        value = {key: None for key in value}
    if not isinstance(value, Mapping):
        raise Invalid(f"must be a mapping of metadata keys to patterns (or null), got {describe(value)}")
    out: dict[str, re.Pattern[str] | None] = {}
    for key, pattern in value.items():
        why = key_problem(key)
        if why:
            raise Invalid(f"{why[4:] if why.startswith('has ') else why}", at=str(key))
        if pattern is None:
            out[key] = None
            continue
        if not isinstance(pattern, str):
            raise Invalid(f"must be a regular expression or null, got {describe(pattern)}", at=key)
        try:
            out[key] = re.compile(pattern)
        except re.error as e:
            raise Invalid(f"is not a valid regular expression: {e}", at=key) from None
    return out
