"""The rows of the state database as Python sees them, and how values go into their columns."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from ..errors import StateError, StateUnavailable


class Ended(NamedTuple):
    """A finished entry, as pruning looks at it: where it is in the walk (`updated`, `rowid`) and what
    a role needs to decide whether it must be kept."""

    rowid: int
    id: str
    name: str
    created: float
    updated: float


@dataclass
class Entry:
    id: str
    name: str
    kind: str
    md5: str | None  # None: not hashed yet (an offer carries no md5); stored as ""
    state: str
    size: int = 0
    files: int = 0
    peer: str | None = None
    attempt: int = 0
    tries: int = 0
    path: str | None = None
    stored_as: str | None = None
    signature: str | None = None
    cleanup: str | None = None
    reason: str | None = None
    created: float = 0.0
    updated: float = 0.0
    due: float = 0.0

    def __post_init__(self) -> None:
        if not self.md5:
            self.md5 = None  # "" in the database
        if isinstance(self.name, bytes):  # a name that is not UTF-8: its bytes (see _stored)
            self.name = os.fsdecode(self.name)
        if isinstance(self.stored_as, bytes):
            self.stored_as = os.fsdecode(self.stored_as)

    def known_md5(self) -> str:
        """The md5, where it must be known by now (a bug if it is not)."""
        if self.md5 is None:
            raise LookupError(f"entry {self.id} ({self.name!r}) has no md5 yet")
        return self.md5

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


COLUMNS = [f.name for f in fields(Entry)]


def stored(column: str, value: object) -> object:
    """A field's value as its column holds it. An md5 not known yet is "". A name that is not
    UTF-8 (on POSIX a name is bytes: Python keeps the bytes it cannot decode as surrogate escapes,
    which SQLite refuses) is held as its bytes, a BLOB: byte-exact, and equal only to itself."""
    if value is None and column == "md5":
        return ""
    if column in NAMES and isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return os.fsencode(value)
    return value


NAMES = ("name", "stored_as")
NAMES_A_QUERY = 500  # names in one `IN (...)` (SQLite allows 32,766 parameters since 3.32, 999 before)


# Rows are read in Entry's field order and built positionally: a read by id takes 13.5 µs instead
# of 19 µs with sqlite3.Row and keyword arguments, and the agents read an entry at every step.
SELECT = f"SELECT {', '.join(COLUMNS)} FROM entries"


def error(e: sqlite3.Error) -> StateError:
    """synkler's exception for an SQLite error, with SQLite's message."""
    if isinstance(e, sqlite3.OperationalError):
        return StateUnavailable(str(e))
    return StateError(str(e))
