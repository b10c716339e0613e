"""Looking at a running relay's agents from outside, as relay_bench.py measures them: their state
databases read-only, their CPU time and memory from /proc, the rsync processes they run, and the
machine the figures were measured on."""

from __future__ import annotations

import datetime
import os
import platform
import sqlite3
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import synkler
from synkler.config import Config, load_config
from synkler.devkit.localrelay import LocalRelay

SAMPLE_S = 0.05  # how often the concurrency sampler looks at rsync processes and states


class BenchError(Exception):
    """Something is wrong with the relay or the data: the run must fail (exit 1), not just report."""


class StateReader:
    """Cheap read-only queries on one agent's state database, on one kept-open connection.

    LocalRelay.entries() opens the database and builds every row for each call; polling 2,000 entries
    that way every few milliseconds would load the machine we are measuring. A read-only connection in
    autocommit mode sees each new commit at its next query.
    """

    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None and self.path.exists():
            self._db = sqlite3.connect(
                self.path.absolute().as_uri() + "?mode=ro", uri=True, isolation_level=None
            )
            self._db.execute("PRAGMA busy_timeout=5000")
        return self._db

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        db = self._conn()
        if db is None:
            return []
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # the agent may be creating the schema right now
            return []

    def count(self, *states: str) -> int:
        marks = ", ".join("?" * len(states))
        rows = self.query(f"SELECT COUNT(*) FROM entries WHERE state IN ({marks})", states)
        return int(rows[0][0]) if rows else 0

    def names(self, state: str) -> set[str]:
        return {r[0] for r in self.query("SELECT name FROM entries WHERE state = ?", (state,))}

    def row(self, name: str) -> tuple[str, str | None, float] | None:
        """(state, stored_as, updated) of the latest entry called `name`, or None."""
        rows = self.query(
            "SELECT state, stored_as, updated FROM entries WHERE name = ? ORDER BY created DESC LIMIT 1",
            (name,),
        )
        return (rows[0][0], rows[0][1], float(rows[0][2])) if rows else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def agent_config(relay: LocalRelay, role: str) -> Config:
    """The checked configuration the agent of `role` runs with: effective values, defaults applied."""
    return load_config(relay.configs[role], check_dirs=False)


def readers(relay: LocalRelay) -> dict[str, StateReader]:
    """One StateReader per agent (the roles, and a pool's other centrals by their keys; connections
    open lazily, once the agent has made its database)."""
    return {key: StateReader(agent_config(relay, key).state_db) for key in relay.modes}


def close_all(state: dict[str, StateReader]) -> None:
    for reader in state.values():
        reader.close()


def proc_stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces): [0] is field 3."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process itself."""
    return cpu_split(pid)[0]


def cpu_split(pid: int) -> tuple[float, float]:
    """(own, reaped children's) user + system CPU seconds: fields 14+15 and 16+17 (cutime, cstime).

    An agent's children are the rsync and ssh clients of its transfers and its cleanup scripts; their
    time shows once they have exited and been waited for.
    """
    fields = proc_stat_fields(pid)
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent not idle (first line of /proc/stat, idle + iowait out)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(relay: LocalRelay) -> dict[str, Any]:
    return {
        "machine": machine_busy_seconds(),
        **{role: cpu_split(proc.pid) for role, proc in relay.procs.items()},
    }


