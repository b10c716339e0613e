"""A second agent of a role beside a LocalRelay's first: from a copy of its config, with a pidfile and
a state_db of its own (as on another host), and the same file_dir unless told otherwise. It waits
as a standby while the first lives (tests/e2e/test_one_agent.py, test_standby_takeover.py, the
edges fault case)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from synkler.state import Entry, State


def start_second(
    relay, role: str, place: str = "2", **changes: object
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start it in <workdir>/<role>-<place>/ (its config, pidfile, state and agent.log); `changes`
    are set in its config. (its process, its log)"""
    base = relay.workdir / f"{role}-{place}"
    base.mkdir()
    cfg = yaml.safe_load(relay.configs[role].read_text())
    cfg.update(pidfile=str(base / "synkler.pid"), state_db=str(base / "state.sqlite"), **changes)
    conf = base / "synkler.conf"
    conf.write_text(yaml.safe_dump(cfg))
    log_path = base / "agent.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "synkler", "-c", str(conf), "-v", "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    return proc, log_path


@contextmanager
def second_agent(
    relay, role: str, place: str = "2", **changes: object
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """start_second, and the agent stopped (SIGTERM, SIGKILL after 30 s) when the block ends."""
    proc, log_path = start_second(relay, role, place, **changes)
    try:
        yield proc, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def second_entries(relay, role: str, place: str = "2") -> list[Entry]:
    """The second agent's entries (none before it made its state database)."""
    path = relay.workdir / f"{role}-{place}" / "state.sqlite"
    if not path.exists():
        return []
    state = State(path, readonly=True)
    try:
        return state.all()
    finally:
        state.close()
