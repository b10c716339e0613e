"""The small tables kept beside an entry (receipts, metadata, second hashes, ownership numbers,
sources) and the agent's flags."""

from __future__ import annotations

import sqlite3
import time

from .database import Database
from .rows import error


class Tables(Database):
    # receipts ------------------------------------------------------------------------------------

    def put_receipt(self, entry_id: str, destination: str, token: str) -> None:
        """Keep a signed receipt (the latest one of a destination replaces an earlier one)."""
        try:
            self._db.execute(
                "INSERT INTO receipts (entry, destination, token, created) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (entry, destination) DO UPDATE SET token = excluded.token,"
                " created = excluded.created",
                (entry_id, destination, token, time.time()),
            )
        except sqlite3.Error as e:
            raise error(e) from e

    def receipts(self, entry_id: str) -> dict[str, str]:
        """The signed receipts kept for an entry: destination -> token."""
        sql = "SELECT destination, token FROM receipts WHERE entry = ? ORDER BY destination"
        return dict(self._later(sql, (entry_id,)))

    # metadata ------------------------------------------------------------------------------------

    def put_metadata(self, entry_id: str, meta: str | None) -> None:
        """Keep an entry's metadata (canonical JSON, synkler.metadata); None or "": it has none, and
        nothing is written (an entry without metadata costs no statement)."""
        if not meta:
            return
        try:
            self._db.execute(
                "INSERT INTO metadata (entry, meta) VALUES (?, ?)"
                " ON CONFLICT (entry) DO UPDATE SET meta = excluded.meta",
                (entry_id, meta),
            )
        except sqlite3.Error as e:
            raise error(e) from e

    def metadata(self, entry_id: str) -> str | None:
        """An entry's metadata as kept (canonical JSON), or None: it has none."""
        rows = self._later("SELECT meta FROM metadata WHERE entry = ?", (entry_id,))
        return rows[0][0] if rows else None

    # second hashes -------------------------------------------------------------------------------

    def put_checksum(self, entry_id: str, checksum: str) -> None:
        """Keep an entry's second hash (`<alg>:<hex>`); "" forgets it."""
        try:
            if checksum:
                self._db.execute(
                    "INSERT INTO checksums (entry, checksum) VALUES (?, ?)"
                    " ON CONFLICT (entry) DO UPDATE SET checksum = excluded.checksum",
                    (entry_id, checksum),
                )
            else:
                self._db.execute("DELETE FROM checksums WHERE entry = ?", (entry_id,))
        except sqlite3.Error as e:
            raise error(e) from e

    def checksum(self, entry_id: str) -> str:
        """An entry's second hash, `<alg>:<hex>`; "": it has none (md5 only)."""
        rows = self._later("SELECT checksum FROM checksums WHERE entry = ?", (entry_id,))
        return rows[0][0] if rows else ""

    def put_flag(self, name: str, value: str | None) -> None:
        """Set (None: clear) one of the flags an operator sets on the agent."""
        try:
            if value is None:
                self._db.execute("DELETE FROM flags WHERE name = ?", (name,))
            else:
                self._db.execute(
                    "INSERT INTO flags (name, value) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, value),
                )
        except sqlite3.Error as e:
            raise error(e) from e

    def flag(self, name: str) -> str | None:
        rows = self._later("SELECT value FROM flags WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def flags_like(self, prefix: str) -> list[tuple[str, str]]:
        """The flags whose names start with `prefix`, and their values."""
        rows = self._later(
            "SELECT name, value FROM flags WHERE substr(name, 1, ?) = ?", (len(prefix), prefix)
        )
        return [(str(n), str(v)) for n, v in rows]

    def put_epoch(self, entry_id: str, epoch: int) -> None:
        """Record the entry's ownership number (a pool of centrals)."""
        try:
            self._db.execute(
                "INSERT INTO epochs (entry, epoch) VALUES (?, ?)"
                " ON CONFLICT (entry) DO UPDATE SET epoch = excluded.epoch",
                (entry_id, epoch),
            )
        except sqlite3.Error as e:
            raise error(e) from e

    def epoch(self, entry_id: str) -> int:
        """The entry's ownership number; 0: none recorded (one central, or not yet owned)."""
        rows = self._later("SELECT epoch FROM epochs WHERE entry = ?", (entry_id,))
        return int(rows[0][0]) if rows else 0

    def put_source(self, entry_id: str, source: str) -> None:
        """Record the upload agent an entry came from (download); "" records nothing."""
        if not source:
            return
        try:
            self._db.execute(
                "INSERT INTO sources (entry, source) VALUES (?, ?)"
                " ON CONFLICT (entry) DO UPDATE SET source = excluded.source",
                (entry_id, source),
            )
        except sqlite3.Error as e:
            raise error(e) from e

    def source(self, entry_id: str) -> str:
        """The upload agent an entry came from; "": not known."""
        rows = self._later("SELECT source FROM sources WHERE entry = ?", (entry_id,))
        return str(rows[0][0]) if rows else ""
