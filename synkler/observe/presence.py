"""Presence reports: each agent tells the relay about itself through the broker, every few seconds.

A report is one JSON object (documented in docs/protocol.md#presence-reports, version `PRESENCE_V`):
who the agent is (role, name, host, pid, version, since when), when it was written, its figures
(entries per state, the outbox, transfers and md5s running, free space of file_dir and, at
central, the reserve) and its unfinished entries, oldest first (at most `LISTED`, with the count
left out), each with its progress when a transfer or md5 of it is under way. It replaces the
agent's holder record (synkler.broker.amqp: a queue that keeps only the latest message), of which it
is a superset, so nothing but the latest report is ever stored. `synkler status --relay` reads
them (synkler.observe.relayview); an alerting module may read them the same way.

The runtime calls `Presence.tick` after each pass of its main loop (a report is due every
`INTERVAL` s, the first right after the agent's start) and `Presence.stopped` at an orderly stop.
A report that cannot be built or published is skipped: it never stops the agent, and the
messages of the outbox went out before it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from .. import __version__
from ..agents import FACTS
from ..agents.base import PERSON_REPEAT
from ..errors import BrokerError, PublishRefused
from ..hops import checksum
from ..linux.fs import free_bytes, total_bytes
from .progress import Meter, Progress, arrived
from ..state import Entry

if TYPE_CHECKING:
    from ..broker.amqp import Broker
    from ..config import Config
    from ..state import State


class Runner(Protocol):
    """What a report is made of: the runtime (synkler.runtime.loop) that runs the agent."""

    cfg: Config
    state: State
    broker: Broker | None
    transfers: int  # rsync runs going on


log = logging.getLogger("synkler")

PRESENCE_V = 1
INTERVAL = 5.0  # seconds between reports
LISTED = 200  # unfinished entries listed in a report at most (the others are counted)
FINISHED_LISTED = 50  # the latest finished entries listed
MAX_BYTES = 256 * 1024  # a report bigger than this lists fewer entries (long names, long reasons)
REASON_MAX = 300  # characters of an entry's reason in a report
PROGRESS_MIN = 1 << 20  # entries smaller than this get no progress figures
PROGRESS_MAX = 32  # entries whose transfer is sampled per report at most

def entry_row(e: Entry, progress: Progress | None = None) -> dict[str, Any]:
    """One entry as a report lists it."""
    row: dict[str, Any] = {
        "id": e.id,
        "name": e.name,
        "size": e.size,
        "state": e.state,
        "attempt": e.attempt,
        "tries": e.tries,
        "due": round(e.due, 3),
        "reason": (e.reason or "")[:REASON_MAX],
        "created": round(e.created, 3),
        "updated": round(e.updated, 3),
    }
    if e.stored_as and e.stored_as != e.name:
        row["stored_as"] = e.stored_as
    if e.cleanup:
        row["cleanup"] = e.cleanup
    if progress is not None:
        row["progress"] = progress.as_dict()
    return row


def fit(report: dict[str, Any], max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """The report with fewer entries listed (halved until it fits, finished ones first), the ones
    taken out counted in `left_out`."""
    while len(json.dumps(report, ensure_ascii=True, separators=(",", ":"))) > max_bytes:
        if report["finished"]:
            report["finished"] = report["finished"][: len(report["finished"]) // 2]
        elif report["entries"]:
            keep = len(report["entries"]) // 2
            report["left_out"] += len(report["entries"]) - keep
            report["entries"] = report["entries"][:keep]
        else:
            break
    return report


class Presence:
    """Builds and publishes the presence reports of the agent a runtime runs."""

    def __init__(self, runtime: Runner, mode: str, states: Iterable[str]):
        self.runtime = runtime
        self.cfg = runtime.cfg
        self.mode = mode
        self.facts = FACTS[mode]
        self.unfinished_states = [s for s in states if s not in self.facts.finished]
        # The finished entries and the peers change only when the counts do: read again only then
        # (an idle agent with 10,000 entries then reads the counts only, 1 ms).
        self._cached: tuple[dict[str, int], list[dict[str, Any]], list[str]] | None = None
        self.started = time.time()
        self.meter = Meter()
        self.next = 0.0
        self._complained = float("-inf")
        self._receiving_dir = self._receiving_place()

    # publishing ----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Publish a report if one is due."""
        if now < self.next:
            return
        self.next = now + INTERVAL
        self._publish(now, None)

    def stopped(self, now: float) -> None:
        """The last report, at an orderly stop: says since when the agent is stopped."""
        self._publish(now, now)

    def _publish(self, now: float, stopped: float | None) -> None:
        broker = self.runtime.broker
        if broker is None or not broker.connected:
            return
        try:
            broker.publish_presence(self.report(now, stopped))
        except (BrokerError, PublishRefused) as e:
            # The main loop finds a lost connection itself; a refusal costs only this report.
            log.debug("presence report not published: %s", e)
        except Exception:  # a bug here must never stop the agent
            if now - self._complained >= PERSON_REPEAT:
                self._complained = now
                log.exception("bug while building the presence report (said again every 10 minutes)")

    # the report ----------------------------------------------------------------------------------

    def report(self, now: float, stopped: float | None = None) -> dict[str, Any]:
        state = self.runtime.state
        finished = sorted(self.facts.finished)
        counts = state.counts()
        unfinished = state.listed(self.unfinished_states, limit=LISTED) if self.unfinished_states else []
        total_unfinished = sum(n for s, n in counts.items() if s not in finished)
        if self._cached is None or self._cached[0] != counts:
            latest = [entry_row(e) for e in state.listed(finished, latest=True, limit=FINISHED_LISTED)]
            self._cached = (counts, latest, state.peers(64) if self.mode == "central" else [])
        _counts, latest, peers = self._cached
        progress = self._progress(now, unfinished)
        report: dict[str, Any] = {
            "kind": "synkler-presence",
            "v": PRESENCE_V,
            "id": self.cfg.id,
            "role": self.mode,
            "agent": self.cfg.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "since": round(self.started, 3),
            "at": round(now, 3),
            "every": INTERVAL,
            "stopped": None if stopped is None else round(stopped, 3),
            "counts": counts,
            "unfinished": total_unfinished,
            "oldest": round(unfinished[0].created, 3) if unfinished else None,
            "outbox": state.outbox_size(),
            "transfers": self.runtime.transfers,
            "hashes": len(checksum.running()),
            "disk": self._disk(),
            "peers": peers,
            # central: its directory of this instance (<file_dir>/<id>), where `check` on upload and
            # download tries a write into staging and a read of stored over ssh
            "place": os.path.join(self.cfg.file_dir, self.cfg.id) if self.mode == "central" else None,
            "entries": [entry_row(e, progress.get(e.id)) for e in unfinished],
            "left_out": total_unfinished - len(unfinished),
            "finished": list(latest),
        }
        return fit(report)

    def figures(self) -> dict[str, Any]:
        """The figures a report carries that the agent's metrics show too (synkler.observe.metrics)."""
        state = self.runtime.state
        return {
            "counts": state.counts(),
            "outbox": state.outbox_size(),
            "transfers": self.runtime.transfers,
            "disk": self._disk(),
        }

    def _disk(self) -> dict[str, int] | None:
        try:
            free, total = free_bytes(self.cfg.file_dir), total_bytes(self.cfg.file_dir)
        except OSError:
            return None
        reserve = int(total * self.cfg.free_percent / 100) if self.mode == "central" else 0
        return {"free": free, "total": total, "reserve": reserve}

    def _receiving_place(self) -> str | None:
        """Where this role receives entries: central's staging (one directory per upload agent
        below it), download's staging place (entries by id)."""
        if self.mode == "central":
            return os.path.join(self.cfg.file_dir, self.cfg.id, "staging")
        if self.mode == "download":
            return os.path.join(self.cfg.file_dir, f".synkler-{self.cfg.id}")
        return None

    def _hashed_path(self, e: Entry) -> str:
        if self.mode == "upload":
            return os.path.join(self.cfg.file_dir, e.name)
        if self.mode == "central":
            return os.path.join(self._receiving_dir or "", e.peer or "", e.name)
        return os.path.join(self._receiving_dir or "", e.id)

    def _progress(self, now: float, unfinished: Iterable[Entry]) -> dict[str, Progress]:
        """Progress of the transfers and md5s of the listed entries; -v lines for long ones."""
        hashing = {h.path: h for h in checksum.running()}
        receiving = self.facts.receiving
        listing: dict[str, list[str]] = {}
        out: dict[str, Progress] = {}
        sampled = 0
        for e in unfinished:
            if e.size < PROGRESS_MIN or sampled >= PROGRESS_MAX:
                continue
            h = hashing.get(os.fsencode(self._hashed_path(e))) if e.state in self.facts.hashing else None
            if h is not None:
                out[e.id] = self.meter.sample(e.id, "md5", h.done, h.total or e.size, now)
            elif e.state == receiving and self._receiving_dir is not None:
                if self.mode == "central":
                    where, name = os.path.join(self._receiving_dir, e.peer or ""), e.name
                else:
                    where, name = self._receiving_dir, e.id
                what = "push" if self.mode == "central" else "pull"
                done = min(arrived(where, name, listing), e.size)
                out[e.id] = self.meter.sample(e.id, what, done, e.size, now)
            else:
                continue
            sampled += 1
            p = out[e.id]
            if 0 < p.done < p.total and self.meter.line_due(e.id, p.what, now):
                verb = {"push": "arriving from upload", "pull": "pulling from central", "md5": "md5"}[p.what]
                log.info("%s: %s: %s", e.name, verb, p.text())
        self.meter.end_round()
        return out
