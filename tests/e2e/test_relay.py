"""The whole path of an entry through three real agents, RabbitMQ, sshd and rsync.

Each test checks what a user would: the bytes and md5 at download, the cleanup scripts' runs,
central's copy, and that no staging debris is left behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.relay_helpers import (
    TOOLS,
    assert_clean,
    close_connections_of,
    deliver,
    every_log_says,
    is_clean,
    place,
    take_dead_letters,
    write_random,
)

from synkler.hops.checksum import md5_entry

RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\t' + sys.argv[3] + '\\n')"


def recorder(log: Path) -> str:
    """A cleanup_script that appends '%f<TAB>%F' to `log`, run without a shell."""
    return shlex.join([sys.executable, "-c", RECORD, str(log), "%f", "%F"])


def runs(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    return [tuple(line.split("\t")) for line in log.read_text().splitlines()]


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
    assert sorted(p for p in os.listdir(relay.dirs["download"]) if not p.startswith(".")) == sorted(md5s)
    # Each file crossed once: alone, or in one bundle (those that settled together, by default).
    assert sum(e.files for e in relay.entries("central")) == 100


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


def test_cleanup_scripts_run_exactly_once_on_each_side_with_name_and_full_path(make_relay):
    relay = make_relay()
    up_log, down_log = relay.workdir / "up.log", relay.workdir / "down.log"
    relay.write_config("upload", {"cleanup_script": recorder(up_log)})
    relay.write_config("download", {"cleanup_script": recorder(down_log)})
    relay.start()
    md5s = {n: place(relay.dirs["upload"], n, n.encode()) for n in ("a.txt", "b c.txt", "d")}
    deliver(relay, md5s)
    relay.wait_for("cleanup scripts", lambda: len(runs(up_log)) == 3 and len(runs(down_log)) == 3)
    assert sorted(runs(up_log)) == sorted((n, str(relay.dirs["upload"] / n)) for n in md5s)
    assert sorted(runs(down_log)) == sorted((n, str(relay.dirs["download"] / n)) for n in md5s)
    # A restart finds nothing left to do: no script runs a second time, nothing is offered again.
    relay.stop()
    relay.start()
    relay.wait_for(
        "agents reconnected",
        lambda: all(
            relay.log_path(r).read_text().count("connected to broker") >= 2 for r in ("upload", "download")
        ),
    )
    md5s["e"] = place(relay.dirs["upload"], "e", b"e")  # proves the loop ran after the restart
    deliver(relay, md5s)
    relay.wait_for("cleanup of e", lambda: len(runs(up_log)) == 4 and len(runs(down_log)) == 4)
    assert sorted(n for n, _ in runs(up_log)) == ["a.txt", "b c.txt", "d", "e"]
    assert len(relay.entries("central")) == 4


def test_central_deletes_its_copy_keep_minutes_after_delivery_and_not_before(make_relay):
    keep_minutes = 0.1  # 6 s
    relay = make_relay(central={"keep_minutes": keep_minutes})
    relay.start()
    md5 = place(relay.dirs["upload"], "kept.bin", os.urandom(1000))
    relay.wait_for("delivered at central", lambda: relay.states("central").get("kept.bin") == "delivered")
    seen_delivered = time.time()
    entry = relay.entries("central")[0]
    stored = relay.dirs["central"] / relay.instance / "stored" / entry.id  # the entry itself, by its id
    assert md5_entry(stored) == md5
    # Watch the copy for most of the keep time: it must stay.
    while time.time() < seen_delivered + keep_minutes * 60 - 1.5:
        assert stored.exists(), "central copy deleted before keep_minutes had passed"
        time.sleep(0.1)
    relay.wait_for("central copy expired", lambda: relay.states("central").get("kept.bin") == "expired", 20)
    assert not os.path.lexists(stored)
    expired = relay.entries("central")[0]
    delivered_at = expired.due - keep_minutes * 60
    assert delivered_at <= seen_delivered
    assert expired.updated >= expired.due


def test_messages_sent_while_download_was_down_are_delivered_when_it_starts(make_relay):
    relay = make_relay()
    relay.start("upload", "central")
    md5s = {n: place(relay.dirs["upload"], n, os.urandom(5000)) for n in ("x1", "x2", "x3")}
    relay.wait_for(
        "waiting for download", lambda: relay.states("central") == dict.fromkeys(md5s, "downloading")
    )
    relay.stop("central")  # nobody but the broker holds the fetch requests now
    assert [p for p in os.listdir(relay.dirs["download"])] == []
    relay.start("download", "central")
    deliver(relay, md5s)


@pytest.mark.parametrize("victim", ["upload", "central", "download"])
def test_an_agent_killed_mid_transfer_and_restarted_loses_nothing_and_repeats_nothing(
    make_relay, sshd, victim
):
    slow = [*sshd.rsync_opts(), "--bwlimit=6000"]  # KB/s: the big file takes ~4 s per hop
    relay = make_relay()
    up_log, down_log = relay.workdir / "up.log", relay.workdir / "down.log"
    relay.write_config("upload", {"rsync_opts": slow, "cleanup_script": recorder(up_log)})
    relay.write_config("download", {"rsync_opts": slow, "cleanup_script": recorder(down_log)})
    write_random(relay.workdir / "big.bin", 24 << 20)
    md5s = {"big.bin": md5_entry(relay.workdir / "big.bin")}
    os.rename(relay.workdir / "big.bin", relay.dirs["upload"] / "big.bin")
    md5s.update({f"s{i}": place(relay.dirs["upload"], f"s{i}", os.urandom(2000)) for i in range(5)})
    relay.start()

    def partial_bytes(top: Path) -> int:
        return sum(p.stat().st_size for p in top.rglob("*") if p.is_file()) if top.exists() else 0

    if victim == "download":
        staging = relay.dirs["download"] / f".synkler-{relay.instance}"
        relay.wait_for("download mid-pull", lambda: partial_bytes(staging) > 2 << 20, 60)
    else:
        staging = relay.dirs["central"] / relay.instance / "staging"
        relay.wait_for("upload mid-push", lambda: partial_bytes(staging) > 2 << 20, 60)
    relay.kill(victim)
    relay.start(victim)
    if victim == "central":
        # Kill central a second time while download pulls from it.
        relay.wait_for(
            "download mid-pull",
            lambda: partial_bytes(relay.dirs["download"] / f".synkler-{relay.instance}") > 2 << 20,
            60,
        )
        relay.kill("central")
        relay.start("central")
    deliver(relay, md5s, timeout=120)
    relay.wait_for("cleanup scripts", lambda: len(runs(up_log)) == 6 and len(runs(down_log)) == 6)
    assert sorted(n for n, _ in runs(up_log)) == sorted(md5s)
    assert sorted(n for n, _ in runs(down_log)) == sorted(md5s)
    assert sorted(os.listdir(relay.dirs["download"])) == sorted([*md5s, f".synkler-{relay.instance}"])


def test_agents_reconnect_and_carry_on_after_the_broker_drops_their_connections(make_relay, rabbitmqctl):
    relay = make_relay()
    relay.start()
    md5s = {"before": place(relay.dirs["upload"], "before", b"before")}
    deliver(relay, md5s)
    assert close_connections_of(rabbitmqctl, relay.instance) == 3
    md5s["after"] = place(relay.dirs["upload"], "after", b"after")
    deliver(relay, md5s)
    assert every_log_says(relay, "reconnecting")


def test_heartbeats_keep_the_connection_up_during_a_long_transfer(make_relay, sshd):
    slow = [*sshd.rsync_opts(), "--bwlimit=2000"]
    hb = {"broker_heartbeat": 1}
    relay = make_relay(upload={**hb, "rsync_opts": slow}, central=hb, download={**hb, "rsync_opts": slow})
    relay.start()
    big = relay.workdir / "slow.bin"
    write_random(big, 8 << 20)  # ~4 s per hop at 2 MB/s: several heartbeat intervals
    md5s = {"slow.bin": md5_entry(big)}
    os.rename(big, relay.dirs["upload"] / "slow.bin")
    deliver(relay, md5s, timeout=60)
    for role in ("upload", "central", "download"):
        assert "reconnecting" not in relay.log_path(role).read_text(), role


@pytest.mark.alone  # "at once" is timed
def test_a_second_run_with_the_same_pidfile_exits_at_once(make_relay):
    relay = make_relay()
    relay.start("central")
    relay.wait_for(
        "central connected", lambda: "connected to broker" in relay.log_path("central").read_text()
    )
    started = time.monotonic()
    second = subprocess.run(relay.command("central", "run"), capture_output=True, timeout=20)
    assert second.returncode == 0
    assert second.stderr == b""
    assert time.monotonic() - started < 5
    assert relay.alive("central")
    pidfile = relay.workdir / "central" / "synkler.pid"
    assert pidfile.read_text().strip() == str(relay.procs["central"].pid)
    relay.stop("central")  # SIGTERM: an orderly stop removes the pidfile
    assert not pidfile.exists()


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


def test_malformed_and_hostile_messages_are_dead_lettered_and_the_relay_carries_on(make_relay, broker):
    from synkler import messages
    from synkler.broker.amqp import Broker, BrokerParams

    relay = make_relay()
    relay.start()
    # An agent's queue is declared by that agent (and central's and download's by their peers too).
    relay.wait_for("all three connected", lambda: every_log_says(relay, "connected to broker"))
    admin_params = BrokerParams(broker.host, broker.port)
    admin = Broker(admin_params, relay.instance, "test-admin")
    admin.connect(consume=False)
    try:
        entry, md5 = "0" * 32, "a" * 32
        head = f'{{"v":{messages.SCHEMA},"entry":"{entry}","at":1,'
        bad = [
            b"not json at all",
            b"\xff\xfe",
            b'{"v": 99, "type": "offer"}',
            f'{head}"type":"offer","from":"upload","name":"../../etc/passwd","kind":"file","size":1,'
            f'"files":1}}'.encode(),
            f'{head}"type":"fetch","from":"central","name":"x","kind":"file","size":1,"files":1,'
            f'"md5":"{md5}","attempt":1,"path":"/etc/../etc/shadow"}}'.encode(),
            f'{head}"type":"admit","from":"central","attempt":1,"dest":"/tmp"}}'.encode(),
        ]
        for body in bad[:4]:
            admin.publish("central", body)
        admin.publish("download", bad[4])
        admin.publish("upload", bad[5])  # well-formed, but for an entry upload never offered
        dead: list[bytes] = []
        relay.wait_for(
            "six dead letters",
            lambda: dead.extend(take_dead_letters(admin_params, relay.instance)) or len(dead) == 6,
            30,
        )
        assert sorted(dead) == sorted(bad)
    finally:
        admin.close()
    md5 = place(relay.dirs["upload"], "after-poison", b"still working")
    deliver(relay, {"after-poison": md5})
    assert all(relay.alive(r) for r in ("upload", "central", "download"))
    assert "dead-lettering" in relay.log_path("central").read_text()


def test_a_key_central_refuses_is_an_error_for_a_person_and_the_entry_waits_uncounted(make_relay, sshd):
    relay = make_relay()
    stranger = relay.workdir / "stranger_key"  # a key central's sshd does not know
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    rsh = sshd.rsh().replace(shlex.quote(str(sshd.client_key)), shlex.quote(str(stranger)))
    assert rsh != sshd.rsh()
    relay.write_config("upload", {"rsync_opts": [f"--rsh={rsh}"], "max_attempts": 1, "retry_max_seconds": 1})
    relay.start()
    place(relay.dirs["upload"], "waits.txt", b"for a person")

    def told() -> bool:
        return "This needs a person" in relay.log_path("upload").read_text()

    relay.wait_for("upload to say that ssh refused its key", told)
    log = relay.log_path("upload").read_text()
    # ssh exits 255; rsync says so, or 12 if it noticed the closed stream first (a race).
    assert re.search(
        r" ERROR waits\.txt: push to central refused by ssh or the key.s forced command on central: "
        r"exit (255|12): .*Permission denied",
        log,
    )
    relay.wait_for(
        "a few more tries", lambda: relay.log_path("upload").read_text().count("waits.txt: pushing") >= 3
    )
    [entry] = relay.entries("upload")
    assert (entry.state, entry.tries) == ("uploading", 0)  # max_attempts 1: one counted failure would end it
    assert relay.log_path("upload").read_text().count("This needs a person") == 1  # not a storm
    status = subprocess.run(relay.command("upload", "status"), capture_output=True, text=True, check=True)
    assert re.search(r"push to central: needs a person: exit (255|12)", status.stdout), status.stdout


def test_check_proves_ssh_and_rsync_to_central_and_names_what_fails(make_relay, sshd):
    relay = make_relay()
    for role in ("upload", "download"):
        ok = subprocess.run(relay.command(role, "check"), capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"ok    ssh + rsync to central {sshd.target}" in ok.stdout
    relay.write_config("upload", {"central_host": "nobody@127.0.0.1"})
    bad = subprocess.run(relay.command("upload", "check"), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "FAIL  ssh + rsync to central nobody@127.0.0.1" in bad.stdout
    assert "ok    broker" in bad.stdout


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


@pytest.mark.alone  # "within seconds" is timed
def test_an_agent_hashing_a_10_tib_file_stops_within_seconds_and_hashes_it_again_next_start(make_relay):
    relay = make_relay()

    def log() -> str:
        return relay.log_path("upload").read_text()

    relay.start("upload")  # alone: nobody admits the offer, so the entry stays offered while it is hashed
    sparse = relay.dirs["upload"].parent / ".huge.img"
    with open(sparse, "wb") as f:
        f.truncate(10 << 40)  # 10 TiB of holes: hours of md5
    os.rename(sparse, relay.dirs["upload"] / "huge.img")
    relay.wait_for("the hash", lambda: "huge.img: hashing" in log())
    for run in (1, 2):
        proc = relay.procs["upload"]
        started = time.monotonic()
        proc.terminate()
        proc.wait(timeout=10)  # TimeoutExpired fails the test
        assert time.monotonic() - started < 5
        assert proc.returncode == 0
        [entry] = relay.entries("upload")
        assert (entry.state, entry.md5) == ("offered", None)  # not withdrawn, not given a wrong md5
        if run == 1:
            relay.start("upload")
            relay.wait_for("the hash to start again", lambda: log().count("huge.img: hashing") == 2)
    assert log().count("huge.img: offered") == 1


@pytest.mark.alone  # it stops the shared broker, which every other relay would see go
def test_a_broker_restart_loses_nothing_and_the_agents_carry_on(make_relay, rabbitmqctl):
    relay = make_relay()
    relay.start()
    md5s = {"before": place(relay.dirs["upload"], "before", b"before")}
    deliver(relay, md5s)
    subprocess.run([rabbitmqctl, "-q", "stop_app"], check=True, capture_output=True)
    try:
        # While the broker is away, upload notices and hashes a new entry; its offer waits in the outbox.
        md5s["during"] = place(relay.dirs["upload"], "during", os.urandom(50_000))
        relay.wait_for("offer queued while the broker is down", lambda: "during" in relay.states("upload"))
    finally:
        subprocess.run([rabbitmqctl, "-q", "start_app"], check=True, capture_output=True)
    subprocess.run([rabbitmqctl, "-q", "await_startup"], check=True, capture_output=True, timeout=120)
    md5s["after"] = place(relay.dirs["upload"], "after", b"after")
    deliver(relay, md5s, timeout=120)
    assert all(relay.alive(r) for r in ("upload", "central", "download"))


GATED = (
    "import os, sys, time\n"
    "open(sys.argv[1] + '.started', 'a').write(sys.argv[2] + '\\n')\n"
    "while not os.path.exists(sys.argv[1] + '.gate'): time.sleep(0.05)\n"
    "open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')\n"
)


@pytest.mark.parametrize("side", ["upload", "download"])
def test_an_agent_killed_while_its_cleanup_script_runs_collects_the_result_and_never_reruns_it(
    make_relay, side
):
    relay = make_relay()
    log = relay.workdir / f"{side}-cleanup"
    relay.write_config(side, {"cleanup_script": shlex.join([sys.executable, "-c", GATED, str(log), "%f"])})
    relay.start()
    md5s = {"gated.txt": place(relay.dirs["upload"], "gated.txt", b"gated")}
    started = Path(f"{log}.started")
    relay.wait_for("the cleanup script started", started.exists)
    relay.kill(side)
    relay.start(side)
    Path(f"{log}.gate").touch()
    relay.wait_for(
        "the cleanup recorded as done", lambda: [e.cleanup for e in relay.entries(side)] == ["done"]
    )
    deliver(relay, md5s)
    assert log.read_text() == "gated.txt\n"
    assert started.read_text() == "gated.txt\n"


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


# A cleanup script as documented (`mv %F sent/`), waiting for a gate file first; it records the name
# and the md5 of what it found at %F ("-": nothing), then moves that away.
MOVER = (
    "import hashlib, os, sys, time\n"
    "log, name, path = sys.argv[1:4]\n"
    "open(log + '.started', 'a').write(name + '\\n')\n"
    "while not os.path.exists(log + '.gate'): time.sleep(0.05)\n"
    "found = hashlib.md5(open(path, 'rb').read()).hexdigest() if os.path.lexists(path) else '-'\n"
    "open(log, 'a').write(name + '\\t' + found + '\\n')\n"
    "os.makedirs(log + '.sent', exist_ok=True)\n"
    "os.rename(path, os.path.join(log + '.sent', str(len(open(log).readlines()))))\n"
)


def mover(log: Path) -> str:
    return shlex.join([sys.executable, "-c", MOVER, str(log), "%f", "%F"])


def status_of(relay, side: str) -> str:
    return subprocess.run(relay.command(side, "status"), capture_output=True, text=True, check=True).stdout


def test_a_newer_version_renamed_over_the_name_before_delivery_is_not_cleaned_up_and_is_delivered_too(
    make_relay,
):
    relay = make_relay()
    log = relay.workdir / "upload-cleanup"
    Path(f"{log}.gate").touch()  # upload's script runs as soon as it is started
    relay.write_config("upload", {"cleanup_script": mover(log)})
    up, down = relay.dirs["upload"], relay.dirs["download"]
    v1, v2 = os.urandom(100_000), os.urandom(150_000)
    md5_v1 = place(up, "report.bin", v1)
    relay.start("upload", "central")  # no download yet: v1 is sent and stored, but not delivered
    relay.wait_for("v1 stored at central", lambda: relay.states("central") == {"report.bin": "downloading"})
    [first] = relay.entries("upload")
    assert (first.state, first.md5) == ("sent", md5_v1)
    md5_v2 = place(up, "report.bin", v2)  # a writer renames a new version over the name
    relay.start("download")  # v1 is delivered now, while report.bin holds v2

    def upload_entry(entry_id: str):
        return next(e for e in relay.entries("upload") if e.id == entry_id)

    relay.wait_for("v1's cleanup decided", lambda: upload_entry(first.id).state == "done")
    first = upload_entry(first.id)
    assert first.cleanup == "skipped", (first.cleanup, first.reason)
    assert f"other content (md5 {md5_v2}, delivered {md5_v1})" in (first.reason or "")
    # v2 relays as its own entry and arrives beside v1; its own cleanup runs, on v2.
    relay.wait_for(
        "v2 delivered and cleaned up",
        lambda: (
            [(e.md5, e.cleanup) for e in relay.entries("upload")] == [(md5_v1, "skipped"), (md5_v2, "done")]
        ),
    )
    assert sorted(os.listdir(down)) == [f".synkler-{relay.instance}", "report (2).bin", "report.bin"]
    assert {md5_entry(down / n) for n in ("report.bin", "report (2).bin")} == {md5_v1, md5_v2}
    assert runs(log) == [("report.bin", md5_v2)]  # once, and never on v1's behalf
    assert (Path(f"{log}.sent") / "1").read_bytes() == v2
    assert os.listdir(up) == []
    assert "cleanup skipped: " in status_of(relay, "upload")
    log_text = relay.log_path("upload").read_text()
    assert re.search(r" WARNING report\.bin: cleanup script not run: .*other content", log_text)
    assert_clean(relay)


@pytest.mark.parametrize("change", ["replaced", "removed"])
def test_a_placed_copy_replaced_or_removed_at_download_before_its_cleanup_script_runs_is_left_alone(
    make_relay, change
):
    relay = make_relay()
    log = relay.workdir / "download-cleanup"
    relay.write_config("download", {"cleanup_script": mover(log)})
    relay.start()
    up, down = relay.dirs["upload"], relay.dirs["download"]
    gate = Path(f"{log}.gate")

    def down_entries() -> dict:
        return {e.name: e for e in relay.entries("download")}

    try:
        md5s = {"first.bin": place(up, "first.bin", os.urandom(1000))}
        # Scripts run one at a time: while first.bin's waits at its gate, report.bin's waits its turn.
        relay.wait_for("first.bin's cleanup script started", Path(f"{log}.started").exists)
        md5s["report.bin"] = place(up, "report.bin", os.urandom(2000))
        relay.wait_for(
            "report.bin placed, its cleanup script due",
            lambda: "report.bin" in down_entries() and down_entries()["report.bin"].state == "delivered",
        )
        assert md5_entry(down / "report.bin") == md5s["report.bin"]
        other = os.urandom(3000)
        if change == "replaced":
            (down / ".other").write_bytes(other)
            os.rename(down / ".other", down / "report.bin")
        else:
            os.unlink(down / "report.bin")
    finally:
        gate.touch()  # first.bin's script goes on (and ends, even if this test failed)
    relay.wait_for(
        "both cleanups decided", lambda: [e.state for e in down_entries().values()] == ["done"] * 2
    )
    entries = down_entries()
    assert (entries["first.bin"].cleanup, entries["report.bin"].cleanup) == ("done", "skipped")
    assert runs(log) == [("first.bin", md5s["first.bin"])]
    if change == "replaced":
        assert (down / "report.bin").read_bytes() == other  # someone else's file, left alone
        assert "other content" in (entries["report.bin"].reason or "")
    else:
        assert not os.path.lexists(down / "report.bin")
        assert "gone" in (entries["report.bin"].reason or "")
    assert "cleanup skipped: " in status_of(relay, "download")
    relay.wait_for("upload done", lambda: relay.all_done(set(md5s)))


FLAKY = (
    "import os, sys\n"
    "open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')\n"
    "sys.exit(0 if os.path.getsize(sys.argv[1]) > len(sys.argv[2]) + 1 else 7)\n"  # fails on its first run
)


@pytest.mark.parametrize(("attempts", "runs", "outcome"), [(1, 1, "failed"), (3, 2, "done")])
def test_a_failing_cleanup_script_is_retried_as_configured_and_never_causes_a_resend(
    make_relay, attempts, runs, outcome
):
    relay = make_relay()
    log = relay.workdir / "runs"
    script = shlex.join([sys.executable, "-c", FLAKY, str(log), "%f"])
    relay.write_config(
        "download", {"cleanup_script": script, "cleanup_attempts": attempts, "retry_max_seconds": 1}
    )
    relay.start()
    md5s = {"once.txt": place(relay.dirs["upload"], "once.txt", b"once")}
    relay.wait_for(f"cleanup {outcome}", lambda: [e.cleanup for e in relay.entries("download")] == [outcome])
    deliver(relay, md5s)
    assert log.read_text() == "once.txt\n" * runs
    entry = relay.entries("download")[0]
    assert (entry.state, entry.tries) == ("done", runs - 1)
    assert len(relay.entries("central")) == 1 and relay.states("central") == {"once.txt": "delivered"}
    assert sorted(os.listdir(relay.dirs["download"])) == [f".synkler-{relay.instance}", "once.txt"]
    if outcome == "failed":
        assert "exit 7" in entry.reason


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


@pytest.mark.parametrize("side", ["upload", "download"])
def test_a_hop_into_a_full_disk_waits_for_space_without_using_up_attempts(tmpfs, make_relay, side):
    # (tmpfs first: it is unmounted after the relay is closed)
    relay = make_relay()
    target = "central" if side == "upload" else "download"  # where this side's rsync writes
    disk = tmpfs(relay.dirs[target], 64)
    wrapper = TOOLS / "filling_rsync.py"
    ballast = disk / "ballast"
    fills = [sys.executable, str(wrapper), str(relay.workdir / "filled"), str(ballast)]
    # Admission sees room (no reserve); then the disk fills up before the transfer, as if another
    # writer took the space. One counted failure would end the entry: max_attempts is 1.
    relay.write_config(side, {"rsync": shlex.join(fills), "max_attempts": 1, "retry_max_seconds": 2})
    relay.write_config("central", {"free_percent": 0})
    relay.start()
    md5s = {"big.bin": place(relay.dirs["upload"], "big.bin", os.urandom(8 << 20))}

    def waiting_for_space() -> bool:
        entries = relay.entries(side)
        return bool(entries) and "waiting for disk space" in (entries[0].reason or "")

    relay.wait_for(f"{side} to notice the full disk", waiting_for_space)
    verb = "pushing" if side == "upload" else "pulling"

    def tries() -> int:
        return relay.log_path(side).read_text().count(f"big.bin: {verb}")

    relay.wait_for("a second try on the full disk", lambda: tries() >= 2)
    assert relay.states(side) == {"big.bin": "uploading" if side == "upload" else "fetching"}
    ballast.unlink()
    deliver(relay, md5s)
    assert relay.entries(side)[0].tries == 0
    assert "lack of disk space" in relay.log_path(side).read_text()


def test_an_entry_too_big_for_central_fails_at_once_and_the_others_arrive(tmpfs, make_relay):
    # (tmpfs first: it is unmounted after the relay is closed)
    relay = make_relay()
    tmpfs(relay.dirs["central"], 32)  # 28.8 MiB above the 10 % reserve
    relay.start()
    place(relay.dirs["upload"], "too-big.bin", os.urandom(40 << 20))
    md5s = {
        f"small-{i}.bin": place(relay.dirs["upload"], f"small-{i}.bin", os.urandom(1 << 20)) for i in range(3)
    }
    relay.wait_for("the small ones", lambda: relay.states("download") == dict.fromkeys(md5s, "done"))
    for name, md5 in md5s.items():
        assert md5_entry(relay.dirs["download"] / name) == md5
    relay.wait_for("upload to hear", lambda: relay.states("upload").get("too-big.bin") == "failed", 30)
    [entry] = [e for e in relay.entries("upload") if e.name == "too-big.bin"]
    assert (entry.reason or "").startswith("admission at central: needs 41943040 bytes, more than central's")
    assert relay.states("central")["too-big.bin"] == "failed"
    assert "too-big.bin" not in os.listdir(relay.dirs["download"])
    assert (relay.dirs["upload"] / "too-big.bin").exists()  # upload keeps it
    assert "giving up at once" in relay.log_path("central").read_text()


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
