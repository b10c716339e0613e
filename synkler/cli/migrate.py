"""`synkler config migrate`: a synkler 0.0.x configuration (INI) as today's YAML, meaning kept.

synkler 0.0.x read its file with configparser (no interpolation) and used the ``[default]``
section: mode, file_dir, keep_minutes, pidfile, rsync, rsync_opts, synkler_server,
cleanup_script, free_percent. Most keys mean what they meant; where the meaning or the way a value is
read changed, the value is rewritten so that it does what it did, and a comment above it says
what changed. docs/upgrading.md tells the same story for people.

Also the hint for a 0.0.x file given to the agent as it is (`load`: "this is an INI file ... convert
it with synkler config migrate").
"""

from __future__ import annotations

import configparser
import csv
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..config import KEYS, Config, NotYamlMapping, config_from_text, read_text, value_problem
from ..errors import ConfigError

SECTION = "default"  # the one section 0.0.x read

_TOKEN = re.compile(r"%[fF]")

# The keys of synkler 0.0.x's INI file, all kept (docs/upgrading.md).
OLD_KEYS = frozenset(
    ("mode", "file_dir", "keep_minutes", "pidfile", "rsync", "rsync_opts", "synkler_server")
    + ("cleanup_script", "free_percent")
)
_SECTION_RE = re.compile(r"^\[[^\]\[,]+\][ \t]*$", re.MULTILINE)
_INI_KEY_RE = re.compile(r"^[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*=", re.MULTILINE)


def load(path: Path) -> Config:
    """load_config, and a synkler 0.0.x file (INI) told as such, with what to do about it, rather
    than in the YAML parser's words."""
    text = read_text(path)
    try:
        return config_from_text(text, path)
    except NotYamlMapping:
        if looks_like_ini(text):
            raise ConfigError(path, None, _ini_hint(path)) from None
        raise


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


@dataclass
class Migration:
    """The YAML text, and what a person should look at before starting the agent."""

    text: str
    warnings: list[str] = field(default_factory=list)


SHARED_PIDFILE = "/tmp/synkler.pid"  # the pidfile of 0.0.x's sample, which every agent then used


@dataclass
class _Setting:
    key: str
    value: Any
    notes: list[str] = field(default_factory=list)
    commented_out: bool = False