def cpu_used(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds spent between two snapshots: per agent (itself, its children) and by the whole machine."""
    used: dict[str, Any] = {"machine_s": after["machine"] - before["machine"]}
    for role in (key for key in after if key != "machine"):  # every agent: a pool has more centrals
        used[role] = {
            "agent_s": after[role][0] - before[role][0],
            "children_s": after[role][1] - before[role][1],
        }
    return used


def cpu_text(cpu: dict[str, float] | None, local: str = "rsync+ssh", *keys: str) -> str:
    """', CPU 1.23 s (rsync+ssh 0.60, sshd side 0.63)' for a progress line, or '' without accounting."""
    if not cpu:
        return ""
    a, b = keys or ("local_s", "remote_s")
    return f", CPU {cpu['total_s']:.2f} s ({local} {cpu[a]:.2f}, sshd side {cpu[b]:.2f})"


def rss_mb(pid: int) -> float:
    """Resident set size (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def rsync_children(parents: dict[int, str]) -> dict[str, int]:
    """How many rsync processes each agent has running right now, by role.

    Only direct children of the agents count: the rsync that a transfer worker started. That skips the
    ssh it runs, the second rsync process a receiving client forks, and the rsync --server processes
    under sshd, all of which would make one transfer look like two or three.
    """
    counts = dict.fromkeys(parents.values(), 0)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if text[text.find("(") + 1 : text.rfind(")")] != "rsync":
            continue
        role = parents.get(int(text[text.rfind(")") + 2 :].split()[1]))
        if role is not None:
            counts[role] += 1
    return counts


class ConcurrencySampler(threading.Thread):
    """Samples, every SAMPLE_S, the transfers running at once, to show whether hops run in parallel.

    Two views: rsync processes that the upload (push) and download (pull) agents have running, and the
    entries in state 'uploading' at upload plus 'fetching' at download (states also count entries
    waiting for a retry or for a free transfer slot, the processes only the ones really moving data).
    Only mixed runs it: each sample reads every /proc/<pid>/stat, about 0.4 CPU-s in a big relay,
    work that the direct rsync does not compete with.
    """

    def __init__(self, relay: LocalRelay):
        super().__init__(daemon=True)
        self.relay = relay
        self.stop_event = threading.Event()
        self.peak_push = self.peak_pull = self.peak_rsync = 0
        self.peak_uploading = self.peak_fetching = self.peak_states = 0
        self.both_hops_at_once = False
        self.samples = 0

    def run(self) -> None:
        parents = {proc.pid: role for role, proc in self.relay.procs.items()}
        # sqlite connections belong to the thread that made them: open ours here.
        state = readers(self.relay)
        try:
            while not self.stop_event.wait(SAMPLE_S):
                counts = rsync_children(parents)
                push, pull = counts.get("upload", 0), counts.get("download", 0)
                self.peak_push = max(self.peak_push, push)
                self.peak_pull = max(self.peak_pull, pull)
                self.peak_rsync = max(self.peak_rsync, push + pull)
                self.both_hops_at_once = self.both_hops_at_once or (push > 0 and pull > 0)
                up, down = state["upload"].count("uploading"), state["download"].count("fetching")
                self.peak_uploading = max(self.peak_uploading, up)
                self.peak_fetching = max(self.peak_fetching, down)
                self.peak_states = max(self.peak_states, up + down)
                self.samples += 1
        finally:
            close_all(state)

    def stop(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join()
        return {
            "peak_rsync": self.peak_rsync,
            "peak_push_rsync": self.peak_push,
            "peak_pull_rsync": self.peak_pull,
            "push_and_pull_at_once": self.both_hops_at_once,
            "samples": self.samples,
            "peak_states": self.peak_states,
            "peak_uploading": self.peak_uploading,
            "peak_fetching": self.peak_fetching,
        }


def machine() -> dict[str, Any]:
    """What the figures depend on, so a table can be read next to another machine's."""

    def first_line(argv: list[str]) -> str:
        try:
            run = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        lines = (run.stdout or run.stderr).strip().splitlines()
        return lines[0] if lines else "unknown"

    cpu = "unknown"
    mem_gb = 0.0
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        mem_gb = round(mem_kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    repo = Path(__file__).resolve().parent.parent
    commit = first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "mem_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rsync": first_line(["rsync", "--version"]),
        "ssh": first_line(["ssh", "-V"]),
        "synkler": synkler.__version__,
        "commit": commit,
        "loadavg": loadavg(),
    }


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was with work of others."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
