"""relay_bench.py's command line: the scenarios, the sizes of a full and a --quick run, and the
options, checked."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from freshfs import KINDS as FS_KINDS
from freshfs import check_kind, default_kind

SCENARIOS = ("latency", "big", "many", "tree", "mixed", "idle", "scale", "links", "centrals", "sftp")
# What runs without --only: scale, links and centrals take many minutes (links, centrals and sftp
# need root), so they run only when named.
DEFAULT_SCENARIOS = ("latency", "big", "many", "tree", "mixed", "idle")

# Sizes of a full run (what the issue asks for) and of --quick (fits in about a minute). An explicit
# flag always wins over either.
FULL: dict[str, Any] = {
    "big_mb": 1024,
    "many": 2000,
    "many_kb": 4,
    "mixed": 20,
    "mixed_mb": 20,
    "idle_seconds": 30.0,
    "idle_entries": 10000,
    "latency_runs": 5,
    "status_runs": 3,
    "repeat": 3,
    "quiet": 4.0,
    "scale": "20000,100000",
    "scale_tree": 100000,
    "links_big_mb": 1024,
    "links_files": 20,
    "links_file_mb": 50,
    "centrals": "1,2,3",
    "centrals_files": 100,
    "centrals_file_mb": 4,
}
QUICK: dict[str, Any] = {
    "big_mb": 32,
    "many": 30,
    "many_kb": 4,
    "mixed": 4,
    "mixed_mb": 5,
    "idle_seconds": 3.0,
    "idle_entries": 10000,
    "latency_runs": 3,
    "status_runs": 1,
    "repeat": 1,
    "quiet": 0.0,
    "scale": "200,1000",
    "scale_tree": 1000,
    "links_big_mb": 64,
    "links_files": 4,
    "links_file_mb": 8,
    "centrals": "1,2,3",
    "centrals_files": 12,
    "centrals_file_mb": 1,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, with the sizes of a full or a --quick run where not given, checked (exit 2)."""
    p = argparse.ArgumentParser(
        description="Benchmark a synkler relay (upload -> central -> download) on this machine.",
        epilog="See docs/performance.md.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, about a minute in all")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument(
        "--only",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} "
        "(default: all but scale, links, centrals and sftp)",
    )
    p.add_argument(
        "--fs",
        choices=FS_KINDS,
        help="what each timed run (direct rsync or relay) writes into, new for each run: "
        "a loop-mounted ext4, a tmpfs, or a new directory (default: ext4 as root, else dir)",
    )
    add_scale_options(p)
    add_centrals_options(p)
    add_size_options(p)
    add_run_options(p)
    args = p.parse_args(argv)
    check(p, args)
    return args


def add_scale_options(p: argparse.ArgumentParser) -> None:
    """Options of the scale and links scenarios."""
    p.add_argument(
        "--scale", help=f"scale: counts of top-level files, comma-separated (full {FULL['scale']})"
    )
    p.add_argument(
        "--scale-tree", type=int, help=f"scale: files in the one directory entry (full {FULL['scale_tree']})"
    )
    p.add_argument(
        "--scale-timeout",
        type=float,
        default=300.0,
        help="scale: a relay still unfinished after this many s is reported as such (default %(default)s)",
    )
    p.add_argument(
        "--links-rate-mbit",
        type=float,
        default=250.0,
        help="links: rate of each link, Mbit/s (default %(default)s)",
    )
    p.add_argument(
        "--links-big-mb", type=int, help=f"links: size of the big file, MiB (full {FULL['links_big_mb']})"
    )
    p.add_argument(
        "--links-files", type=int, help=f"links: number of mid-sized files (full {FULL['links_files']})"
    )
    p.add_argument(
        "--links-file-mb", type=int, help=f"links: size of each, MiB (full {FULL['links_file_mb']})"
    )


def add_centrals_options(p: argparse.ArgumentParser) -> None:
    """Options of the centrals scenario (bench/centrals.py)."""
    p.add_argument(
        "--centrals", help=f"centrals: pool sizes to relay with, comma-separated (full {FULL['centrals']})"
    )
    p.add_argument(
        "--centrals-rate-mbit",
        type=float,
        default=40.0,
        help="centrals: rate of each central's link, Mbit/s (upload's and download's: not limited; "
        "default %(default)s)",
    )
    p.add_argument(
        "--centrals-transfers",
        type=int,
        help="centrals: max_transfers of upload and download (default: the agents' default, shared by "
        "every central of the pool)",
    )
    p.add_argument(
        "--centrals-files", type=int, help=f"centrals: number of files (full {FULL['centrals_files']})"
    )
    p.add_argument(
        "--centrals-file-mb", type=int, help=f"centrals: size of each, MiB (full {FULL['centrals_file_mb']})"
    )