def read_old(text: str, path: Path) -> dict[str, str]:
    """The [default] section of a 0.0.x file, read as 0.0.x read it."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        try:
            parser.read_string(text, str(path))
        except configparser.MissingSectionHeaderError:
            # key = value lines with no section: what a person means is plain, so read them so.
            parser = configparser.ConfigParser(interpolation=None)
            parser.read_string(f"[{SECTION}]\n" + text, str(path))
    except configparser.Error as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(path, None, f"cannot be read as a synkler 0.0.x (INI) file: {problem}") from None
    if not parser.has_section(SECTION):
        found = ", ".join(f"[{s}]" for s in parser.sections()) or "none"
        raise ConfigError(
            path, None, f"no [{SECTION}] section, the one synkler 0.0.x read (sections found: {found})"
        )
    return dict(parser.items(SECTION))


def migrate(text: str, path: Path) -> Migration:
    """The YAML configuration equivalent to the 0.0.x file ``text`` (read from ``path``)."""
    old = read_old(text, path)
    warnings: list[str] = []
    settings: dict[str, _Setting] = {}

    mode = old.get("mode")
    if mode is None:
        settings["mode"] = _Setting(
            "mode", "central", ["mode was not set: synkler 0.0.x then ran as central. Now it must be given."]
        )
    for key, raw in old.items():
        if key == "rsync_opts":
            settings[key] = _rsync_opts(raw)
        elif key == "cleanup_script":
            settings[key] = _cleanup_script(raw, warnings)
        elif key in KEYS:
            settings[key] = _Setting(key, _typed(key, raw, Path(path).parent, warnings))
        else:
            warnings.append(f"{key}: not a synkler setting; left out (commented)")
            settings[key] = _Setting(key, raw, ["not a synkler setting: left out"], commented_out=True)
    _explain(settings)
    return Migration(_render(settings, path), warnings)


def _explain(settings: dict[str, _Setting]) -> None:
    """Notes on the settings whose meaning changed since 0.0.x, or which this role ignores."""
    role = settings["mode"].value
    if "keep_minutes" in settings or role == "central":
        keep = settings.setdefault("keep_minutes", _Setting("keep_minutes", 30))
        keep.notes.append(
            "Now counted from the confirmed delivery. 0.0.x went by the file's modification time "
            "(kept from upload by rsync --archive): an old file could go at once, delivered or not."
        )
    for key in ("keep_minutes", "free_percent"):
        if key in settings and role != "central":
            settings[key].notes.insert(0, f"Read by central only: this {role} agent ignores it.")
    if "file_dir" in settings and role == "central":
        settings["file_dir"].notes.append(
            "Central now keeps entries in file_dir/<id>/staging and file_dir/<id>/stored (id: default), "
            "and removes only its own copies there. 0.0.x kept them in file_dir itself and deleted "
            "anything in it older than keep_minutes."
        )
    pidfile = settings.get("pidfile")
    if pidfile is not None and str(pidfile.value) == SHARED_PIDFILE:
        pidfile.commented_out = True
        pidfile.notes.append(
            f"Left out: {SHARED_PIDFILE} was 0.0.x's usual lock, the same for every agent, and three "
            "agents on one host must not share one. By default each agent now has its own, beside its "
            "state database (~/.local/state/synkler/<id>-<mode>.pid; under systemd in StateDirectory)."
        )
    elif pidfile is not None:
        pidfile.notes.append(
            "Optional now: by default each agent has its own, beside its state database "
            "(~/.local/state/synkler/<id>-<mode>.pid). Three agents on one host must not share one: "
            "give each its own file, or leave the key out."
        )
    if "rsync" in settings and len(shlex.split(str(settings["rsync"].value))) > 1:
        settings["rsync"].notes.append("Split into words like a shell line, run without a shell.")
    if "synkler_server" in settings:
        settings["synkler_server"].notes.append(
            "The RabbitMQ host and, unless central_host is set, the ssh host of central, as before. "
            "RabbitMQ lets its guest user in from localhost only: remote agents need broker_username "
            "and broker_password."
        )


def _typed(key: str, raw: str, base: Path, warnings: list[str]) -> Any:
    """The YAML value for an INI string: the first of (integer, number, string) the key accepts."""
    candidates: list[Any] = []
    for convert in (int, float):
        try:
            candidates.append(convert(raw))
        except ValueError:
            pass
    candidates.append(raw)
    problems = []
    for value in candidates:
        problem = value_problem(key, value, base)
        if problem is None:
            return value
        problems.append(problem)
    problem = problems[-1]  # what it says of the string as written
    warnings.append(f"{key}: {problem}; copied as it was: fix it before starting")
    return raw


def _rsync_opts(raw: str) -> _Setting:
    # 0.0.x: list(csv.reader([rsync_opts]))[0], nothing stripped. Now a YAML list, one option a line.
    rows = list(csv.reader([raw])) if raw else []
    items = rows[0] if rows else []
    kept = [item.strip() for item in items if item.strip()]
    notes = ["Was a comma-separated string; now one option per list item (the string form still works)."]
    if kept != items:
        notes.append(
            "Spaces around options and empty options are dropped: 0.0.x handed them to rsync, which "
            "took them for file names."
        )
    return _Setting("rsync_opts", kept, notes)


def _cleanup_script(raw: str, warnings: list[str]) -> _Setting:
    """Rewrite a 0.0.x cleanup_script so that today's reading gives the argv 0.0.x ran.

    0.0.x split the string at each single space (quotes were part of the words) and replaced a word
    that was exactly %f or %F by the name or the full path, as one argument. Now the string is split
    like a shell line, and %f, %F and %% are replaced inside every word.
    """
    words = raw.split(" ")
    out = []
    notes = []
    for word in words:
        if word in ("%f", "%F"):
            out.append(word)
            continue
        if _TOKEN.search(word):
            warnings.append(
                f"cleanup_script: {word!r} holds %f or %F inside other text, which 0.0.x left as it was; "
                "kept literal: check it"
            )
            notes.append(
                f"CHECK: {word!r} was taken literally by 0.0.x (only a whole word %f/%F was replaced)"
            )
        out.append(shlex.quote(word.replace("%", "%%")))
    rewritten = " ".join(out)
    if rewritten != raw:
        notes.insert(
            0,
            "Rewritten to keep its meaning: 0.0.x split this at each space and took quotes literally; "
            f"now it is split like a shell line and %f/%F work inside words too. It was: {raw}",
        )
    notes.append("%f is the entry's name, %F its full path; each is one argument, never split.")
    return _Setting("cleanup_script", rewritten, notes)


def _render(settings: dict[str, _Setting], path: Path) -> str:
    lines = [
        f"# synkler configuration, converted from {path} (synkler 0.0.x, INI)",
        f"# by `synkler config migrate` (synkler {__version__}). What changed: docs/upgrading.md;",
        "# every setting: docs/configuration.md. Notes marked CHECK need a look.",
        "",
    ]
    order = {key: i for i, key in enumerate(KEYS)}
    for setting in sorted(settings.values(), key=lambda s: (order.get(s.key, len(order)), s.key)):
        for note in setting.notes:
            lines += [f"# {line}" for line in _wrap(note)]
        dumped = yaml.safe_dump(
            {setting.key: setting.value}, allow_unicode=True, default_flow_style=False, width=1 << 16
        ).rstrip("\n")
        if setting.commented_out:
            dumped = "\n".join(f"#{line}" for line in dumped.splitlines())
        lines += [dumped, ""]
    return "\n".join(lines)


def _wrap(text: str, width: int = 98) -> list[str]:
    out: list[str] = []
    line = ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return out + [line]
