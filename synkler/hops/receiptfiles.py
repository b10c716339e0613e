"""Where receipt documents (synkler.proofs) are kept: ``<receipt_dir>/YYYY/MM/<entry id>.json``, and
at upload, for an entry central routed to several downloads, one per destination:
``<entry id>.<destination>.json`` (an entry id is 32 hex digits, so the name tells both apart).

YYYY/MM is the month (UTC) the entry was delivered in, so a date range is a few directories and
`receipt_keep_days` removes old months file by file. Each file is written whole or not at all
(a temporary file, flushed to the disk, renamed), owner-only like the state database. The
documents of one transaction of an agent are written together just before it commits, many at
once (Batch).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..jsontext import indented
from ..linux.fs import write_whole
from ..private import private_dir

log = logging.getLogger("synkler")

DAY = 86400.0


def path_for(top: Path, entry_id: str, when: float, destination: str = "") -> Path:
    """A document's place (`destination`: the download whose delivery it proves, at upload with
    routes; "": the entry's only one)."""
    month = time.strftime("%Y/%m", time.gmtime(when))
    return top / month / f"{file_name(entry_id, destination)}.json"


def file_name(entry_id: str, destination: str = "") -> str:
    """A document's file name without `.json`: the entry id, and its destination when it has one."""
    return f"{entry_id}.{destination}" if destination else entry_id


def named(stem: str) -> tuple[str, str]:
    """(entry id, destination) a document's file name (without `.json`) says; "" where it says none."""
    entry_id, _, destination = stem.partition(".")
    return entry_id, destination


def write(top: Path, entry_id: str, when: float, document: dict[str, Any]) -> Path:
    """Keep a document (replacing one of the same entry written the same month)."""
    path = path_for(top, entry_id, when)
    for _path, error in write_many(top, {path: document}):
        raise error
    return path


def write_at(path: Path, document: dict[str, Any]) -> Path:
    """Write a document at `path` (its directory exists), whole or not at all."""
    for error in write_whole({str(path): _encoded(document)}).values():
        raise error
    return path


def write_many(top: Path, documents: dict[Path, dict[str, Any]]) -> list[tuple[Path, OSError]]:
    """Keep documents (path_for -> document), each whole or not at all (synkler.linux.fs.write_whole:
    many at once). Those that cannot be written, with why; the others are kept."""
    failed: list[tuple[Path, OSError]] = []
    files: dict[str, bytes] = {}
    for path, document in documents.items():
        try:
            for directory in (top, path.parent.parent, path.parent):
                if not directory.is_dir():
                    private_dir(directory)
        except OSError as e:
            failed.append((path, e))
            continue
        files[str(path)] = _encoded(document)
    failed.extend((Path(path), error) for path, error in write_whole(files).items())
    return failed


class Batch:
    """The receipt documents an agent decides in one transaction, kept together just before it
    commits (synkler.state.State.before_commit), many at once (their waits on the disk
    overlap), not one after the other (3-5 ms of waiting each, on
    the main loop, on a busy disk: with 20,000 small entries delivered, most of download's time).
    A document that cannot be written is logged, as one written alone is: the entry goes on
    without it."""

    def __init__(self, top: Path, before_commit: Callable[[Callable[[], object]], None]):
        self.top = top
        self._before_commit = before_commit
        self._queued: dict[Path, tuple[str, dict[str, Any]]] = {}

    def keep(
        self, entry_id: str, label: str, when: float, document: dict[str, Any], destination: str = ""
    ) -> None:
        """Keep `document` for the entry (`label`: how a log line names it; `destination`: the
        download it is from, at upload with routes) with the others of the transaction."""
        self._queued[path_for(self.top, entry_id, when, destination)] = (label, document)
        self._before_commit(self.flush)

    def flush(self) -> None:
        queued, self._queued = self._queued, {}
        if not queued:
            return
        failed = write_many(self.top, {path: document for path, (_, document) in queued.items()})
        for path, error in failed:
            log.error("%s: cannot write its receipt document into %s: %s", queued[path][0], self.top, error)


def _encoded(document: dict[str, Any]) -> bytes:
    return indented(document).encode("ascii") + b"\n"  # json.dumps(indent=1, sort_keys=True), faster


def read(path: Path) -> Any:
    """A document as JSON (ValueError, OSError: cannot be read)."""
    return json.loads(path.read_bytes())


def months(top: Path) -> Iterator[Path]:
    """The month directories, oldest first."""
    if not top.is_dir():
        return
    for year in sorted(p for p in top.iterdir() if p.is_dir() and p.name.isdigit()):
        yield from sorted(p for p in year.iterdir() if p.is_dir() and p.name.isdigit())


def every(top: Path) -> Iterator[Path]:
    """Every document kept, by month, then entry id."""
    for month in months(top):
        yield from sorted(p for p in month.glob("*.json") if not p.name.startswith("."))


def find(top: Path, entry_id: str) -> list[Path]:
    """The documents of one entry id (usually one; at upload, one per destination with routes)."""
    found = []
    for month in months(top):
        found += sorted(p for p in month.glob(f"{entry_id}*.json") if named(p.stem)[0] == entry_id)
    return found


def prune(top: Path, keep_days: float, now: float) -> int:
    """Remove documents written more than `keep_days` ago (0: keep all); how many went."""
    if keep_days <= 0:
        return 0
    limit = now - keep_days * DAY
    gone = 0
    for month in list(months(top)):
        # A month that ended after the limit has only documents to keep; and the months come in order.
        if month.stat().st_mtime > limit and _month_start(month) > limit:
            break
        for path in month.glob("*.json"):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
                    gone += 1
            except FileNotFoundError:
                pass
        try:
            month.rmdir()  # only if empty
            month.parent.rmdir()
        except OSError:
            pass
    if gone:
        log.info("removed %d receipt documents older than %g days from %s", gone, keep_days, top)
    return gone


def _month_start(month: Path) -> float:
    try:
        return time.mktime(time.strptime(f"{month.parent.name}/{month.name}", "%Y/%m"))
    except ValueError:
        return 0.0


class Retention:
    """`receipt_keep_days` for one agent: prune once an hour, from the main loop (a few stats)."""

    EVERY = 3600.0

    def __init__(self, top: Path, keep_days: float):
        self.top, self.keep_days, self.next = top, keep_days, 0.0

    def tick(self, now: float) -> None:
        if self.keep_days > 0 and now >= self.next:
            self.next = now + self.EVERY
            try:
                prune(self.top, self.keep_days, now)
            except OSError as e:
                log.error("cannot prune the receipt documents in %s: %s", self.top, e)
