"""The presence report on the wire: a typed `Report` (with its `Listed` entries, `Disk` and the
`Figures` metrics show too), `encode` and `decode`, the one parser every reader uses. Pure.

Documented in docs/protocol.md#presence-reports, version `PRESENCE_V`. synkler.observe.presence
builds and publishes reports; the relay view, `synkler check` and the alerts read them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .. import bundles
from .progress import Progress

if TYPE_CHECKING:
    from ..state import Entry

KIND = "synkler-presence"
PRESENCE_V = 1
INTERVAL = 5.0  # seconds between reports (a report says its own: `every`)
MAX_BYTES = 256 * 1024  # a report bigger than this lists fewer entries (long names, long reasons)
REASON_MAX = 300  # characters of an entry's reason in a report

# the report on the wire ------------------------------------------------------------------------------
# Anyone allowed on the broker could have written what a reader finds: `decode` trusts nothing in it,
# keeps what has the right type and gives the rest its default.


def _num(d: Mapping[str, object], key: str, default: float = 0.0) -> float:
    value = d.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _opt(d: Mapping[str, object], key: str) -> float | None:
    """A time that may be absent (0 and garbage count as absent)."""
    return _num(d, key) or None


def _int(d: Mapping[str, object], key: str) -> int:
    return int(_num(d, key))


def _str(d: Mapping[str, object], key: str) -> str:
    value = d.get(key)
    return value if isinstance(value, str) else ""


def _ints(value: object) -> dict[str, int]:
    """A dict of counts, keeping only what is one."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}


