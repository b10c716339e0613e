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
from collections.abc import Iterator
from typing import Any

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
            out["cases"] = cases(bench, rb)
        finally:
            bench.sshd, bench.place = saved
            sshd.stop()
    return out


def cases(bench: Any, rb: Any) -> list[dict[str, Any]]:
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
            )
            for i in range(args.repeat)
        ]
        found.append({"case": label, **rb.summarize(runs, count, size)})
        bench.discard(src)
    return found
