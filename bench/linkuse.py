"""Each central's link as the switch of netns_star sees it, sampled while a relay of `--only centrals`
runs: how much of its rate the link carried each way, and how long it carried nothing, central by
central. A pool whose total falls short of its links' rate says here whether every link was a little
slow or some link sat idle.

The counters are those of each link's end on the switch (/proc/net/dev read from inside the switch's
namespace): what that end sends goes to the central (upload's pushes, in), what it receives comes
from the central (download's pulls, out). Bytes on the wire: TCP, ssh and rsync's own included.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import netns

INTERVAL = 0.5  # seconds between samples
IDLE_SHARE = 0.05  # an interval that moved less than this share of the rate either way is idle


def counters(ifnames: dict[str, str]) -> dict[str, tuple[int, int]]:
    """(received, sent) bytes of each interface of this thread's namespace, by host."""
    with open("/proc/thread-self/net/dev") as f:
        rows = {}
        for line in f.read().splitlines()[2:]:
            name, _, fields = line.partition(":")
            values = fields.split()
            rows[name.strip()] = (int(values[0]), int(values[8]))
    return {host: rows[ifname] for host, ifname in ifnames.items()}


class LinkWatch:
    """`watch = LinkWatch(switch_ns, {host: its link's end on the switch}, rate_mbit)`: `start()` as
    the relay starts, `stop()` once it ended, and `figures(seconds it took)`."""

    def __init__(self, switch_ns: str, ifnames: dict[str, str], rate_mbit: float):
        self.switch_ns, self.ifnames, self.rate = (
            switch_ns,
            ifnames,
            rate_mbit * 1e6 / 8,
        )
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self.thread.start()
        while not self.samples and self.thread.is_alive():  # the first sample is the start
            time.sleep(0.01)

    def _sample(self) -> None:
        with netns.inside(self.switch_ns):
            while True:
                self.samples.append((time.monotonic(), counters(self.ifnames)))
                if self.stopped.wait(INTERVAL):
                    self.samples.append((time.monotonic(), counters(self.ifnames)))
                    return

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.ident is not None:  # started
            self.thread.join()

    def figures(self, seconds: float | None) -> dict[str, dict[str, Any]]:
        """Each host's figures over the first `seconds` (None: all) after start."""
        return figures(self.samples, seconds, self.rate) if len(self.samples) > 1 else {}


def figures(
    samples: list[tuple[float, dict[str, tuple[int, int]]]],
    seconds: float | None,
    rate: float,
) -> dict[str, dict[str, Any]]:
    """Per host, from the first sample to `seconds` after it: MB each way (10^6 bytes), the
    share of the link's `rate` (bytes/s) used each way, the seconds it moved next to nothing (in all,
    and between its first and last busy interval), and when it was first and last busy."""
    t0 = samples[0][0]
    end = t0 + seconds if seconds is not None else samples[-1][0]
    # up to the first sample at or after the end: the relay's last bytes are in it (it stopped moving)
    after = next((i for i, s in enumerate(samples) if s[0] >= end), len(samples) - 1)
    kept = samples[: after + 1]
    span = kept[-1][0] - t0
    out: dict[str, dict[str, Any]] = {}
    for host in samples[0][1]:
        busy = []  # (from, to) of each interval that moved data, seconds after the start
        for (ta, a), (tb, b) in zip(kept, kept[1:]):
            moved = max(b[host][1] - a[host][1], b[host][0] - a[host][0])  # the busier way
            if moved >= IDLE_SHARE * rate * (tb - ta):
                busy.append((ta - t0, tb - t0))
        busy_s = sum(b - a for a, b in busy)
        first, last = kept[0][1][host], kept[-1][1][host]
        sent_in, got_out = last[1] - first[1], last[0] - first[0]
        out[host] = {
            "in_mb": sent_in / 1e6,
            "out_mb": got_out / 1e6,
            "in_share": sent_in / (rate * span) if span else None,
            "out_share": got_out / (rate * span) if span else None,
            "idle_s": span - busy_s,
            # idle between its first and last interval that moved data: neither the start (the
            # first offers) nor the end (its last entry out while other centrals still work)
            "gap_s": (busy[-1][1] - busy[0][0] - busy_s) if busy else None,
            "busy_from_s": busy[0][0] if busy else None,
            "busy_to_s": busy[-1][1] if busy else None,
        }
    return out


def text(links: dict[str, dict[str, Any]]) -> str:
    """One line: each central's share of its rate in and out, its idle seconds, when it was busy."""
    return "; ".join(
        f"{host} in {f['in_share']:.0%} out {f['out_share']:.0%} idle {f['idle_s']:.1f} s "
        f"(busy from {f['busy_from_s'] or 0:.1f} to {f['busy_to_s'] or 0:.1f} s, "
        f"idle {f['gap_s'] or 0:.1f} s between)"
        for host, f in links.items()
    )
