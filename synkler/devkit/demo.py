"""`synkler demo`: relay generated files and a directory through all three roles on this machine."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .. import receipts
from ..agents.central import Mid
from ..errors import ExitStatus
from ..hops.checksum import md5_entry
from .localrelay import ROLES, LocalRelay
from .sshd import LocalSshd


def _make_files(upload_dir: Path) -> dict[str, str]:
    """A handful of files of different sizes and one directory tree; returns name -> md5."""
    sizes = {"hello.txt": 13, "empty.dat": 0, "sample 1 MB.bin": 1 << 20, "sample-8MB.bin": 8 << 20}
    staging = upload_dir.parent / "making"
    staging.mkdir()
    for name, size in sizes.items():
        (staging / name).write_bytes(b"hello synkler" if name == "hello.txt" else os.urandom(size))
    tree = staging / "run-0042"
    (tree / "raw").mkdir(parents=True)
    (tree / "empty-subdir").mkdir()
    for i in range(5):
        (tree / "raw" / f"frame{i:03d}.dat").write_bytes(os.urandom(64 << 10))
    (tree / "notes.txt").write_text("acquired by the demo\n")
    os.symlink("notes.txt", tree / "README")
    md5s = {p.name: md5_entry(p) for p in staging.iterdir()}
    # Appear in file_dir by rename, as a careful instrument writer does.
    for p in staging.iterdir():
        os.rename(p, upload_dir / p.name)
    staging.rmdir()
    return md5s


def _follow(relay: LocalRelay, stop: threading.Event) -> None:
    """Print the agents' INFO lines as they come (each names its agent)."""
    offsets = dict.fromkeys(ROLES, 0)
    last = False
    while not last:
        last = stop.is_set()  # one more pass after the stop, for the final lines
        for role in ROLES:
            path = relay.log_path(role)
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(offsets[role])
                data = f.read()
            cut = data.rfind(b"\n") + 1
            offsets[role] += cut
            for line in data[:cut].decode("utf-8", "replace").splitlines():
                if " INFO " in line or " WARNING " in line or " ERROR " in line:
                    print(f"  {line.split(' ', 2)[-1]}", flush=True)  # without the date and time
        stop.wait(0.2)


def run_demo(*, keep: bool = False, timeout: float = 120, verbose: bool = False) -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="synkler-demo-"))
    instance = "demo-" + uuid.uuid4().hex[:8]
    print(f"synkler demo: instance {instance}, working in {workdir}")
    ok = False
    try:
        with LocalSshd(workdir / "sshd") as sshd:
            print(f"  sshd on {sshd.host}:{sshd.port} with throwaway keys")
            settings = _settings(workdir)
            with LocalRelay(workdir, sshd, instance, settings=settings, verbose=verbose) as relay:
                relay.start()
                stop = threading.Event()
                follower = threading.Thread(target=_follow, args=(relay, stop), daemon=True)
                follower.start()
                try:
                    md5s = _make_files(relay.dirs["upload"])
                    print(f"  placed {len(md5s)} entries in upload's file_dir {relay.dirs['upload']}")
                    relay.wait_for("every entry delivered", lambda: relay.all_done(set(md5s)), timeout)
                    relay.wait_for(
                        "central copies expired",
                        lambda: all(s == Mid.EXPIRED for s in relay.states("central").values()),
                        timeout,
                    )
                finally:
                    stop.set()
                    follower.join()
                ok = _report(relay, md5s, workdir)
    except AssertionError as e:
        print(f"demo FAILED: {e}")
    finally:
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"demo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s")
    return ExitStatus.OK if ok else ExitStatus.FAILURE


def _settings(workdir: Path) -> dict[str, dict[str, Any]]:
    """Each role's settings: cleanup scripts that write down what they cleaned, and deliveries
    proven as in production (download signs receipts, upload and central pin its key)."""
    cleanup = [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"]
    # Deliveries proven as in production: download signs receipts, upload and central pin its key.
    key = receipts.new_key()
    key_file = workdir / "receipt.key"
    key_file.write_bytes(receipts.private_bytes(key))
    key_file.chmod(0o600)
    pinned = receipts.public_text(key)
    settings: dict[str, dict[str, Any]] = {
        "upload": {
            "cleanup_script": shlex.join([*cleanup, str(workdir / "upload-cleaned.txt"), "%f"]),
            "download_public_key": pinned,
        },
        "download": {
            "cleanup_script": shlex.join([*cleanup, str(workdir / "download-cleaned.txt"), "%f"]),
            "receipt_key": str(key_file),
        },
        "central": {"keep_minutes": 0.05, "download_public_key": pinned},
    }
    return settings


def _report(relay: LocalRelay, md5s: dict[str, str], workdir: Path) -> bool:
    """Check and print what a user would: md5 at download, scripts once each, nothing left at central."""
    down_dir = relay.dirs["download"]
    central = {e.name: e for e in relay.entries("central")}
    cleaned_up = _lines(workdir / "upload-cleaned.txt")
    cleaned_down = _lines(workdir / "download-cleaned.txt")
    header = (
        f"{'entry':20} {'kind':5} {'bytes':>10}  {'md5 at download':32}     {'central':9}  cleanup up/down"
    )
    print(f"\n  {header}")
    md5_ok = scripts_ok = True
    for name, md5 in sorted(md5s.items()):
        path = down_dir / name
        got = md5_entry(path) if os.path.lexists(path) else "missing"
        md5_ok &= got == md5
        ups, downs = cleaned_up.count(name), cleaned_down.count(name)
        scripts_ok &= ups == downs == 1
        entry = central[name]
        print(
            f"  {name:20} {entry.kind:5} {entry.size:10}  {got:32} {'ok ' if got == md5 else 'BAD'} "
            f"{entry.state:9}  {ups}/{downs}"
        )
    base = relay.dirs["central"] / relay.instance
    leftovers = [*(base / "staging").glob("*/*"), *(base / "stored").iterdir()]
    expired = all(e.state == Mid.EXPIRED for e in central.values())
    print(
        f"\n  md5 verified at download for every entry: {md5_ok}; cleanup scripts ran once per entry on both "
        f"sides: {scripts_ok}; central's copies removed after keep_minutes: {expired and not leftovers}"
    )
    return md5_ok and scripts_ok and expired and not leftovers


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
