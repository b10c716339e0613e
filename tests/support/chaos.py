"""Pieces of the fault suite's runs on a RabbitMQ cluster (issue 25): which node each agent is on, a
proxy per central's link, and a timeline of faults that runs on schedule while the relay works."""

from __future__ import annotations

import heapq
import itertools
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from support.netproxy import NetProxy
from support.rabbitnode import RabbitCluster, RabbitNode

CONNECTED = re.compile(rb"connected to broker 127\.0\.0\.1:(\d+)")


def connections(relay) -> dict[str, tuple[int, int]]:
    """agent key -> (how many times it connected so far, the port of the node it connected to last)."""
    out = {}
    for key in relay.modes:
        path = relay.log_path(key)
        found = CONNECTED.findall(path.read_bytes()) if path.exists() else []
        if found:
            out[key] = (len(found), int(found[-1]))
    return out


def busiest_port(relay, among: list[int]) -> int:
    """Of the ports `among` (the nodes that are up), the one most live agents are connected to; of
    equals, central's (the one every entry of a single-central relay goes through)."""
    now = {key: port for key, (_n, port) in connections(relay).items() if relay.alive(key)}
    tally = Counter(p for p in now.values() if p in among)
    return max(among, key=lambda p: (tally[p], p == now.get("central")))


def link_proxies(target_port: int, count: int) -> list[NetProxy]:
    """`count` proxies to sshd on 127.0.0.2, 127.0.0.3, ... all on one port: each central of a pool
    is reached at its own address (`user@127.0.0.N`) with the same `--rsh`, so each central's link
    can be cut or stalled alone."""
    for _try in range(20):
        proxies = [NetProxy(target_port, listen=("127.0.0.2", 0))]
        try:
            for i in range(1, count):
                proxies.append(NetProxy(target_port, listen=(f"127.0.0.{i + 2}", proxies[0].port)))
        except OSError:  # that port is taken on another address: try another
            for proxy in proxies:
                proxy.close()
            continue
        return proxies
    raise RuntimeError("no port free on every loopback address")


@dataclass
class Timeline:
    """Actions at set times (seconds after `start`), run in order; an action may schedule more (a
    restart after a kill). `run` waits between them with the relay's own wait (which fails at once if
    an agent that should run has exited). `last_fault` is when the last fault ended (a node or a
    central back, a link restored, or the kill of the central that stays down)."""

    relay: object
    start: float = field(default_factory=time.monotonic)
    last_fault: float = 0.0
    log: list[str] = field(default_factory=list)
    _heap: list = field(default_factory=list)
    _order: itertools.count = field(default_factory=itertools.count)

    def at(self, t: float, label: str, action: Callable[[], object]) -> None:
        heapq.heappush(self._heap, (t, next(self._order), label, action))

    def now(self) -> float:
        return time.monotonic() - self.start

    def fault_ended(self) -> None:
        self.last_fault = max(self.last_fault, time.monotonic())

    def run(self) -> None:
        while self._heap:
            t, _n, label, action = heapq.heappop(self._heap)
            due = self.start + t
            self.relay.wait_for(f"{label} at {t:.0f} s", lambda due=due: time.monotonic() >= due, t + 600)
            self.log.append(f"{self.now():6.1f} s  {label}")
            action()


class NodeKiller:
    """Kills one broker node at a time (the busiest one) and starts it again `down` seconds later; the
    wait for it to be up runs in a thread, so that the timeline goes on. A kill waits for the node
    killed before to be up: never two down at once (the majority stays)."""

    def __init__(self, cluster: RabbitCluster, timeline: Timeline):
        self.cluster = cluster
        self.timeline = timeline
        self.kills = 0
        self._back: threading.Thread | None = None
        self._failed: list[BaseException] = []

    def kill(self, down: float) -> None:
        self.wait_up()
        port = busiest_port(self.timeline.relay, [n.port for n in self.cluster.nodes])
        node = self.cluster.node_on(port)
        node.kill()
        self.kills += 1
        self.timeline.at(
            self.timeline.now() + down, f"broker node {port} started again", lambda: self._up(node)
        )

    def _up(self, node: RabbitNode) -> None:
        node.launch()

        def wait() -> None:
            try:
                node.await_started(180)
                self.timeline.fault_ended()
            except BaseException as e:  # raised in the test's thread by wait_up
                self._failed.append(e)

        self._back = threading.Thread(target=wait, name="node-back", daemon=True)
        self._back.start()

    def wait_up(self) -> None:
        if self._back is not None:
            self._back.join(240)
            assert not self._back.is_alive(), "a broker node did not come back in 240 s"
            self._back = None
        if self._failed:
            raise self._failed[0]
