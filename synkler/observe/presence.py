"""Presence reports: each agent tells the relay about itself through the broker, every few seconds.

A report is one JSON object (synkler.observe.report; docs/protocol.md#presence-reports):
who the agent is (role, name, host, pid, version, since when), when it was written, its figures
(entries per state, the outbox, transfers and md5s running, free space of file_dir and, at
central, the reserve) and its unfinished entries, oldest first (at most `LISTED`, with the count
left out), each with its progress when a transfer or md5 of it is under way. It replaces the
agent's holder record (synkler.broker.amqp: a queue that keeps only the latest message), of which it
is a superset, so nothing but the latest report is ever stored. On the wire it is `Report.encode()`;
every reader (`synkler status --relay` through synkler.observe.relayview, `synkler check`, the alerts)
reads it with `Report.decode`, the one parser, which trusts nothing in it.

The runtime's loop calls `Presence.tick` after each pass (a report is due every `INTERVAL` s, the
first right after the agent's start, and `PROMPT` s after the last one when the counts changed) and
`Presence.stopped` at an orderly stop, through its hook (`PresenceHook`, synkler.observe.hooks).
A report that cannot be built or published is skipped: it never stops the agent, and the
messages of the outbox went out before it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from .. import __version__
from .. import destinations as dests
from ..agents import FACTS
from ..agents.base import PERSON_REPEAT
from ..agents.central_pool import DRAINING
from ..errors import BrokerError, PublishRefused
from ..hops import checksum
from ..linux.fs import free_bytes, total_bytes
from ..state import Entry
from .hooks import Hook
from .progress import Arrivals, Meter, Progress
from .report import INTERVAL, Disk, Figures, Listed, Report, fit

if TYPE_CHECKING:
    from ..broker.amqp import Broker
    from ..config import Config
    from ..state import State


class Roomy(Protocol):
    def offer_room(self) -> int:
        """A central of a pool: the offers it may take now."""


class Runner(Protocol):
    """What a report is made of: the runtime (synkler.runtime.loop) that runs the agent."""

    cfg: Config
    state: State
    broker: Broker | None

    @property
    def agent(self) -> Roomy:
        """The agent (read for a central's room in a pool)."""

    @property
    def transfers(self) -> int:
        """rsync runs going on."""


log = logging.getLogger("synkler")

# Least seconds between two reports when the entries' counts change (an entry arrived, moved on,
# finished): the relay view is then fresh within about a second (the loop turns at least every
# 0.5 s), and thousands of entries moving cost at most two reports a second per agent.
PROMPT = 0.5
LISTED = 200  # unfinished entries listed in a report at most (the others are counted)
FINISHED_LISTED = 50  # the latest finished entries listed
PROGRESS_MIN = 1 << 20  # entries smaller than this get no progress figures
PROGRESS_MAX = 32  # entries whose transfer is sampled per report at most


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
        self._cached: tuple[dict[str, int], tuple[Listed, ...], tuple[str, ...]] | None = None
        self.started = time.time()
        self.meter = Meter()
        self.arrivals = Arrivals()
        self.next = 0.0
        self.last = float("-inf")  # when the last report was published
        self._reported: Mapping[str, int] | None = None  # the counts the last report carried
        self._complained = float("-inf")
        self._receiving_dir = self._receiving_place()

    # publishing ----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Publish a report if one is due: every INTERVAL, and PROMPT after the last one when the
        counts changed since (read only then: 1 ms with 10,000 entries, twice a second at most)."""
        if now < self.next and (now < self.last + PROMPT or not self._counts_changed()):
            return
        self.next = now + INTERVAL
        self.last = now
        self._publish(now, None)

    def _counts_changed(self) -> bool:
        try:
            return self.runtime.state.counts() != self._reported
        except Exception:  # a hook never raises: the report at the interval says what it can
            return False

    def stopped(self, now: float) -> None:
        """The last report, at an orderly stop: says since when the agent is stopped."""
        self._publish(now, now)

    def _publish(self, now: float, stopped: float | None) -> None:
        broker = self.runtime.broker
        if broker is None or not broker.connected:
            return
        try:
            report = self.report(now, stopped)
            self._reported = report.counts
            broker.publish_presence(report.encode())
        except (BrokerError, PublishRefused) as e:
            # The main loop finds a lost connection itself; a refusal costs only this report.
            log.debug("presence report not published: %s", e)
        except Exception:  # a bug here must never stop the agent
            if now - self._complained >= PERSON_REPEAT:
                self._complained = now
                log.exception("bug while building the presence report (said again every 10 minutes)")

    # the report ----------------------------------------------------------------------------------

    def report(self, now: float, stopped: float | None = None) -> Report:
        state = self.runtime.state
        finished = sorted(self.facts.finished)
        counts = state.counts()
        unfinished = state.listed(self.unfinished_states, limit=LISTED) if self.unfinished_states else []
        total_unfinished = sum(n for s, n in counts.items() if s not in finished)
        if self._cached is None or self._cached[0] != counts:
            latest = tuple(map(Listed.of, state.listed(finished, latest=True, limit=FINISHED_LISTED)))
            self._cached = (counts, latest, tuple(state.peers(64)) if self.mode == "central" else ())
        _counts, latest, peers = self._cached
        progress = self._progress(now, unfinished)
        return fit(
            Report(
                id=self.cfg.id,
                role=self.mode,
                agent=self.cfg.name,
                host=socket.gethostname(),
                pid=os.getpid(),
                version=__version__,
                since=round(self.started, 3),
                at=round(now, 3),
                every=INTERVAL,
                stopped=None if stopped is None else round(stopped, 3),
                counts=counts,
                unfinished=total_unfinished,
                oldest=round(unfinished[0].created, 3) if unfinished else None,
                outbox=state.outbox_size(),
                transfers=self.runtime.transfers,
                hashes=len(checksum.running()),
                disk=self._disk(),
                peers=peers,
                destinations=tuple(self.cfg.destinations)
                if self.mode == "central" and self.cfg.routes
                else (),
                place=os.path.join(self.cfg.file_dir, self.cfg.id) if self.mode == "central" else None,
                entries=tuple(self._at(Listed.of(e, progress.get(e.id)), e) for e in unfinished),
                left_out=total_unfinished - len(unfinished),
                finished=latest,
                draining=self.mode == "central" and self.runtime.state.flag(DRAINING) is not None,
                room=self.runtime.agent.offer_room() if self.mode == "central" and self.cfg.uploads else None,
            )
        )

    def _at(self, listed: Listed, e: Entry) -> Listed:
        """Central with routes: where a stored entry stands at each of its destinations."""
        if self.mode != "central" or not self.cfg.routes or not e.path:
            return listed
        rows = dests.rows(self.runtime.state, e.id)
        return replace(listed, at={d: str(r.state) for d, r in rows.items()}) if rows else listed

    def figures(self) -> Figures:
        """The figures a report carries that the agent's metrics show too (synkler.observe.metrics)."""
        state = self.runtime.state
        rows = dests.counts(state) if self.mode == "central" and self.cfg.routes else {}
        return Figures(state.counts(), state.outbox_size(), self.runtime.transfers, self._disk(), rows)

    def _disk(self) -> Disk | None:
        try:
            free, total = free_bytes(self.cfg.file_dir), total_bytes(self.cfg.file_dir)
        except OSError:
            return None
        reserve = int(total * self.cfg.free_percent / 100) if self.mode == "central" else 0
        return Disk(free, total, reserve)

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
        self.arrivals.new_round()
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
                done = self.arrivals.look(where, name, now)
                if done is None:  # a directory walked a moment ago: its last figures stand
                    kept = self.meter.last(e.id, what, e.size)
                    if kept is not None:
                        out[e.id] = kept
                        sampled += 1
                    continue
                out[e.id] = self.meter.sample(e.id, what, min(done, e.size), e.size, now)
            else:
                continue
            sampled += 1
            p = out[e.id]
            if 0 < p.done < p.total and self.meter.line_due(e.id, p.what, now):
                verb = {"push": "arriving from upload", "pull": "pulling from central", "md5": "md5"}[p.what]
                log.info("%s: %s: %s", e.name, verb, p.text())
        self.meter.end_round()
        return out


class PresenceHook(Hook):
    """The reports in the loop: one after a pass when due, a last one at an orderly stop."""

    def __init__(self, presence: Presence):
        self.presence = presence

    def after_start(self) -> None:
        # Central's first report (with `place`) goes out before its first admit or fetch: upload
        # and download check the paths of those against it.
        self.presence.tick(time.time())

    def after_pass(self, now: float) -> None:
        self.presence.tick(now)  # after the outbox: a report never holds a message back

    def at_stop(self, now: float) -> None:
        self.presence.stopped(now)
