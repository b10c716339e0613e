"""An entry's metadata: a small JSON object that travels with the entry (docs/metadata.md).

Pure: the checks of a metadata object (size, key and value types, depth), its one canonical text,
the sidecar naming rule (``NAME.meta.json`` beside ``NAME``), ``key:value`` pairs of
``synkler send -k`` and the keys central requires (``require_metadata``). Files are read and
written in synkler.agents.sidecars.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

SIDECAR = ".meta.json"  # NAME.meta.json beside NAME holds NAME's metadata; never an entry itself
# The canonical text (ASCII, as messages carry it) is at most this long, so that an offer with its
# metadata stays well within one message (messages.MAX_BODY, 64 KiB).
MAX_BYTES = 16 * 1024
MAX_DEPTH = 8  # objects and arrays nested at most this deep (the metadata object itself is 1)
MAX_KEY = 256  # characters in a key

Metadata = dict[str, Any]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MetadataError(ValueError):
    """Metadata that is not a valid metadata object; the text says why."""


def problem(value: object) -> str | None:
    """Why `value` is not a valid metadata object (None: it is)."""
    if not isinstance(value, dict):
        return "must be a JSON object"
    why = _value_problem(value, 1)
    if why:
        return why
    size = len(canonical(value))
    if size > MAX_BYTES:
        return f"is {size} bytes as JSON, more than {MAX_BYTES}"
    return None


def _value_problem(value: object, depth: int) -> str | None:
    if value is None or isinstance(value, (bool, str, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "holds a number that is not finite"
    if isinstance(value, (dict, list)) and depth > MAX_DEPTH:
        return f"is nested more than {MAX_DEPTH} deep"
    if isinstance(value, list):
        for item in value:
            why = _value_problem(item, depth + 1)
            if why:
                return why
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            why = key_problem(key) or _value_problem(item, depth + 1)
            if why:
                return why
        return None
    return f"holds a {type(value).__name__}, which JSON has not"


def key_problem(key: object) -> str | None:
    """Why `key` cannot be a key of a metadata object (None: it can)."""
    if not isinstance(key, str) or not key:
        return "has a key that is not a non-empty string"
    if len(key) > MAX_KEY:
        return f"has a key longer than {MAX_KEY} characters"
    if _CONTROL.search(key):
        return "has a key with control characters"
    return None


def checked(value: object) -> Metadata:
    """`value` if it is a valid metadata object; else MetadataError."""
    why = problem(value)
    if why:
        raise MetadataError(f"metadata {why}")
    assert isinstance(value, dict)
    return value


def canonical(meta: Mapping[str, Any]) -> str:
    """The one text of a metadata object: sorted keys, no spaces, ASCII (as messages carry it)."""
    return json.dumps(meta, sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def pretty(meta: Mapping[str, Any]) -> str:
    """The text of a sidecar file: indented, keys sorted, UTF-8 as it is, a newline at the end."""
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, indent=2, allow_nan=False) + "\n"


def _no_constant(word: str) -> Any:
    raise MetadataError(f"metadata is not valid JSON: {word} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MetadataError(f"metadata is not valid JSON: key {key!r} appears twice")
        out[key] = value
    return out


def parse(raw: bytes | str) -> Metadata:
    """A metadata object from its JSON text (a sidecar, `-m FILE`, the state); MetadataError if it is
    not valid JSON or not a valid metadata object."""
    if isinstance(raw, bytes):
        if len(raw) > 4 * MAX_BYTES:
            raise MetadataError(f"metadata is {len(raw)} bytes, far more than {MAX_BYTES}")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MetadataError(f"metadata is not UTF-8: {e}") from None
    try:
        value = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise MetadataError(f"metadata is nested more than {MAX_DEPTH} deep") from None
    except ValueError as e:
        if isinstance(e, MetadataError):
            raise
        raise MetadataError(f"metadata is not valid JSON: {e}") from None
    return checked(value)


def loads(text: str | None) -> Metadata | None:
    """The metadata kept as canonical text (the state's table), or None."""
    return parse(text) if text else None


def pair(text: str) -> tuple[str, str]:
    """`key:value` of `synkler send -k` (the value is a string; it may hold ':'); ValueError."""
    key, sep, value = text.partition(":")
    if not sep:
        raise MetadataError(f"{text!r} is not key:value")
    why = key_problem(key)
    if why:
        raise MetadataError(f"{text!r}: metadata {why}")
    return key, value


def merged(base: Mapping[str, Any] | None, pairs: Iterable[tuple[str, Any]]) -> Metadata:
    """`base` with the `-k` pairs (or another object's items) added, a pair replacing a key of the
    same name; checked."""
    out = dict(base or {})
    for key, value in pairs:
        out[key] = value
    return checked(out)


# sidecars ------------------------------------------------------------------------------------------


def sidecar_of(name: str) -> str:
    """The name of the sidecar that holds the metadata of entry `name`."""
    return name + SIDECAR


def is_sidecar(name: str) -> bool:
    """Is `name` a sidecar's name (never an entry of its own)?"""
    return name.endswith(SIDECAR)


def entry_of(sidecar: str) -> str:
    """The entry a sidecar is of (its name less the suffix)."""
    return sidecar[: -len(SIDECAR)]


# what central requires -------------------------------------------------------------------------------


Required = Mapping[str, "re.Pattern[str] | None"]


def requirement_problems(meta: Mapping[str, Any] | None, required: Required) -> list[str]:
    """What `meta` lacks of what central requires: a key missing, or a value its pattern (searched in
    the value, so ^ and $ anchor it) does not match. Empty: nothing lacks."""
    meta = meta or {}
    problems = []
    for key, pattern in required.items():
        if key not in meta:
            problems.append(f"{key} is missing")
        elif pattern is not None:
            value = meta[key]
            if not isinstance(value, str):
                problems.append(f"{key} must be a string matching {pattern.pattern}")
            elif not pattern.search(value):
                problems.append(f"{key} {json.dumps(value)[:80]} does not match {pattern.pattern}")
    return problems


def entry_metadata(text: str | None) -> Metadata:
    """An entry's metadata as a dict ({} when it has none), from what the state keeps: what a receipt
    or a routing rule reads (State.metadata gives the text)."""
    return loads(text) or {}
