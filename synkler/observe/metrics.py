"""Prometheus metrics of one agent: the only module that imports prometheus_client.

Served over HTTP on `metrics_listen` (its own registry, not the library's global one) and/or
written to `metrics_textfile` for node_exporter's textfile collector (atomically: a temporary file
renamed over it). docs/metrics.md lists every metric.

Counters and histograms change as things happen, from the agent's own hooks (`Observer`, in
synkler.agents.base): a state change, an md5 mismatch, a retry, a message from a peer. A state
change counts once its transaction has committed (State.after_commit), so a rolled-back one counts
nothing. Gauges (entries by state, the outbox, transfers running, free space) are read from the
state database by the main loop every `EVERY` seconds, never by the HTTP thread, which only reads
the values already set (prometheus_client is thread-safe).

Nothing here may stop the agent: an address that cannot be bound is an ERROR (said again every 10
minutes) and binding is tried again every minute; a textfile that cannot be written likewise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, write_to_textfile
from prometheus_client.exposition import start_http_server

from ..agents import FACTS
from ..agents.base import PERSON_REPEAT, Observer
from ..agents.facts import METRIC_HOP
from ..state import Entry
from .hooks import Hook

if TYPE_CHECKING:
    from ..config import Config
    from .report import Figures

log = logging.getLogger("synkler")

EVERY = 5.0  # seconds between readings of the gauges (and writes of the textfile)
BIND_RETRY = 60.0  # seconds between tries to bind metrics_listen after it failed
# Hop durations run from seconds (small files on a LAN) to hours (big files over a thin link).
BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600, float("inf"))
LABELS = ("role", "agent", "instance")


class HopClock:
    """When each entry's hops began; which hops a state change ends, and how long they took. Pure."""

    def __init__(self, mode: str):
        self.facts = FACTS[mode]
        self._began: dict[tuple[str, str], float] = {}

    def change(self, old: str | None, entry: Entry, now: float) -> list[tuple[str, float | None]]:
        """An entry went from state `old` (None: it was just created) to `entry.state`: the hops it
        ended, each with its duration (None when its start was not seen: before a restart)."""
        ended: list[tuple[str, float | None]] = []
        if old == entry.state:
            return ended
        for hop in self.facts.hops:
            key = (hop.name, entry.id)
            if entry.state in hop.start and (old is None or old not in hop.start):
                self._began[key] = now
            elif entry.state in hop.end and old in hop.during:
                began = self._began.pop(key, None) if hop.start else entry.created
                ended.append((hop.name, None if began is None else max(0.0, now - began)))
            elif entry.state in self.facts.given_up:
                self._began.pop(key, None)  # left the hop another way
        return ended


