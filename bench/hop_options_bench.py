"""What one rsync hop costs per small file, with each rsync option synkler could give it.

    sudo .venv/bin/python bench/hop_options_bench.py --files 20000 --repeat 2

A tree of `--files` × `--size` bytes is sent over a private sshd, the way synkler's hops send an
entry (the entry named on stdin, `--files-from=- --from0 --recursive`, `--protect-args`, archive
mode), in both directions: `push` (the local rsync sends, sshd's side receives: upload -> central)
and `pull` (sshd's side sends, the local rsync receives: central -> download). Each run writes into
a fresh ext4 file system of its own (bench/freshfs.py); the CPU of each side is counted by cgroup
(bench/cpuacct.py): the local rsync and ssh, and sshd with what it forks. Printed per variant and
direction: wall time, the receiver's and the sender's CPU in µs per file (median of the repeats).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpuacct import CpuGroups  # noqa: E402
from freshfs import FreshFs  # noqa: E402

from synkler.devkit.sshd import LocalSshd  # noqa: E402

GCM = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"
PARTIAL = ("--partial", "--partial-dir=.rsync-partial")
# name -> (rsync options instead of synkler's defaults, ssh ciphers)
VARIANTS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "synkler": (PARTIAL, GCM),
    "no-partial-dir": ((), GCM),
    "inplace": (("--inplace",), GCM),
    "whole-file": ((*PARTIAL, "--whole-file"), GCM),
    "no-inc-recursive": ((*PARTIAL, "--no-inc-recursive"), GCM),
    "checksum-md5": ((*PARTIAL, "--checksum-choice=md5"), GCM),
    "checksum-none": ((*PARTIAL, "--checksum-choice=none"), GCM),
    "sparse": ((*PARTIAL, "--sparse"), GCM),
    "chacha20": (PARTIAL, "chacha20-poly1305@openssh.com"),
    "inplace+whole-file": (("--inplace", "--whole-file"), GCM),
}


def make_tree(root: Path, files: int, size: int) -> None:
    tree = root / "entry"
    tree.mkdir(parents=True)
    for i in range(files):
        (tree / f"f{i:07d}").write_bytes(os.urandom(size))


def argv(sshd: LocalSshd, opts: tuple[str, ...], ciphers: str | None, src: str, dest: str) -> list[str]:
    rsh = sshd.rsh() + (f" -o Ciphers={ciphers}" if ciphers else "")
    return [
        "rsync", "--protect-args", "--archive", *opts, "--timeout=600",
        "--recursive", "--from0", "--files-from=-", f"--rsh={rsh}", src, dest,
    ]  # fmt: skip


def one(
    sshd: LocalSshd, cpu: CpuGroups, work: Path, src: Path, variant: str, way: str, files: int, size: int
) -> dict[str, float]:
    opts, ciphers = VARIANTS[variant]
    fresh = FreshFs("ext4", work / f"{variant}-{way}-{time.monotonic_ns()}", files * size, files)
    with fresh as where:
        dest = where / "staging"
        dest.mkdir()
        if way == "push":
            cmd = argv(sshd, opts, ciphers, f"{src}/", f"{sshd.target}:{dest}/")
        else:
            cmd = argv(sshd, opts, ciphers, f"{sshd.target}:{src}/", f"{dest}/")
        subprocess.run(["sync"], check=True)
        time.sleep(1)
        local0, remote0 = cpu.seconds("local") or 0.0, cpu.seconds("sshd") or 0.0
        started = time.monotonic()
        with cpu.inside("local"):
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        out, _ = proc.communicate(b"./entry\0")
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"{variant} {way}: rsync failed ({proc.returncode}): {out.decode()}")
        local = (cpu.seconds("local") or 0.0) - local0
        remote = (cpu.seconds("sshd") or 0.0) - remote0
        got = sum(1 for _ in (dest / "entry").iterdir())
        if got != files:
            raise SystemExit(f"{variant} {way}: {got} files arrived, not {files}")
    receiver, sender = (remote, local) if way == "push" else (local, remote)
    return {"wall": wall, "receiver": receiver, "sender": sender}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--ways", default="push,pull")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    cpu = CpuGroups()
    if not cpu.available:
        raise SystemExit(cpu.why)
    with tempfile.TemporaryDirectory(prefix="synkler-hopbench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        src = work / "src"
        make_tree(src, args.files, args.size)
        with cpu.inside("sshd"):
            sshd = LocalSshd(work / "sshd").start()
        try:
            print(
                f"{args.files} × {args.size} B in one directory; µs of CPU per file, median of {args.repeat}"
            )
            head = f"{'variant':<20} {'way':<5} {'wall s':>7} {'receiver µs':>12} {'sender µs':>10}"
            print(f"{head}  runs (receiver)")
            for variant in args.variants.split(","):
                for way in args.ways.split(","):
                    runs = [
                        one(sshd, cpu, work, src, variant, way, args.files, args.size)
                        for _ in range(args.repeat)
                    ]
                    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                    each = " ".join(f"{r['receiver'] / args.files * 1e6:.0f}" for r in runs)
                    per = {k: v / args.files * 1e6 for k, v in med.items()}
                    print(
                        f"{variant:<20} {way:<5} {med['wall']:7.2f} {per['receiver']:12.0f} "
                        f"{per['sender']:10.0f}  {each}",
                        flush=True,
                    )
        finally:
            sshd.stop()
            cpu.close()


if __name__ == "__main__":
    main()
