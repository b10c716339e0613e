"""The agent's durable memory: one SQLite database (WAL) with the entries, the outbox and the
operator's requests.

This is the only module that touches SQLite. One thread (the agent's main loop) owns the
connection; workers never write here, they hand results back to that thread. SQLite's errors
leave here as StateError, or StateUnavailable for the ones that may pass (disk full, locked).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, NamedTuple

from .errors import StateError, StateUnavailable
from .private import private_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id        TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    size      INTEGER NOT NULL DEFAULT 0,
    files     INTEGER NOT NULL DEFAULT 0,
    md5       TEXT NOT NULL,
    state     TEXT NOT NULL,
    peer      TEXT,                       -- the agent this entry came from (or goes to)
    attempt   INTEGER NOT NULL DEFAULT 0, -- the hop attempt the peer asked for
    tries     INTEGER NOT NULL DEFAULT 0, -- local failures of the current step
    path      TEXT,                       -- remote path (dest for upload, source for download)
    stored_as TEXT,                       -- final name at download
    signature TEXT,                       -- stat fingerprint of what upload offered / download placed
    cleanup   TEXT,                       -- cleanup script: agents.base.Cleanup (pending, running, done …)
    reason    TEXT,
    created   REAL NOT NULL,
    updated   REAL NOT NULL,
    due       REAL NOT NULL DEFAULT 0     -- earliest time of the next action (retry, expiry)
);
CREATE INDEX IF NOT EXISTS entries_state ON entries(state, due);
CREATE INDEX IF NOT EXISTS entries_name ON entries(name, created);
-- Finished entries oldest first, for pruning the history and for the newest ones `status` shows.
CREATE INDEX IF NOT EXISTS entries_end ON entries(state, updated);
-- The oldest entries on their way, state by state: the presence report lists them every few seconds,
-- and `status` and the alerts show them (with 100,000 on their way, a sort of them all took 25 ms).
CREATE INDEX IF NOT EXISTS entries_age ON entries(state, created);
-- Done entries whose cleanup script needs a person: `status` shows them however old.
CREATE INDEX IF NOT EXISTS entries_cleanup ON entries(cleanup) WHERE cleanup IN ('failed', 'interrupted');
-- What the agent remembers of the entries it pruned: the latest `created` among them (one row).
CREATE TABLE IF NOT EXISTS pruned (
    one   INTEGER PRIMARY KEY CHECK (one = 1),
    until REAL NOT NULL
);
-- Signed delivery receipts (synkler.receipts), one per entry and destination (download agent); kept
-- as long as the entry is.
CREATE TABLE IF NOT EXISTS receipts (
    entry       TEXT NOT NULL,
    destination TEXT NOT NULL,
    token       TEXT NOT NULL,            -- <payload>.<signature>, as it was signed
    created     REAL NOT NULL,
    PRIMARY KEY (entry, destination)
);
-- Where an entry stands at each download it goes to (synkler.destinations); kept as long as it is.
CREATE TABLE IF NOT EXISTS destinations (
    entry       TEXT NOT NULL,
    destination TEXT NOT NULL,            -- a download agent's name
    state       TEXT NOT NULL,            -- ROUTED, FETCHING, FETCHED, FAILED, FORGOTTEN
    stored_as   BLOB,                     -- its name there, once fetched (its bytes: names need not be UTF-8)
    reason      TEXT,
    updated     REAL NOT NULL,
    PRIMARY KEY (entry, destination)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS destinations_state ON destinations(destination, state);
-- Each entry's metadata (synkler.metadata), as canonical JSON; kept as long as the entry is.
CREATE TABLE IF NOT EXISTS metadata (
    entry TEXT PRIMARY KEY,
    meta  TEXT NOT NULL
);
-- An entry's second hash beside its md5 (`checksum:`, docs/checksums.md), `<alg>:<hex>`; kept as
-- long as the entry is.
CREATE TABLE IF NOT EXISTS checksums (
    entry    TEXT PRIMARY KEY,
    checksum TEXT NOT NULL
);
-- In a pool of centrals (docs/architecture.md, "Who owns an entry"): the entry's ownership, numbered
-- (upload: the current one; central: the one it holds the entry for; download: the highest it saw).
CREATE TABLE IF NOT EXISTS epochs (
    entry TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL
);
-- Download: the upload agent each entry came from, as central's `fetch` says (its subdirectory of
-- file_dir with `subdir_per_upload`); kept as long as the entry is.
CREATE TABLE IF NOT EXISTS sources (
    entry  TEXT PRIMARY KEY,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    dest    TEXT NOT NULL,
    body    BLOB NOT NULL,
    created REAL NOT NULL
);
-- What an operator set on the agent as a whole, by name (a central's `drain`: docs/running.md).
CREATE TABLE IF NOT EXISTS flags (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- What an operator asked of one entry (synkler retry | forget | resend), taken by the running agent.
CREATE TABLE IF NOT EXISTS requests (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    entry    TEXT NOT NULL,
    action   TEXT NOT NULL,
    created  REAL NOT NULL,
    answered REAL,                        -- NULL until the agent has taken it
    ok       INTEGER,                     -- 1: done, 0: refused
    answer   TEXT
);
CREATE INDEX IF NOT EXISTS requests_open ON requests(seq) WHERE answered IS NULL;
-- Alerts (synkler.observe.alerts): the conditions a notice said started and no notice said cleared yet,
-- and the notices not sent yet, per channel.
CREATE TABLE IF NOT EXISTS alert_conditions (
    key     TEXT PRIMARY KEY,
    started REAL NOT NULL,
    notice  TEXT NOT NULL                 -- JSON: the notice that said it started
);
CREATE TABLE IF NOT EXISTS alert_notices (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    notice  TEXT NOT NULL,                -- JSON
    created REAL NOT NULL
);
"""


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


