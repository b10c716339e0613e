"""What upload's scan job costs per name it looks at, in-process (docs/performance.md, "Upload's
scan: the cost of each look").

    python bench/scan_bench.py [--files 20000] [--repeat 5]

Writes --files files of 4 KiB (no sidecars) into a fresh directory under /var/tmp, lists it whole
once (as upload does at start), then times synkler.agents.listing.scan on all of its names, as
renamed in (the read-lease test) and as written in place, and the md5 of bundles of 1,000 of them
(hard links, as upload makes). Prints the process CPU time per file, best of --repeat. Runs the
code of the tree it is in; for an A/B, copy it into each tree and run it there, in turn.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synkler.agents import listing  # noqa: E402
from synkler.agents.sidecars import Sidecars  # noqa: E402


def cpu(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def look(d: str, names: list[str], renamed: bool) -> float:
    """CPU of one look at all `names`, after a whole listing with the same sidecar cache."""
    cache = Sidecars(d)
    kw: dict[str, Any] = {}
    if "take_sidecars" in inspect.signature(listing.scan).parameters:  # (older trees: no such thing)
        kw["take_sidecars"] = set
    listing.scan(d, set, cache, None, **kw)
    took = set(names) if renamed else set()
    return cpu(lambda: listing.scan(d, lambda: took, cache, names, **kw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="synkler-scan-", dir="/var/tmp")
    try:
        d = os.path.join(root, "files")
        bundle = os.path.join(root, "bundle")
        os.mkdir(d)
        os.mkdir(bundle)
        data = os.urandom(4096)
        names = [f"f{i:06d}" for i in range(args.files)]
        for name in names:
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        for name in names[:1000]:
            os.link(os.path.join(d, name), os.path.join(bundle, name))
        rounds = max(1, args.files // 1000)

        def hashes() -> None:
            for _ in range(rounds):
                listing.hash_each([bundle], None, [bundle])

        figures = {
            "look, renamed in": min(look(d, names, True) for _ in range(args.repeat)) / args.files,
            "look, written in place": min(look(d, names, False) for _ in range(args.repeat)) / args.files,
            "md5 of bundles of 1000": min(cpu(hashes) for _ in range(args.repeat)) / (rounds * 1000),
        }
        for what, seconds in figures.items():
            print(f"{what:28s} {seconds * 1e6:6.1f} µs/file")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
