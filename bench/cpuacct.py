"""CPU time of whole process trees, through cgroup CPU accounting.

The CPU a side spends is not only its first process: the direct rsync runs ssh, and sshd forks a
session that runs ``rsync --server`` (which forks again to receive); an agent runs rsync and ssh, and
its ssh master connection (ControlPersist) leaves it and is adopted by init. Reaped children's times
(``cutime``) miss whatever was adopted or is still running. A cgroup counts every process started
inside it, wherever it is reparented, for as long as it runs. So the benchmark starts each side's
processes inside a group of its own (by moving itself in around the fork, and back out):

- ``sshd``: the private sshd and every session it forks (the remote side of each hop, both sides);
- ``direct``: the local rsync and ssh of a direct run;
- ``agents``: the three agents and everything they start.

Uses cgroup v1 ``cpuacct`` (``cpuacct.usage``) or cgroup v2 (``cpu.stat`` ``usage_usec``), which
needs root. Without either, ``CpuGroups.available`` is False and no CPU figure is reported.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def _mounts() -> list[tuple[str, str, str]]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.append((parts[1], parts[2], parts[3]))
    return out


def find_hierarchy() -> tuple[str, Path, Path] | None:
    """(version, mount point, our own group in it) of a CPU-accounting hierarchy, or None."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _num, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            own[c] = path
    for point, fstype, options in _mounts():
        if fstype == "cgroup" and "cpuacct" in options.split(","):
            return "v1", Path(point), Path(point) / own.get("cpuacct", "/").lstrip("/")
    for point, fstype, _options in _mounts():
        if fstype == "cgroup2":
            return "v2", Path(point), Path(point) / own.get("", "/").lstrip("/")
    return None


class Group:
    def __init__(self, version: str, path: Path):
        self.version = version
        self.path = path

    def seconds(self) -> float:
        """CPU seconds (user + system) of every process that ever ran in the group."""
        if self.version == "v1":
            return int((self.path / "cpuacct.usage").read_text()) / 1e9
        for line in (self.path / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return 0.0


class CpuGroups:
    """Groups under one parent of our own, removed by close()."""

    def __init__(self) -> None:
        self.available = False
        self.why = ""
        self.groups: dict[str, Group] = {}
        found = find_hierarchy() if os.geteuid() == 0 else None
        if found is None:
            self.why = "no CPU accounting: needs root and a cgroup cpuacct (v1) or cgroup2 hierarchy"
            return
        self.version, mount, self.home = found
        self.base = mount / f"synkler-bench-{uuid.uuid4().hex[:8]}"
        try:
            self.base.mkdir()
            self.available = True
        except OSError as e:
            self.why = f"no CPU accounting: cannot make a cgroup under {mount}: {e}"

    def group(self, name: str) -> Group:
        if name not in self.groups:
            path = self.base / name
            path.mkdir(exist_ok=True)
            self.groups[name] = Group(self.version, path)
        return self.groups[name]

    def seconds(self, name: str) -> float | None:
        return self.group(name).seconds() if self.available else None

    @contextlib.contextmanager
    def inside(self, name: str) -> Iterator[None]:
        """Run the body (which starts processes) with this process in group `name`, then move back."""
        if not self.available:
            yield
            return
        target = self.group(name).path / "cgroup.procs"
        target.write_text(str(os.getpid()))
        try:
            yield
        finally:
            (self.home / "cgroup.procs").write_text(str(os.getpid()))

    def close(self, wait_s: float = 10.0) -> None:
        """Remove the groups (once their processes are gone; waits up to `wait_s` for stragglers)."""
        if not self.available:
            return
        deadline = time.monotonic() + wait_s
        for group in self.groups.values():
            while True:
                try:
                    group.path.rmdir()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
        try:
            self.base.rmdir()
        except OSError:
            pass
        self.available = False
