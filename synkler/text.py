"""Text for people: names and reasons escaped so that any terminal, log or notice shows them safely,
and a batch of entries in one line. Every place that shows text to a person uses these."""

from __future__ import annotations

import os
import re

# C0 and C1 controls (newline, ESC, CSI ...), DEL, the Unicode line and paragraph separators and the
# bidirectional controls that can make a terminal show text in another order than it is.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: str) -> str:
    """Text as a person may safely read it on any terminal or in any log: one line, no control
    characters, no bytes that are not UTF-8.

    Names are data and may hold any byte but '/' and NUL. Bytes that are not UTF-8 (kept in names as
    surrogate escapes) are shown as \\xNN, a newline as \\n, a tab as \\t, ESC and the other control
    characters as \\xNN, bidirectional controls as \\uNNNN. Everything else is left as it is.
    """
    if text.isascii() and text.isprintable():
        return text  # the common case, at no cost
    try:
        text = os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:  # a surrogate that no byte became: not a name from the file system
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _UNSAFE.sub(_escape, text)


def some_entries(names: list[str], at_most: int = 3, noun: str = "entry") -> str:
    """A batch in one line: '3 entries (a, b, c)', '500 entries (a, b, c, …)', '1 entry (a)'
    (`noun`: of files, '2 files (a, b)')."""
    listed = ", ".join(names[:at_most]) + (", …" if len(names) > at_most else "")
    return f"{count(len(names), noun)} ({listed})"


def count(n: int, one: str, many: str | None = None) -> str:
    """A count for people, its noun agreeing: '1 entry', '0 entries', '2 minutes', '1 message'.
    `many` where the plural is not the noun + s or y -> ies."""
    if n == 1:
        return f"{n} {one}"
    if many is None:
        many = one[:-1] + "ies" if one.endswith("y") and one[-2:-1] not in "aeiou" else one + "s"
    return f"{n} {many}"


def again(failures: int) -> str:
    """What a log line about a failure that will be tried again says of the ones before it: nothing
    the first time, ' (failed 3 times in a row)' from the second on."""
    return f" (failed {failures} times in a row)" if failures > 1 else ""
