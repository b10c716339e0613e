"""The entries table: an entry read, written and looked for; counts and summaries; pruning the history."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Collection
from typing import Any

from .database import Database
from .rows import COLUMNS, NAMES_A_QUERY, SELECT, Ended, Entry, error, stored


class Entries(Database):
    # entries -------------------------------------------------------------------------------------

    def insert(self, entry: Entry) -> Entry:
        now = time.time()
        entry.created = entry.created or now
        entry.updated = now
        row = entry.as_dict()
        try:
            self._db.execute(
                f"INSERT INTO entries ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                [stored(c, row[c]) for c in COLUMNS],
            )
        except sqlite3.Error as e:
            raise error(e) from e
        return entry

    def update(self, entry: Entry, **changes: Any) -> Entry:
        """Change some fields of an entry, in the database and on the object."""
        changes["updated"] = time.time()
        for key, value in changes.items():
            if key not in COLUMNS or key == "id":
                raise KeyError(key)
            setattr(entry, key, value)
        sets = ", ".join(f"{k} = ?" for k in changes)
        try:
            values = [stored(k, v) for k, v in changes.items()]
            self._db.execute(f"UPDATE entries SET {sets} WHERE id = ?", [*values, entry.id])
        except sqlite3.Error as e:
            raise error(e) from e
        return entry

    def get(self, entry_id: str) -> Entry | None:
        # Called at every step of every entry: a try block costs next to nothing until SQLite fails.
        try:
            row = self._db.execute(f"{SELECT} WHERE id = ?", (entry_id,)).fetchone()
        except sqlite3.Error as e:
            raise error(e) from e
        return Entry(*row) if row else None

    def latest_by_name(self, name: str) -> Entry | None:
        sql = f"{SELECT} WHERE name = ? ORDER BY created DESC LIMIT 1"
        try:
            row = self._db.execute(sql, (stored("name", name),)).fetchone()
        except sqlite3.Error as e:
            raise error(e) from e
        return Entry(*row) if row else None

    def latest_by_names(self, names: Collection[str]) -> dict[str, Entry]:
        """Name -> its latest version, of those of `names` that have one: `latest_by_name` for a
        scan's worth of names, a few hundred a query (down the index on (name, created))."""
        out: dict[str, Entry] = {}
        ordered = list(names)
        try:
            for i in range(0, len(ordered), NAMES_A_QUERY):
                chunk = [stored("name", n) for n in ordered[i : i + NAMES_A_QUERY]]
                sql = f"{SELECT} WHERE name IN ({', '.join('?' * len(chunk))}) ORDER BY created"
                for row in self._db.execute(sql, chunk):
                    entry = Entry(*row)
                    out[entry.name] = entry  # oldest first: the latest stays
        except sqlite3.Error as e:
            raise error(e) from e
        return out

    def by_name(self, name: str, *states: str) -> list[Entry]:
        marks = ", ".join("?" * len(states))
        sql = f"{SELECT} WHERE name = ? AND state IN ({marks}) ORDER BY created"
        try:
            return [Entry(*r) for r in self._db.execute(sql, (stored("name", name), *states))]
        except sqlite3.Error as e:
            raise error(e) from e

    def by_state(self, *states: str, due_before: float | None = None) -> list[Entry]:
        marks = ", ".join("?" * len(states))
        sql = f"{SELECT} WHERE state IN ({marks})"
        args: list[Any] = list(states)
        if due_before is not None:
            sql += " AND due <= ?"
            args.append(due_before)
        sql += " ORDER BY created"
        try:
            return [Entry(*r) for r in self._db.execute(sql, args)]
        except sqlite3.Error as e:
            raise error(e) from e

    def ids_by_state(self, *states: str) -> list[tuple[str, float]]:
        """(id, due) of the entries in these states, oldest first: much cheaper than `by_state` when
        most of them are only to be skipped."""
        marks = ", ".join("?" * len(states))
        sql = f"SELECT id, due FROM entries WHERE state IN ({marks}) ORDER BY created"
        try:
            return self._db.execute(sql, states).fetchall()
        except sqlite3.Error as e:
            raise error(e) from e

    def waiting(self, states: Collection[str], now: float, *reasons: str) -> list[Entry]:
        """Entries in `states` not due before `now` (waiting for a retry), oldest first; with
        `reasons` (SQL LIKE patterns), only those whose reason matches one. Down the index on
        (state, due): cheap when few wait, however many entries there are."""
        sql = f"{SELECT} WHERE state IN ({', '.join('?' * len(states))}) AND due > ?"
        if reasons:
            sql += " AND (" + " OR ".join("reason LIKE ?" for _ in reasons) + ")"
        try:
            rows = self._db.execute(sql + " ORDER BY created", (*states, now, *reasons))
            return [Entry(*r) for r in rows]
        except sqlite3.Error as e:
            raise error(e) from e

    def all(self) -> list[Entry]:
        try:
            return [Entry(*r) for r in self._db.execute(f"{SELECT} ORDER BY created")]
        except sqlite3.Error as e:
            raise error(e) from e

    def count(self) -> int:
        try:
            return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        except sqlite3.Error as e:
            raise error(e) from e

    # summaries (presence reports: synkler.observe.presence) -----------------------------------------------

    def counts(self) -> dict[str, int]:
        """Entries per state, as the triggers keep them (a database no agent of this version has
        opened yet, read-only: counted, an index scan)."""
        try:
            try:
                return dict(self._db.execute("SELECT state, n FROM state_counts WHERE n > 0").fetchall())
            except sqlite3.OperationalError:  # no such table
                return dict(self._db.execute("SELECT state, COUNT(*) FROM entries GROUP BY state").fetchall())
        except sqlite3.Error as e:
            raise error(e) from e

    def listed(self, states: Collection[str], *, latest: bool = False, limit: int) -> list[Entry]:
        """At most `limit` entries in `states`: the oldest created first, or (latest) the latest
        updated first. Read state by state down the index on (state, updated) or (state, created),
        `limit` at most of each, and merged: a query over all the states at once sorts every entry
        in them (1.5 s with a million finished; 25 ms with 100,000 on their way)."""
        order = "updated DESC" if latest else "created"
        sql = f"{SELECT} WHERE state = ? ORDER BY {order} LIMIT ?"
        try:
            found = [Entry(*r) for state in states for r in self._db.execute(sql, (state, limit))]
        except sqlite3.Error as e:
            raise error(e) from e
        if latest:
            return sorted(found, key=lambda e: e.updated, reverse=True)[:limit]
        return sorted(found, key=lambda e: e.created)[:limit]

    def oldest_per_peer(self, state: str, limit: int) -> list[Entry]:
        """The `limit` oldest entries in `state` of each peer, all of them oldest first (central's
        admission looks at no more than its share of each upload agent's waiting entries)."""
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM (SELECT *, ROW_NUMBER() OVER "
            "(PARTITION BY peer ORDER BY created) AS n FROM entries WHERE state = ?) "
            "WHERE n <= ? ORDER BY created"
        )
        try:
            return [Entry(*r) for r in self._db.execute(sql, (state, limit))]
        except sqlite3.Error as e:
            raise error(e) from e

    def count_per_peer(self, *states: str) -> dict[str, int]:
        """Entries in these states, per peer."""
        marks = ", ".join("?" * len(states))
        sql = f"SELECT peer, COUNT(*) FROM entries WHERE state IN ({marks}) GROUP BY peer"
        try:
            return {peer or "": n for peer, n in self._db.execute(sql, states)}
        except sqlite3.Error as e:
            raise error(e) from e

    def peers(self, limit: int) -> list[str]:
        """The agents entries came from or go to (central: its upload agents)."""
        sql = "SELECT DISTINCT peer FROM entries WHERE peer IS NOT NULL LIMIT ?"
        try:
            return sorted(r[0] for r in self._db.execute(sql, (limit,)))
        except sqlite3.Error as e:
            raise error(e) from e

    def cleanups_needing_a_person(self) -> list[Entry]:
        """Entries whose cleanup script failed or was interrupted (a partial index: cheap however many
        entries there are)."""
        sql = f"{SELECT} WHERE cleanup IN ('failed', 'interrupted') ORDER BY created"
        try:
            return [Entry(*r) for r in self._db.execute(sql)]
        except sqlite3.Error as e:
            raise error(e) from e

    # history -------------------------------------------------------------------------------------

    def ended(self, state: str, before: float, after: tuple[float, int], limit: int) -> list[Ended]:
        """Entries in `state` last changed before `before`, in the order (updated, rowid), from just
        past `after`: the walk of pruning, resumed where it left off (an index range, no sort)."""
        sql = (
            "SELECT rowid, id, name, created, updated FROM entries INDEXED BY entries_end"
            " WHERE state = ? AND updated < ? AND (updated, rowid) > (?, ?)"
            " ORDER BY updated, rowid LIMIT ?"
        )
        try:
            rows = self._db.execute(sql, (state, before, *after, limit)).fetchall()
        except sqlite3.Error as e:
            raise error(e) from e
        # A name that is not UTF-8 is held as its bytes (see _stored): as Python names it again.
        return [Ended(r[0], r[1], os.fsdecode(r[2]), r[3], r[4]) for r in rows]

    def prune(self, gone: Collection[Ended]) -> None:
        """Forget these entries, and remember the latest `created` among them (`pruned_until`)."""
        if not gone:
            return
        try:
            self._db.executemany("DELETE FROM entries WHERE rowid = ?", [(e.rowid,) for e in gone])
            self._db.executemany("DELETE FROM receipts WHERE entry = ?", [(e.id,) for e in gone])
            self._db.executemany("DELETE FROM metadata WHERE entry = ?", [(e.id,) for e in gone])
            self._db.executemany("DELETE FROM checksums WHERE entry = ?", [(e.id,) for e in gone])
            self._db.executemany("DELETE FROM epochs WHERE entry = ?", [(e.id,) for e in gone])
            self._db.executemany("DELETE FROM sources WHERE entry = ?", [(e.id,) for e in gone])
            self._db.executemany("DELETE FROM destinations WHERE entry = ?", [(e.id,) for e in gone])
            self._db.executemany("DELETE FROM members WHERE bundle = ?", [(e.id,) for e in gone])
            self._db.execute(
                "INSERT INTO pruned (one, until) VALUES (1, ?)"
                " ON CONFLICT (one) DO UPDATE SET until = max(until, excluded.until)",
                (max(e.created for e in gone),),
            )
        except sqlite3.Error as e:
            raise error(e) from e

    def pruned_until(self) -> float:
        """The latest `created` of any entry pruned from this database (0: none ever was)."""
        try:
            row = self._db.execute("SELECT until FROM pruned").fetchone()
        except sqlite3.Error as e:
            raise error(e) from e
        return row[0] if row else 0.0
