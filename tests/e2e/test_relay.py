"""The whole path of an entry through three real agents, RabbitMQ, sshd and rsync: what arrives.

Each test checks what a user would: the bytes and md5 at download, the cleanup scripts' runs,
central's copy, and that no staging debris is left behind. The same relay's cleanup scripts, its
restarts, its copies gone bad and its hazards are in test_relay_cleanup.py, test_relay_restarts.py,
test_relay_corruption.py and test_relay_hazards.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from support.relay_helpers import (
    assert_clean,
    deliver,
    is_clean,
    place,
    write_random,
)

from synkler.hops.checksum import md5_entry


def test_one_file_arrives_with_identical_bytes(make_relay):
    relay = make_relay()
    relay.start()
    data = os.urandom(300_000)
    md5 = place(relay.dirs["upload"], "measurement.raw", data)
    deliver(relay, {"measurement.raw": md5})
    assert (relay.dirs["download"] / "measurement.raw").read_bytes() == data
    assert relay.states("central") == {"measurement.raw": "delivered"}
    assert [e.state for e in relay.entries("upload")] == ["done"]


def test_an_empty_file_arrives_empty(make_relay):
    relay = make_relay()
    relay.start()
    md5 = place(relay.dirs["upload"], "empty", b"")
    deliver(relay, {"empty": md5})
    assert (relay.dirs["download"] / "empty").stat().st_size == 0


def test_a_directory_with_an_empty_subdirectory_and_a_symlink_arrives_whole(make_relay):
    relay = make_relay()
    tree = relay.workdir / "run-7"
    (tree / "raw" / "deep").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "raw" / "a.dat").write_bytes(os.urandom(50_000))
    (tree / "raw" / "deep" / "b.dat").write_bytes(b"b")
    (tree / "notes.txt").write_text("notes\n")
    os.symlink("raw/a.dat", tree / "latest")
    md5 = md5_entry(tree)
    os.rename(tree, relay.dirs["upload"] / "run-7")
    relay.start()
    deliver(relay, {"run-7": md5})
    got = relay.dirs["download"] / "run-7"
    assert (got / "empty").is_dir() and list((got / "empty").iterdir()) == []
    assert os.readlink(got / "latest") == "raw/a.dat"
    assert (got / "raw" / "deep" / "b.dat").read_bytes() == b"b"


def test_a_directory_of_big_files_arrives_intact_and_is_hashed_on_the_way(make_relay):
    relay = make_relay()
    tree = relay.workdir / "run-8"
    (tree / "raw").mkdir(parents=True)
    for rel in ("a.raw", "raw/b.raw", "raw/c.raw"):
        write_random(tree / rel, 16 << 20)
    (tree / "notes.txt").write_text("notes\n")
    md5 = md5_entry(tree)
    relay.start()
    os.rename(tree, relay.dirs["upload"] / "run-8")
    deliver(relay, {"run-8": md5}, timeout=120)
    # Central and download hashed its files while rsync wrote them (synkler.hops.follow), and the tree
    # digest made with those came out right.
    for role in ("central", "download"):
        assert "run-8: hashed while it arrived" in relay.log_path(role).read_text(), role


def test_names_with_spaces_quotes_and_non_ascii_survive_both_hops(make_relay):
    relay = make_relay()
    relay.start()
    names = [
        "two words.txt",
        'it\'s "quoted".dat',
        "ünïcødé-日本語.bin",
        "-starts-with-dash",
        "semi;colon $(touch pwned) `x` & y.txt",
        "back\\slash*?[].txt",
    ]
    md5s = {name: place(relay.dirs["upload"], name, name.encode() * 100) for name in names}
    deliver(relay, md5s)
    assert sorted(os.listdir(relay.dirs["download"])) == sorted([*names, f".synkler-{relay.instance}"])
    assert not (relay.dirs["download"] / "pwned").exists() and not Path("pwned").exists()


def test_names_starting_with_hash_or_semicolon_and_a_255_byte_name_arrive_and_a_refused_name_blocks_none(
    make_relay,
):
    # rsync takes a line of its --files-from list that starts with '#' or ';' for a comment.
    relay = make_relay()
    relay.start()
    longest = "é" * 127 + "x"  # 255 bytes in UTF-8, the most a name may have
    assert len(longest.encode()) == 255
    names = ["#hash first.txt", ";semicolon first.txt", "#", ";", "-", "--rsh=evil", longest]
    md5s = {}
    for i, name in enumerate(names):
        tmp = relay.dirs["upload"].parent / f".tmp-{i}"  # a dot name of its own would be too long
        tmp.write_bytes(name.encode() * 50)
        md5s[name] = md5_entry(tmp)
        os.rename(tmp, relay.dirs["upload"] / name)
    (relay.dirs["upload"] / "line\nbreak.txt").write_bytes(b"refused")  # a control character
    deliver(relay, md5s)
    assert sorted(os.listdir(relay.dirs["download"])) == sorted([*names, f".synkler-{relay.instance}"])
    log = relay.log_path("upload").read_text()
    assert log.count("line\\nbreak.txt: not sending it") == 1, relay.log_tail("upload")
    assert "line\nbreak.txt" not in relay.states("upload")


def test_a_name_that_is_not_utf8_relays_byte_exact_without_stopping_the_others(make_relay):
    # Old and Windows instruments write Latin-1 names; on POSIX a name is bytes.
    relay = make_relay()
    relay.start()
    raw = b"caf\xe9 r\xe9sum\xe9.txt"
    name = os.fsdecode(raw)  # as Python lists it: the bytes it cannot decode as surrogate escapes
    md5s = {name: place(relay.dirs["upload"], name, b"latin-1 " * 1000)}
    md5s["plain.txt"] = place(relay.dirs["upload"], "plain.txt", b"utf-8")
    deliver(relay, md5s)
    assert raw in os.listdir(os.fsencode(relay.dirs["download"]))
    status = subprocess.run(relay.command("upload", "status"), capture_output=True, text=True, check=True)
    assert "caf\\xe9 r\\xe9sum\\xe9.txt" in status.stdout


def test_a_hundred_small_files_all_arrive(make_relay):
    relay = make_relay()
    relay.start()
    md5s = {
        f"small-{i:03d}.dat": place(relay.dirs["upload"], f"small-{i:03d}.dat", os.urandom(i * 37))
        for i in range(100)
    }
    deliver(relay, md5s, timeout=120)
    assert len(relay.entries("central")) == 100


@pytest.mark.alone  # download pulls part of it while upload still pushes: a matter of timing
def test_a_200_mb_file_arrives_intact(make_relay, sshd):
    # The push is held to 40 MB/s (about 5 s), so that download's early pull always has part of the
    # file to take before the push ends: unlimited on loopback, a quiet machine pushes 200 MB in
    # about a second, and the `fetch` can end the early pull before it took a byte.
    relay = make_relay(upload={"rsync_opts": [*sshd.rsync_opts(), "--bwlimit=40000"]})
    relay.start()
    big = relay.workdir / "big.bin"
    write_random(big, 200 << 20)
    os.chmod(big, 0o640)
    os.utime(big, (1_600_000_000, 1_600_000_000))
    md5 = md5_entry(big)
    os.rename(big, relay.dirs["upload"] / "big.bin")
    deliver(relay, {"big.bin": md5}, timeout=240)
    # Central hashed it while rsync wrote it (synkler.hops.follow), not in a second read; download pulled
    # part of it while upload still pushed it, and hashed that as it came.
    assert "big.bin: hashed while it arrived" in relay.log_path("central").read_text()
    early = re.search(
        r"big\.bin: (\d+) of 209715200 bytes were pulled while", relay.log_path("download").read_text()
    )
    assert early and int(early[1]) > 0
    # Its mode and mtime came along, as with any pull (the last run after the fetch sets them).
    st = os.stat(relay.dirs["download"] / "big.bin")
    assert (st.st_mode & 0o777, st.st_mtime) == (0o640, 1_600_000_000)
    assert os.listdir(relay.dirs["central"] / relay.instance / "growing") == []


def wait_until_upload_watches(relay) -> None:
    """A file renamed in before upload watches file_dir is found by its first scan and settles."""
    relay.wait_for("upload to watch", lambda: "watching" in relay.log_path("upload").read_text(), 10)


def test_a_file_renamed_in_whole_goes_at_once_and_one_written_in_place_waits_to_settle(make_relay):
    relay = make_relay(upload={"settle_seconds": 4})
    relay.start()
    up = relay.dirs["upload"]
    wait_until_upload_watches(relay)
    renamed = place(up, "renamed.raw", os.urandom(4096))
    placed = time.time()
    deliver(relay, {"renamed.raw": renamed}, timeout=30)
    [entry] = relay.entries("upload")
    assert entry.created - placed < 2  # offered well before 4 s of settling
    data = os.urandom(4096)
    with open(up / "in-place.raw", "wb") as f:
        f.write(data)
    closed = time.time()
    deliver(relay, {"renamed.raw": renamed, "in-place.raw": hashlib.md5(data).hexdigest()}, timeout=30)
    offered = next(e.created for e in relay.entries("upload") if e.name == "in-place.raw")
    assert offered - closed >= 4


def test_a_file_renamed_in_while_still_open_for_writing_waits_until_it_is_written(make_relay):
    relay = make_relay(upload={"settle_seconds": 2})
    relay.start()
    up = relay.dirs["upload"]
    wait_until_upload_watches(relay)
    first, rest = os.urandom(1 << 20), os.urandom(1 << 20)
    with open(relay.workdir / "growing.raw", "wb") as f:
        f.write(first)
        f.flush()
        os.rename(relay.workdir / "growing.raw", up / "growing.raw")  # the writer is not done yet
        relay.wait_for(
            "upload to see it still open",
            lambda: (
                "growing.raw: renamed in, but is still open for writing"
                in relay.log_path("upload").read_text()
            ),
            10,
        )
        f.write(rest)
    deliver(relay, {"growing.raw": hashlib.md5(first + rest).hexdigest()})
    assert [e.state for e in relay.entries("upload")] == ["done"]  # no early, partial version was sent


def test_a_name_collision_at_download_keeps_both_and_identical_content_is_not_duplicated(make_relay):
    relay = make_relay()
    down = relay.dirs["download"]
    (down / "data.csv").write_text("the old data\n")
    (down / "same.txt").write_text("identical\n")
    relay.start()
    place(relay.dirs["upload"], "data.csv", b"the new data\n")
    place(relay.dirs["upload"], "same.txt", b"identical\n")
    relay.wait_for("both delivered", lambda: relay.all_done({"data.csv", "same.txt"}))
    assert (down / "data.csv").read_text() == "the old data\n"
    assert (down / "data (2).csv").read_text() == "the new data\n"
    assert (down / "same.txt").read_text() == "identical\n"
    assert not (down / "same (2).txt").exists()
    stored = {e.name: e.stored_as for e in relay.entries("download")}
    assert stored == {"data.csv": "data (2).csv", "same.txt": "same.txt"}
    assert_clean(relay)


def test_a_delivered_entry_is_sent_again_only_when_its_content_changes(make_relay):
    relay = make_relay()
    relay.start()
    up = relay.dirs["upload"] / "report.txt"
    md5 = place(relay.dirs["upload"], "report.txt", b"version 1\n")
    deliver(relay, {"report.txt": md5})
    # Touching it (same content) is not a new version: upload re-reads it and just notes the new mtime.
    before = relay.entries("upload")[0].signature
    os.utime(up, (time.time() + 5, time.time() + 5))
    relay.wait_for("the touch noticed", lambda: relay.entries("upload")[0].signature != before)
    assert len(relay.entries("upload")) == 1
    up.write_text("version 2\n")
    relay.wait_for("version 2 delivered", lambda: len(relay.entries("download")) == 2 and relay.all_done())
    down = relay.dirs["download"]
    assert (down / "report.txt").read_text() == "version 1\n"
    assert (down / "report (2).txt").read_text() == "version 2\n"
    assert len(relay.entries("upload")) == 2
    assert len(relay.entries("central")) == 2


def test_an_entry_changed_before_it_was_sent_is_withdrawn_and_only_the_new_version_arrives(make_relay, sshd):
    slow = [*sshd.rsync_opts(), "--bwlimit=2000"]  # KB/s: the first version takes ~4 s to push
    relay = make_relay()
    relay.write_config("upload", {"rsync_opts": slow})
    relay.start()
    up = relay.dirs["upload"]
    write_random(relay.workdir / "v1", 8 << 20)
    os.rename(relay.workdir / "v1", up / "growing.dat")
    relay.wait_for("version 1 being pushed", lambda: relay.states("upload").get("growing.dat") == "uploading")
    write_random(relay.workdir / "v2", 1 << 20)
    md5 = md5_entry(relay.workdir / "v2")
    os.rename(relay.workdir / "v2", up / "growing.dat")  # the instrument rewrote it
    relay.wait_for(
        "version 2 delivered, and upload told so",
        lambda: (
            [e.state for e in relay.entries("download")] == ["done"]
            and sorted(e.state for e in relay.entries("upload")) == ["done", "superseded"]
        ),
        60,
    )
    assert md5_entry(relay.dirs["download"] / "growing.dat") == md5
    assert sorted(e.state for e in relay.entries("central")) == ["delivered", "withdrawn"]
    assert sorted(os.listdir(relay.dirs["download"])) == [f".synkler-{relay.instance}", "growing.dat"]
    # Upload's push of version 1 may write once more after central dropped its staging (the kill
    # takes a moment on a busy machine): central sweeps what is a minute old, once a minute.
    relay.wait_for("central's staging swept", lambda: is_clean(relay), 150)


def test_symlinks_pointing_outside_file_dir_travel_as_links_and_their_targets_stay_home(make_relay):
    relay = make_relay()
    secret = relay.workdir / "secret.key"
    secret.write_bytes(b"SECRET-" + os.urandom(32).hex().encode())
    os.symlink(secret, relay.dirs["upload"] / "key-link")  # an entry that is itself a link
    tree = relay.workdir / "run-8"
    tree.mkdir()
    (tree / "data.csv").write_text("1,2,3\n")
    os.symlink("/etc", tree / "etc-link")  # a link to a directory outside, inside an entry
    os.symlink("../../secret.key", tree / "up-and-out")
    md5s = {"key-link": md5_entry(relay.dirs["upload"] / "key-link"), "run-8": md5_entry(tree)}
    os.rename(tree, relay.dirs["upload"] / "run-8")
    relay.start()
    deliver(relay, md5s)
    down = relay.dirs["download"]
    assert os.readlink(down / "key-link") == str(secret)
    assert os.readlink(down / "run-8" / "etc-link") == "/etc"
    assert os.readlink(down / "run-8" / "up-and-out") == "../../secret.key"
    # Nothing of what the links point to was copied, at central or at download.
    for side in ("central", "download"):
        for top, _dirs, files in os.walk(relay.dirs[side]):  # os.walk does not follow links
            for name in files:
                path = Path(top, name)
                assert path.is_symlink() or secret.read_bytes() not in path.read_bytes(), path
    assert sorted(p.name for p in (down / "run-8").iterdir()) == ["data.csv", "etc-link", "up-and-out"]
