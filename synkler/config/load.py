"""Finding the configuration file (the search order) and reading it: the one place that reads a
synkler.conf and parses its YAML."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from ..errors import ConfigError
from .keys import Config
from .parse import parse_config
from .values import describe

ENV_VAR = "SYNKLER_CONF"
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


# A key, a colon and no space: 'mode:upload' (not a URL's 'http://').
_NO_SPACE_RE = re.compile(r"[ \t]*[A-Za-z_][A-Za-z0-9_]*:(?!//)[^\s]")


class NotYamlMapping(ConfigError):
    """The file is no YAML mapping at all (invalid YAML, or a document of another kind): perhaps a
    file of another format, which the command line can name (synkler.cli.migrate)."""


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


def load_config(
    path: str | Path,
    *,
    check_dirs: bool = True,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Config:
    """Read, parse and check the file at ``path``."""
    path = Path(path)
    return config_from_text(read_text(path), path, check_dirs=check_dirs, environ=environ, home=home)


def read_text(path: Path) -> str:
    """The text of the file at ``path``; a file in another encoding gets a hint saying what to do
    (people coming from synkler 0.0.x often have Latin-1)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, _not_utf8(raw, exc)) from None


def config_from_text(
    text: str,
    path: Path,
    *,
    check_dirs: bool = True,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Config:
    """Parse and check ``text``, the contents of the file at ``path``.

    A file that is no YAML mapping raises NotYamlMapping; a 'key:value' line (no space after the
    colon) is named with what to write rather than in the YAML parser's own words.
    """
    data = read_yaml(text, path)
    if data is not None and not isinstance(data, Mapping):
        hint = _no_space(text, None) if isinstance(data, str) else None
        if hint is not None:
            raise NotYamlMapping(path, None, hint)
        raise NotYamlMapping(path, None, f"must be a mapping of 'key: value' lines, got {describe(data)}")
    return parse_config(data, path, check_dirs=check_dirs, environ=environ, home=home)


def read_yaml(text: str, path: Path) -> object:
    """The YAML document in ``text`` (the contents of ``path``): safe_load, plus a check for keys
    given twice. Invalid YAML raises NotYamlMapping, in one line.

    PyYAML silently keeps the last of two equal keys; in a config file that is
    nearly always an edit gone wrong, so it is reported with both line numbers.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if isinstance(node, yaml.MappingNode):
            _no_key_twice(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # PyYAML finds a missing space on a later line than the one that lacks it.
        problem = _no_space(text, None if mark is None else mark.line + 1)
        if problem is None:
            problem = _yaml_problem(exc)
            problem += _yaml_hint(problem)
        raise NotYamlMapping(path, None, problem) from None
    finally:
        loader.dispose()


def _no_key_twice(node: yaml.MappingNode, path: Path) -> None:
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str":
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                first = seen[key_node.value]
                raise ConfigError(path, key_node.value, f"given twice (lines {first} and {line})")
            seen[key_node.value] = line


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line from PyYAML's multi-line message: what and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    problem = " ".join(problem.split())
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


def _no_space(text: str, last: int | None) -> str | None:
    """The hint for the first line, up to line `last`, that reads 'key:value': YAML takes it for
    text, not a key (a habit of other formats, and of synkler 0.0.x's INI, which took both)."""
    for number, line in enumerate(text.splitlines(), 1):
        if last is not None and number > last:
            break
        if _NO_SPACE_RE.match(line):
            written = line.strip()
            key, rest = written.split(":", 1)
            return (
                "must be 'key: value' lines, with a space after each colon: "
                f"line {number} reads {describe(written)} (write {describe(f'{key}: {rest}')})"
            )
    return None


def _yaml_hint(problem: str) -> str:
    if "'\\t'" in problem:  # PyYAML's "found character '\\t' that cannot start any token"
        return " (YAML takes no tabs for indentation: use spaces)"
    return ""


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    before = raw[: exc.start]
    line = before.count(b"\n") + 1
    column = exc.start - (before.rfind(b"\n") + 1) + 1
    return (
        f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}, column {column}); "
        "save it as UTF-8, e.g. iconv -f latin1 -t utf-8 OLD > NEW"
    )
