"""Routes: which downloads an entry goes to (central's `routes`, docs/configuration.md#routes); pure.

A rule matches an entry when every condition it has holds: `from` (a glob on the upload agent's
name), `name` (a glob on the entry's name), `metadata` (every key equal). Every matching rule adds
its destinations (a union); the default rule (one without conditions) only when no other matched.
Central decides an entry's destinations once, when it first admits it: a rule changed later applies
to new entries only.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

_AGENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_FIELDS = ("from", "name", "metadata", "to")
MAX_DESTINATIONS = 32  # downloads an entry may go to (each is a row at central and a receipt at upload)


class Route(NamedTuple):
    to: tuple[str, ...]
    source: str | None = None  # glob on the upload agent's name
    name: str | None = None  # glob on the entry's name
    metadata: tuple[tuple[str, str], ...] = ()  # every key equal

    @property
    def default(self) -> bool:
        return self.source is None and self.name is None and not self.metadata

    def matches(self, source: str, name: str, meta: Mapping[str, Any] | None) -> bool:
        if self.source is not None and not fnmatch.fnmatchcase(source, self.source):
            return False
        if self.name is not None and not fnmatch.fnmatchcase(name, self.name):
            return False
        return all(_text((meta or {}).get(k)) == v for k, v in self.metadata)


def _text(value: object) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def destinations(
    routes: Sequence[Route], source: str, name: str, meta: Mapping[str, Any] | None
) -> list[str]:
    """The downloads an entry goes to, sorted: the union of the matching rules' `to`, or the default
    rule's when no other rule matched (empty only when no rule matches and there is no default)."""
    chosen: set[str] = set()
    for route in routes:
        if not route.default and route.matches(source, name, meta):
            chosen.update(route.to)
    if not chosen:
        for route in routes:
            if route.default:
                chosen.update(route.to)
    return sorted(chosen)


def every_destination(routes: Sequence[Route]) -> list[str]:
    return sorted({d for r in routes for d in r.to})


def parse(value: object) -> tuple[Route, ...]:
    """The `routes` setting, checked; ValueError says which rule and what is wrong with it."""
    if not isinstance(value, list) or not value:
        raise ValueError("must be a list of rules (each with `to` and optional `from`, `name`, `metadata`)")
    out = [_rule(i, rule) for i, rule in enumerate(value, 1)]
    defaults = [i for i, r in enumerate(out, 1) if r.default]
    if not defaults:
        raise ValueError(
            "needs a default rule (one with only `to`), for entries no other rule matches: "
            "for example `- to: [archive]` last"
        )
    if len(defaults) > 1:
        raise ValueError(
            f"rules {defaults[0]} and {defaults[1]} are both default rules (only `to`): keep one"
        )
    return tuple(out)


def _rule(i: int, rule: object) -> Route:
    where = f"rule {i}"
    if not isinstance(rule, Mapping):
        raise ValueError(f"{where}: must be a mapping with `to`, got {type(rule).__name__}")
    unknown = sorted(str(k) for k in rule if k not in _FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (a rule has {', '.join(_FIELDS)})")
    to = rule.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to:
        raise ValueError(f"{where}: `to` must name one or more download agents")
    for dest in to:
        if not isinstance(dest, str) or not _AGENT.fullmatch(dest):
            raise ValueError(f"{where}: `to` holds {dest!r}, which is not an agent name")
    if len(set(to)) > MAX_DESTINATIONS:
        raise ValueError(f"{where}: `to` names more than {MAX_DESTINATIONS} downloads")
    globs = {}
    for key in ("from", "name"):
        glob = rule.get(key)
        if glob is not None and (not isinstance(glob, str) or not glob):
            raise ValueError(f"{where}: `{key}` must be a glob (a non-empty string)")
        globs[key] = glob
    pairs = _pairs(where, rule.get("metadata"))
    return Route(tuple(dict.fromkeys(to)), globs["from"], globs["name"], pairs)


def _pairs(where: str, meta: object) -> tuple[tuple[str, str], ...]:
    """A rule's `metadata` condition: (key, value as text) pairs, sorted."""
    if meta is None:
        return ()
    if not isinstance(meta, Mapping) or not meta:
        raise ValueError(f"{where}: `metadata` must be a mapping of keys to the values they must equal")
    pairs: list[tuple[str, str]] = []
    for k, v in meta.items():
        text = _text(v)
        if not isinstance(k, str) or text is None:
            raise ValueError(f"{where}: `metadata` key {k!r} must be a name with a single value")
        pairs.append((k, text))
    return tuple(sorted(pairs))
