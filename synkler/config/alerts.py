"""The `alerts` setting: a nested mapping (docs/configuration.md, "Alerts"). Its own small table per
level, so a mistake names the full key (alerts.email.host)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .values import (
    Checker,
    Context,
    Invalid,
    choice,
    command,
    describe,
    host,
    integer,
    number,
    path,
    read_secret,
    string,
    text,
)


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
    value: Any, ctx: Context, keys: Mapping[str, Checker], required: tuple[str, ...]
) -> dict[str, Any]:
    """Check a nested mapping against `keys`; Invalid names the sub-key (`at`)."""
    if isinstance(value, str) and re.match(r"[A-Za-z_][A-Za-z0-9_]*:(?!//)[^\s]", value):
        # 'url:https://…': YAML's text, not a key and its value.
        raise Invalid(
            f"must be a mapping of 'key: value' lines, with a space after each colon, got {describe(value)}"
        )
    if not isinstance(value, Mapping):
        raise Invalid(f"must be a mapping of 'key: value' lines, got {describe(value)}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise Invalid(f"unknown key{hint}", at=str(key))
        if item is None:
            continue
        try:
            out[key] = keys[key](item, ctx)
        except Invalid as exc:
            raise Invalid(str(exc), at=key if exc.at is None else f"{key}.{exc.at}") from None
    for key in required:
        if key not in out:
            raise Invalid("is required", at=key)
    return out


def _url(value: Any, ctx: Context) -> str:
    value = text(value, ctx)
    if not re.match(r"https?://[^/\s]+", value) or any(c.isspace() for c in value):
        raise Invalid(f"must be an http:// or https:// URL, got {describe(value)}")
    return value


def _headers(value: Any, ctx: Context) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise Invalid(f"must be a mapping of header: value, got {describe(value)}")
    out = []
    for k, v in value.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z0-9-]+", k):
            raise Invalid(f"{describe(k)} is not a header name")
        if not isinstance(v, str) or "\n" in v or "\r" in v:
            raise Invalid(f"{k}: must be a one-line string, got {describe(v)}")
        out.append((k, v))
    return tuple(out)


def _addresses(value: Any, ctx: Context) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, str) or not re.fullmatch(r"[^@\s,<>]+@[^@\s,<>]+", item.strip()):
            raise Invalid(f"must be an email address or a list of them, got {describe(item)}")
        out.append(item.strip())
    if not out:
        raise Invalid("must name at least one address")
    return tuple(out)


def _address(value: Any, ctx: Context) -> str:
    if isinstance(value, list):
        raise Invalid("must be one email address")
    return _addresses(value, ctx)[0]


_WEBHOOK: dict[str, Checker] = {"url": _url, "headers": _headers, "timeout": number(0, 300, above=True)}
_EMAIL: dict[str, Checker] = {
    "host": host,
    "port": integer(1, 65535),
    "from": _address,
    "to": _addresses,
    "tls": choice("starttls", "ssl", "none"),
    "username": text,
    "password": string,
    "password_file": path,
    "ca_file": path,
    "timeout": number(0, 300, above=True),
}
_COMMAND: dict[str, Checker] = {"argv": command, "timeout": number(0, 3600, above=True)}


def alerts(value: Any, ctx: Context) -> Alerts:
    """The checker of the `alerts` key."""
    channels: dict[str, Checker] = {
        "webhook": lambda v, c: WebhookChannel(**_section(v, c, _WEBHOOK, ("url",))),
        "email": _email,
        "command": lambda v, c: CommandChannel(**_section(v, c, _COMMAND, ("argv",))),
    }
    limits: dict[str, Checker] = {
        "stuck_minutes": number(0, above=True),
        "silent_minutes": number(0, above=True),
        "disk_warn_percent": number(0, 100),
        "check_seconds": number(0, 3600, above=True),
        "group_seconds": number(0, 3600),
        "max_per_hour": integer(1, 3600),
    }
    return Alerts(**_section(value, ctx, {**channels, **limits}, ()))


def _email(value: Any, ctx: Context) -> EmailChannel:
    got = _section(value, ctx, _EMAIL, ("host", "from", "to"))
    got["sender"] = got.pop("from")
    if "password" in got and "password_file" in got:
        raise Invalid("give password or password_file, not both", at="password_file")
    if "password_file" in got:
        try:
            got["password"] = read_secret(got["password_file"])
        except Invalid as exc:
            raise Invalid(str(exc), at="password_file") from None
    if "password" in got and "username" not in got:
        raise Invalid("a password needs a username", at="username")
    if got.get("username") and got.get("tls", "starttls") == "none":
        raise Invalid("a login needs tls: starttls or ssl (a password is never sent in clear)", at="tls")
    return EmailChannel(**got)
