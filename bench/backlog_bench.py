#!/usr/bin/env python3
"""synkler with a big backlog: what 100,000 entries on their way cost `status` and an idle agent.

Upload's state database gets `--entries` entries in `sent` (pushed, hashed, waiting for central's
verdict), central's as many in `downloading` (stored, waiting for download to fetch them), through
synkler's own State API, one transaction each. Then, on a local relay (the three agents as real
processes, the local RabbitMQ, a private sshd; synkler.devkit.localrelay):

- an idle agent: CPU% of each agent over `--idle-seconds` (utime + stime from /proc/PID/stat), the
  presence report every 5 s included;
- `synkler status`, `status --json` (upload and central) and `status --relay --json`, the median of
  `--status-runs` runs each, as subprocesses: wall time, and CPU time (user + system, which
  says more on a shared machine), beside `synkler --version` (Python's and synkler's start-up);
- in-process: one presence report of each backlogged agent (synkler.observe.presence), its median.

    .venv/bin/python bench/backlog_bench.py                          # 100,000 entries, about 2 minutes
    .venv/bin/python bench/backlog_bench.py --entries 20000 --idle-seconds 10   # quicker
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synkler.agents.central import Mid
from synkler.agents.upload import Up
from synkler.config import load_config
from synkler.devkit.localrelay import ROLES, LocalRelay
from synkler.devkit.sshd import LocalSshd
from synkler.observe.presence import Presence
from synkler.state import Entry, State

BACKLOG = {"upload": Up.SENT, "central": Mid.DOWNLOADING}
PEER = {"upload": "central", "central": "upload"}


def say(text: str) -> None:
    print(text, flush=True)


def build(db: Path, role: str, count: int) -> float:
    """`count` entries on their way, one a second going back in time. Seconds it took."""
    started = time.monotonic()
    state = State(db)
    now = time.time()
    try:
        with state.transaction():
            for i in range(count):
                name = f"run-{i:07d}.dat"
                eid = uuid.uuid4().hex
                state.insert(
                    Entry(
                        id=eid,
                        name=name,
                        kind="file",
                        md5=hashlib.md5(name.encode()).hexdigest(),
                        state=BACKLOG[role],
                        size=4096 + i % 1000,
                        files=1,
                        peer=PEER[role],
                        attempt=1,
                        path=f"/srv/synkler/bench/{eid}",
                        signature=hashlib.md5(eid.encode()).hexdigest() if role == "upload" else None,
                        created=now - 3600 - (count - i),
                    )
                )
    finally:
        state.close()
    return time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle(relay: LocalRelay, seconds: float) -> dict[str, float]:
    """CPU% (utime + stime over the window) of each agent."""
    pids = {role: relay.procs[role].pid for role in ROLES}
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    out = {}
    for role, pid in pids.items():
        if not relay.alive(role):
            raise RuntimeError(f"{role} agent died\n{relay.log_tail(role)}")
        out[role] = 100 * (cpu_seconds(pid) - before[role]) / elapsed
    return out


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], runs: int) -> dict[str, float]:
    """The median wall time and CPU time (user + system) of `runs` runs of a command (which must
    succeed): on a shared machine the CPU time says more of the command's own cost."""
    walls, cpus = [], []
    for _ in range(runs):
        started, cpu = time.monotonic(), children_cpu()
        run = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        walls.append(time.monotonic() - started)
        cpus.append(children_cpu() - cpu)
        if run.returncode != 0:
            raise RuntimeError(f"{argv}: {run.returncode} {run.stderr}")
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def status_times(relay: LocalRelay, runs: int) -> dict[str, dict[str, float]]:
    exe = Path(sys.executable).parent / "synkler"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "synkler"]
    out: dict[str, dict[str, float]] = {
        "synkler --version (start-up alone)": timed([*base, "--version"], runs)
    }
    for role in BACKLOG:
        conf = ["-c", str(relay.configs[role])]
        out[f"{role} status"] = timed([*base, *conf, "status"], runs)
        out[f"{role} status --json"] = timed([*base, *conf, "status", "--json"], runs)
    out["status --relay --json"] = timed(
        [*base, "-c", str(relay.configs["upload"]), "status", "--relay", "--json"], runs
    )
    return out


class Runner:
    """What a presence report is made of, without a broker."""

    transfers = 0
    broker = None

    def __init__(self, cfg: Any, state: State):
        self.cfg, self.state = cfg, state


def report_time(relay: LocalRelay, role: str, runs: int = 5) -> float:
    from synkler.agents import AGENTS

    cfg = load_config(relay.configs[role])
    state = State(cfg.state_db, readonly=True)
    try:
        presence = Presence(Runner(cfg, state), role, [str(s) for s in AGENTS[role].STATES])
        times = []
        for _ in range(runs):
            started = time.monotonic()
            presence.report(time.time())
            times.append(time.monotonic() - started)
    finally:
        state.close()
    return statistics.median(times)


def run(args: argparse.Namespace, root: Path, sshd: LocalSshd) -> dict[str, Any]:
    results: dict[str, Any] = {}
    relay = LocalRelay(root / "relay", sshd, f"backlog-{uuid.uuid4().hex[:8]}")
    try:
        say(f"building {args.entries:,} entries on their way (upload, central):")
        results["build_s"] = {
            role: build(relay.workdir / role / "state.sqlite", role, args.entries) for role in BACKLOG
        }
        say("  " + ", ".join(f"{r} {s:.1f} s" for r, s in results["build_s"].items()))
        results["report_s"] = {role: report_time(relay, role) for role in BACKLOG}
        say(
            "  one presence report: "
            + ", ".join(f"{r} {s * 1000:.1f} ms" for r, s in results["report_s"].items())
        )
        for role in ROLES:
            relay.start(role)
        time.sleep(8)  # the start, the first passes and reports
        results["idle_cpu_pct"] = idle(relay, args.idle_seconds)
        say("  idle: " + ", ".join(f"{r} {v:.2f}%" for r, v in results["idle_cpu_pct"].items()))
        results["status_s"] = status_times(relay, args.status_runs)
        for what, t in results["status_s"].items():
            say(f"  {what}: {t['wall_s']:.2f} s ({t['cpu_s']:.2f} s CPU)")
        relay.stop()
    finally:
        relay.close()
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=100_000, help="entries on their way per role (100,000)")
    p.add_argument("--idle-seconds", type=float, default=30, help="idle measuring window (30)")
    p.add_argument("--status-runs", type=int, default=3, help="runs of each status command (3)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="synkler-backlog-"))
    started = time.monotonic()
    try:
        with LocalSshd(root / "sshd") as sshd:
            results = run(args, root, sshd)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["settings"] = vars(args) | {"nproc": os.cpu_count(), "took_s": time.monotonic() - started}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
