#!/usr/bin/env python3
"""Benchmark of a whole synkler relay on one machine: upload -> central -> download, as real processes.

Every figure is measured in the same run as its baseline (a direct ``rsync -a`` over ssh of the same data
to the same loopback sshd, right before the relay moves it), so the ratios survive a noisy or slow
machine better than absolute times do. Each timed run writes into a file system made for it alone
(freshfs.py), and reports the CPU time of all its processes beside its wall time (cpuacct.py). The
links scenario (links.py) runs the hosts in network namespaces (netns.py), and the centrals scenario
(centrals.py) a pool of centrals, each a host of its own (netns_star.py). See docs/performance.md
for what each figure means and the targets.

Run it from the repository with the project's venv (synkler must be importable, and the agents are
started with the same interpreter)::

    .venv/bin/python bench/relay_bench.py --quick --json /tmp/bench.json

Exit status: 0 when every scenario ran and every check on the delivered data passed (targets that were
missed are reported as MISS, not as an error: this is a measuring tool), 1 when anything went wrong
(an agent died, a timeout, a wrong md5 at download, a failed rsync), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from cpuacct import CpuGroups
from relay_args import SCENARIOS, bundled, parse_args
from relay_data import link_into, make_files, seed_states
from relay_probes import (
    SAMPLE_S,
    BenchError,
    ConcurrencySampler,
    StateReader,
    close_all,
    cpu_seconds,
    cpu_snapshot,
    cpu_text,
    cpu_used,
    loadavg,
    machine,
    readers,
    rss_mb,
)
from relay_runs import QUIET_AFTER_CONNECT_S, DeliveryTimeout, Runs, say
from relay_table import render, scale_rows, size_text, summarize, table_rows

from synkler.devkit.localrelay import ROLES, LocalRelay
from synkler.devkit.sshd import LocalSshd
from synkler.hops import transfer
from synkler.hops.checksum import md5_entry

LATENCY_POLL_S = 0.01  # how often the latency loop looks at download's state


# --------------------------------------------------------------------------------------------------
# The benchmark


class Bench(Runs):
    """One run: a private sshd for everything, a fresh LocalRelay (own instance id) per scenario."""

    # scenarios --------------------------------------------------------------------------------------

    def latency(self) -> dict[str, Any]:
        """One small file at a time: from the moment it is whole in upload's file_dir until download
        records 'done'. Runs alternate between the two ways a writer can put a file there: written
        under a dot-name and renamed in (sent at once), or written where it stands (it settles first).

        The file appears in download's file_dir a moment before its state says 'done'; the state is
        what counts (verified and committed). Runs are strictly one after another, on one relay.
        """
        args = self.args
        relay = self.new_relay("latency")
        state = readers(relay)
        try:
            self.start(relay)
            times: dict[str, list[float]] = {"renamed": [], "in_place": []}
            recorded: dict[str, list[float]] = {"renamed": [], "in_place": []}
            for i in range(args.latency_runs):
                for how in times:
                    took, took_recorded = self.latency_once(relay, state, i, how)
                    times[how].append(took)
                    recorded[how].append(took_recorded)
            settle = float(self.effective["settle_seconds"])
            in_place = latency_figures(times["in_place"], recorded["in_place"])
            in_place["median_minus_settle_s"] = in_place["median_s"] - settle
            return {
                "runs": args.latency_runs,
                "file_bytes": 1024,
                "settle_seconds": settle,
                **latency_figures(times["renamed"], recorded["renamed"]),
                "in_place": in_place,
            }
        finally:
            close_all(state)
            self.finish(relay)

    def latency_once(
        self, relay: LocalRelay, state: dict[str, StateReader], i: int, how: str
    ) -> tuple[float, float]:
        """Run `i` of latency, the file put in place as `how` says (renamed, in_place): the seconds
        until download's state says 'done', as seen and as download recorded it."""
        up_dir, down_dir = relay.dirs["upload"], relay.dirs["download"]
        name = f"latency-{how}-{i:02d}.bin"
        data = os.urandom(1024)
        if how == "renamed":
            tmp = up_dir / f".{name}.writing"
            tmp.write_bytes(data)
            os.rename(tmp, up_dir / name)
        else:
            (up_dir / name).write_bytes(data)  # the clock starts when it is closed
        closed, closed_wall = time.monotonic(), time.time()
        seen = self.poll_until(
            relay,
            state,
            f"latency run {i + 1}: {name} done at download",
            lambda name=name: (state["download"].row(name) or ("",))[0] == "done",
            LATENCY_POLL_S,
        )
        row = state["download"].row(name)
        assert row is not None
        if row[1] != name or (down_dir / name).read_bytes() != data:
            raise BenchError(f"latency run {i + 1}: {name} arrived wrong (stored as {row[1]})")
        what = "renamed in" if how == "renamed" else "written in place"
        say(f"  latency run {i + 1}/{self.args.latency_runs}, {what}: {seen - closed:.3f} s")
        # Let upload finish too, so the next run starts from a quiet relay.
        self.poll_until(
            relay,
            state,
            f"{name} done at upload",
            lambda name=name: (state["upload"].row(name) or ("",))[0] == "done",
            0.1,
        )
        time.sleep(1.0)
        return seen - closed, row[2] - closed_wall

    def bulk(self, label: str, count: int, size: int, *, verify_all: bool, sampled: bool) -> dict[str, Any]:
        """Shared by big, many and mixed (tree calls bulk_runs itself): a direct rsync of the data,
        then the same data through a fresh relay, --repeat times in turn; the figures are medians,
        so that the two sides of the ratio meet the same noise of a shared machine."""
        src = self.root / f"{label}-src"
        say(f"  {label}: writing {count} × {size_text(size)} of random data")
        md5s = make_files(src, f"{label}-", count, size)
        try:
            return self.bulk_runs(label, src, md5s, size, files=count, verify_all=verify_all, sampled=sampled)
        finally:
            self.discard(src)

    def bulk_runs(
        self,
        label: str,
        src: Path,
        md5s: dict[str, str],
        size: int,
        *,
        files: int,
        verify_all: bool,
        sampled: bool = False,
    ) -> dict[str, Any]:
        """--repeat runs of bulk_once on the entries in `src` (`files` files of `size` bytes in all),
        and their medians."""
        runs = [
            self.bulk_once(
                f"{label}-{i + 1}" if self.args.repeat > 1 else label,
                src,
                md5s,
                size,
                verify_all=verify_all,
                sampled=sampled,
                files=files,
            )
            for i in range(self.args.repeat)
        ]
        out = summarize(runs, files, size)
        if len(runs) > 1:
            say(
                f"  {label}: median of {len(runs)}: relay {out['relay_s']:.2f} s, direct "
                f"{out['direct_s']:.2f} s, {out['ratio']:.2f}× direct"
            )
        return out

    def bulk_once(
        self,
        label: str,
        src: Path,
        md5s: dict[str, str],
        size: int,
        *,
        verify_all: bool,
        sampled: bool,
        files: int | None = None,
        timeout: float | None = None,
        watch: Any = None,
    ) -> dict[str, Any]:
        """One direct rsync of `src` and one relay of its entries (`files` files of `size` bytes in
        all), each writing into a file system of its own that was never filled before (--fs). The
        relay is timed from the moment the entries appear in upload's file_dir to the last entry
        recorded 'done' at download. With `timeout`, a relay still unfinished then is reported as such
        (how far it got) instead of failing the run. `watch` (links.Watch): sampled from the moment
        the entries appear to the end of the relay; its figures go under "watch"."""
        count = len(md5s)
        data = ((files or count) * size, files or count)
        with self.fresh(f"relay-{label}", *data) as where:
            relay = self.new_relay(label, where)
            state = readers(relay)
            try:
                self.start(relay)
                direct = self.direct_side(label, src, md5s, data)
                put = link_into(sorted(src.iterdir()), relay.dirs["upload"])
                self.rest()
                if watch is None:
                    return {
                        **direct,
                        **self.relay_side(relay, state, label, put, md5s, size, verify_all, sampled, timeout),
                    }
                try:
                    figures = self.relay_side(
                        relay, state, label, watch.around(put), md5s, size, verify_all, sampled, timeout
                    )
                finally:
                    watch.stop()
                return {**direct, **figures, "watch": watch.report(label, figures.get("relay_s"))}
            finally:
                close_all(state)
                self.finish(relay)

    def direct_side(
        self, label: str, src: Path, md5s: dict[str, str], data: tuple[int, int]
    ) -> dict[str, Any]:
        """The direct rsync(s) of bulk_once: of `src` (one file: that file), and for a single file,
        also with synkler's ssh cipher order (synkler's ssh prefers AES-GCM where the CPU has AES
        instructions, transfer.preferred_ciphers)."""
        first = src / next(iter(md5s))
        direct, direct_cpu = self.direct_rsync(first if len(md5s) == 1 else src, label, data)
        say(f"  {label}: direct rsync {direct:.2f} s" + cpu_text(direct_cpu))
        one_file = len(md5s) == 1 and first.is_file()
        ciphers = transfer.preferred_ciphers(self.sshd.rsh(), self.sshd.target) if one_file else None
        same_cipher, same_cpu = self.direct_rsync(first, label, data, ciphers) if ciphers else (None, None)
        if same_cipher and ciphers:
            say(
                f"  {label}: direct rsync, synkler's cipher order ({ciphers.split(',')[0]} first) "
                f"{same_cipher:.2f} s" + cpu_text(same_cpu)
            )
        return {
            "direct_s": direct,
            "direct_cpu": direct_cpu,
            "direct_same_cipher_s": same_cipher,
            "direct_same_cipher_cpu": same_cpu,
            "ciphers": ciphers,
        }

    def relay_side(
        self,
        relay: LocalRelay,
        state: dict[str, StateReader],
        label: str,
        put: Callable[[], None],
        md5s: dict[str, str],
        size: int,
        verify_all: bool,
        sampled: bool,
        timeout: float | None,
    ) -> dict[str, Any]:
        """The timed relay of bulk_once: wall time to the last 'done' at download, and the CPU of the
        agents' group and of sshd until upload has recorded every entry 'done' too."""
        group = f"agents-{relay.workdir.name}-{relay.instance}"
        sampler = ConcurrencySampler(relay) if sampled else None
        if sampler:
            sampler.start()
        cpu_before = cpu_snapshot(relay)
        agents0, sshd0 = self.cpu.seconds(group), self.cpu.seconds("sshd")
        started, started_wall = time.monotonic(), time.time()
        put()
        unfinished: dict[str, Any] | None = None
        try:
            self.wait_delivered(relay, state, label, set(md5s), started, timeout)
        except DeliveryTimeout as e:
            spent = self.cpu_since(group, agents0, sshd0)  # a lower bound of what the whole would cost
            so_far = sum(spent) if spent else None
            unfinished = {"after_s": e.waited, "done": e.done, "entries": len(md5s), "cpu_so_far_s": so_far}
            say(f"  {label}: NOT FINISHED: {e.done}/{len(md5s)} done at download after {e.waited:.0f} s")
        finally:
            concurrency = sampler.stop() if sampler else None
        if unfinished:
            return {"relay_s": None, "unfinished": unfinished, "concurrency": concurrency, "cpu": None}
        # The poll that saw the last entry done comes up to its interval late: take the time
        # download recorded instead.
        elapsed = state["download"].query("SELECT MAX(updated) FROM entries")[0][0] - started_wall
        cpu = cpu_used(cpu_before, cpu_snapshot(relay))
        self.poll_until(
            relay,
            state,
            f"{label}: every entry done at upload",
            lambda: (
                state["upload"].files("done") >= len(md5s)
                if bundled(self.args)
                else len(state["upload"].names("done") & set(md5s)) == len(md5s)
            ),
            0.1,
        )
        since = self.cpu_since(group, agents0, sshd0)
        relay_cpu = {"agents_s": since[0], "sshd_s": since[1], "total_s": sum(since)} if since else None
        say_cpu(label, cpu, elapsed)
        say(f"  {label}: relay {elapsed:.2f} s" + cpu_text(relay_cpu, "agents", "agents_s", "sshd_s"))
        self.verify(relay, state, md5s, size, verify_all)
        return {"relay_s": elapsed, "relay_cpu": relay_cpu, "concurrency": concurrency, "cpu": cpu}

    def cpu_since(self, group: str, agents0: float | None, sshd0: float | None) -> tuple[float, float] | None:
        """CPU seconds of the agents' group and of sshd since (agents0, sshd0); None without accounting."""
        if agents0 is None or sshd0 is None:
            return None
        return (self.cpu.seconds(group) or 0.0) - agents0, (self.cpu.seconds("sshd") or 0.0) - sshd0

    def verify(
        self, relay: LocalRelay, state: dict[str, StateReader], md5s: dict[str, str], size: int, all_: bool
    ) -> None:
        """Every entry under its own name at download with the right size; md5 of all (or of a sample)."""
        down = relay.dirs["download"]
        stored = dict(state["download"].query("SELECT name, stored_as FROM entries WHERE state = 'done'"))
        if bundled(self.args):  # the files of bundles, each placed on its own (names: their bytes)
            members = state["download"].query("SELECT name, stored_as FROM members WHERE placed = 1")
            stored.update((os.fsdecode(n), os.fsdecode(s)) for n, s in members)
        wrong = [n for n in md5s if stored.get(n) != n]
        if wrong:
            raise BenchError(f"{len(wrong)} entries not stored under their own name, e.g. {wrong[:3]}")
        short = [n for n in md5s if (down / n).is_file() and (down / n).stat().st_size != size]
        if short:
            raise BenchError(f"{len(short)} files at download are not {size} bytes, e.g. {short[:3]}")
        names = list(md5s) if all_ else random.Random(0).sample(sorted(md5s), min(50, len(md5s)))
        bad = [n for n in names if md5_entry(down / n) != md5s[n]]
        if bad:
            raise BenchError(f"md5 mismatch at download for {bad[:5]}")
        self.check_no_failures(relay, state)

    def big(self) -> dict[str, Any]:
        return self.bulk("big", 1, self.args.big_mb << 20, verify_all=True, sampled=False)

    def many(self) -> dict[str, Any]:
        return self.bulk("many", self.args.many, self.args.many_kb << 10, verify_all=False, sampled=False)

    def tree(self) -> dict[str, Any]:
        """The files of `many` as one entry: a directory holding them (one rsync run per hop, one md5
        of the tree at each hop). Compared with a direct rsync of that directory."""
        count, size = self.args.many, self.args.many_kb << 10
        src = self.root / "tree-src"
        say(f"  tree: writing one directory of {count} × {size_text(size)} of random data")
        make_files(src / "tree", "tree-", count, size)
        try:
            md5s = {"tree": md5_entry(src / "tree")}
            return self.bulk_runs("tree", src, md5s, size, files=count, verify_all=True)
        finally:
            self.discard(src)

    def scale(self) -> dict[str, Any]:
        """Many entries at once: each of --scale counts of top-level files of --many-kb KiB, then one
        directory entry holding --scale-tree of them; one run each (no --repeat: a case takes
        minutes), against a direct rsync of the same set. A relay still unfinished after
        --scale-timeout is reported with how far it got."""
        size = self.args.many_kb << 10
        top = max([*self.args.scale, self.args.scale_tree])
        # The sources (one pool of files, each case's set hard links into it) get a file system of
        # their own too: unmounting it at the end deletes no 100,000 files one by one from the
        # working directory's disk (each freed extent a discard, where it is mounted with discard).
        with self.fresh("scale-sources", top * size, top) as sources:
            return self.scale_cases(sources, size, top)

    def scale_cases(self, sources: Path, size: int, top: int) -> dict[str, Any]:
        counts, tree_n = self.args.scale, self.args.scale_tree
        pool = sources / "pool"
        say(f"  scale: writing {top} × {size_text(size)} of random data")
        md5s = make_files(pool, "scale-", top, size)
        names = sorted(md5s)
        cases: list[dict[str, Any]] = []
        for n in counts:
            src = sources / f"scale-{n}-src"
            src.mkdir()
            for name in names[:n]:
                os.link(pool / name, src / name)
            subset = {name: md5s[name] for name in names[:n]}
            run = self.bulk_once(
                f"scale-{n}",
                src,
                subset,
                size,
                verify_all=False,
                sampled=False,
                timeout=self.args.scale_timeout,
            )
            cases.append({"case": "files", **summarize([run], n, size)})
        src = sources / "scale-tree-src"
        (src / "tree").mkdir(parents=True)
        for name in names[:tree_n]:
            os.link(pool / name, src / "tree" / name)
        tree = {"tree": md5_entry(src / "tree")}
        run = self.bulk_once(
            "scale-tree",
            src,
            tree,
            size,
            verify_all=True,
            sampled=False,
            files=tree_n,
            timeout=self.args.scale_timeout,
        )
        cases.append({"case": "tree", **summarize([run], tree_n, size)})
        return {"cases": cases, "timeout_s": self.args.scale_timeout, "fs": self.args.fs}

    def links(self) -> dict[str, Any]:
        import links  # bench/links.py: network namespaces, only for this scenario

        return links.run(self)

    def centrals(self) -> dict[str, Any]:
        import centrals  # bench/centrals.py: a pool of centrals, each in a network namespace

        return centrals.run(self)

    def sftp(self) -> dict[str, Any]:
        """The SFTP transport against OpenSSH's scp, sftp and rsync (bench/sftp_bench.py, which
        needs root for its chrooted internal-sftp account): its figures, as it prints them."""
        out = self.root / "sftp.json"
        argv = [sys.executable, str(Path(__file__).with_name("sftp_bench.py")), "--json", str(out)]
        argv += ["--quick"] if self.args.quick else []
        done = subprocess.run(argv, text=True, capture_output=True)
        for line in done.stdout.splitlines():
            say(f"  {line}")
        if done.returncode != 0:
            raise BenchError(f"bench/sftp_bench.py failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        figures: dict[str, Any] = json.loads(out.read_text())
        return figures

    def mixed(self) -> dict[str, Any]:
        return self.bulk("mixed", self.args.mixed, self.args.mixed_mb << 20, verify_all=True, sampled=True)

    def idle(self) -> dict[str, Any]:
        """CPU and memory of agents with nothing to do: with an empty state, and with many finished entries.

        The finished entries are written straight into each state database before the agents start,
        in the states a delivered entry ends in (upload 'done', central 'expired', download 'done'),
        so what is measured is the cost of carrying history, not of making it.
        """
        out: dict[str, Any] = {"window_s": self.args.idle_seconds, "entries": self.args.idle_entries}
        for case, entries in (("empty", 0), ("loaded", self.args.idle_entries)):
            relay = self.new_relay(f"idle-{case}")
            try:
                if entries:
                    seed_states(relay, entries)
                self.start(relay)
                out[case] = self.idle_window(relay)
                say(
                    f"  idle ({case}): "
                    + ", ".join(
                        f"{r} {v['cpu_pct']:.2f}% {v['rss_mb']:.0f} MiB" for r, v in out[case].items()
                    )
                )
                if entries:
                    out["status"] = self.status_times(relay, entries)
            finally:
                self.finish(relay)
        return out

    def idle_window(self, relay: LocalRelay) -> dict[str, dict[str, float]]:
        """CPU% over --idle-seconds from /proc utime+stime at both ends of the window, VmRSS at its end.

        Two readings and a sleep, nothing in between, so the benchmark itself adds no load to the window.
        """
        pids = {role: relay.procs[role].pid for role in ROLES}
        before = {role: cpu_seconds(pid) for role, pid in pids.items()}
        started = time.monotonic()
        time.sleep(self.args.idle_seconds)
        elapsed = time.monotonic() - started
        result: dict[str, dict[str, float]] = {}
        for role, pid in pids.items():
            if not relay.alive(role):
                raise BenchError(f"{role} agent died while idle\n{relay.log_tail(role)}")
            used = cpu_seconds(pid) - before[role]
            result[role] = {"cpu_pct": 100 * used / elapsed, "cpu_s": used, "rss_mb": rss_mb(pid)}
        return result

    def status_times(self, relay: LocalRelay, entries: int) -> dict[str, Any]:
        """Wall time of `status --all`, `status --all --json` and `status --relay --json` per role."""
        exe = Path(sys.executable).parent / "synkler"
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "synkler"]
        out: dict[str, Any] = {}
        # --all: every entry, as status showed them before it left out the older ended ones.
        for fmt, extra in (
            ("table", ["--all"]),
            ("json", ["--all", "--json"]),
            ("relay", ["--relay", "--json"]),
        ):
            per_role: dict[str, float] = {}
            for role in ROLES:
                argv = [*base, "-c", str(relay.configs[role]), "status", *extra]
                times = []
                for _ in range(self.args.status_runs):
                    started = time.monotonic()
                    run = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
                    times.append(time.monotonic() - started)
                    if run.returncode != 0:
                        raise BenchError(f"{' '.join(argv)} exited {run.returncode}: {run.stderr}")
                    if fmt == "relay":  # the whole relay through the broker: every agent running
                        view = json.loads(run.stdout)
                        running = [a["status"] for a in view["agents"]]
                        if running != ["running"] * 3 or view["finished_listed"] == 0:
                            raise BenchError(f"status --relay from {role}: {view['verdict']}")
                        continue
                    json_out = "--json" in extra
                    shown = len(json.loads(run.stdout)) if json_out else len(run.stdout.splitlines()) - 1
                    if shown != entries:
                        raise BenchError(f"{role} status shows {shown} entries, expected {entries}")
                per_role[role] = statistics.median(times)
            out[fmt] = {"per_role_s": per_role, "max_s": max(per_role.values())}
        return out

    def run(self, only: Sequence[str]) -> None:
        for name in SCENARIOS:
            if name in only:
                say(f"{name}:")
                started = time.monotonic()
                self.results[name] = getattr(self, name)()
                self.results[name]["scenario_s"] = time.monotonic() - started


