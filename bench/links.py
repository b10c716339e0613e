"""`--only links`: the relay across rate-limited links between three network namespaces (netns.py).

upload's agent runs in the upload namespace, download's in download's, central's (and central's
sshd) in central's; each hop crosses one link of --links-rate-mbit. The baseline is one direct hop at
the same rate: a plain ``rsync -a`` from the upload namespace to central's sshd. With the links
slower than the CPUs, as between real hosts, a relay that overlaps its two hops should take about
the time of one (target <= 1.1×). Cases: one file of --links-big-mb MiB, and --links-files files of
--links-file-mb MiB. Each run writes into a fresh file system (--fs), as the other scenarios do.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import linkuse
import netns

from synkler.devkit.sshd import LocalSshd


def run(bench: Any) -> dict[str, Any]:
    """Run the cases on `bench` (a relay_bench.Bench), or return {"skipped": why}."""
    rb = sys.modules[type(bench).__module__]  # relay_bench, which runs as __main__

    why = netns.missing()
    if why:
        rb.say(f"  links: SKIPPED: {why}")
        return {"skipped": why}
    args = bench.args
    port = int(args.broker.rpartition(":")[2])
    out: dict[str, Any] = {"rate_mbit": args.links_rate_mbit, "cases": []}
    with netns.Topology(args.links_rate_mbit, port) as topo:
        out["namespaces"] = topo.ns
        sshd = LocalSshd(bench.root / "sshd-links")
        sshd.host = netns.CENTRAL_ADDR  # listens, and is known, at central's address
        with bench.cpu.inside("sshd"), netns.inside(topo.ns["central"]):
            sshd.start()

        @contextlib.contextmanager
        def place(role: str) -> Iterator[None]:
            with netns.inside(topo.ns[role]):
                yield

        saved = bench.sshd, bench.place
        bench.sshd, bench.place = sshd, place
        try:
            out["cases"] = cases(bench, rb, topo)
        finally:
            bench.sshd, bench.place = saved
            sshd.stop()
    return out


def cases(bench: Any, rb: Any, topo: netns.Topology) -> list[dict[str, Any]]:
    """The big file and the mid-sized files, each relayed --repeat times across the links."""
    args = bench.args
    found: list[dict[str, Any]] = []
    mib = 1 << 20
    for label, count, size in (
        ("links-big", 1, args.links_big_mb * mib),
        ("links-mixed", args.links_files, args.links_file_mb * mib),
    ):
        src = bench.root / f"{label}-src"
        rb.say(f"  {label}: writing {count} × {rb.size_text(size)} of random data")
        md5s = rb.make_files(src, f"{label}-", count, size)
        runs = [
            bench.bulk_once(
                f"{label}-{i + 1}" if args.repeat > 1 else label,
                src,
                md5s,
                size,
                verify_all=True,
                sampled=False,
                watch=Watch(topo, args.links_rate_mbit, rb.say),
            )
            for i in range(args.repeat)
        ]
        found.append({"case": label, **rb.summarize(runs, count, size)})
        bench.discard(src)
    return found


class Watch:
    """What the two links carried while a relay ran (linkuse, sampled at central's ends of them), and
    the most dirty page-cache data the machine held meanwhile (/proc/meminfo Dirty + Writeback).

    Why: in the quiet run of 2026-12-08 the 1 GiB push stalled for 3.5-4.5 s about 35 s in, when
    central's file held 1.0 GB (the early pulls show central's file not growing), and the direct hop
    over the same link did not. Central's and download's copies are written into one loop-mounted
    file system, so the relay holds twice the direct hop's dirty data against the one machine's
    limits (nr_dirty_background_threshold was 1.9 GB): `idle between` on upload's link says whether
    the push stalled, `dirty peak` how close the writes came to those limits."""

    def __init__(self, topo: netns.Topology, rate_mbit: float, say: Callable[[str], None]):
        short = topo.short
        ends = {"upload's link": f"{short}cu", "download's link": f"{short}cd"}
        self.links = linkuse.LinkWatch(topo.ns["central"], ends, rate_mbit)
        self.say = say
        self.dirty_peak = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample_dirty, daemon=True)

    def around(self, put: Callable[[], None]) -> Callable[[], None]:
        """`put` (which starts the relay's clock), with the watch started just before it."""

        def start_and_put() -> None:
            self.links.start()
            self.thread.start()
            put()

        return start_and_put

    def _sample_dirty(self) -> None:
        while not self.stopped.wait(linkuse.INTERVAL):
            self.dirty_peak = max(self.dirty_peak, dirty_bytes())

    def stop(self) -> None:
        self.links.stop()
        self.stopped.set()
        if self.thread.ident is not None:
            self.thread.join()

    def report(self, label: str, seconds: float | None) -> dict[str, Any]:
        links = self.links.figures(seconds)
        self.say(f"  {label}: {text(links)}")
        self.say(f"  {label}: dirty data peak {self.dirty_peak / 1e6:.0f} MB (Dirty + Writeback)")
        return {"links": links, "dirty_peak_mb": self.dirty_peak / 1e6}


def dirty_bytes() -> int:
    """The machine's dirty and under-writeback page-cache data, bytes."""
    found = 0
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Dirty", "Writeback"):
                found += int(value.split()[0]) * 1024
    return found


def text(links: dict[str, dict[str, Any]]) -> str:
    """One line: the share of its rate each link carried (the way the data went) and how long it
    carried next to nothing between its first and last busy interval (a stall of the hop)."""
    return "; ".join(
        f"{name} carried {max(f['in_share'] or 0, f['out_share'] or 0):.0%} of its rate, busy from "
        f"{f['busy_from_s'] or 0:.1f} to {f['busy_to_s'] or 0:.1f} s, idle {f['gap_s'] or 0:.1f} s between"
        for name, f in links.items()
    )
