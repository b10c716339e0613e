"""A fresh, never-filled file system (or directory) for each timed run of the benchmark.

ext4 makes a directory whose files were just deleted slow to fill again: it avoids reusing an inode
freed less than 60 s ago, and every new file's inode search steps over each such inode (a direct
rsync into a directory emptied a moment before took 14 s instead of 1.9 s). A run that writes into a
file system where nothing was ever deleted does not meet that, whatever ran before it. So each timed
run, the direct rsync and each relay alike, writes into one of these, made for it and thrown away
after it:

- ``ext4`` (default where we may mount, i.e. as root): a sparse file on the work directory's disk,
  ``mkfs.ext4`` without a journal (as the root file system of the machine the figures were first
  taken on), loop-mounted. Real disk writes and real ``fsync`` (the agents' SQLite commits), like a
  real host; deleting it frees one inode of the disk, not thousands.
- ``tmpfs``: memory only; no disk, no ``fsync`` cost (which flatters the relay's per-entry commits).
- ``dir``: a new directory under the work directory, never filled before (no root needed). Its
  files are deleted only at the end of the whole run, with the work directory; inodes freed by
  earlier runs of the same file system can still be met.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

KINDS = ("ext4", "tmpfs", "dir")
MIN_BYTES = 512 << 20


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def default_kind() -> str:
    return "ext4" if can_mount() and shutil.which("mkfs.ext4") else "dir"


def check_kind(kind: str) -> str | None:
    """Why `kind` cannot be used here (or None)."""
    if kind == "dir":
        return None
    if not can_mount():
        return f"--fs {kind} needs root (mount); use --fs dir"
    if kind == "ext4" and not shutil.which("mkfs.ext4"):
        return "--fs ext4 needs mkfs.ext4 (e2fsprogs); use --fs tmpfs or --fs dir"
    return None


def _run(argv: list[str]) -> None:
    run = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if run.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed ({run.returncode}): {run.stderr.strip()}")


class FreshFs:
    """`with FreshFs(kind, path, data_bytes, files) as where:` a never-filled place at `where`, big
    enough for `data_bytes` in `files` files (sized generously: the relay writes three copies and
    two receipt documents)."""

    def __init__(self, kind: str, path: Path, data_bytes: int, files: int):
        self.kind = kind
        self.path = path
        self.image = path.with_name(path.name + ".img")
        # Per file: three copies (upload, central, download) and two receipt documents (upload's and
        # download's: each a file of a block or two). With four inodes per file, a relay of 20,000
        # ran out of inodes near its end unless central had expired enough of its copies by then.
        self.size = max(MIN_BYTES, 4 * data_bytes + (256 << 20) + 5 * files * 4096)
        self.inodes = 6 * files + 16384
        self.mounted = False

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True)
        if self.kind == "dir":
            return self.path
        try:
            if self.kind == "tmpfs":
                _run(
                    [
                        "mount",
                        "-t",
                        "tmpfs",
                        "-o",
                        f"size={self.size},nr_inodes={self.inodes}",
                        "tmpfs",
                        str(self.path),
                    ]
                )
            else:
                with open(self.image, "wb") as f:
                    f.truncate(self.size)  # sparse: costs the disk only what is written
                _run(
                    ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-N", str(self.inodes),
                     "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", str(self.image)]
                )  # fmt: skip
                _run(["mount", "-o", "loop", str(self.image), str(self.path)])
            self.mounted = True
        except BaseException:
            self.__exit__()
            raise
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            # Lazy: a process that still has a file open (a dying agent) must not keep the mount.
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False
        if self.kind != "dir":
            self.image.unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:
                pass
