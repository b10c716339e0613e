"""Three real agents, RabbitMQ, sshd and rsync, with copies that go bad on the way (rsync wrappers in
tests/tools flip a byte or cut a run): every one is caught by its md5 and the hop redone; and
download's early copies, pulled while upload pushes."""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path

import pytest
from support.relay_helpers import (
    TOOLS,
    assert_clean,
    deliver,
    place,
    write_random,
)

from synkler.hops.checksum import md5_entry


def corrupting_rsync(relay, side: str, times: int) -> str:
    """An `rsync` setting whose first `times` runs flip a byte of what they delivered."""
    return shlex.join(
        [sys.executable, str(TOOLS / "corrupting_rsync.py"), str(flips(relay, side)), str(times)]
    )


def test_an_early_copy_gone_bad_is_dropped_and_the_file_pulled_whole(make_relay, sshd):
    # Download's first pull of the file while upload pushes it gets a byte flipped: the md5 after
    # the fetch must catch it, and the file is pulled whole (central's copy is fine: no `corrupt`).
    # The push is held to 40 MB/s (about 4 s): unlimited, a quiet machine pushes it in a second and
    # the fetch can end the early pull before it took anything.
    relay = make_relay(upload={"rsync_opts": [*sshd.rsync_opts(), "--bwlimit=40000"]})
    relay.write_config("download", {"rsync": corrupting_rsync(relay, "download", 1)})
    big = relay.workdir / "big.bin"
    write_random(big, 160 << 20)
    md5 = md5_entry(big)
    relay.start()
    os.rename(big, relay.dirs["upload"] / "big.bin")
    deliver(relay, {"big.bin": md5}, timeout=240)
    [entry] = relay.entries("download")
    assert flips(relay, "download").read_text().splitlines() == [entry.id]
    log = relay.log_path("download").read_text()
    assert f"big.bin: the early copy is not used (md5 mismatch at download: expected {md5}" in log
    assert "were pulled while upload pushed it" not in log
    assert "download got md5" not in relay.log_path("central").read_text()


def logged_at(log: str, text: str) -> float:
    """The time of the first line of an agent's log that ends with `text`."""
    for line in log.splitlines():
        if line.endswith(text):
            return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
    raise AssertionError(f"no line ending with {text!r} in\n{log}")


def test_download_pulls_a_big_file_at_once_when_central_has_verified_it(make_relay, sshd):
    # Download's link is slower than upload's (about 10 s of pushing): when the fetch comes,
    # download's early pull is in the middle of a run that would go on for many seconds, bringing
    # only what the file held when that run began. The fetch ends that run (what it appended stays)
    # and the last run, from the verified copy, starts at once.
    relay = make_relay(
        upload={"rsync_opts": [*sshd.rsync_opts(), "--bwlimit=7000"]},  # KiB/s
        download={"rsync_opts": [*sshd.rsync_opts(), "--bwlimit=2500"]},
    )
    big = relay.workdir / "big.bin"
    write_random(big, 70 << 20)  # big enough to be pulled early (hops.follow.EARLY_MIN)
    md5 = md5_entry(big)
    relay.start()
    os.rename(big, relay.dirs["upload"] / "big.bin")
    deliver(relay, {"big.bin": md5}, timeout=120)
    log = relay.log_path("download").read_text()
    assert "early, while upload pushes it" in log
    verified = logged_at(
        relay.log_path("central").read_text(),
        f"big.bin: md5 verified at central ({md5}); download may fetch it",
    )
    pulling = logged_at(log, "big.bin: pulling from central")
    # Was mostly 10-25 s here (the early run went on to its end); a fetch and a pass take under 1 s.
    assert 0 <= pulling - verified < 4, pulling - verified


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_download_restarted_during_an_early_pull_keeps_what_it_had_and_resumes(make_relay, sshd, how):
    # Download pulls a big file while upload pushes it (slowly), and is stopped halfway, before the
    # fetch. Its next start must keep the copy and complete it after the fetch, not pull it again.
    slow = [*sshd.rsync_opts(), "--bwlimit=8000"]  # KB/s: the push takes about 12 s
    relay = make_relay(upload={"rsync_opts": slow})
    big = relay.workdir / "big.bin"
    write_random(big, 96 << 20)
    md5 = md5_entry(big)
    relay.start()
    os.rename(big, relay.dirs["upload"] / "big.bin")
    staging = relay.dirs["download"] / f".synkler-{relay.instance}"

    def copy_size() -> int | None:  # download's early copy (before the fetch, download has no entry)
        entry = next(iter(relay.entries("upload")), None)
        if entry is None or relay.entries("download"):
            return None
        try:
            return (staging / entry.id).stat().st_size
        except FileNotFoundError:
            return None

    relay.wait_for("download to pull early", lambda: (copy_size() or 0) > 24 << 20, 60, interval=0.05)
    if how == "sigterm":
        relay.stop("download")
    else:
        relay.kill("download")
    [entry] = relay.entries("upload")
    copy = staging / entry.id
    had = copy.stat().st_size
    relay.start("download")
    # What a user sees: the copy is there all along and never shorter, until it is placed.
    sizes: list[int | None] = []

    def delivered() -> bool:
        sizes.append(copy.stat().st_size if copy.exists() else None)
        return relay.all_done({"big.bin"})

    relay.wait_for("big.bin delivered", delivered, 120, interval=0.05)
    assert md5_entry(relay.dirs["download"] / "big.bin") == md5
    assert_clean(relay)
    placed = sizes.index(None) if None in sizes else len(sizes)
    assert all(size is None for size in sizes[placed:]), "the copy vanished before it was placed"
    assert min(s for s in sizes[:placed] if s is not None) >= had
    log = relay.log_path("download").read_text()
    found = re.search(rf"keeping the early copy of entry {entry.id} \((\d+) bytes\) for its fetch", log)
    assert found and int(found[1]) >= had  # (after a SIGKILL, its rsync may have written a little more)
    # The run after the fetch went on from what was there: the bytes pulled before the stop were
    # not pulled again.
    kept = re.search(r"big\.bin: (\d+) of 100663296 bytes were pulled while", log)
    assert kept and int(kept[1]) >= had, log[-3000:]


