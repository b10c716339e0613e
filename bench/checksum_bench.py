"""How fast each checksum synkler can compute runs on this CPU, alone and beside md5 in one read.

    python bench/checksum_bench.py [--mib 256] [--repeat 5]

Hashes an in-memory buffer (no disk: what the CPU costs), then a file through synkler's own
hops.checksum.digest_entry (md5 alone, md5 + sha256, md5 + blake2b), and prints MB/s, best of
--repeat. Figures from this machine are in docs/checksums.md.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synkler.hops.checksum import digest_entry, new_hash  # noqa: E402

CHUNK = 4 << 20


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="data to hash, MiB")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    size = args.mib << 20
    data = memoryview(os.urandom(CHUNK))
    rounds = size // CHUNK

    def in_memory(*algs: str) -> None:
        hashes = [new_hash(a) for a in algs]
        for _ in range(rounds):
            for h in hashes:
                h.update(data)
        for h in hashes:
            h.hexdigest()

    print(f"{ssl.OPENSSL_VERSION}; {args.mib} MiB, best of {args.repeat}")
    for algs in (("md5",), ("sha256",), ("blake2b",), ("md5", "sha256"), ("md5", "blake2b")):
        seconds = best(lambda a=algs: in_memory(*a), args.repeat)
        print(f"memory  {'+'.join(algs):12} {size / seconds / 1e6:8.0f} MB/s")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data"
        with open(path, "wb") as f:
            for _ in range(rounds):
                f.write(data)
        for strong in (None, "sha256", "blake2b"):
            seconds = best(lambda s=strong: digest_entry(path, s), args.repeat)
            label = "md5" + (f"+{strong}" if strong else "")
            print(f"file    {label:12} {size / seconds / 1e6:8.0f} MB/s  (digest_entry, page cache)")


if __name__ == "__main__":
    main()
