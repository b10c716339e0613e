"""The connection to the state database: opening it, transactions, savepoints and what runs around
a commit."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..private import private_file
from .rows import error
from .schema import COUNTS, SCHEMA

CACHE_KIB = 16384  # the most SQLite keeps of the database in memory

_S = TypeVar("_S", bound="Database")


class Database:
    """One agent's connection to its state database. Use `transaction()` around every change."""

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
                self._db.executescript(SCHEMA)
                self._db.executescript(COUNTS)
            self._db.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as e:
            raise error(e) from e
        self._depth = 0
        self._after_commit: list[Callable[[], object]] = []
        self._before_commit: list[Callable[[], object]] = []
        self._savepoints = 0

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error as e:
            raise error(e) from e

    @contextmanager
    def transaction(self: _S, *, durable: bool = True) -> Iterator[_S]:
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
                    raise error(e) from e
                raise
        finally:
            if not durable:
                self._run("PRAGMA synchronous=FULL")
        for fn in callbacks:
            fn()

    @contextmanager
    def savepoint(self: _S) -> Iterator[_S]:
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
            raise error(e) from e

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
            raise error(e) from e
        except sqlite3.Error as e:
            raise error(e) from e

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement of a table kept by a module of its own (synkler.destinations), and its rows
        ([] when a read-only look finds a database no agent of this version opened yet)."""
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e) and self._readonly:
                return []
            raise error(e) from e
        except sqlite3.Error as e:
            raise error(e) from e

    def many(self, sql: str, params: Collection[tuple[Any, ...]]) -> None:
        """One statement for each of many rows of a table kept by a module of its own
        (synkler.bundles: the members of a bundle, a thousand in one go)."""
        try:
            self._db.executemany(sql, params)
        except sqlite3.Error as e:
            raise error(e) from e

    def after_commit(self, fn: Callable[[], object]) -> None:
        """Run `fn` once the current transaction has committed (at once outside one); dropped on rollback.

        Side effects that must not happen unless the state change is durable (starting a cleanup
        script that was just marked 'running') go through here.
        """
        if self._depth:
            self._after_commit.append(fn)
        else:
            fn()
