"""The data relay_bench.py relays: random files, hard links of them put into upload's file_dir as a
careful writer does, and finished entries written into the agents' state databases (idle, status)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Callable

from relay_probes import agent_config

from synkler.devkit.localrelay import ROLES, LocalRelay
from synkler.hops.checksum import md5_entry
from synkler.state import Entry, State

CHUNK = 8 << 20


def write_random(path: Path, size: int) -> None:
    """Random bytes, so neither rsync nor the filesystem can take a shortcut on the content."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n


def make_files(directory: Path, prefix: str, count: int, size: int) -> dict[str, str]:
    """`count` random files of `size` bytes in a fresh `directory`; returns name -> md5."""
    directory.mkdir(parents=True)
    md5s: dict[str, str] = {}
    for i in range(count):
        path = directory / f"{prefix}{i:05d}.bin"
        write_random(path, size)
        md5s[path.name] = md5_entry(path)
    return md5s


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link where `dst` is on the same file system, else a copy (a fresh file system per run)."""
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        shutil.copyfile(src, dst)


def link_into(sources: Iterable[Path], file_dir: Path) -> Callable[[], None]:
    """Prepare hard links (copies, across file systems) of finished entries for upload's file_dir;
    the returned function puts them in place. Each entry is linked (a directory file by file) under
    a hidden name first (upload ignores names starting with '.') and then renamed into place, as a
    careful writer does. The sources stay for the next repetition and its direct rsync."""
    moves: list[tuple[Path, Path]] = []
    for src in sources:
        hidden = file_dir / f".bench-{src.name}"
        if src.is_dir():
            shutil.copytree(src, hidden, copy_function=link_or_copy)
        else:
            link_or_copy(src, hidden)
        moves.append((hidden, file_dir / src.name))

    def put() -> None:
        for hidden, final in moves:
            os.rename(hidden, final)

    return put


def seed_states(relay: LocalRelay, count: int) -> None:
    """Write `count` delivered entries into each role's state database (the agents are not running).

    One entry every 30 s going back in time, the same entry id at all three roles as in a real relay.
    """
    now = time.time()
    ids = [uuid.uuid4().hex for _ in range(count)]
    final = {"upload": "done", "central": "expired", "download": "done"}
    peer = {"upload": "central", "central": "upload", "download": "central"}
    central_dir = agent_config(relay, "central").file_dir / relay.instance
    for role in ROLES:
        state = State(agent_config(relay, role).state_db)
        try:
            with state.transaction():
                for i, eid in enumerate(ids):
                    name = f"run-{i:05d}.dat"
                    created = now - (count - i) * 30
                    entry = Entry(
                        id=eid,
                        name=name,
                        kind="file",
                        md5=hashlib.md5(name.encode()).hexdigest(),
                        state=final[role],
                        size=4096 + i,
                        files=1,
                        peer=peer[role],
                        attempt=1,
                        created=created,
                    )
                    if role == "upload":
                        entry.path = f"{central_dir}/staging/{eid}/"
                        entry.signature = uuid.uuid5(uuid.NAMESPACE_OID, name).hex
                        entry.stored_as = name
                    elif role == "central":
                        entry.stored_as = name
                        entry.due = created + 1800
                    else:
                        entry.path = f"{central_dir}/stored/{eid}"
                        entry.stored_as = name
                    state.insert(entry)
        finally:
            state.close()
