"""An operator's requests about one entry (synkler retry | forget | resend), taken by the running agent."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from .database import Database
from .rows import error


@dataclass
class Request:
    """An operator's request about one entry (`action`: retry, forget or resend) and the agent's answer."""

    seq: int
    entry: str
    action: str
    created: float
    answered: float | None = None  # None: not taken yet
    ok: bool | None = None
    answer: str | None = None


REQUEST = "SELECT seq, entry, action, created, answered, ok, answer FROM requests"
ANSWERS_KEPT = 86400.0  # seconds an answer nobody collected stays in the table


class Requests(Database):
    # operator requests -----------------------------------------------------------------------------

    def add_request(self, entry_id: str, action: str) -> int:
        """Record an operator's request for the running agent to take; its number."""
        try:
            cursor = self._db.execute(
                "INSERT INTO requests (entry, action, created) VALUES (?, ?, ?)",
                (entry_id, action, time.time()),
            )
        except sqlite3.Error as e:
            raise error(e) from e
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def open_requests(self) -> list[Request]:
        """The requests not taken yet, oldest first (cheap when there are none: a partial index)."""
        try:
            return [request_of(r) for r in self._db.execute(f"{REQUEST} WHERE answered IS NULL ORDER BY seq")]
        except sqlite3.Error as e:
            raise error(e) from e

    def answer_request(self, seq: int, ok: bool, answer: str) -> None:
        """The agent's answer to a request; answers nobody collected go after ANSWERS_KEPT."""
        now = time.time()
        try:
            self._db.execute(
                "UPDATE requests SET answered = ?, ok = ?, answer = ? WHERE seq = ?", (now, ok, answer, seq)
            )
            self._db.execute("DELETE FROM requests WHERE answered < ?", (now - ANSWERS_KEPT,))
        except sqlite3.Error as e:
            raise error(e) from e

    def get_request(self, seq: int) -> Request | None:
        try:
            row = self._db.execute(f"{REQUEST} WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.Error as e:
            raise error(e) from e
        return request_of(row) if row else None

    def drop_request(self, seq: int) -> None:
        """The command has read the answer."""
        try:
            self._db.execute("DELETE FROM requests WHERE seq = ?", (seq,))
        except sqlite3.Error as e:
            raise error(e) from e


def request_of(row: tuple[Any, ...]) -> Request:
    seq, entry, action, created, answered, ok, answer = row
    return Request(seq, entry, action, created, answered, None if ok is None else bool(ok), answer)
