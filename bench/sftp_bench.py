#!/usr/bin/env python3
"""Benchmark of synkler's SFTP transport (`transport: sftp`, synkler/hops/sftp.py) against OpenSSH.

One hop, as an agent runs it (synkler.hops.transfer.push / pull with the config's transport), to a
private sshd on loopback, beside OpenSSH's own tools to the same sshd in the same run:
- big: one file (1 GiB; --big-mb) pushed and pulled: synkler over SFTP, `scp`, OpenSSH's `sftp`,
  and rsync (synkler's default transport);
- many: many small files (20,000 of 1 KiB; --many, --many-kb) pushed as one batch of entries (one
  SFTP session, as the upload agent pushes a batch) and pulled back: synkler over SFTP, OpenSSH's
  `sftp` (put -r of their directory), and rsync.

Each figure is the median of --repeat runs; the ratios to scp (big) and rsync (many) are what
docs/performance.md states targets for (>= 80 % of scp's throughput; a cost per file close to rsync's).

    .venv/bin/python bench/sftp_bench.py --only sftp            # the full run
    .venv/bin/python bench/sftp_bench.py --quick                 # 256 MiB and 2,000 files

Exit status 0 when every run copied the data intact (a missed target is reported, not an error), 1
when a run failed or the data differed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from synkler.config import Config, load_config
from synkler.devkit.sshd import LocalSshd
from synkler.hops import sftp, transfer


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(8 << 20, left)
            f.write(os.urandom(n))
            left -= n


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def check(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(argv)}\n{done.stderr}")


class Bench:
    def __init__(self, work: Path, server: LocalSshd):
        self.work = work
        self.server = server
        self.remote = work / "central"
        self.local = work / "local"
        self.back = work / "back"
        self.cfg = {mode: self._config(mode) for mode in ("upload", "download")}
        self.rsync_cfg = self._config("upload", transport="rsync")

    def _config(self, mode: str, transport: str = "sftp") -> Config:
        path = self.work / f"{mode}-{transport}.conf"
        path.write_text(
            yaml.safe_dump(
                {
                    "mode": mode,
                    "file_dir": str(self.work),
                    "synkler_server": "127.0.0.1",
                    "central_host": self.server.target,
                    "transport": transport,
                    "sftp_port": self.server.port,
                    "sftp_identity": str(self.server.client_key),
                    "known_hosts": str(self.server.known_hosts),
                    "rsync_opts": self.server.rsync_opts(),
                    "state_db": str(self.work / f"{mode}.db"),
                    "pidfile": str(self.work / f"{mode}.pid"),
                }
            )
        )
        return load_config(path, check_dirs=False)

    def ssh_options(self) -> list[str]:
        s = self.server
        return ["-i", str(s.client_key), "-o", f"UserKnownHostsFile={s.known_hosts}", "-o", "BatchMode=yes"]

    def fresh(self, *dirs: Path) -> None:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)

    # the tools ---------------------------------------------------------------------------------------

    def synkler(self, cfg: Config, push: bool, names: list[str]) -> None:
        if push:
            result = transfer.push(cfg, str(self.local), names, str(self.remote))
        else:
            result = transfer.pull(cfg, str(self.remote), names, str(self.back))
        if not result.ok:
            raise SystemExit(
                f"synkler {cfg.transport} {'push' if push else 'pull'} failed: {result.summary()}"
            )

    def scp(self, push: bool, name: str) -> None:
        s = self.server
        there = f"{s.target}:{self.remote / name}"
        pair = [str(self.local / name), there] if push else [there, str(self.back / name)]
        check(["scp", "-q", "-P", str(s.port), *self.ssh_options(), *pair])

    def openssh_sftp(self, push: bool, what: str, recursive: bool = False) -> None:
        s = self.server
        flag = " -r" if recursive else ""
        if push:
            line = f'put{flag} "{self.local / what}" "{self.remote}/"\n'
        else:
            line = f'get{flag} "{self.remote / what}" "{self.back}/"\n'
        check(["sftp", "-q", "-b", "-", "-P", str(s.port), *self.ssh_options(), s.target], line)


def median_of(repeat: int, prepare: Callable[[], None], run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        prepare()
        times.append(timed(run))
    return statistics.median(times)


def bench_big(b: Bench, size: int, repeat: int) -> dict[str, float]:
    b.fresh(b.local, b.remote, b.back)
    write_random(b.local / "big.bin", size)
    want = md5_of(b.local / "big.bin")
    out: dict[str, float] = {}

    def clear_remote() -> None:
        b.fresh(b.remote)

    def clear_back() -> None:
        b.fresh(b.back)

    runs: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "push synkler sftp": (clear_remote, lambda: b.synkler(b.cfg["upload"], True, ["big.bin"])),
        "push scp": (clear_remote, lambda: b.scp(True, "big.bin")),
        "push openssh sftp": (clear_remote, lambda: b.openssh_sftp(True, "big.bin")),
        "push rsync": (clear_remote, lambda: b.synkler(b.rsync_cfg, True, ["big.bin"])),
    }
    for label, (prepare, run) in runs.items():
        out[label] = size / median_of(repeat, prepare, run) / 1e6
        if md5_of(b.remote / "big.bin") != want:
            raise SystemExit(f"{label}: the copy differs")
    pulls: dict[str, Callable[[], None]] = {
        "pull synkler sftp": lambda: b.synkler(b.cfg["download"], False, ["big.bin"]),
        "pull scp": lambda: b.scp(False, "big.bin"),
        "pull openssh sftp": lambda: b.openssh_sftp(False, "big.bin"),
    }
    for label, run in pulls.items():
        out[label] = size / median_of(repeat, clear_back, run) / 1e6
        if md5_of(b.back / "big.bin") != want:
            raise SystemExit(f"{label}: the copy differs")
    return out


def bench_many(b: Bench, count: int, size: int, repeat: int) -> dict[str, float]:
    b.fresh(b.local, b.remote, b.back)
    tree = b.local / "tree"
    tree.mkdir()
    for i in range(count):
        (b.local / f"f{i:06d}").write_bytes(os.urandom(size))
        os.link(b.local / f"f{i:06d}", tree / f"f{i:06d}")
    names = [f"f{i:06d}" for i in range(count)]
    out: dict[str, float] = {}

    def clear_remote() -> None:
        b.fresh(b.remote)

    runs: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "push synkler sftp": (clear_remote, lambda: b.synkler(b.cfg["upload"], True, names)),
        "push rsync": (clear_remote, lambda: b.synkler(b.rsync_cfg, True, names)),
        "push openssh sftp": (clear_remote, lambda: b.openssh_sftp(True, "tree", recursive=True)),
    }
    for label, (prepare, run) in runs.items():
        out[label] = median_of(repeat, prepare, run) / count * 1e3
    # Pulls: the files pushed by rsync's run above are what central holds.
    b.fresh(b.remote)
    b.synkler(b.rsync_cfg, True, names)

    def clear_back() -> None:
        b.fresh(b.back)

    pulls: dict[str, Callable[[], None]] = {
        "pull synkler sftp": lambda: b.synkler(b.cfg["download"], False, names),
        "pull rsync": lambda: b.synkler(b._config("download", "rsync"), False, names),
    }
    for label, run in pulls.items():
        out[label] = median_of(repeat, clear_back, run) / count * 1e3
        if sorted(os.listdir(b.back)) != names:
            raise SystemExit(f"{label}: files missing")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("sftp", "big", "many"), default="sftp", help="sftp: both")
    parser.add_argument("--quick", action="store_true", help="256 MiB and 2,000 files")
    parser.add_argument("--big-mb", type=int)
    parser.add_argument("--many", type=int)
    parser.add_argument("--many-kb", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    big = (args.big_mb or (256 if args.quick else 1024)) << 20
    many = args.many or (2000 if args.quick else 20000)
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="synkler-sftp-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        with LocalSshd(work / "sshd") as server:
            b = Bench(work, server)
            try:
                if args.only in ("sftp", "big"):
                    figures["big MB/s"] = bench_big(b, big, args.repeat)
                    f = figures["big MB/s"]
                    for way in ("push", "pull"):
                        ratio = f[f"{way} synkler sftp"] / f[f"{way} scp"]
                        f[f"{way} synkler sftp / scp"] = ratio
                if args.only in ("sftp", "many"):
                    figures["many ms per file"] = bench_many(b, many, args.many_kb << 10, args.repeat)
                    f = figures["many ms per file"]
                    for way in ("push", "pull"):
                        f[f"{way} synkler sftp / rsync"] = f[f"{way} synkler sftp"] / f[f"{way} rsync"]
            finally:
                sftp.close_all()
    print(f"sftp bench: big {big >> 20} MiB, many {many} x {args.many_kb} KiB, median of {args.repeat}")
    for group, values in figures.items():
        print(group)
        for label, value in values.items():
            print(f"  {label:32s} {value:10.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
