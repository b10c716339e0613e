"""Where receipt documents (synkler.proofs) are kept: ``<receipt_dir>/YYYY/MM/<entry id>.json``.

YYYY/MM is the month (UTC) the entry was delivered in, so a date range is a few directories and
`receipt_keep_days` removes old months file by file. Each file is written whole or not at all
(a temporary file, fsync, rename), owner-only like the state database.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..private import private_dir

log = logging.getLogger("synkler")

DAY = 86400.0


def path_for(top: Path, entry_id: str, when: float) -> Path:
    month = time.strftime("%Y/%m", time.gmtime(when))
    return top / month / f"{entry_id}.json"


def write(top: Path, entry_id: str, when: float, document: dict[str, Any]) -> Path:
    """Keep a document (replacing one of the same entry written the same month)."""
    path = path_for(top, entry_id, when)
    for directory in (top, path.parent.parent, path.parent):
        if not directory.is_dir():
            private_dir(directory)
    return write_at(path, document)


def write_at(path: Path, document: dict[str, Any]) -> Path:
    """Write a document at `path` (its directory exists), whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp")
    data = json.dumps(document, ensure_ascii=True, indent=1, sort_keys=True).encode("ascii") + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
    """The documents of one entry id (usually one)."""
    return [month / f"{entry_id}.json" for month in months(top) if (month / f"{entry_id}.json").exists()]


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
