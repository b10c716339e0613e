"""Already-parsed YAML checked against the key table, and the rules between keys."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import routes
from ..errors import ConfigError
from ..tls import TlsFileError, TlsSettings, tls_context
from .alerts import Alerts
from .keys import KEYS, Config, Derived
from .values import Context, Invalid, describe, read_secret

#: The broker password, when the configuration names none (docs/configuration.md, "The broker password").
PASSWORD_ENV_VAR = "SYNKLER_BROKER_PASSWORD"
_TLS_KEYS = ("broker_tls_server_name", "broker_ca_file", "broker_cert_file", "broker_key_file")


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
    ctx = Context(
        base=Path(os.path.abspath(path)).parent,
        home=Path.home() if home is None else Path(home),
        environ=os.environ if environ is None else environ,
        check_dirs=check_dirs,
    )
    data = _mapping(data, path)
    settings = _settings(data, path, ctx)
    secret_files = _broker_password(data, settings, path, ctx)
    _check_name(settings, path)
    _check_tls(settings, path, check_dirs)
    _check_username(settings, path)
    secret_files += _alerts_secret(settings["alerts"], path, secret_files)
    given = frozenset(key for key, value in data.items() if value is not None)
    return Config(path=path, **settings, given=given, secret_files=secret_files)


def _mapping(data: object, path: Path) -> Mapping[str, Any]:
    """The document as a mapping of known keys (an empty file is an empty one)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(path, None, f"must be a mapping of 'key: value' lines, got {describe(data)}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(path, str(key), "keys must be strings")
        if key not in KEYS:
            close = [key.lower()] if key.lower() in KEYS else difflib.get_close_matches(key, KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(path, key, f"unknown key{hint}")
    return data


def _settings(data: Mapping[str, Any], path: Path, ctx: Context) -> dict[str, Any]:
    """Every key's value: checked where given, else its default."""
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        try:
            settings[key] = KEYS[key].check(value, ctx)
        except Invalid as exc:
            raise ConfigError(path, key if exc.at is None else f"{key}.{exc.at}", str(exc)) from None
    for key, spec in KEYS.items():
        if key in settings:
            continue
        if spec.required:
            raise ConfigError(path, key, "is required")
        default = spec.default
        settings[key] = default.compute(settings, ctx) if isinstance(default, Derived) else default
    return settings


def _check_name(settings: dict[str, Any], path: Path) -> None:
    """The three roles' agents have names of their own: peers address each other by them."""
    name, central, download = settings["name"], settings["central_name"], settings["download_name"]
    if central == download:
        key = "download_name" if settings["mode"] != "download" else "central_name"
        raise ConfigError(path, key, f"central and download cannot both be named {central!r}")
    if central in routes.every_destination(settings["routes"]):
        raise ConfigError(
            path, "routes", f"sends entries to {central!r}, the central agent: `to` names downloads"
        )
    if settings["mode"] == "upload" and name in (central, download):
        role = "central" if name == central else "download"
        raise ConfigError(path, "name", f"an upload agent cannot have the name of the {role} agent, {name!r}")


def _check_username(settings: dict[str, Any], path: Path) -> None:
    """With authenticate, the broker user is the agent's own: peers believe a message only from the
    broker user of the agent it claims to come from."""
    if not settings["authenticate"]:
        return
    own_user = f"{settings['name']}@{settings['id']}"
    if settings["broker_login"] == "external" and not settings["broker_username"]:
        raise ConfigError(
            path,
            "broker_username",
            f"with authenticate: true and broker_login: external it must be given, {own_user!r}, the user "
            "the broker takes from the certificate (its CN, with ssl_cert_login_from = common_name)",
        )
    if settings["broker_username"] != own_user:
        raise ConfigError(
            path,
            "broker_username",
            f"with authenticate: true it must be {own_user!r} (<name>@<id>: peers know this agent's "
            f"messages by it), got {settings['broker_username']!r}",
        )


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
    data: Mapping[str, Any], settings: dict[str, Any], path: Path, ctx: Context
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
        try:
            settings["broker_password"] = read_secret(secret_file)
        except Invalid as exc:
            raise ConfigError(path, "broker_password_file", str(exc)) from None
        return (secret_file,)
    if given:
        return (path,) if settings["broker_password"] != "guest" else ()
    settings["broker_password"] = ctx.environ.get(PASSWORD_ENV_VAR) or settings["broker_password"]
    return ()


def _alerts_secret(alerts: Alerts | None, path: Path, secret_files: tuple[Path, ...]) -> tuple[Path, ...]:
    """The file that holds the mail password, if it is not among `secret_files` yet."""
    email = alerts.email if alerts is not None else None
    if email is not None and email.password_file is not None:
        return (email.password_file,)
    if email is not None and email.password:
        return (path,) if path not in secret_files else ()
    return ()
