"""Three real agents, RabbitMQ, sshd and rsync, stopped, killed and cut off: an agent or the broker
that goes away and comes back loses nothing and repeats nothing."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from support.relay_helpers import (
    close_connections_of,
    deliver,
    every_log_says,
    place,
    recorder,
    runs,
    write_random,
)

from synkler.hops.checksum import md5_entry


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
