"""The outbox: messages written in the transaction of the change they report, sent after its commit."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection

from .database import Database
from .rows import error


class Outbox(Database):
    # outbox --------------------------------------------------------------------------------------

    def enqueue(self, dest: str, body: bytes) -> None:
        """Queue a message to send; call inside the transaction that made the change it reports."""
        try:
            self._db.execute(
                "INSERT INTO outbox (dest, body, created) VALUES (?, ?, ?)", (dest, body, time.time())
            )
        except sqlite3.Error as e:
            raise error(e) from e

    def outbox(self, limit: int = 100, *, held: Collection[str] = ()) -> list[tuple[int, str, bytes]]:
        """The oldest messages to send, leaving out those to the `held` destinations."""
        marks = ", ".join("?" * len(held))
        sql = f"SELECT seq, dest, body FROM outbox WHERE dest NOT IN ({marks}) ORDER BY seq LIMIT ?"
        try:
            return [(r[0], r[1], bytes(r[2])) for r in self._db.execute(sql, (*held, limit))]
        except sqlite3.Error as e:
            raise error(e) from e

    def sent(self, seqs: list[int]) -> None:
        """The broker confirmed these messages: forget them."""
        try:
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        except sqlite3.Error as e:
            raise error(e) from e

    def outbox_counts(self) -> dict[str, int]:
        """Messages waiting in the outbox, per destination agent."""
        try:
            return dict(self._db.execute("SELECT dest, COUNT(*) FROM outbox GROUP BY dest").fetchall())
        except sqlite3.Error as e:
            raise error(e) from e

    def outbox_size(self) -> int:
        try:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.Error as e:
            raise error(e) from e
