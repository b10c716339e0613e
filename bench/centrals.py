"""`--only centrals`: throughput of a pool of one, two, three … centrals (issue 25), each central a
host of its own with a rate-limited link (netns_star.py): does capacity add up?

upload's agent runs in the upload namespace, download's in download's, central number i's agent and
its sshd in central-i's. Every central's link is limited to --centrals-rate-mbit (40 Mbit/s: the
relay spends about 0.025 CPU-s per MB, so three such links, 15 MB/s, need 0.4 of a core of this
shared two-core machine, and the links, not the CPUs, set the pace); upload's and download's links
are not limited, since they carry the sum of every central's traffic. The number of entries counts
more than their size: a central holds up to 8 entries being pushed or verified, which cost the same
time whatever the number of centrals (relay_table.TARGET_CENTRALS_ADDED), so the default is many
(100 × 4 MiB). The same --centrals-files files of --centrals-file-mb MiB
are relayed with each pool size in --centrals, one after another, --repeat times (each repetition
all sizes in turn, so that a change of the machine's load meets every size alike). Every relay is a
pool (`centrals` at upload and download, `uploads` at each central), also that of one central, and
writes into a fresh file system (--fs) as the other scenarios do. The figure: MB/s (10^6 bytes) from
the moment the files appear at upload to the last one recorded done at download, and its ratio to
one central's in the same repetition.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import linkuse
import netns
import netns_star
import yaml
from linkuse import LinkWatch
from relay_data import link_into, make_files
from relay_probes import BenchError, close_all, readers

from synkler.devkit.localrelay import LocalRelay
from synkler.devkit.sshd import LocalSshd

SSH_PORT = 22  # every central's sshd, each in its own namespace: one ssh command line reaches all
KEY_FILES = ("ssh_host_ed25519_key", "id_ed25519")


def run(bench: Any) -> dict[str, Any]:
    """Run the pool sizes on `bench` (a relay_bench.Bench), or return {"skipped": why}."""
    rb = sys.modules[type(bench).__module__]  # relay_bench, which runs as __main__
    why = netns.missing() or netns_star.missing_bridge()
    if why:
        rb.say(f"  centrals: SKIPPED: {why}")
        return {"skipped": why}
    args = bench.args
    size, count = args.centrals_file_mb << 20, args.centrals_files
    out: dict[str, Any] = {
        "rate_mbit": args.centrals_rate_mbit,
        "edge_mbit": None,
        "max_transfers": args.centrals_transfers,
        "files": count,
        "file_bytes": size,
        "total_bytes": count * size,
        "runs": [],
    }
    port = int(args.broker.rpartition(":")[2])
    src = bench.root / "centrals-src"
    rb.say(f"  centrals: writing {count} × {rb.size_text(size)} of random data")
    md5s = make_files(src, "centrals-", count, size)
    with netns_star.Star(max(args.centrals), args.centrals_rate_mbit, port) as star:
        out["namespaces"] = star.ns
        sshds = start_sshds(bench, star)
        saved = bench.sshd, bench.place
        bench.sshd, bench.place = sshds[0], placer(star)
        try:
            for rep in range(args.repeat):
                for n in args.centrals:
                    label = f"centrals-{n}" + (f"-{rep + 1}" if args.repeat > 1 else "")
                    out["runs"].append({"centrals": n, **pool_once(bench, rb, star, label, n, src, md5s)})
        finally:
            bench.sshd, bench.place = saved
            for sshd in sshds:
                sshd.stop()
    bench.discard(src)
    out["cases"] = cases(out["runs"], out["total_bytes"], args.centrals_rate_mbit)
    for case in out["cases"]:
        rb.say(
            f"  centrals: {case['centrals']}: {case['mb_per_s']:.1f} MB/s, "
            f"{case['link_share']:.0%} of the links, {case['ratio']:.2f}× one central"
        )
    return out


def start_sshds(bench: Any, star: netns_star.Star) -> list[LocalSshd]:
    """One sshd per central, in its namespace at its address, all on SSH_PORT with the same keys; the
    first one's known_hosts names every one of them (the relay's ssh command line is the first's)."""
    sshds: list[LocalSshd] = []
    try:
        for host in star.hosts[2:]:
            sshd = LocalSshd(bench.root / f"sshd-{host}", port=SSH_PORT)
            sshd.host = star.addr[host]
            if sshds:  # the same host and client keys as the first
                sshd.workdir.mkdir(parents=True)
                for name in KEY_FILES:
                    for suffix in ("", ".pub"):
                        shutil.copy2(sshds[0].workdir / f"{name}{suffix}", sshd.workdir / f"{name}{suffix}")
            with bench.cpu.inside("sshd"), netns.inside(star.ns[host]):
                sshd.start()
            sshds.append(sshd)
    except BaseException:
        for sshd in sshds:
            sshd.stop()
        raise
    sshds[0].known_hosts.write_text("".join(s.known_hosts.read_text() for s in sshds))
    return sshds