class Metrics(Observer):
    """The agent's metrics, its HTTP server and its textfile."""

    def __init__(self, cfg: Config, mode: str, states: Iterable[str]):
        self.cfg = cfg
        self.states = list(states)
        self.registry = CollectorRegistry(auto_describe=True)
        self.clock = HopClock(mode)
        self.labels = {"role": mode, "agent": cfg.name, "instance": cfg.id}
        self._families()
        self._present_from_start(mode)
        self._server: Any = None
        self._next_bind = 0.0
        self._next = 0.0
        self._told: dict[str, float] = {}

    def _families(self) -> None:
        """Every metric family, in the agent's own registry: the entries and their hops here."""
        r, own = self.registry, LABELS
        self.entries = Gauge(
            "synkler_entries", "Entries this agent holds by state", (*own, "state"), registry=r
        )
        self.hop_entries = Counter(
            "synkler_hop_entries",
            "Entries that completed a hop, as this role saw it end",
            (*own, "hop"),
            registry=r,
        )
        self.hop_bytes = Counter(
            "synkler_hop_bytes", "Bytes of the entries that completed a hop", (*own, "hop"), registry=r
        )
        self.hop_seconds = Histogram(
            "synkler_hop_duration_seconds",
            "Seconds from a hop's start to its end, retries included",
            (*own, "hop"),
            buckets=BUCKETS,
            registry=r,
        )
        self.mismatches = Counter(
            "synkler_md5_mismatches", "Copies whose md5 did not match after a hop", (*own, "hop"), registry=r
        )
        self.retries = Counter(
            "synkler_retries",
            "Transfer steps scheduled again after a failure",
            (*own, "hop", "cause"),
            registry=r,
        )
        self.refused_offers = Counter(
            "synkler_offers_refused",
            "Offers central refused: their upload agent had as many entries at central as one may",
            (*own, "peer"),
            registry=r,
        )
        self._gauges()

    def _gauges(self) -> None:
        """The gauges of the agent's work and its file system, set from the presence figures."""
        r, own = self.registry, LABELS
        self.destinations = Gauge(
            "synkler_destination_entries",
            "Central with routes: entries by destination and their state there",
            (*own, "destination", "state"),
            registry=r,
        )
        self._destinations: set[tuple[str, str]] = set()  # the (destination, state) pairs set once
        self.transfers = Gauge("synkler_transfers_running", "rsync runs going on", own, registry=r)
        self.outbox = Gauge("synkler_outbox_messages", "Messages waiting in the outbox", own, registry=r)
        self.free = Gauge(
            "synkler_file_dir_free_bytes", "Free bytes on file_dir's filesystem", own, registry=r
        )
        self.size = Gauge("synkler_file_dir_size_bytes", "Size of file_dir's file system", own, registry=r)
        self.reserve = Gauge(
            "synkler_file_dir_reserve_bytes", "Central: bytes kept free (free_percent)", own, registry=r
        )
        self.heard = Gauge(
            "synkler_peer_last_heard_timestamp_seconds",
            "When a message from a peer agent last arrived (Unix time)",
            (*own, "peer"),
            registry=r,
        )
        self.up = Gauge("synkler_agent_start_timestamp_seconds", "When the agent started", own, registry=r)

    def _present_from_start(self, mode: str) -> None:
        """The series rate() and alerts need, present from the start at 0, and the start time."""
        self.up.labels(**self.labels).set(time.time())
        for state in self.states:
            self.entries.labels(**self.labels, state=state).set(0)
        for hop in FACTS[mode].hops:  # present from the start, at 0: rate() and alerts need them
            for family in (self.hop_entries, self.hop_bytes, self.mismatches):
                family.labels(**self.labels, hop=hop.name)
            self.hop_seconds.labels(**self.labels, hop=hop.name)

    # what happens (Observer; called in the main loop) ----------------------------------------------

    def moved(self, old: str | None, entry: Entry) -> None:
        for hop, seconds in self.clock.change(old, entry, time.time()):
            self.hop_entries.labels(**self.labels, hop=hop).inc()
            self.hop_bytes.labels(**self.labels, hop=hop).inc(entry.size)
            if seconds is not None:
                self.hop_seconds.labels(**self.labels, hop=hop).observe(seconds)

    def mismatch(self, hop: str) -> None:
        self.mismatches.labels(**self.labels, hop=METRIC_HOP.get(hop, hop)).inc()

    def retried(self, hop: str, cause: str) -> None:
        self.retries.labels(**self.labels, hop=METRIC_HOP.get(hop, hop), cause=cause).inc()

    def refused_offer(self, peer: str) -> None:
        self.refused_offers.labels(**self.labels, peer=peer).inc()

    def heard_from(self, peer: str, now: float) -> None:
        self.heard.labels(**self.labels, peer=peer).set(now)

    # the figures, the server and the file (main loop) ------------------------------------------------

    def tick(self, now: float, figures: Callable[[], Figures]) -> None:
        """Every EVERY seconds: set the gauges from `figures()` (counts, outbox, transfers, disk:
        synkler.observe.presence), write the textfile, and bind the HTTP server if that failed before."""
        if now < self._next:
            return
        self._next = now + EVERY
        self.set_gauges(figures())
        self.serve(now)
        self.write(now)

    def set_gauges(self, figures: Figures) -> None:
        counts = figures.counts
        for state in {*self.states, *counts}:
            self.entries.labels(**self.labels, state=state).set(counts.get(state, 0))
        self.outbox.labels(**self.labels).set(figures.outbox)
        self.transfers.labels(**self.labels).set(figures.transfers)
        rows = figures.destinations
        self._destinations |= set(rows)
        for dest, state in self._destinations:  # a state no entry is in any more goes back to 0
            gauge = self.destinations.labels(**self.labels, destination=dest, state=state)
            gauge.set(rows.get((dest, state), 0))
        disk = figures.disk
        if disk:
            self.free.labels(**self.labels).set(disk.free)
            self.size.labels(**self.labels).set(disk.total)
            self.reserve.labels(**self.labels).set(disk.reserve)

    def serve(self, now: float) -> None:
        """Start the HTTP server on metrics_listen if it is set and not running."""
        listen = self.cfg.metrics_listen
        if listen is None or self._server is not None or now < self._next_bind:
            return
        host, port = listen
        try:
            self._server, _thread = start_http_server(port, host, registry=self.registry)
        except OSError as e:
            self._next_bind = now + BIND_RETRY
            self._error(
                "listen",
                now,
                "cannot serve metrics on %s:%d (%s); the agent works on without them and tries again "
                "every minute",
                host,
                port,
                e.strerror or e,
            )
            return
        log.info("serving metrics on http://%s:%d/metrics", host, port)

    def write(self, now: float) -> None:
        """Write the textfile (a temporary file beside it, renamed over it)."""
        path = self.cfg.metrics_textfile
        if path is None:
            return
        try:
            write_to_textfile(str(path), self.registry)
        except OSError as e:
            self._error("textfile", now, "cannot write the metrics file %s (%s)", path, e.strerror or e)

    def _error(self, what: str, now: float, fmt: str, *args: object) -> None:
        if now - self._told.get(what, float("-inf")) >= PERSON_REPEAT:
            self._told[what] = now
            log.error(fmt + " (said again every %d minutes while it lasts)", *args, PERSON_REPEAT // 60)

    def close(self, figures: Figures | None = None) -> None:
        """At the stop: a last textfile, and the HTTP server shut."""
        if figures is not None:
            self.set_gauges(figures)
        self.write(time.time())
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def metrics_for(cfg: Config, mode: str, states: Iterable[str]) -> Metrics | None:
    """The agent's metrics, if the configuration asks for them."""
    if cfg.metrics_listen is None and cfg.metrics_textfile is None:
        return None
    return Metrics(cfg, mode, states)


class MetricsHook(Hook):
    """The metrics in the loop: the gauges set (from `figures`, synkler.observe.presence) at the
    launch and after each pass when due; a last textfile at the stop."""

    def __init__(self, metrics: Metrics, figures: Callable[[], Figures]):
        self.metrics = metrics
        self.figures = figures

    def at_launch(self, now: float) -> None:
        self.metrics.tick(now, self.figures)

    def after_pass(self, now: float) -> None:
        self.metrics.tick(now, self.figures)

    def after_stop(self) -> None:
        self.metrics.close(self.figures())