def flips(relay, side: str) -> Path:
    """Where the corrupting wrapper on `side` lists the entries it corrupted, one line each."""
    return relay.workdir / f"{side}-flips"


@pytest.mark.parametrize("size", [100_000, 24 << 20], ids=["small", "followed"])
@pytest.mark.parametrize("side", ["upload", "download"])
def test_a_corrupted_copy_is_discarded_and_the_hop_redone(make_relay, side, size):
    # A file of 24 MiB is hashed while it arrives (synkler.hops.follow): the byte flipped after rsync
    # wrote it must make the receiving side read the file, not trust what it read on the way.
    relay = make_relay()
    relay.write_config(side, {"rsync": corrupting_rsync(relay, side, 1)})
    data = os.urandom(size)
    md5s = {"precious.bin": place(relay.dirs["upload"], "precious.bin", data)}
    # Siblings that travel in the same rsync run and are not corrupted go on unharmed.
    md5s.update(
        {f"sibling{i}": place(relay.dirs["upload"], f"sibling{i}", os.urandom(999)) for i in range(4)}
    )
    relay.start()
    deliver(relay, md5s)
    assert (relay.dirs["download"] / "precious.bin").read_bytes() == data
    checker = "central" if side == "upload" else "download"  # who verifies what this side's rsync wrote
    assert f"md5 mismatch at {checker}" in relay.log_path(checker).read_text()
    assert len(flips(relay, side).read_text().splitlines()) == 1  # one entry of the run was hit


@pytest.mark.parametrize("side", ["upload", "download"])
def test_a_byte_flipped_in_a_followed_directory_is_caught_and_the_hop_redone(make_relay, side):
    # The wrapper flips a byte of the tree's first file after rsync wrote it: the tree digest made
    # from the followed files must not hide it.
    relay = make_relay()
    relay.write_config(side, {"rsync": corrupting_rsync(relay, side, 1)})
    tree = relay.workdir / "run-9"
    (tree / "raw").mkdir(parents=True)
    for rel in ("a.raw", "raw/b.raw"):
        write_random(tree / rel, 16 << 20)
    md5 = md5_entry(tree)
    os.rename(tree, relay.dirs["upload"] / "run-9")
    relay.start()
    deliver(relay, {"run-9": md5}, timeout=120)
    checker = "central" if side == "upload" else "download"
    assert f"md5 mismatch at {checker}" in relay.log_path(checker).read_text()
    assert len(flips(relay, side).read_text().splitlines()) == 1


def test_a_copy_corrupted_on_every_try_ends_failed_with_the_original_untouched(make_relay):
    relay = make_relay()
    relay.write_config("upload", {"rsync": corrupting_rsync(relay, "upload", 99)})
    relay.write_config("central", {"max_attempts": 2})
    relay.start()
    data = os.urandom(10_000)
    place(relay.dirs["upload"], "doomed.bin", data)
    relay.wait_for(
        "failed everywhere",
        lambda: (
            relay.states("upload") == {"doomed.bin": "failed"}
            and relay.states("central") == {"doomed.bin": "failed"}
        ),
    )
    assert (relay.dirs["upload"] / "doomed.bin").read_bytes() == data
    assert os.listdir(relay.dirs["download"]) == [f".synkler-{relay.instance}"]
    assert "md5 mismatch at central" in relay.entries("upload")[0].reason
    assert flips(relay, "upload").read_text().splitlines() == ["doomed.bin", "doomed.bin"]


def test_a_stored_copy_gone_bad_at_central_is_fetched_again_from_upload(make_relay):
    relay = make_relay()
    corrupt_at_central = shlex.join(
        [sys.executable, str(TOOLS / "corrupting_rsync.py"), str(flips(relay, "download")), "1", "--source"]
    )
    relay.write_config("download", {"rsync": corrupt_at_central})
    relay.start()
    data = os.urandom(200_000)
    md5s = {"rotten.bin": place(relay.dirs["upload"], "rotten.bin", data)}
    deliver(relay, md5s)
    assert (relay.dirs["download"] / "rotten.bin").read_bytes() == data
    assert "getting it again from upload" in relay.log_path("central").read_text()
    assert relay.log_path("upload").read_text().count("rotten.bin: pushing") == 2
    assert [e.attempt for e in relay.entries("central")] == [2]


def test_a_directory_pull_cut_off_halfway_is_completed_not_taken_for_corruption(make_relay):
    relay = make_relay()
    cut = [sys.executable, str(TOOLS / "cutting_rsync.py"), str(relay.workdir / "cut")]
    # One counted failure would end the entry: a broken-off run must not count, nor look corrupt.
    relay.write_config("download", {"rsync": shlex.join(cut), "max_attempts": 1, "retry_max_seconds": 1})
    tree = relay.workdir / "run-9"
    (tree / "sub").mkdir(parents=True)
    (tree / "small.txt").write_text("small\n")
    (tree / "sub" / "big.bin").write_bytes(os.urandom(200_000))
    md5s = {"run-9": md5_entry(tree)}
    os.rename(tree, relay.dirs["upload"] / "run-9")
    relay.start()
    deliver(relay, md5s)
    log = relay.log_path("download").read_text()
    assert (relay.workdir / "cut").exists() and "link to central is down" in log
    assert "md5 mismatch" not in log and "corrupt" not in relay.log_path("central").read_text()