def placer(star: netns_star.Star) -> Any:
    """Runs.place for a pool: each agent key starts in its host's namespace (`central` is central-1)."""

    @contextlib.contextmanager
    def place(key: str) -> Iterator[None]:
        with netns.inside(star.ns["central-1" if key == "central" else key]):
            yield

    return place


def make_pool(
    relay: LocalRelay, n: int, sshd: LocalSshd, star: netns_star.Star, max_transfers: int | None
) -> list[str]:
    """Make `relay` a pool of `n` centrals (keys central, central-2 …, named central-1 …), with upload's
    and download's `max_transfers` if given: the agent keys of its centrals."""
    keys = ["central", *(f"central-{i}" for i in range(2, n + 1))]
    centrals = {f"central-{i}": f"{sshd.user}@{star.addr[f'central-{i}']}" for i in range(1, n + 1)}
    for i, key in enumerate(keys, 1):
        pool = {"name": f"central-{i}", "uploads": ["upload"]}
        if key == "central":
            amend(relay, key, pool)
        else:
            relay.add_agent(key, "central", pool)
    transfers = {"max_transfers": max_transfers} if max_transfers else {}
    for side in ("upload", "download"):
        amend(relay, side, {"centrals": centrals, **transfers})
    return keys


def amend(relay: LocalRelay, key: str, changes: dict[str, Any]) -> None:
    """Add `changes` to the configuration of agent `key`, as new_relay wrote it."""
    path = relay.configs[key]
    cfg = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**cfg, **changes}, sort_keys=False))


def pool_once(
    bench: Any, rb: Any, star: netns_star.Star, label: str, n: int, src: Path, md5s: dict[str, str]
) -> dict[str, Any]:
    """One relay of the files in `src` through a fresh pool of `n` centrals: its figures (relay_side's),
    and how many entries each central took."""
    size = bench.args.centrals_file_mb << 20
    data = (len(md5s) * size, len(md5s))
    with bench.fresh(f"relay-{label}", *data) as where:
        relay = bench.new_relay(label, where)
        keys = make_pool(relay, n, bench.sshd, star, bench.args.centrals_transfers)
        state = readers(relay)
        try:
            bench.start(relay)
            put = link_into(sorted(src.iterdir()), relay.dirs["upload"])
            bench.rest()
            hosts = star.hosts[2 : 2 + n]
            watch = LinkWatch(
                star.ns["switch"], {h: star.far[h] for h in hosts}, bench.args.centrals_rate_mbit
            )
            try:
                figures = bench.relay_side(
                    relay, state, label, watched(put, watch), md5s, size, True, False, None
                )
            finally:
                watch.stop()
            links = watch.figures(figures.get("relay_s"))
            rb.say(f"  {label}: each central's link (share of its rate, in and out): {linkuse.text(links)}")
            taken = {key: len(state[key].names("delivered") | state[key].names("expired")) for key in keys}
            rb.say(f"  {label}: entries taken by each central: {taken}")
            if sum(taken.values()) < len(md5s):
                raise BenchError(f"{label}: the centrals delivered {sum(taken.values())} of {len(md5s)}")
            return {**figures, "taken": list(taken.values()), "links": links}
        finally:
            close_all(state)
            bench.finish(relay)


def watched(put: Any, watch: LinkWatch) -> Any:
    """`put`, which starts the clock of a relay, with the links watched from then on."""

    def start_and_put() -> None:
        watch.start()
        put()

    return start_and_put


def cases(runs: list[dict[str, Any]], total: int, rate_mbit: float) -> list[dict[str, Any]]:
    """Per pool size: the medians of its runs, MB/s, the share of its links' rate it used, and its
    ratio to one central, median and per repetition (each against one central's run of the same
    repetition)."""
    sizes = sorted({r["centrals"] for r in runs})
    ones = [r for r in runs if r["centrals"] == 1]
    out = []
    for n in sizes:
        mine = [r for r in runs if r["centrals"] == n]
        relay_s = statistics.median(r["relay_s"] for r in mine)
        cpu = [r["relay_cpu"]["total_s"] for r in mine if r.get("relay_cpu")]
        machine = [r["cpu"]["machine_s"] for r in mine]
        ratios = [one["relay_s"] / r["relay_s"] for one, r in zip(ones, mine)]
        mb_per_s = total / 1e6 / relay_s
        out.append(
            {
                "centrals": n,
                "relay_s": relay_s,
                "mb_per_s": mb_per_s,
                "link_share": mb_per_s / (n * rate_mbit / 8),
                "ratio": statistics.median(r["relay_s"] for r in ones) / relay_s,
                "ratios": ratios,
                "relay_cpu_s": statistics.median(cpu) if cpu else None,
                "machine_cpu_s": statistics.median(machine),
                "taken": [r["taken"] for r in mine],
            }
        )
    return out
