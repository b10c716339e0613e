"""Bundles at a download with `layout: bagit` on the real relay (RabbitMQ, sshd, rsync): many small
files renamed into upload's file_dir at once cross in bundles, and each arrives at download as the
BagIt bag it would have been alone (docs/architecture.md, "Bundles"), also when download is killed
while it builds and places those bags.

What a user checks: a bag per file, that bagit-python validates, whose md5 manifest has the file's
md5 and whose Payload-Oxum its size; each cleanup script once per file at each end, at download on
the bag; nothing left in staging.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.faultkit import recorder, script_runs
from support.relay_helpers import assert_clean, started

from synkler import bundles
from synkler.devkit.localrelay import LocalRelay
from synkler.hops.checksum import md5_entry

BUNDLES = {"bundle_files": 40, "bundle_min": 5, "settle_seconds": 0.3}
STARTS = 120  # seconds for a wait that spans agents' starts on a loaded machine

# A download cleanup script that records '%f<TAB>%F<TAB>md5 of the one file in %F/data'.
RECORD_BAG = (
    "import hashlib, os, sys; log, name, bag = sys.argv[1:4]; d = os.path.join(bag, 'data');"
    " (f,) = os.listdir(d); md5 = hashlib.md5(open(os.path.join(d, f), 'rb').read()).hexdigest();"
    " open(log, 'ab').write(os.fsencode(name) + b'\\t' + os.fsencode(bag) + b'\\t' + md5.encode() + b'\\n')"
)


def bag_recorder(log: Path) -> str:
    return shlex.join([sys.executable, "-c", RECORD_BAG, str(log), "%f", "%F"])


def bag_runs(log: Path) -> list[tuple[str, str, str]]:
    if not log.exists():
        return []
    rows = (line.split(b"\t") for line in log.read_bytes().splitlines())
    return [(os.fsdecode(name), os.fsdecode(bag), md5.decode()) for name, bag, md5 in rows]


def synkler(relay: LocalRelay, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(relay.command(key, *args), capture_output=True, text=True, timeout=120)


def put_together(relay: LocalRelay, n: int, size: int) -> dict[str, str]:
    """n files written beside upload's file_dir, then renamed in one after another (they settle
    together, so bundles form); their md5s."""
    source = relay.workdir / "source"
    source.mkdir()
    md5s = {}
    for i in range(n):
        (source / f"s{i:03d}.dat").write_bytes(os.urandom(size + i))
        md5s[f"s{i:03d}.dat"] = md5_entry(source / f"s{i:03d}.dat")
    for name in md5s:
        os.rename(source / name, relay.dirs["upload"] / name)
    return md5s


def bagit_relay(make_relay) -> tuple[LocalRelay, Path]:
    work = make_relay.next_dir()
    relay = make_relay(
        upload={**BUNDLES, "cleanup_script": recorder(work / "cleanup-upload.log")},
        download={"layout": "bagit", "cleanup_script": bag_recorder(work / "cleanup-download.log")},
        central={"keep_minutes": 0.02},
        verbose=False,
    )
    return relay, work


def assert_bags(relay: LocalRelay, md5s: dict[str, str], bags: dict[str, str]) -> None:
    """Each file (name -> md5) in its bag (name -> the bag's name), valid, once; nothing else there."""
    validator = pytest.importorskip("bagit")
    down = relay.dirs["download"]
    assert sorted(n for n in os.listdir(down) if not n.startswith(".")) == sorted(bags.values())
    bundle_ids = {e.id for e in relay.entries("download") if e.kind == bundles.KIND}
    for name, md5 in md5s.items():
        bag = validator.Bag(str(down / bags[name]))
        bag.validate()  # every manifest and tag manifest, Payload-Oxum, completeness
        assert list(bag.payload_files()) == [f"data/{name}"], name  # the file alone
        assert bag.entries[f"data/{name}"]["md5"] == md5, name
        assert bag.info["Payload-Oxum"] == f"{(down / bags[name] / 'data' / name).stat().st_size}.1"
        crossed, _, member = bag.info["External-Identifier"].partition("/")
        if crossed in bundle_ids:  # a file that went in a bundle: its bundle and its name
            assert member == name
        else:  # one the scan saw first, that went alone: its entry id
            assert member == "" and len(crossed) == 32


def assert_cleanups_once(relay: LocalRelay, work: Path, md5s: dict[str, str], bags: dict[str, str]) -> None:
    assert sorted(script_runs(work / "cleanup-upload.log")) == sorted(md5s.items())
    down = relay.dirs["download"]
    expected = [(bags[n], str(down / bags[n]), md5) for n, md5 in md5s.items()]  # %F: the bag
    assert sorted(bag_runs(work / "cleanup-download.log")) == sorted(expected)


def cleanups_ran(work: Path, n: int) -> bool:
    return (
        len(script_runs(work / "cleanup-upload.log")) >= n
        and len(bag_runs(work / "cleanup-download.log")) >= n
    )


def nothing_left(relay: LocalRelay) -> None:
    assert_clean(relay)  # download's staging and central's
    assert os.listdir(relay.dirs["download"] / f".synkler-{relay.instance}") == []
    assert not (relay.dirs["upload"] / bundles.UPLOAD_DIR).exists()  # bundles are read in place
    relay.wait_for(
        "central empties", lambda: os.listdir(relay.dirs["central"] / relay.instance / "stored") == [], 30
    )


def crossed_in_bundles(relay: LocalRelay) -> int:
    return sum(e.files for e in relay.entries("central") if e.kind == bundles.KIND)


def test_bundled_files_each_arrive_as_their_own_valid_bag_and_are_cleaned_up_once_at_each_end(make_relay):
    pytest.importorskip("bagit")
    relay, work = bagit_relay(make_relay)
    down = relay.dirs["download"]
    started(relay)
    md5s = put_together(relay, 30, 3000)
    relay.wait_for("every file delivered", lambda: relay.all_done(set(md5s)), STARTS)
    relay.wait_for("every cleanup script run", lambda: cleanups_ran(work, 30), STARTS)
    assert crossed_in_bundles(relay) >= 20  # most in bundles (one the scan saw first may go alone)
    bags = {n: n for n in md5s}
    assert_bags(relay, md5s, bags)
    assert_cleanups_once(relay, work, md5s, bags)
    nothing_left(relay)
    assert "cannot be placed" not in relay.log_path("download").read_text()
    assert all(e.state == "done" and e.cleanup == "done" for e in relay.entries("download"))
    assert sorted(os.listdir(down / "s007.dat")) == [
        "bag-info.txt", "bagit.txt", "data", "manifest-md5.txt", "manifest-sha256.txt",
        "tagmanifest-md5.txt", "tagmanifest-sha256.txt",
    ]  # fmt: skip
    # synkler verify at download reads each file in its bag.
    verified = synkler(relay, "download", "verify", "--depth", "full")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    (down / "s007.dat" / "data" / "s007.dat").write_bytes(os.urandom(3007))  # the same size, other bytes
    verified = synkler(relay, "download", "verify", "--depth", "full")
    assert verified.returncode == 1 and "'s007.dat' has md5" in verified.stdout, verified.stdout


def building_bags(staging: Path) -> tuple[int, int] | None:
    """(bags built, bags half-built: their file moved into their work directory) in a bundle's bag
    directory of download's staging, once it holds a bag built; else None."""
    try:
        for item in os.scandir(staging):
            if item.name.endswith(".bag") and not os.path.lexists(os.path.join(item.path, "data")):
                names = os.listdir(item.path)
                built = len([n for n in names if not n.endswith(".tmp")])
                half = [
                    n for n in names if n.endswith(".tmp") and os.listdir(os.path.join(item.path, n, "data"))
                ]
                return (built, len(half)) if built else None
    except (FileNotFoundError, NotADirectoryError):
        pass  # (a bag made, or a work directory renamed, as it was looked at)
    return None


def freeze_when(relay: LocalRelay, role: str, what: str, look, timeout: float = STARTS):
    """Poll `look` (every millisecond) until it returns something, then SIGSTOP the agent `role` at
    once (so what it did can be looked at as it was) and return what `look` found."""
    deadline = time.monotonic() + timeout
    pid = relay.procs[role].pid
    while time.monotonic() < deadline:
        found = look()
        if found:
            os.kill(pid, signal.SIGSTOP)
            return found
        if relay.procs[role].poll() is not None:
            raise AssertionError(f"{role} exited while waiting for {what}\n" + relay.log_tail(role))
        time.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}\n" + relay.log_tail(role))


