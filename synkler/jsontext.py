"""JSON text for people to read: `indented(value)` is exactly json.dumps(value, ensure_ascii=True,
indent=1, sort_keys=True), about four times faster on the big documents agents keep (the receipt
document of a bundle lists its thousand files). The standard library writes indented JSON with its
pure-Python encoder only (its C encoder writes one line), a generator per container: nearly all
the time download spent keeping a bundle's receipt. Here one recursive function joins the text of
each container and leaves the strings to the C encoder. A value this does not know (an object
json.dumps refuses, a key that is not a string, a cycle) goes to json.dumps itself. Pure."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _string  # the C function where there is one

_INFINITY = float("inf")


class _Other(Exception):
    """Something json.dumps is left to write (or to refuse)."""


def indented(value: object) -> str:
    """json.dumps(value, ensure_ascii=True, indent=1, sort_keys=True), the same text."""
    try:
        return _text(value, "\n")
    except (_Other, RecursionError):
        return json.dumps(value, ensure_ascii=True, indent=1, sort_keys=True)


def _text(value: object, newline: str) -> str:
    """The text of `value` at the depth whose line break (and indent) is `newline`. Strings and
    ints (most of a document) are written at once, the rest by `_scalar`."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        if not all(isinstance(key, str) for key in value):
            raise _Other  # json turns such keys into strings after sorting them: left to it
        inner = newline + " "
        items = []
        for key in sorted(value):
            v = value[key]
            t = type(v)
            if t is str:
                items.append(f"{_string(key)}: {_string(v)}")
            elif t is int:
                items.append(f"{_string(key)}: {int.__repr__(v)}")
            else:
                items.append(f"{_string(key)}: {_text(v, inner)}")
        return "{" + inner + ("," + inner).join(items) + newline + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        inner = newline + " "
        return "[" + inner + ("," + inner).join([_text(v, inner) for v in value]) + newline + "]"
    return _scalar(value)


def _scalar(value: object) -> str:
    """A value that holds no other, tested in json's own order (its encoder's `_iterencode`), so
    that a subclass of str, int or float is written as json writes it."""
    if isinstance(value, str):
        return _string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return _float(value)
    raise _Other


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return float.__repr__(value)
