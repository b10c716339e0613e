"""Three real agents, RabbitMQ, sshd and rsync, against what will not do: hostile messages, a key
central refuses, a full disk, an entry too big for central; and `synkler check` naming what fails."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from support.relay_helpers import (
    TOOLS,
    deliver,
    every_log_says,
    place,
    take_dead_letters,
)

from synkler.hops.checksum import md5_entry


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