def test_download_killed_while_it_builds_and_places_the_bags_of_bundles_places_each_once(make_relay):
    pytest.importorskip("bagit")
    relay, work = bagit_relay(make_relay)
    down = relay.dirs["download"]
    staging = down / f".synkler-{relay.instance}"
    started(relay)
    md5s = put_together(relay, 80, 200_000)  # 80 files, two bundles of 40: bags take a while to build

    # Killed while it builds a bundle's bags: the names were committed, some bags built, some not.
    freeze_when(relay, "download", "a bundle's bags being built", lambda: building_bags(staging))
    at_kill = building_bags(staging)
    placed_at_kill = [n for n in os.listdir(down) if not n.startswith(".")]
    relay.kill("download")
    print(
        f"first kill: (built, half-built) bags in staging {at_kill}, bags in file_dir {len(placed_at_kill)}"
    )
    assert at_kill is not None and 0 < at_kill[0] < 40
    started(relay, "download")
    # Killed again as soon as it renames bags into file_dir (before or after it commits them).
    freeze_when(
        relay,
        "download",
        "bags renamed into file_dir",
        lambda: len([n for n in os.listdir(down) if not n.startswith(".")]) > len(placed_at_kill),
    )
    print(f"second kill: bags in file_dir {len([n for n in os.listdir(down) if not n.startswith('.')])}")
    relay.kill("download")
    started(relay, "download")

    relay.wait_for("every file delivered", lambda: relay.all_done(set(md5s)), STARTS)
    relay.wait_for("every cleanup script run", lambda: cleanups_ran(work, 80), STARTS)
    assert crossed_in_bundles(relay) >= 40
    bags = {n: n for n in md5s}  # each once: never a second bag of a file ("NAME (2)")
    assert_bags(relay, md5s, bags)
    assert_cleanups_once(relay, work, md5s, bags)
    nothing_left(relay)
