"""File modes through a real relay: what the agents keep for themselves is owner-only while they run,
what they deliver keeps the modes it had at upload, and cleanup scripts get the umask the agents
were started with (not the agents' own 077)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.relay_helpers import deliver

from synkler.hops.checksum import md5_entry

# A cleanup script that records the umask it runs with and makes a file of its own beside it.
UMASK_RECORDER = (
    "import os, sys; u = os.umask(0); os.umask(u); "
    "open(os.path.join(sys.argv[1], sys.argv[2] + '.umask'), 'w').write(oct(u))"
)


def umask_recorder(directory: Path) -> str:
    return shlex.join([sys.executable, "-c", UMASK_RECORDER, str(directory), "%f"])


def mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


@contextmanager
def started_with_umask(umask: int) -> Iterator[None]:
    """Agents started inside inherit `umask` (as from a shell or a unit with UMask=)."""
    before = os.umask(umask)
    try:
        yield
    finally:
        os.umask(before)


def put(upload_dir: Path, name: str, data: bytes, file_mode: int) -> str:
    """Write a file with `file_mode` beside file_dir and rename it in; return its md5."""
    tmp = upload_dir.parent / f".{name}.writing"
    tmp.write_bytes(data)
    tmp.chmod(file_mode)
    md5 = md5_entry(tmp)
    os.rename(tmp, upload_dir / name)
    return md5


def test_a_running_relay_keeps_its_own_files_owner_only_and_delivers_each_file_with_its_mode(make_relay):
    relay = make_relay()
    records = {side: relay.workdir / f"{side}-scripts" for side in ("upload", "download")}
    for side, directory in records.items():
        directory.mkdir()
        relay.write_config(side, {"cleanup_script": umask_recorder(directory)})
    md5s = {
        "shared.txt": put(relay.dirs["upload"], "shared.txt", b"for everyone\n", 0o644),
        "group.txt": put(relay.dirs["upload"], "group.txt", b"for the group\n", 0o640),
        "mine.txt": put(relay.dirs["upload"], "mine.txt", b"for me\n", 0o600),
        "tool": put(relay.dirs["upload"], "tool", b"#!/bin/sh\n", 0o755),
    }
    tree = relay.workdir / "run-1"
    (tree / "sub").mkdir(parents=True)
    tree.chmod(0o755)
    (tree / "sub").chmod(0o750)
    (tree / "sub" / "data").write_bytes(b"data")
    (tree / "sub" / "data").chmod(0o604)
    md5s["run-1"] = md5_entry(tree)
    os.rename(tree, relay.dirs["upload"] / "run-1")

    with started_with_umask(0o002):  # neither 022 nor 077: what the scripts get shows where it came from
        relay.start()
    deliver(relay, md5s)
    relay.wait_for(
        "cleanup scripts", lambda: all(len(list(d.iterdir())) == len(md5s) for d in records.values())
    )

    # What arrived has the modes it had at upload (rsync --archive), not the agents' umask.
    down = relay.dirs["download"]
    assert {name: mode(down / name) for name in md5s} == {
        "shared.txt": 0o644,
        "group.txt": 0o640,
        "mine.txt": 0o600,
        "tool": 0o755,
        "run-1": 0o755,
    }
    assert (mode(down / "run-1" / "sub"), mode(down / "run-1" / "sub" / "data")) == (0o750, 0o604)

    # Each cleanup script ran with the umask the agents were started with, and its file shows it.
    for directory in records.values():
        for made in directory.iterdir():
            assert made.read_text() == "0o2", made
            assert mode(made) == 0o664, made

    # While the agents run: their databases (and WAL files), pidfiles, the scripts' records,
    # central's spool and download's staging are for the agents' user alone.
    assert all(relay.alive(role) for role in ("upload", "central", "download"))
    private = {}
    for role in ("upload", "central", "download"):
        base = relay.workdir / role
        for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "synkler.pid"):
            private[base / name] = 0o600
    for side in ("upload", "download"):
        private[relay.workdir / side / "state.sqlite.scripts"] = 0o700
    private[relay.workdir / "upload" / "state.sqlite.bundle"] = 0o700  # (empty: a bundle's push)
    spool = relay.dirs["central"] / relay.instance
    # (staging/upload itself takes the mode of upload's file_dir from rsync: staging keeps others out.)
    for path in (spool, spool / "staging", spool / "stored", spool / "growing"):
        private[path] = 0o700
    private[down / f".synkler-{relay.instance}"] = 0o700
    assert {str(path): oct(mode(path)) for path in private} == {
        str(path): oct(want) for path, want in private.items()
    }
    # Central's verified copies keep their modes too (inside its private spool).
    stored = spool / "stored"
    assert sorted(oct(mode(stored / e.id)) for e in relay.entries("central")) == sorted(
        oct(m) for m in (0o644, 0o640, 0o600, 0o755, 0o755)
    )


def test_rsync_gets_the_umask_the_agent_was_started_with_so_no_perms_delivers_as_before(make_relay, sshd):
    # With --no-perms a new file gets the sender's mode masked by the receiving rsync's umask: 0644
    # under the starting 022, but 0600 had rsync been given the agent's own 077.
    relay = make_relay(download={"rsync_opts": [*sshd.rsync_opts(), "--no-perms"]})
    md5 = put(relay.dirs["upload"], "report.csv", b"a,b\n", 0o644)
    with started_with_umask(0o022):
        relay.start()
    deliver(relay, {"report.csv": md5})
    assert mode(relay.dirs["download"] / "report.csv") == 0o644