def add_size_options(p: argparse.ArgumentParser) -> None:
    """Sizes and counts of big, many, tree and mixed, and the second hash."""
    p.add_argument("--big-mb", type=int, help=f"size of the big file in MiB (full {FULL['big_mb']})")
    p.add_argument("--many", type=int, help=f"number of small files, many and tree (full {FULL['many']})")
    p.add_argument("--many-kb", type=int, help=f"size of each small file in KiB (full {FULL['many_kb']})")
    p.add_argument("--mixed", type=int, help=f"number of mixed files (full {FULL['mixed']})")
    p.add_argument("--mixed-mb", type=int, help=f"size of each mixed file in MiB (full {FULL['mixed_mb']})")
    p.add_argument(
        "--checksum",
        choices=("sha256", "blake2b"),
        help="relay with this second hash beside md5 (upload's checksum)",
    )


def add_run_options(p: argparse.ArgumentParser) -> None:
    """How each scenario runs: windows, runs, rests, limits, the broker."""
    p.add_argument(
        "--idle-seconds", type=float, help=f"idle measuring window (full {FULL['idle_seconds']:g})"
    )
    p.add_argument(
        "--idle-entries",
        type=int,
        help=f"finished entries per agent for idle/status (full {FULL['idle_entries']})",
    )
    p.add_argument(
        "--latency-runs", type=int, help=f"small files relayed one by one (full {FULL['latency_runs']})"
    )
    p.add_argument(
        "--status-runs", type=int, help=f"runs of each status command, median (full {FULL['status_runs']})"
    )
    p.add_argument(
        "--repeat",
        type=int,
        help=f"runs of big, many, tree and mixed (direct rsync, then relay), median (full {FULL['repeat']})",
    )
    p.add_argument(
        "--quiet",
        type=float,
        help="a sync, then this many seconds of rest, before each timed direct rsync and relay "
        f"(full {FULL['quiet']:g}, quick 0: no sync, no rest)",
    )
    p.add_argument(
        "--link-mib",
        type=float,
        help="limit every rsync run, direct and synkler's, to this many MiB/s (rsync --bwlimit): "
        "a link slower than this machine's CPUs, as between real hosts (default: no limit)",
    )
    p.add_argument(
        "--bundle-files",
        type=int,
        help="bundle_files for upload: small files that settle together cross as bundles of up to N "
        "(issue 24; 0: none; default: the relay's own setting, bundles of up to 1000)",
    )
    p.add_argument(
        "--settle", type=float, help="settle_seconds for upload and download (default: not overridden)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="longest wait for one delivery, in s (default 1800: 0.1.0 needs ~12 min for 2,000 files)",
    )
    p.add_argument(
        "--broker", default="127.0.0.1:5672", help="RabbitMQ HOST:PORT, guest/guest (default %(default)s)"
    )
    p.add_argument("--keep", action="store_true", help="keep the working directory under /tmp")
    p.add_argument(
        "--debug",
        action="store_true",
        help="the agents log at DEBUG (with --keep: a timeline of each hop from their logs; costs some CPU)",
    )


def bundled(args: argparse.Namespace) -> bool:
    """May files cross in bundles (issue 24)? Unless --bundle-files 0, as the relay's own default
    (bundles on) or the number given: the benchmark then counts files, not entries."""
    return args.bundle_files is None or args.bundle_files > 0


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in the sizes of a full or a --quick run, then check the values (p.error: exit 2)."""
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown or not only:
        p.error(f"--only takes a comma-separated subset of {','.join(SCENARIOS)} (got {args.only!r})")
    args.only = [s for s in SCENARIOS if s in only]
    try:
        args.scale = [int(n) for n in str(args.scale).split(",") if n.strip()]
    except ValueError:
        p.error(f"--scale takes comma-separated counts (got {args.scale!r})")
    if not args.scale or min(args.scale) < 1:
        p.error("--scale takes counts of at least 1")
    try:
        args.centrals = sorted({int(n) for n in str(args.centrals).split(",") if n.strip()})
    except ValueError:
        p.error(f"--centrals takes comma-separated pool sizes (got {args.centrals!r})")
    if args.centrals_transfers is not None and args.centrals_transfers < 1:
        p.error("--centrals-transfers must be at least 1")
    if not args.centrals or min(args.centrals) != 1 or max(args.centrals) > 9:
        p.error("--centrals takes pool sizes from 1 to 9, 1 among them (the baseline)")
    args.fs = args.fs or default_kind()
    why = check_kind(args.fs)
    if why:
        p.error(why)
    for key in (
        "big_mb",
        "many",
        "many_kb",
        "mixed",
        "mixed_mb",
        "latency_runs",
        "status_runs",
        "idle_entries",
        "repeat",
        "scale_tree",
        "links_big_mb",
        "links_files",
        "links_file_mb",
        "centrals_files",
        "centrals_file_mb",
    ):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    rates = (args.links_rate_mbit, args.centrals_rate_mbit)
    if min(args.idle_seconds, args.timeout, args.scale_timeout, *rates) <= 0:
        p.error(
            "--idle-seconds, --timeout, --scale-timeout, --links-rate-mbit and --centrals-rate-mbit "
            "must be positive"
        )
    if args.quiet < 0:
        p.error("--quiet must not be negative")