_COLUMNS = [f.name for f in fields(Entry)]


# How many entries are in each state, kept by triggers: `counts` reads a few rows instead of
# counting a million (60 ms), which the presence report asks for every few seconds. Made, and filled
# from the entries already there, once, in one transaction (so two processes opening the database at
# the same time cannot both fill it).
_COUNTS = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS state_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO state_counts (state, n)
    SELECT state, COUNT(*) FROM entries
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'entries_count_insert')
    GROUP BY state;
CREATE TRIGGER IF NOT EXISTS entries_count_insert AFTER INSERT ON entries BEGIN
    INSERT INTO state_counts (state, n) VALUES (new.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS entries_count_delete AFTER DELETE ON entries BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = old.state;
END;
CREATE TRIGGER IF NOT EXISTS entries_count_update AFTER UPDATE OF state ON entries
    WHEN new.state IS NOT old.state BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = old.state;
    INSERT INTO state_counts (state, n) VALUES (new.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
COMMIT;
"""


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


_REQUEST = "SELECT seq, entry, action, created, answered, ok, answer FROM requests"
ANSWERS_KEPT = 86400.0  # seconds an answer nobody collected stays in the table


def _stored(column: str, value: object) -> object:
    """A field's value as its column holds it. An md5 not known yet is "". A name that is not
    UTF-8 (on POSIX a name is bytes: Python keeps the bytes it cannot decode as surrogate escapes,
    which SQLite refuses) is held as its bytes, a BLOB: byte-exact, and equal only to itself."""
    if value is None and column == "md5":
        return ""
    if column in _NAMES and isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return os.fsencode(value)
    return value


_NAMES = ("name", "stored_as")
_NAMES_A_QUERY = 500  # names in one `IN (...)` (SQLite allows 32,766 parameters since 3.32, 999 before)


# Rows are read in Entry's field order and built positionally: a read by id takes 13.5 µs instead
# of 19 µs with sqlite3.Row and keyword arguments, and the agents read an entry at every step.
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM entries"


CACHE_KIB = 16384  # the most SQLite keeps of the database in memory


def _error(e: sqlite3.Error) -> StateError:
    """synkler's exception for an SQLite error, with SQLite's message."""
    if isinstance(e, sqlite3.OperationalError):
        return StateUnavailable(str(e))
    return StateError(str(e))


class State:
    """Entries and outbox of one agent. Use `transaction()` around every change."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self._readonly = readonly
        try:
            if readonly:
                self._db = sqlite3.connect(
                    self.path.absolute().as_uri() + "?mode=ro", uri=True, isolation_level=None
                )
            else:
                # Made 0600 before SQLite opens it: SQLite gives its -wal and -shm the same mode.
                private_file(self.path, ("-wal", "-shm"))
                # The agents' statements (an UPDATE per set of changed columns, …) stay prepared.
                self._db = sqlite3.connect(str(self.path), isolation_level=None, cached_statements=512)
                self._db.execute("PRAGMA busy_timeout=5000")
                self._db.execute("PRAGMA journal_mode=WAL")
                # FULL: a commit that acknowledged a message survives a power cut, not only a crash.
                self._db.execute("PRAGMA synchronous=FULL")
                # SQLite's default page cache (2 MiB) holds the pages of a few thousand entries: past
                # that, each step of an entry reads its pages again from the file (a relay of 20,000
                # small files spent a third of its state time so). Pages are cached only as they are
                # read, so an idle agent with a small database stays small.
                self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
                self._db.executescript(_SCHEMA)
                self._db.executescript(_COUNTS)
            self._db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as e:
            raise _error(e) from e
        self._depth = 0
        self._after_commit: list[Callable[[], object]] = []
        self._before_commit: list[Callable[[], object]] = []
        self._savepoints = 0

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error as e:
            raise _error(e) from e

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[State]:
        """One atomic change; nested uses join the outer transaction.

        `durable=False`: the commit is not flushed to the disk (it survives a crash of the agent, not
        a power cut, which may undo it): only for changes whose loss repeats work and loses nothing,
        such as forgetting outbox rows the broker confirmed (lost, they are sent again, and every
        handler takes a duplicate as a no-op). The next durable commit flushes it as well."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        if not durable:
            self._run("PRAGMA synchronous=NORMAL")
        try:
            self._run("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
                self._before_commit_run()
            except BaseException:
                self._depth = 0
                self._after_commit, self._before_commit = [], []
                self._run("ROLLBACK")
                raise
            self._depth = 0
            callbacks, self._after_commit = self._after_commit, []
            try:
                self._db.execute("COMMIT")
            except BaseException as e:
                if self._db.in_transaction:
                    self._run("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise _error(e) from e
                raise
        finally:
            if not durable:
                self._run("PRAGMA synchronous=FULL")
        for fn in callbacks:
            fn()

    @contextmanager
    def savepoint(self) -> Iterator[State]:
        """A part of the current transaction that can fail alone: its changes and its after_commit
        callbacks are undone, the rest of the transaction goes on. Lets many messages share one commit."""
        if not self._depth:
            raise RuntimeError("savepoint() outside a transaction")
        # Named by depth, not numbered: a few statements SQLite prepares once and keeps, instead of
        # new ones at every savepoint (each prepared anew, pushing others out of the statement cache).
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        pending = len(self._after_commit)
        self._run(f"SAVEPOINT {name}")
        try:
            yield self
        except BaseException:
            self._run(f"ROLLBACK TO {name}")
            self._run(f"RELEASE {name}")
            del self._after_commit[pending:]
            raise
        finally:
            self._savepoints -= 1
        self._run(f"RELEASE {name}")

    def _run(self, sql: str) -> None:
        """One statement of transaction control (BEGIN, SAVEPOINT, ROLLBACK, ...)."""
        try:
            self._db.execute(sql)
        except sqlite3.Error as e:
            raise _error(e) from e

    def before_commit(self, fn: Callable[[], object]) -> None:
        """Run `fn` once, when the current transaction's work is done, just before it commits (at once
        outside one). Kept through a savepoint's rollback; dropped with the transaction's. Lets work
        that many changes of one transaction ask for be done once for them all (receipt documents
        flushed to the disk together: synkler.hops.receiptfiles.Batch). If `fn` raises, the
        transaction is rolled back."""
        if not self._depth:
            fn()
        elif fn not in self._before_commit:
            self._before_commit.append(fn)

    def _before_commit_run(self) -> None:
        while self._before_commit:
            self._before_commit.pop(0)()

    def _later(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of a statement on a table a later version added: [] on a database no agent of
        this version opened yet (a read-only look from a newer command line)."""
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise _error(e) from e
        except sqlite3.Error as e:
            raise _error(e) from e

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement of a table kept by a module of its own (synkler.destinations), and its rows
        ([] when a read-only look finds a database no agent of this version opened yet)."""
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e) and self._readonly:
                return []
            raise _error(e) from e
        except sqlite3.Error as e:
            raise _error(e) from e

    def after_commit(self, fn: Callable[[], object]) -> None:
        """Run `fn` once the current transaction has committed (at once outside one); dropped on rollback.

        Side effects that must not happen unless the state change is durable (starting a cleanup
        script that was just marked 'running') go through here.
        """
        if self._depth:
            self._after_commit.append(fn)
        else:
            fn()

    # entries -------------------------------------------------------------------------------------

    def insert(self, entry: Entry) -> Entry:
        now = time.time()
        entry.created = entry.created or now
        entry.updated = now
        row = entry.as_dict()
        try:
            self._db.execute(
                f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                [_stored(c, row[c]) for c in _COLUMNS],
            )
        except sqlite3.Error as e:
            raise _error(e) from e
        return entry

    def update(self, entry: Entry, **changes: Any) -> Entry:
        """Change some fields of an entry, in the database and on the object."""
        changes["updated"] = time.time()
        for key, value in changes.items():
            if key not in _COLUMNS or key == "id":
                raise KeyError(key)
            setattr(entry, key, value)
        sets = ", ".join(f"{k} = ?" for k in changes)
        try:
            values = [_stored(k, v) for k, v in changes.items()]
            self._db.execute(f"UPDATE entries SET {sets} WHERE id = ?", [*values, entry.id])
        except sqlite3.Error as e:
            raise _error(e) from e
        return entry

    def get(self, entry_id: str) -> Entry | None:
        # Called at every step of every entry: a try block costs next to nothing until SQLite fails.
        try:
            row = self._db.execute(f"{_SELECT} WHERE id = ?", (entry_id,)).fetchone()
        except sqlite3.Error as e:
            raise _error(e) from e
        return Entry(*row) if row else None

    def latest_by_name(self, name: str) -> Entry | None:
        sql = f"{_SELECT} WHERE name = ? ORDER BY created DESC LIMIT 1"
        try:
            row = self._db.execute(sql, (_stored("name", name),)).fetchone()
        except sqlite3.Error as e:
            raise _error(e) from e
        return Entry(*row) if row else None

    def latest_by_names(self, names: Collection[str]) -> dict[str, Entry]:
        """Name -> its latest version, of those of `names` that have one: `latest_by_name` for a
        scan's worth of names, a few hundred a query (down the index on (name, created))."""
        out: dict[str, Entry] = {}
        ordered = list(names)
        try:
            for i in range(0, len(ordered), _NAMES_A_QUERY):
                chunk = [_stored("name", n) for n in ordered[i : i + _NAMES_A_QUERY]]
                sql = f"{_SELECT} WHERE name IN ({', '.join('?' * len(chunk))}) ORDER BY created"
                for row in self._db.execute(sql, chunk):
                    entry = Entry(*row)
                    out[entry.name] = entry  # oldest first: the latest stays
        except sqlite3.Error as e:
            raise _error(e) from e
        return out

    def by_name(self, name: str, *states: str) -> list[Entry]:
        marks = ", ".join("?" * len(states))
        sql = f"{_SELECT} WHERE name = ? AND state IN ({marks}) ORDER BY created"
        try:
            return [Entry(*r) for r in self._db.execute(sql, (_stored("name", name), *states))]
        except sqlite3.Error as e:
            raise _error(e) from e

    def by_state(self, *states: str, due_before: float | None = None) -> list[Entry]:
        marks = ", ".join("?" * len(states))
        sql = f"{_SELECT} WHERE state IN ({marks})"
        args: list[Any] = list(states)
        if due_before is not None:
            sql += " AND due <= ?"
            args.append(due_before)
        sql += " ORDER BY created"
        try:
            return [Entry(*r) for r in self._db.execute(sql, args)]
        except sqlite3.Error as e:
            raise _error(e) from e

    def ids_by_state(self, *states: str) -> list[tuple[str, float]]:
        """(id, due) of the entries in these states, oldest first: much cheaper than `by_state` when
        most of them are only to be skipped."""
        marks = ", ".join("?" * len(states))
        sql = f"SELECT id, due FROM entries WHERE state IN ({marks}) ORDER BY created"
        try:
            return self._db.execute(sql, states).fetchall()
        except sqlite3.Error as e:
            raise _error(e) from e

    def waiting(self, states: Collection[str], now: float, *reasons: str) -> list[Entry]:
        """Entries in `states` not due before `now` (waiting for a retry), oldest first; with
        `reasons` (SQL LIKE patterns), only those whose reason matches one. Down the index on
        (state, due): cheap when few wait, however many entries there are."""
        sql = f"{_SELECT} WHERE state IN ({', '.join('?' * len(states))}) AND due > ?"
        if reasons:
            sql += " AND (" + " OR ".join("reason LIKE ?" for _ in reasons) + ")"
        try:
            rows = self._db.execute(sql + " ORDER BY created", (*states, now, *reasons))
            return [Entry(*r) for r in rows]
        except sqlite3.Error as e:
            raise _error(e) from e

    def all(self) -> list[Entry]:
        try:
            return [Entry(*r) for r in self._db.execute(f"{_SELECT} ORDER BY created")]
        except sqlite3.Error as e:
            raise _error(e) from e

    def count(self) -> int:
        try:
            return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        except sqlite3.Error as e:
            raise _error(e) from e

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
            raise _error(e) from e

    def listed(self, states: Collection[str], *, latest: bool = False, limit: int) -> list[Entry]:
        """At most `limit` entries in `states`: the oldest created first, or (latest) the latest
        updated first. Read state by state down the index on (state, updated) or (state, created),
        `limit` at most of each, and merged: a query over all the states at once sorts every entry
        in them (1.5 s with a million finished; 25 ms with 100,000 on their way)."""
        order = "updated DESC" if latest else "created"
        sql = f"{_SELECT} WHERE state = ? ORDER BY {order} LIMIT ?"
        try:
            found = [Entry(*r) for state in states for r in self._db.execute(sql, (state, limit))]
        except sqlite3.Error as e:
            raise _error(e) from e
        if latest:
            return sorted(found, key=lambda e: e.updated, reverse=True)[:limit]
        return sorted(found, key=lambda e: e.created)[:limit]

    def oldest_per_peer(self, state: str, limit: int) -> list[Entry]:
        """The `limit` oldest entries in `state` of each peer, all of them oldest first (central's
        admission looks at no more than its share of each upload agent's waiting entries)."""
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM (SELECT *, ROW_NUMBER() OVER "
            "(PARTITION BY peer ORDER BY created) AS n FROM entries WHERE state = ?) "
            "WHERE n <= ? ORDER BY created"
        )
        try:
            return [Entry(*r) for r in self._db.execute(sql, (state, limit))]
        except sqlite3.Error as e:
            raise _error(e) from e

    def count_per_peer(self, *states: str) -> dict[str, int]:
        """Entries in these states, per peer."""
        marks = ", ".join("?" * len(states))
        sql = f"SELECT peer, COUNT(*) FROM entries WHERE state IN ({marks}) GROUP BY peer"
        try:
            return {peer or "": n for peer, n in self._db.execute(sql, states)}
        except sqlite3.Error as e:
            raise _error(e) from e

    def peers(self, limit: int) -> list[str]:
        """The agents entries came from or go to (central: its upload agents)."""
        sql = "SELECT DISTINCT peer FROM entries WHERE peer IS NOT NULL LIMIT ?"
        try:
            return sorted(r[0] for r in self._db.execute(sql, (limit,)))
        except sqlite3.Error as e:
            raise _error(e) from e

    def cleanups_needing_a_person(self) -> list[Entry]:
        """Entries whose cleanup script failed or was interrupted (a partial index: cheap however many
        entries there are)."""
        sql = f"{_SELECT} WHERE cleanup IN ('failed', 'interrupted') ORDER BY created"
        try:
            return [Entry(*r) for r in self._db.execute(sql)]
        except sqlite3.Error as e:
            raise _error(e) from e

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
            raise _error(e) from e
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
            self._db.execute(
                "INSERT INTO pruned (one, until) VALUES (1, ?)"
                " ON CONFLICT (one) DO UPDATE SET until = max(until, excluded.until)",
                (max(e.created for e in gone),),
            )
        except sqlite3.Error as e:
            raise _error(e) from e

    def pruned_until(self) -> float:
        """The latest `created` of any entry pruned from this database (0: none ever was)."""
        try:
            row = self._db.execute("SELECT until FROM pruned").fetchone()
        except sqlite3.Error as e:
            raise _error(e) from e
        return row[0] if row else 0.0

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
            raise _error(e) from e

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
            raise _error(e) from e

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
            raise _error(e) from e

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
            raise _error(e) from e

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
            raise _error(e) from e

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
            raise _error(e) from e

    def source(self, entry_id: str) -> str:
        """The upload agent an entry came from; "": not known."""
        rows = self._later("SELECT source FROM sources WHERE entry = ?", (entry_id,))
        return str(rows[0][0]) if rows else ""

    # outbox --------------------------------------------------------------------------------------

    def enqueue(self, dest: str, body: bytes) -> None:
        """Queue a message to send; call inside the transaction that made the change it reports."""
        try:
            self._db.execute(
                "INSERT INTO outbox (dest, body, created) VALUES (?, ?, ?)", (dest, body, time.time())
            )
        except sqlite3.Error as e:
            raise _error(e) from e

    def outbox(self, limit: int = 100, *, held: Collection[str] = ()) -> list[tuple[int, str, bytes]]:
        """The oldest messages to send, leaving out those to the `held` destinations."""
        marks = ", ".join("?" * len(held))
        sql = f"SELECT seq, dest, body FROM outbox WHERE dest NOT IN ({marks}) ORDER BY seq LIMIT ?"
        try:
            return [(r[0], r[1], bytes(r[2])) for r in self._db.execute(sql, (*held, limit))]
        except sqlite3.Error as e:
            raise _error(e) from e

    def sent(self, seqs: list[int]) -> None:
        """The broker confirmed these messages: forget them."""
        try:
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        except sqlite3.Error as e:
            raise _error(e) from e

    def outbox_counts(self) -> dict[str, int]:
        """Messages waiting in the outbox, per destination agent."""
        try:
            return dict(self._db.execute("SELECT dest, COUNT(*) FROM outbox GROUP BY dest").fetchall())
        except sqlite3.Error as e:
            raise _error(e) from e

    def outbox_size(self) -> int:
        try:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.Error as e:
            raise _error(e) from e

    # operator requests -----------------------------------------------------------------------------

    def add_request(self, entry_id: str, action: str) -> int:
        """Record an operator's request for the running agent to take; its number."""
        try:
            cursor = self._db.execute(
                "INSERT INTO requests (entry, action, created) VALUES (?, ?, ?)",
                (entry_id, action, time.time()),
            )
        except sqlite3.Error as e:
            raise _error(e) from e
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def open_requests(self) -> list[Request]:
        """The requests not taken yet, oldest first (cheap when there are none: a partial index)."""
        try:
            return [_request(r) for r in self._db.execute(f"{_REQUEST} WHERE answered IS NULL ORDER BY seq")]
        except sqlite3.Error as e:
            raise _error(e) from e

    def answer_request(self, seq: int, ok: bool, answer: str) -> None:
        """The agent's answer to a request; answers nobody collected go after ANSWERS_KEPT."""
        now = time.time()
        try:
            self._db.execute(
                "UPDATE requests SET answered = ?, ok = ?, answer = ? WHERE seq = ?", (now, ok, answer, seq)
            )
            self._db.execute("DELETE FROM requests WHERE answered < ?", (now - ANSWERS_KEPT,))
        except sqlite3.Error as e:
            raise _error(e) from e

    def get_request(self, seq: int) -> Request | None:
        try:
            row = self._db.execute(f"{_REQUEST} WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.Error as e:
            raise _error(e) from e
        return _request(row) if row else None

    def drop_request(self, seq: int) -> None:
        """The command has read the answer."""
        try:
            self._db.execute("DELETE FROM requests WHERE seq = ?", (seq,))
        except sqlite3.Error as e:
            raise _error(e) from e

    # alerts (synkler.observe.alerts) ------------------------------------------------------------------

    def by_cleanup(self, *values: str) -> list[Entry]:
        """Entries whose cleanup script is in one of these states (failed, interrupted ...)."""
        sql = f"{_SELECT} WHERE cleanup IN ({', '.join('?' * len(values))}) ORDER BY created"
        try:
            return [Entry(*r) for r in self._db.execute(sql, values)]
        except sqlite3.Error as e:
            raise _error(e) from e

    def reason_like(self, pattern: str, states: Collection[str], limit: int) -> list[Entry]:
        """At most `limit` entries in `states` whose reason matches the SQL LIKE `pattern`."""
        sql = f"{_SELECT} WHERE state IN ({', '.join('?' * len(states))}) AND reason LIKE ? LIMIT ?"
        try:
            return [Entry(*r) for r in self._db.execute(sql, (*states, pattern, limit))]
        except sqlite3.Error as e:
            raise _error(e) from e

    def open_conditions(self) -> dict[str, tuple[float, str]]:
        """key -> (started, notice JSON) of the conditions told as started and not as cleared."""
        try:
            return {
                k: (t, n) for k, t, n in self._db.execute("SELECT key, started, notice FROM alert_conditions")
            }
        except sqlite3.Error as e:
            raise _error(e) from e

    def condition_started(self, key: str, started: float, notice: str) -> None:
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO alert_conditions (key, started, notice) VALUES (?, ?, ?)",
                (key, started, notice),
            )
        except sqlite3.Error as e:
            raise _error(e) from e

    def condition_cleared(self, key: str) -> None:
        try:
            self._db.execute("DELETE FROM alert_conditions WHERE key = ?", (key,))
        except sqlite3.Error as e:
            raise _error(e) from e

    def queue_notice(self, channel: str, notice: str, created: float) -> None:
        """A notice to send on `channel`, in the transaction that opened or closed its condition."""
        try:
            self._db.execute(
                "INSERT INTO alert_notices (channel, notice, created) VALUES (?, ?, ?)",
                (channel, notice, created),
            )
        except sqlite3.Error as e:
            raise _error(e) from e

    def notices(self, channel: str, limit: int) -> list[tuple[int, str, float]]:
        """(seq, notice JSON, created) of the oldest unsent notices of `channel`."""
        sql = "SELECT seq, notice, created FROM alert_notices WHERE channel = ? ORDER BY seq LIMIT ?"
        try:
            return self._db.execute(sql, (channel, limit)).fetchall()
        except sqlite3.Error as e:
            raise _error(e) from e

    def notices_sent(self, seqs: list[int]) -> None:
        try:
            self._db.executemany("DELETE FROM alert_notices WHERE seq = ?", [(s,) for s in seqs])
        except sqlite3.Error as e:
            raise _error(e) from e


def _request(row: tuple[Any, ...]) -> Request:
    seq, entry, action, created, answered, ok, answer = row
    return Request(seq, entry, action, created, answered, None if ok is None else bool(ok), answer)
