"""Hashing a file while rsync writes it (synkler.hops.follow), against real rsync runs on real files.

The follower's digest may stand in for reading the file after the hop only when it is certainly
the digest of the file as it is now: every way a byte could differ must send the caller back to
reading the file.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from synkler.hops.checksum import md5_entry
from synkler.hops.follow import Follower, is_temp_name, verified_md5
from synkler.hops.transfer import PARTIAL_DIR

SIZE = 24 << 20
SLOW = "--bwlimit=48m"  # about half a second for SIZE: the follower reads while rsync writes


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, str]:
    data = os.urandom(SIZE)
    path = tmp_path / "src" / "data.bin"
    path.parent.mkdir()
    path.write_bytes(data)
    return path, hashlib.md5(data).hexdigest()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


def rsync(*args: str) -> None:
    subprocess.run(["rsync", "-a", *args], check=True)


def flip_middle_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(SIZE // 2)
        byte = f.read(1)
        f.seek(SIZE // 2)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_the_digest_of_a_followed_transfer_stands_for_the_file(source, dest):
    src, md5 = source
    follower = Follower(str(dest), "data.bin").start()
    rsync(SLOW, str(src), f"{dest}/")
    followed = follower.finish()
    assert set(followed) == {b""} and followed[b""].md5 == md5 and followed[b""].size == SIZE
    assert verified_md5(str(dest / "data.bin"), md5, followed) == (md5, True)


def test_a_byte_changed_after_rsync_renamed_the_file_is_read_not_vouched_for(source, dest):
    src, md5 = source
    follower = Follower(str(dest), "data.bin").start()
    rsync(str(src), f"{dest}/")
    flip_middle_byte(dest / "data.bin")  # as the tests' corrupting rsync wrapper does, before "sent"
    followed = follower.finish()
    assert followed == {}
    got, unread = verified_md5(str(dest / "data.bin"), md5, followed)
    assert not unread and got == hashlib.md5((dest / "data.bin").read_bytes()).hexdigest() != md5


def test_a_byte_changed_after_the_follow_ended_is_read_not_vouched_for(source, dest):
    src, md5 = source
    follower = Follower(str(dest), "data.bin").start()
    rsync(SLOW, str(src), f"{dest}/")
    followed = follower.finish()
    assert followed[b""].md5 == md5
    flip_middle_byte(dest / "data.bin")  # the ctime moves on: the digest no longer stands for it
    got, unread = verified_md5(str(dest / "data.bin"), md5, followed)
    assert not unread and got != md5


def test_a_file_replaced_by_another_with_the_same_bytes_is_read_again(source, dest):
    src, md5 = source
    follower = Follower(str(dest), "data.bin").start()
    rsync(SLOW, str(src), f"{dest}/")
    followed = follower.finish()
    os.rename(dest / "data.bin", dest / "old")
    (dest / "data.bin").write_bytes((dest / "old").read_bytes())
    assert verified_md5(str(dest / "data.bin"), md5, followed) == (md5, False)


def test_an_inplace_transfer_has_no_temporary_file_and_is_not_followed(source, dest):
    src, md5 = source
    follower = Follower(str(dest), "data.bin").start()
    rsync("--inplace", str(src), f"{dest}/")
    followed = follower.finish()
    assert followed == {}
    assert verified_md5(str(dest / "data.bin"), md5, followed) == (md5, False)


def test_a_transfer_cut_off_and_resumed_from_its_partial_file_is_never_vouched_for_wrongly(source, dest):
    src, md5 = source
    partial = f"--partial-dir={PARTIAL_DIR}"
    follower = Follower(str(dest), "data.bin").start()
    # All of rsync's processes stop, as when an agent stops or the link breaks.
    cut = subprocess.Popen(
        ["rsync", "-a", partial, "--bwlimit=8m", str(src), f"{dest}/"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while not any(n.startswith(".data.bin.") and (dest / n).stat().st_size for n in os.listdir(dest)):
            assert time.monotonic() < deadline, "rsync wrote nothing"
            time.sleep(0.02)
    finally:
        os.killpg(cut.pid, signal.SIGTERM)
        cut.wait()
    # What it got waits for the next run (rsync's receiver moves it there as it stops).
    deadline = time.monotonic() + 30
    while not (dest / PARTIAL_DIR / "data.bin").exists():
        assert time.monotonic() < deadline, "no partial file kept"
        time.sleep(0.02)
    rsync(partial, SLOW, str(src), f"{dest}/")  # rsync 3.5 completes the partial file where it lies
    followed = follower.finish()
    assert followed in ({}, {b"": followed.get(b"")}) and all(f.md5 == md5 for f in followed.values())
    assert verified_md5(str(dest / "data.bin"), md5, followed)[0] == md5


def test_a_very_long_name_is_found_under_rsyncs_shortened_temporary_name(tmp_path, dest):
    name = "n" * 250
    data = os.urandom(SIZE)
    (tmp_path / name).write_bytes(data)
    follower = Follower(str(dest), name).start()
    rsync(SLOW, str(tmp_path / name), f"{dest}/")
    followed = follower.finish()
    assert followed[b""].md5 == hashlib.md5(data).hexdigest()


def test_a_follower_with_nothing_to_follow_ends_at_once_and_leaves_no_thread(dest):
    before = threading.active_count()
    started = time.monotonic()
    assert Follower(str(dest), "never.bin").start().finish() == {}
    follower = Follower(str(dest), "never.bin").start()
    follower.stop()
    assert follower.finish() == {}  # a second call closes nothing twice
    assert time.monotonic() - started < 5
    assert threading.active_count() == before


def test_a_missing_directory_means_no_follow_not_an_error(tmp_path):
    assert Follower(str(tmp_path / "nowhere"), "x").start().finish() == {}


@pytest.mark.parametrize(
    "name, temp, expected",
    [
        (b"data.bin", b".data.bin.a1B2c3", True),
        (b"data.bin", b".data.bin.a1B2c", False),  # five characters
        (b"data.bin", b".data.bi.a1B2c3", False),  # another file's
        (b"data.bin", b".data.bin.old.a1B2c3", False),
        (b"data.", b".data.a1B2c3", True),  # rsync drops one trailing dot
        (b".hidden", b".hidden.a1B2c3", True),  # ... and a leading one
        (b"n" * 250, b"." + b"n" * 246 + b".a1B2c3", True),  # a long name is cut
        (b"n" * 250, b"." + b"n" * 100 + b".a1B2c3", False),
    ],
)
def test_rsyncs_temporary_names_are_recognised(name, temp, expected):
    assert is_temp_name(name, temp) is expected


def test_a_follower_whose_transfer_never_comes_gives_up_by_itself(dest, monkeypatch):
    monkeypatch.setattr("synkler.hops.follow.IDLE_GIVE_UP", 0.2)
    follower = Follower(str(dest), "late.bin").start()
    deadline = time.monotonic() + 10  # it looks at the clock at least once a second
    while not follower.ended:
        assert time.monotonic() < deadline, "the follower kept waiting"
        time.sleep(0.05)
    assert follower.finish() == {}


def make_tree(root: Path) -> dict[bytes, str]:
    """A directory entry as instruments write them: big files, a subdirectory, an empty directory,
    a small file and a symlink. Returns the md5 of each regular file by path within the tree."""
    (root / "raw" / "empty").mkdir(parents=True)
    md5s = {}
    for rel, size in (
        ("a.bin", 12 << 20),
        ("raw/b.bin", 12 << 20),
        ("raw/c.bin", 8 << 20),
        ("notes.txt", 99),
    ):
        data = os.urandom(size)
        (root / rel).write_bytes(data)
        md5s[rel.encode()] = hashlib.md5(data).hexdigest()
    os.symlink("raw/b.bin", root / "link")
    return md5s


def test_each_file_of_a_directory_is_followed_and_the_tree_digest_stands(tmp_path, dest):
    md5s = make_tree(tmp_path / "run42")
    expected = md5_entry(tmp_path / "run42")
    follower = Follower(str(dest), "run42", "dir").start()  # rsync makes run42/ and raw/ as it goes
    rsync(SLOW, str(tmp_path / "run42"), f"{dest}/")
    followed = follower.finish()
    # The big files were read as they arrived; a small one may be renamed before it can be opened.
    assert {b"a.bin", b"raw/b.bin", b"raw/c.bin"} <= set(followed)
    assert all(f.md5 == md5s[rel] for rel, f in followed.items())
    assert verified_md5(str(dest / "run42"), expected, followed) == (expected, True)


def test_a_byte_changed_in_one_file_of_a_followed_directory_is_found_by_reading_it(tmp_path, dest):
    make_tree(tmp_path / "run42")
    expected = md5_entry(tmp_path / "run42")
    follower = Follower(str(dest), "run42", "dir").start()
    rsync(SLOW, str(tmp_path / "run42"), f"{dest}/")
    with open(dest / "run42" / "raw" / "b.bin", "r+b") as f:  # after rsync, before the check
        f.write(b"X")
    followed = follower.finish()
    assert b"raw/b.bin" not in followed and b"a.bin" in followed
    got, unread = verified_md5(str(dest / "run42"), expected, followed)
    assert not unread and got == md5_entry(dest / "run42") != expected


def test_a_file_made_and_renamed_between_two_reads_is_still_followed(dest):
    """rsync on a fast link makes, writes and renames a file of a directory entry well within the
    follower's 0.1 s between reads; the follower must open it before the rename all the same."""
    follower = Follower(str(dest), "run43", "dir").start()
    (dest / "run43").mkdir()  # wakes the follower, which then waits to read
    time.sleep(0.01)
    data = os.urandom(1 << 20)
    temp = dest / "run43" / ".a.bin.Xy12Zq"  # what rsync does, by hand
    temp.write_bytes(data)
    time.sleep(0.06)  # longer than the follower takes events, shorter than it waits to read
    os.rename(temp, dest / "run43" / "a.bin")
    followed = follower.finish()
    assert b"a.bin" in followed and followed[b"a.bin"].md5 == hashlib.md5(data).hexdigest()