def _texts(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _dicts(value: object) -> list[Mapping[str, object]]:
    return [x for x in value if isinstance(x, dict)] if isinstance(value, list) else []


@dataclass(frozen=True)
class Disk:
    """Free and total bytes of file_dir's file system; at central, the bytes kept free."""

    free: int
    total: int
    reserve: int

    def encode(self) -> dict[str, object]:
        return {"free": self.free, "total": self.total, "reserve": self.reserve}

    @classmethod
    def decode(cls, d: object) -> Disk | None:
        got = _ints(d)
        if not {"free", "total"} <= set(got):
            return None
        return cls(got["free"], got["total"], got.get("reserve", 0))


def _progress(d: object) -> Progress | None:
    if not isinstance(d, dict):
        return None
    done, total, rate, eta = d.get("done"), d.get("total"), d.get("rate"), d.get("eta")
    if not isinstance(done, int) or not isinstance(total, int):
        return None
    if isinstance(done, bool) or isinstance(total, bool):
        return None
    return Progress(
        _str(d, "what"),
        done,
        total,
        _num(d, "rate") if rate is not None else None,
        _num(d, "eta") if eta is not None else None,
        _num(d, "started"),
    )


@dataclass(frozen=True)
class Listed:
    """One entry as a report lists it: its state at the reporting role, and its progress there."""

    id: str
    name: str
    size: int
    state: str
    attempt: int
    tries: int
    due: float
    reason: str
    created: float
    updated: float
    stored_as: str | None = None  # download: the name it was placed under, when not its own
    cleanup: str | None = None  # where its cleanup script is (synkler.agents.base.Cleanup)
    progress: Progress | None = None
    # central with routes: destination -> the entry's state there (synkler.destinations)
    at: Mapping[str, str] | None = None
    bundle: int = 0  # a bundle (synkler.bundles): how many files it holds; 0: not a bundle

    @classmethod
    def of(cls, e: Entry, progress: Progress | None = None) -> Listed:
        return cls(
            id=e.id,
            name=e.name,
            size=e.size,
            state=e.state,
            attempt=e.attempt,
            tries=e.tries,
            due=round(e.due, 3),
            reason=(e.reason or "")[:REASON_MAX],
            created=round(e.created, 3),
            updated=round(e.updated, 3),
            stored_as=e.stored_as if e.stored_as and e.stored_as != e.name else None,
            cleanup=e.cleanup or None,
            progress=progress,
            bundle=e.files if e.kind == bundles.KIND else 0,
        )

    def encode(self) -> dict[str, object]:
        row: dict[str, object] = {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "state": self.state,
            "attempt": self.attempt,
            "tries": self.tries,
            "due": self.due,
            "reason": self.reason,
            "created": self.created,
            "updated": self.updated,
        }
        if self.stored_as:
            row["stored_as"] = self.stored_as
        if self.cleanup:
            row["cleanup"] = self.cleanup
        if self.progress is not None:
            row["progress"] = self.progress.as_dict()
        if self.at:
            row["at"] = dict(self.at)
        if self.bundle:
            row["bundle"] = self.bundle
        return row

    @classmethod
    def decode(cls, d: Mapping[str, object]) -> Listed | None:
        """None without an id: nothing to join it by."""
        if not _str(d, "id"):
            return None
        return cls(
            id=_str(d, "id"),
            name=_str(d, "name"),
            size=_int(d, "size"),
            state=_str(d, "state"),
            attempt=_int(d, "attempt"),
            tries=_int(d, "tries"),
            due=_num(d, "due"),
            reason=_str(d, "reason"),
            created=_num(d, "created"),
            updated=_num(d, "updated"),
            stored_as=_str(d, "stored_as") or None,
            cleanup=_str(d, "cleanup") or None,
            progress=_progress(d.get("progress")),
            at=_texts(d.get("at")) or None,
            bundle=max(0, _int(d, "bundle")),
        )


def _listed(value: object) -> tuple[Listed, ...]:
    return tuple(x for x in map(Listed.decode, _dicts(value)) if x is not None)


@dataclass(frozen=True)
class Report:
    """A presence report (docs/protocol.md#presence-reports). Decoded from an older agent's holder
    record (host, pid, since), it has the defaults for the rest and `at` is its `since`."""

    host: str
    role: str = ""
    agent: str = ""
    id: str = ""
    pid: int = 0
    version: str = ""
    since: float = 0.0
    at: float = 0.0
    every: float = INTERVAL
    stopped: float | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    unfinished: int = 0
    oldest: float | None = None
    outbox: int = 0
    transfers: int = 0
    hashes: int = 0
    disk: Disk | None = None
    peers: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()  # central with routes: the downloads they name
    # central: its directory of this instance (<file_dir>/<id>), where `check` on upload and
    # download tries a write into staging and a read of stored over ssh
    place: str | None = None
    entries: tuple[Listed, ...] = ()  # unfinished, oldest first
    left_out: int = 0  # unfinished entries not listed
    finished: tuple[Listed, ...] = ()  # the latest finished
    draining: bool = False  # a central of a pool that takes no new offers (`synkler drain`)
    room: int | None = None  # a central of a pool: the offers it may take now (None: not a pool's)

    def encode(self) -> dict[str, object]:
        """The JSON object on the wire (the broker adds its token)."""
        return {
            "kind": KIND,
            "v": PRESENCE_V,
            "id": self.id,
            "role": self.role,
            "agent": self.agent,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "since": self.since,
            "at": self.at,
            "every": self.every,
            "stopped": self.stopped,
            "counts": dict(self.counts),
            "unfinished": self.unfinished,
            "oldest": self.oldest,
            "outbox": self.outbox,
            "transfers": self.transfers,
            "hashes": self.hashes,
            "disk": None if self.disk is None else self.disk.encode(),
            "peers": list(self.peers),
            "destinations": list(self.destinations),
            "place": self.place,
            "entries": [e.encode() for e in self.entries],
            "left_out": self.left_out,
            "finished": [e.encode() for e in self.finished],
            "draining": self.draining,
            "room": self.room,
        }

    def size(self) -> int:
        return len(json.dumps(self.encode(), ensure_ascii=True, separators=(",", ":")))

    @classmethod
    def decode(cls, body: bytes | None) -> Report | None:
        """The report (or an older agent's holder record) in `body`; None if there is none or it is
        not one: not a JSON object naming a host."""
        if body is None:
            return None
        try:
            d = json.loads(body)
        except ValueError:
            return None
        if not isinstance(d, dict) or not isinstance(d.get("host"), str):
            return None
        peers, destinations = d.get("peers"), d.get("destinations")
        return cls(
            host=d["host"],
            role=_str(d, "role"),
            agent=_str(d, "agent"),
            id=_str(d, "id"),
            pid=_int(d, "pid"),
            version=_str(d, "version"),
            since=_num(d, "since"),
            at=_num(d, "at", _num(d, "since")),
            every=_num(d, "every", INTERVAL) or INTERVAL,
            stopped=_opt(d, "stopped"),
            counts=_ints(d.get("counts")),
            unfinished=_int(d, "unfinished"),
            oldest=_opt(d, "oldest"),
            outbox=_int(d, "outbox"),
            transfers=_int(d, "transfers"),
            hashes=_int(d, "hashes"),
            disk=Disk.decode(d.get("disk")),
            peers=tuple(p for p in peers if isinstance(p, str)) if isinstance(peers, list) else (),
            destinations=tuple(p for p in destinations if isinstance(p, str))
            if isinstance(destinations, list)
            else (),
            place=_str(d, "place") or None,
            entries=_listed(d.get("entries")),
            left_out=_int(d, "left_out"),
            finished=_listed(d.get("finished")),
            draining=d.get("draining") is True,
            room=_int(d, "room") if isinstance(d.get("room"), int) else None,
        )


@dataclass(frozen=True)
class Figures:
    """What a report and the metrics' gauges both show."""

    counts: Mapping[str, int]
    outbox: int
    transfers: int
    disk: Disk | None
    # central with routes: (destination, row state) -> entries (synkler.destinations)
    destinations: Mapping[tuple[str, str], int] = field(default_factory=dict)


def fit(report: Report, max_bytes: int = MAX_BYTES) -> Report:
    """The report with fewer entries listed (halved until it fits, finished ones first), the ones
    taken out counted in `left_out`."""
    while report.size() > max_bytes:
        if report.finished:
            report = replace(report, finished=report.finished[: len(report.finished) // 2])
        elif report.entries:
            keep = len(report.entries) // 2
            dropped = len(report.entries) - keep
            report = replace(report, entries=report.entries[:keep], left_out=report.left_out + dropped)
        else:
            break
    return report
