#!/usr/bin/env python3
"""synkler with a long history: what a million entries in each state database cost, and what pruning
them costs.

Each role's state database gets `--entries` finished entries (1,000,000), `--per-day` (10,000) a day
going back in time, as an agent that has relayed for a hundred days would have: upload `done`,
central `expired`, download `done`. Then, on a local relay (the three agents as real processes,
the local RabbitMQ, a private sshd; synkler.devkit.localrelay):

1. keep_history_days 0 (nothing pruned, the history as it is):
   - startup: from the start of `synkler run` until the agent says it is ready (READY=1 on
     `$NOTIFY_SOCKET`, as systemd hears it: connected, reconciled, about to make its first pass),
     with the full database and, for comparison, with an empty one;
   - an idle agent: CPU% and RSS over `--idle-seconds`;
   - `synkler status` and `status --json` (what they show by default: the entries on their way and
     the 50 newest finished), the median of `--status-runs`; `status --all` (every entry) once.
2. Pruning, in-process on the same databases with keep_history_days `--keep-days` (30):
   - one pass (what the main loop does at most once a second while there is a backlog): entries
     looked at and pruned, and its time with the commit;
   - the whole backlog, pass after pass with no pause between them: passes, time, entries a second;
   - the database file before and after (SQLite keeps the freed pages for reuse: no VACUUM).
3. An agent working through that backlog: the agents started on fresh copies of the databases with
   keep_history_days `--keep-days`; CPU% and the entries pruned over `--idle-seconds`.

    .venv/bin/python bench/history_bench.py                 # a million entries, about 8 minutes
    .venv/bin/python bench/history_bench.py --entries 100000 --idle-seconds 10   # quicker
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from synkler.agents import AGENTS
from synkler.agents.base import Key
from synkler.agents.history import PRUNE_AGAIN
from synkler.config import Config, load_config
from synkler.devkit.localrelay import ROLES, LocalRelay
from synkler.devkit.sshd import LocalSshd
from synkler.state import State

DAY = 86400.0
FINAL = {"upload": "done", "central": "expired", "download": "done"}
PEER = {"upload": "central", "central": "upload", "download": "central"}
COLUMNS = (
    "id, name, kind, size, files, md5, state, peer, attempt, tries, path, stored_as, signature, "
    "cleanup, reason, created, updated, due"
)


def say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------------------------------
# The databases


def build(db: Path, role: str, count: int, per_day: int) -> float:
    """`count` finished entries, `per_day` a day, the newest a minute old. Seconds it took."""
    started = time.monotonic()
    State(db).close()  # synkler's own schema and indexes
    add_entries(db, role, count, per_day, time.time() - 60)
    return time.monotonic() - started


def add_entries(db: Path, role: str, count: int, per_day: int, newest: float, first: int = 0) -> None:
    """Write `count` ended entries, `per_day` a day, the last one ending at `newest`."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # a benchmark's fixture, not an agent's commit
    step = DAY / per_day
    stored = f"/srv/synkler/bench/{'stored' if role == 'download' else 'staging/upload'}"
    sql = f"INSERT INTO entries ({COLUMNS}) VALUES ({', '.join('?' * 18)})"
    conn.execute("BEGIN")
    rows = []
    for i in range(first, first + count):
        eid = uuid.uuid4().hex
        name = f"run-{i:07d}.dat"
        ended = newest - (first + count - 1 - i) * step
        rows.append(
            (
                eid,
                name,
                "file",
                4096 + i % 1000,
                1,
                hashlib.md5(name.encode()).hexdigest(),
                FINAL[role],
                PEER[role],
                1,
                0,
                f"{stored}/{eid}" if role == "download" else stored,
                name,
                hashlib.md5(eid.encode()).hexdigest() if role == "upload" else None,
                None,
                None,
                ended - 5,
                ended,
                ended + 1800 if role == "central" else 0,
            )
        )
        if len(rows) == 20_000:
            conn.executemany(sql, rows)
            rows = []
    conn.executemany(sql, rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def db_pages(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        pragmas = ("page_size", "page_count", "freelist_count")
        size, pages, free = (conn.execute(f"PRAGMA {what}").fetchone()[0] for what in pragmas)
        return {"bytes": size * pages, "pages": pages, "free_pages": free}
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------
# The agents


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_timed(relay: LocalRelay, role: str, timeout: float = 120) -> float:
    """Start one agent; seconds until it says READY=1 on its $NOTIFY_SOCKET (as systemd would hear)."""
    path = relay.workdir / f"notify-{role}.sock"
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    os.environ["NOTIFY_SOCKET"] = str(path)
    try:
        started = time.monotonic()
        relay.start(role, flags=["-v"])
        while time.monotonic() - started < timeout:
            try:
                if b"READY=1" in sock.recv(4096):
                    return time.monotonic() - started
            except socket.timeout:
                pass
            if not relay.alive(role):
                raise RuntimeError(f"{role} agent died while starting\n{relay.log_tail(role)}")
        raise RuntimeError(f"{role} agent not ready within {timeout} s\n{relay.log_tail(role)}")
    finally:
        del os.environ["NOTIFY_SOCKET"]
        sock.close()
        path.unlink(missing_ok=True)


def idle(relay: LocalRelay, seconds: float) -> dict[str, dict[str, float]]:
    """CPU% (utime + stime over the window) and RSS at its end, of each agent."""
    pids = {role: relay.procs[role].pid for role in ROLES}
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    out = {}
    for role, pid in pids.items():
        if not relay.alive(role):
            raise RuntimeError(f"{role} agent died\n{relay.log_tail(role)}")
        used = cpu_seconds(pid) - before[role]
        out[role] = {"cpu_pct": 100 * used / elapsed, "cpu_s": used, "rss_mb": rss_mb(pid)}
    return out


def status_times(relay: LocalRelay, runs: int) -> dict[str, Any]:
    exe = Path(sys.executable).parent / "synkler"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "synkler"]
    out: dict[str, Any] = {}
    for label, extra in (("table", []), ("json", ["--json"])):
        per_role = {}
        for role in ROLES:
            times = []
            for _ in range(runs):
                started = time.monotonic()
                run = subprocess.run(
                    [*base, "-c", str(relay.configs[role]), "status", *extra],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                )
                times.append(time.monotonic() - started)
                if run.returncode != 0 or "older finished entries not shown" not in run.stderr:
                    raise RuntimeError(f"{role} status {extra}: {run.returncode} {run.stderr}")
            per_role[role] = statistics.median(times)
        out[label] = {"per_role_s": per_role, "max_s": max(per_role.values())}
    started = time.monotonic()
    run = subprocess.run(
        [*base, "-c", str(relay.configs["download"]), "status", "--all"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    out["all_download_s"] = time.monotonic() - started
    out["all_download_lines"] = run.stdout.count(b"\n") - 1
    return out


class NoJobs:
    """The runtime's side as pruning needs it: no job holds any entry."""

    transfers = 0
    stopping = False

    def busy(self, key: Key) -> bool:
        return False

    def submit(self, *args: Any) -> None:
        raise AssertionError("pruning submits no job")

    def wake(self) -> None:
        pass


def prune_in_process(cfg: Config, keep_days: float) -> dict[str, Any]:
    """One pass, then the whole backlog pass after pass, on the agent's own database."""
    cfg = replace(cfg, keep_history_days=keep_days)
    before = db_pages(cfg.state_db)
    state = State(cfg.state_db)
    try:
        agent = AGENTS[cfg.mode](cfg, state, NoJobs())
        total = state.count()
        now = time.time()
        cpu0, started = time.process_time(), time.monotonic()
        with state.transaction():
            first = agent.history.prune(now)
        one_pass = time.monotonic() - started
        passes, pruned = 1, first
        while True:
            agent.history.next_pass = 0
            with state.transaction():
                n = agent.history.prune(now)
            passes += 1
            pruned += n
            if n == 0 and agent.history.next_pass > now + PRUNE_AGAIN:
                break
        wall, cpu = time.monotonic() - started, time.process_time() - cpu0
        left = state.count()
    finally:
        state.close()
    after = db_pages(cfg.state_db)
    # New entries go into the pages the pruned ones freed: the file does not grow.
    refill = min(pruned, 100_000)
    add_entries(cfg.state_db, cfg.mode, refill, 10_000, time.time(), first=10_000_000)
    return {
        "entries": total,
        "first_pass": {"pruned": first, "s": one_pass},
        "backlog": {"pruned": pruned, "left": left, "passes": passes, "s": wall, "cpu_s": cpu},
        "per_second": pruned / wall if wall else 0.0,
        "db_before": before,
        "db_after": after,
        "refill": {"entries": refill, "db": db_pages(cfg.state_db)},
    }


def count(db: Path) -> int:
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, root: Path, sshd: LocalSshd) -> dict[str, Any]:
    results: dict[str, Any] = {}
    instance = f"histbench-{uuid.uuid4().hex[:8]}"
    relay = LocalRelay(root / "relay", sshd, instance, settings={r: {"keep_history_days": 0} for r in ROLES})
    try:
        dbs = {role: relay.workdir / role / "state.sqlite" for role in ROLES}
        cfgs = {role: load_config(relay.configs[role]) for role in ROLES}
        startup_empty(relay, dbs, results)
        build_history(args, dbs, results)
        idle_and_status(args, relay, results)
        prune_each(args, cfgs, results)
        agents_pruning(args, relay, dbs, results)
    finally:
        relay.close()
    return results


def startup_empty(relay: LocalRelay, dbs: dict[str, Path], results: dict[str, Any]) -> None:
    """Each agent's start with an empty state database (then the databases go)."""
    say("startup with an empty state database:")
    results["startup_empty_s"] = {role: start_timed(relay, role) for role in ROLES}
    say("  " + ", ".join(f"{r} {s:.2f} s" for r, s in results["startup_empty_s"].items()))
    relay.stop()
    for db in dbs.values():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)


def build_history(args: argparse.Namespace, dbs: dict[str, Path], results: dict[str, Any]) -> None:
    """Finished entries written into each role's database (a copy kept for agents_pruning)."""
    say(f"building {args.entries:,} finished entries per role ({args.per_day:,} a day):")
    results["build_s"] = {role: build(dbs[role], role, args.entries, args.per_day) for role in ROLES}
    for role in ROLES:
        shutil.copyfile(dbs[role], f"{dbs[role]}.orig")
    results["db"] = {role: db_pages(dbs[role]) for role in ROLES}
    say("  " + ", ".join(f"{r} {results['db'][r]['bytes'] / 2**20:.0f} MiB" for r in ROLES))


def idle_and_status(args: argparse.Namespace, relay: LocalRelay, results: dict[str, Any]) -> None:
    """With keep_history_days 0 (nothing pruned): the agents' start, their idle CPU and memory, and
    the status commands."""
    say("keep_history_days 0: startup, idle agents, status")
    results["startup_s"] = {role: start_timed(relay, role) for role in ROLES}
    say("  startup: " + ", ".join(f"{r} {s:.2f} s" for r, s in results["startup_s"].items()))
    time.sleep(2)  # the first passes and scans
    results["idle"] = idle(relay, args.idle_seconds)
    shown = [f"{r} {v['cpu_pct']:.2f}% {v['rss_mb']:.0f} MiB" for r, v in results["idle"].items()]
    say("  idle: " + ", ".join(shown))
    results["status"] = status_times(relay, args.status_runs)
    st = results["status"]
    say(
        f"  status {st['table']['max_s']:.2f} s, status --json {st['json']['max_s']:.2f} s "
        "(slowest role); "
        f"status --all (download, {st['all_download_lines']:,} lines) {st['all_download_s']:.1f} s"
    )
    relay.stop()


def prune_each(args: argparse.Namespace, cfgs: dict[str, Config], results: dict[str, Any]) -> None:
    """Pruning in this process, role by role: one pass, the whole backlog, and the file after."""
    say(f"pruning in-process, keep_history_days {args.keep_days:g}:")
    results["prune"] = {}
    for role in ROLES:
        p = results["prune"][role] = prune_in_process(cfgs[role], args.keep_days)
        say(
            f"  {role}: one pass pruned {p['first_pass']['pruned']} in "
            f"{p['first_pass']['s'] * 1000:.1f} ms; "
            f"the backlog of {p['backlog']['pruned']:,} in {p['backlog']['passes']} passes, "
            f"{p['backlog']['s']:.1f} s ({p['per_second']:,.0f}/s); {p['backlog']['left']:,} left; "
            f"file {p['db_before']['bytes'] / 2**20:.0f} MiB, "
            f"{p['db_after']['free_pages']:,} pages free after; "
            f"{p['refill']['entries']:,} new entries: file {p['refill']['db']['bytes'] / 2**20:.0f} MiB, "
            f"{p['refill']['db']['free_pages']:,} pages free"
        )


def agents_pruning(
    args: argparse.Namespace, relay: LocalRelay, dbs: dict[str, Path], results: dict[str, Any]
) -> None:
    """The agents started on the full databases with keep_history_days set: what they prune while
    idle, and at what CPU."""
    say(f"agents working through that backlog (keep_history_days {args.keep_days:g}):")
    for role in ROLES:
        for suffix in ("-wal", "-shm"):
            Path(f"{dbs[role]}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(f"{dbs[role]}.orig", dbs[role])
        relay.write_config(role, {"keep_history_days": args.keep_days})
    results["startup_pruning_s"] = {role: start_timed(relay, role) for role in ROLES}
    before = {role: count(dbs[role]) for role in ROLES}
    results["pruning_agents"] = idle(relay, args.idle_seconds)
    for role in ROLES:
        results["pruning_agents"][role]["pruned"] = before[role] - count(dbs[role])
    say(
        "  "
        + ", ".join(
            f"{r} {v['cpu_pct']:.2f}% CPU, {v['pruned']:,} pruned in {args.idle_seconds:g} s"
            for r, v in results["pruning_agents"].items()
        )
    )
    relay.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=1_000_000, help="finished entries per role (1,000,000)")
    p.add_argument("--per-day", type=int, default=10_000, help="entries a day, going back in time (10,000)")
    p.add_argument("--keep-days", type=float, default=30, help="keep_history_days for the pruning parts (30)")
    p.add_argument("--idle-seconds", type=float, default=30, help="idle measuring window (30)")
    p.add_argument("--status-runs", type=int, default=3, help="runs of each status command per role (3)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--keep", action="store_true", help="keep the working directory under /tmp")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="synkler-history-"))
    started = time.monotonic()
    try:
        with LocalSshd(root / "sshd") as sshd:
            results = run(args, root, sshd)
    finally:
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    results["settings"] = vars(args) | {"nproc": os.cpu_count(), "took_s": time.monotonic() - started}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
