"""What every scenario of relay_bench.py does with a relay: make one (in a fresh file system),
start it, wait until it has delivered, stop it; and the baseline it is measured against, a direct
rsync over ssh of the same data to the same sshd."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from cpuacct import CpuGroups
from freshfs import FreshFs
from relay_args import bundled
from relay_probes import BenchError, StateReader, agent_config

from synkler.devkit.localrelay import ROLES, LocalRelay
from synkler.devkit.sshd import LocalSshd

# After all three agents have logged "connected to broker" they still finish their start (first scan,
# first tick, imports done lazily); measuring only after this quiet time keeps start-up work out of
# the idle figures and the baseline rsync from competing with it.
QUIET_AFTER_CONNECT_S = 2.0
# --quiet: seconds of rest before each timed direct rsync and each timed relay. On a virtual machine
# whose host takes back the memory the guest frees (free page reporting, within a few seconds),
# the first touch of such a page costs a fault in the host: here, touching 4 GiB took 11.6 s cold
# and 2.3 s right after another process had freed it. Without the rest, a run that starts right
# after another deleted its copy writes into warm pages, which the relay's second copy never
# gets; after it, every timed run starts from the same memory. The rest begins with a sync, so
# that no run pays for writing back the data of the one before it: with it, the big relay took
# 7.30-7.47 s, against 7.54-7.99 s without, in runs ten minutes apart.
# Deleting many files shortly before a timed run slows that run down on ext4 without a journal (as
# on this machine): ext4 then avoids reusing an inode freed less than 60 s ago (up to 6 min while
# its inode table block is not yet written back), and each new file's inode search steps over
# every such inode. Measured here: a direct rsync of 2,000 files took 0.52 s with no recent
# deletion, and 1.38 s when 2,000 files had been deleted 2 s before. Deleting the direct copy just
# before the relay made the relay pay for it. So a directory holding more than this many files
# stays until the end of the run (all under one root); big files, few inodes and much disk, go at
# once. (The sync before each rest, see Runs.rest, also ends the 6-minute window of earlier ones.)
DELETE_AT_ONCE_MAX_FILES = 64
PROGRESS_S = 10.0  # how often a long wait prints how far it got
CONNECT_TIMEOUT_S = 30.0


class DeliveryTimeout(Exception):
    """A relay given a time limit of its own (scale) did not deliver everything in it: a figure
    (how far it got), not a failure."""

    def __init__(self, waited: float):
        super().__init__(f"not delivered after {waited:.0f} s")
        self.waited = waited
        self.done = 0


def say(text: str) -> None:
    print(text, flush=True)


def _no_files(directory: str, names: list[str]) -> list[str]:
    """shutil.copytree's ignore for --keep: the agents' logs, configs and state, not the data."""
    return ["files"] if "files" in names else []


class Runs:
    """Relays and direct rsync runs of one benchmark run: a private sshd for everything, a fresh
    LocalRelay (own instance id) per scenario (the scenarios: relay_bench.Bench)."""

    def __init__(self, args: argparse.Namespace, root: Path, sshd: LocalSshd, cpu: CpuGroups):
        self.args = args
        self.root = root
        self.sshd = sshd
        self.cpu = cpu
        # Where each role's processes start (links: in that host's network namespace); the direct
        # rsync starts where upload's agent does.
        self.place: Callable[[str], contextlib.AbstractContextManager[None]] = lambda role: (
            contextlib.nullcontext()
        )
        self.results: dict[str, Any] = {}
        self.effective: dict[str, Any] = {}

    def rest(self) -> None:
        """Before a timed run (--quiet > 0): write all dirty data out, then rest for --quiet seconds,
        so that no run pays for writing back the data of the one before it."""
        if self.args.quiet > 0:
            os.sync()
            time.sleep(self.args.quiet)

    def discard(self, path: Path) -> None:
        """Delete `path` now, unless it holds many files: those go with the root at the end of the
        run (see DELETE_AT_ONCE_MAX_FILES)."""
        files = 0
        for _dir, _subdirs, names in os.walk(path):
            files += len(names)
            if files > DELETE_AT_ONCE_MAX_FILES:
                return
        shutil.rmtree(path, ignore_errors=True)

    # relays -----------------------------------------------------------------------------------------

    def fresh(self, name: str, data_bytes: int, files: int) -> FreshFs:
        """A never-filled file system (--fs) for one timed run's writes (see freshfs)."""
        return FreshFs(self.args.fs, self.root / f"fs-{name}", data_bytes, files)

    def new_relay(self, name: str, where: Path | None = None) -> LocalRelay:
        """A relay in its own directory (under `where`, a fresh file system, if given) under a unique
        instance id, so queues never meet an earlier run's."""
        settings: dict[str, dict[str, Any]] = {role: {} for role in ROLES}
        if self.args.settle is not None:
            settings["upload"]["settle_seconds"] = self.args.settle
            settings["download"]["settle_seconds"] = self.args.settle
        for role in ("upload", "download"):
            settings[role]["rsync_opts"] = [*self.sshd.rsync_opts(), *self.bwlimit()]
        if self.args.bundle_files is not None:  # small files as bundles (issue 24)
            settings["upload"]["bundle_files"] = self.args.bundle_files
        if self.args.checksum:
            settings["upload"]["checksum"] = self.args.checksum  # a second hash beside md5 (issue 27)
        host, _, port = self.args.broker.rpartition(":")
        relay = LocalRelay(
            (where or self.root) / name,
            self.sshd,
            f"bench-{uuid.uuid4().hex[:12]}",
            broker_host=host,
            broker_port=int(port),
            settings=settings,
            verbose=bool(self.args.debug),  # --debug: the agents' DEBUG lines, for a timeline with --keep
        )
        if not self.effective:
            up = agent_config(relay, "upload")
            self.effective = {"settle_seconds": up.settle_seconds, "max_transfers": up.max_transfers}
        return relay

    def start(self, relay: LocalRelay) -> None:
        """Start every agent (the three roles, and a pool's other centrals), wait until each has
        logged its broker connection, then a quiet time."""
        # Everything the agents start (rsync, ssh, the ssh master that leaves them) counts in their group.
        with self.cpu.inside(f"agents-{relay.workdir.name}-{relay.instance}"):
            for role in relay.modes:
                with self.place(role):
                    relay.start(role)

        def connected() -> bool:
            for role in relay.modes:
                path = relay.log_path(role)
                if not path.exists() or "connected to broker" not in path.read_text(errors="replace"):
                    return False
            return True

        relay.wait_for("every agent connected to the broker", connected, CONNECT_TIMEOUT_S)
        time.sleep(QUIET_AFTER_CONNECT_S)

    def finish(self, relay: LocalRelay) -> None:
        """Stop the agents, delete the instance's queues and (unless --keep) the relay's files, now
        or with the root at the end of the run (see discard)."""
        relay.close()
        if self.args.keep and self.args.fs != "dir":  # its file system goes: keep logs and state
            shutil.copytree(relay.workdir, self.root / f"kept-{relay.workdir.name}", ignore=_no_files)
        elif not self.args.keep and self.args.fs == "dir":
            self.discard(relay.workdir)

    def check_no_failures(self, relay: LocalRelay, state: dict[str, StateReader]) -> None:
        for role, reader in state.items():
            if reader.count("failed"):
                raise BenchError(f"{role} has failed entries\n{relay.all_logs_tail()}")

    def poll_until(
        self,
        relay: LocalRelay,
        state: dict[str, StateReader],
        what: str,
        predicate: Callable[[], bool],
        interval: float,
        progress: Callable[[float], str] | None = None,
        timeout: float | None = None,
    ) -> float:
        """relay.wait_for(predicate) with --timeout; returns the monotonic time the predicate came true.
        With `timeout` (shorter than --timeout), DeliveryTimeout when it runs out.

        Every PROGRESS_S it also looks for failed entries (so a broken relay fails now, not at the
        timeout) and prints `progress(seconds waited)`, so a slow relay is visibly slow, not hung.
        """
        began = time.monotonic()
        seen: list[float] = []
        last_check = [began]

        def check() -> bool:
            if predicate():
                seen.append(time.monotonic())
                return True
            now = time.monotonic()
            if now - last_check[0] >= PROGRESS_S:
                last_check[0] = now
                self.check_no_failures(relay, state)
                if progress is not None:
                    say(progress(now - began))
            return False

        limit = min(timeout or self.args.timeout, self.args.timeout)
        try:
            relay.wait_for(what, check, limit, interval)
        except AssertionError:
            waited = time.monotonic() - began
            if timeout is None or waited < limit or not all(relay.alive(r) for r in relay.modes):
                raise
            raise DeliveryTimeout(waited) from None
        return seen[0]

    def wait_delivered(
        self,
        relay: LocalRelay,
        state: dict[str, StateReader],
        label: str,
        names: set[str],
        started: float,
        timeout: float | None = None,
    ) -> float:
        """Wait until every name is 'done' at download; return the time since `started`. (A fresh
        relay's download has only these entries: past 1,000 it counts them, not reading every name.)"""
        done = [0]

        def delivered() -> bool:
            if bundled(self.args):
                done[0] = state["download"].files("done")
            elif len(names) > 1000:
                done[0] = state["download"].count("done")
            else:
                done[0] = len(state["download"].names("done") & names)
            return done[0] >= len(names)

        try:
            finished = self.poll_until(
                relay,
                state,
                f"{label}: {len(names)} entries done at download",
                delivered,
                0.05 if len(names) <= 100 else 0.25 if len(names) <= 10000 else 1.0,
                lambda waited: f"  {label}: {done[0]}/{len(names)} done at download after {waited:.0f} s",
                timeout,
            )
        except DeliveryTimeout as e:
            e.done = done[0]
            raise
        return finished - started

    # baselines --------------------------------------------------------------------------------------

    def bwlimit(self) -> list[str]:
        """rsync's --bwlimit for --link-mib (every rsync run, direct or synkler's), or nothing."""
        return [f"--bwlimit={self.args.link_mib:g}m"] if self.args.link_mib else []

    def direct_rsync(
        self, src: Path, label: str, data: tuple[int, int], ciphers: str | None = None
    ) -> tuple[float, dict[str, float] | None]:
        """Time one plain `rsync -a` over ssh of `src` (`data`: bytes, files) into a fresh file system
        (--fs) on the same sshd (with `ciphers`: the same, with ssh's cipher order set as synkler sets
        it). Returns (wall seconds, CPU seconds: local rsync + ssh, and sshd's side, or None)."""
        name = f"direct-{label}" + ("-same-cipher" if ciphers else "")
        with self.fresh(name, *data) as where:
            dest = where / "dest"
            dest.mkdir()
            rsh = self.sshd.rsh() + (f" -o Ciphers={ciphers}" if ciphers else "")
            argv = ["rsync", "-a", f"--rsh={rsh}", *self.bwlimit(), str(src), f"{self.sshd.target}:{dest}/"]
            self.rest()
            return self.timed_direct(name, argv)

    def timed_direct(self, name: str, argv: list[str]) -> tuple[float, dict[str, float] | None]:
        """Run `argv` (a direct rsync) in a CPU group of its own; wall time and CPU of both ends."""
        remote0 = self.cpu.seconds("sshd")
        local0 = self.cpu.seconds(name)
        started = time.monotonic()
        with self.cpu.inside(name), self.place("upload"):
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        out, err = proc.communicate()
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            raise BenchError(f"direct rsync failed ({proc.returncode}): {out}{err}")
        cpu = None
        if local0 is not None and remote0 is not None:
            local = (self.cpu.seconds(name) or 0.0) - local0
            remote = (self.cpu.seconds("sshd") or 0.0) - remote0
            cpu = {"local_s": local, "remote_s": remote, "total_s": local + remote}
        return elapsed, cpu
