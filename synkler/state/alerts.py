"""What the alerts (synkler.observe.alerts) keep: conditions told as started, notices not sent yet."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from .database import Database
from .rows import SELECT, Entry, error


class Alerts(Database):
    # alerts (synkler.observe.alerts) ------------------------------------------------------------------

    def by_cleanup(self, *values: str) -> list[Entry]:
        """Entries whose cleanup script is in one of these states (failed, interrupted ...)."""
        sql = f"{SELECT} WHERE cleanup IN ({', '.join('?' * len(values))}) ORDER BY created"
        try:
            return [Entry(*r) for r in self._db.execute(sql, values)]
        except sqlite3.Error as e:
            raise error(e) from e

    def reason_like(self, pattern: str, states: Collection[str], limit: int) -> list[Entry]:
        """At most `limit` entries in `states` whose reason matches the SQL LIKE `pattern`."""
        sql = f"{SELECT} WHERE state IN ({', '.join('?' * len(states))}) AND reason LIKE ? LIMIT ?"
        try:
            return [Entry(*r) for r in self._db.execute(sql, (*states, pattern, limit))]
        except sqlite3.Error as e:
            raise error(e) from e

    def open_conditions(self) -> dict[str, tuple[float, str]]:
        """key -> (started, notice JSON) of the conditions told as started and not as cleared."""
        try:
            return {
                k: (t, n) for k, t, n in self._db.execute("SELECT key, started, notice FROM alert_conditions")
            }
        except sqlite3.Error as e:
            raise error(e) from e

    def condition_started(self, key: str, started: float, notice: str) -> None:
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO alert_conditions (key, started, notice) VALUES (?, ?, ?)",
                (key, started, notice),
            )
        except sqlite3.Error as e:
            raise error(e) from e

    def condition_cleared(self, key: str) -> None:
        try:
            self._db.execute("DELETE FROM alert_conditions WHERE key = ?", (key,))
        except sqlite3.Error as e:
            raise error(e) from e

    def queue_notice(self, channel: str, notice: str, created: float) -> None:
        """A notice to send on `channel`, in the transaction that opened or closed its condition."""
        try:
            self._db.execute(
                "INSERT INTO alert_notices (channel, notice, created) VALUES (?, ?, ?)",
                (channel, notice, created),
            )
        except sqlite3.Error as e:
            raise error(e) from e

    def notices(self, channel: str, limit: int) -> list[tuple[int, str, float]]:
        """(seq, notice JSON, created) of the oldest unsent notices of `channel`."""
        sql = "SELECT seq, notice, created FROM alert_notices WHERE channel = ? ORDER BY seq LIMIT ?"
        try:
            return self._db.execute(sql, (channel, limit)).fetchall()
        except sqlite3.Error as e:
            raise error(e) from e

    def notices_sent(self, seqs: list[int]) -> None:
        try:
            self._db.executemany("DELETE FROM alert_notices WHERE seq = ?", [(s,) for s in seqs])
        except sqlite3.Error as e:
            raise error(e) from e