# --------------------------------------------------------------------------------------------------
# Report


def say_cpu(label: str, cpu: dict[str, Any], elapsed: float) -> None:
    """Each agent's CPU (itself + its reaped children) and the whole machine's, during a relay."""
    say(
        f"  {label}: CPU s: "
        + ", ".join(
            f"{r} {v['agent_s']:.2f}+{v['children_s']:.2f}" for r, v in cpu.items() if r != "machine_s"
        )
        + f" (agent+its reaped rsync/ssh); whole machine {cpu['machine_s']:.2f} in {elapsed:.2f} s"
    )


def latency_figures(times: list[float], recorded: list[float]) -> dict[str, Any]:
    """The median, least and most of latency runs of one kind."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "median_recorded_s": statistics.median(recorded),
        "times_s": times,
    }


def settings(args: argparse.Namespace, bench: Bench | None, accounting: str | None) -> dict[str, Any]:
    """The settings of the run, as the JSON report gives them."""
    return {
        "quick": args.quick,
        "only": args.only,
        "big_mb": args.big_mb,
        "many": args.many,
        "many_kb": args.many_kb,
        "mixed": args.mixed,
        "mixed_mb": args.mixed_mb,
        "idle_seconds": args.idle_seconds,
        "idle_entries": args.idle_entries,
        "latency_runs": args.latency_runs,
        "status_runs": args.status_runs,
        "repeat": args.repeat,
        "quiet_s": args.quiet,
        "fs": args.fs,
        "cpu_accounting": accounting,
        "scale": args.scale,
        "scale_tree": args.scale_tree,
        "scale_timeout_s": args.scale_timeout,
        "links_rate_mbit": args.links_rate_mbit,
        "links_big_mb": args.links_big_mb,
        "links_files": args.links_files,
        "links_file_mb": args.links_file_mb,
        "centrals": args.centrals,
        "centrals_rate_mbit": args.centrals_rate_mbit,
        "centrals_files": args.centrals_files,
        "centrals_file_mb": args.centrals_file_mb,
        "centrals_transfers": args.centrals_transfers,
        "settle_override": args.settle,
        **(bench.effective if bench else {}),
        "broker": args.broker,
        "link_mib": args.link_mib,
        "quiet_after_connect_s": QUIET_AFTER_CONNECT_S,
        "latency_poll_s": LATENCY_POLL_S,
        "sample_s": SAMPLE_S,
    }


def footer(report: dict[str, Any], link_mib: float | None) -> str:
    """The machine, how long the run took and how busy the machine was, under the table."""
    m = report["machine"]
    return (
        f"\n{m['date']}, {m['nproc']} CPUs ({m['cpu']}), {m['mem_gb']} GiB, Python {m['python']}, "
        f"{m['rsync']}; took {report['elapsed_s']:.0f} s; load average {m['loadavg']} at the start, "
        f"{loadavg()} at the end" + (f"; every rsync run limited to {link_mib:g} MiB/s" if link_mib else "")
    )


def interrupted(signum: int, _frame: Any) -> None:
    """SIGTERM: end like Ctrl-C, so every cleanup (agents, mounts, namespaces) runs."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="synkler-bench-", dir="/tmp"))
    report: dict[str, Any] = {"machine": machine(), "settings": {}, "results": {}}
    say(f"synkler relay benchmark ({'quick' if args.quick else 'full'}), working in {root}")
    say(f"each timed run writes into a new file system of its own: --fs {args.fs}")
    error: str | None = None
    bench: Bench | None = None
    cpu = CpuGroups()
    accounting = cpu.version if cpu.available else None
    if not cpu.available:
        say(f"({cpu.why}: wall times only)")
    try:
        sshd = LocalSshd(root / "sshd")
        with cpu.inside("sshd"):  # every session it forks counts in its group
            sshd.start()
        try:
            bench = Bench(args, root, sshd, cpu)
            try:
                bench.run(args.only)
            finally:
                report["results"] = bench.results
        finally:
            sshd.stop()
    except (BenchError, AssertionError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        cpu.close()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report["settings"] = settings(args, bench, accounting)
    report["elapsed_s"] = time.monotonic() - started
    rows = table_rows(report["results"]) + scale_rows(report["results"])
    report["table"] = rows
    if error:
        report["error"] = error
    if rows:
        say("\n" + render(rows))
    say(footer(report, args.link_mib))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if error:
        say(f"\nBENCHMARK FAILED: {error}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything was cleaned up on the way out (agents, mounts, namespaces)
        say("\nBENCHMARK INTERRUPTED")
        sys.exit(130)
