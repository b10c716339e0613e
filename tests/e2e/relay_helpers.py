"""Small helpers for the end-to-end relay tests."""

from __future__ import annotations

import os
from pathlib import Path

from synkler.checksum import md5_entry


def place(upload_dir: Path, name: str, data: bytes) -> str:
    """Write a file next to file_dir and rename it in, as a careful writer does; return its md5."""
    tmp = upload_dir.parent / ("." + name + ".writing")
    tmp.write_bytes(data)
    md5 = md5_entry(tmp)
    os.rename(tmp, upload_dir / name)
    return md5


def write_random(path: Path, size: int, chunk: int = 8 << 20) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


def tree_listing(top: Path) -> list[str]:
    """Relative paths under `top`, for "nothing left behind" assertions."""
    return sorted(str(p.relative_to(top)) for p in top.rglob("*"))
