"""Ordinary inputs and operator mistakes, all at once, while the workload flows (issue 14).

Besides the usual workload: a newer version renamed over the big file's name before the first
is delivered, names of every awkward kind (a leading `#`, `;` or `-`, quotes,
backslashes, a name that is not UTF-8, a 255-byte name), an upload agent named `dead`, an entry
bigger than central's whole file system (central's file_dir is a small tmpfs), a second central
(sharing the first one's file_dir) and a second download started from copied configs, download's
ssh key gone for a while, and each agent stopped with SIGTERM once, mid-flow, and started again.
Nothing may be lost, corrupted, duplicated or stalled; only the entry too big fails, at once.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import faultkit
from support.faultkit import build_workload, common_settings, delivered_count, verdict, wait_settled
from support.standby import start_second

from synkler.config import load_config
from synkler.hops import transfer
from synkler.hops.checksum import md5_entry

AWKWARD = [
    "#hash.dat",
    ";semicolon.dat",
    "-dash.dat",
    "spaces and 'quotes' \"double\" back\\slash.dat",
    os.fsdecode(b"latin-1 r\xe9sum\xe9.dat"),  # not UTF-8
    "n" * 251 + ".dat",  # 255 bytes
]
STOP_WITHIN = 10.0  # seconds from SIGTERM to exit, whatever the agent was doing


def add_awkward(wl: faultkit.Workload, upload_dir: Path, scratch: Path) -> None:
    for i, name in enumerate(AWKWARD):
        tmp = scratch / f"awkward{i}"
        tmp.write_bytes(os.urandom(1000 + i))
        wl.md5s[name] = md5_entry(tmp)
        wl.kinds[name] = "file"
        os.rename(tmp, upload_dir / name)


def stop_and_start(relay, role: str) -> float:
    """SIGTERM the agent, wait for it to exit, start it again; return how long the stop took."""
    proc = relay.procs.pop(role)
    began = time.monotonic()
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    took = time.monotonic() - began
    relay.start(role)
    return took


@pytest.mark.parametrize("profile", faultkit.profiles())
def test_ordinary_inputs_and_operator_mistakes_lose_stall_or_duplicate_nothing(
    tmpfs, make_relay, sshd, rng, profile
):
    size_mb = 400 if profile is faultkit.DEFAULT else 700
    workdir = make_relay.next_dir()
    relay, key = relay_with_a_key_of_downloads_own(make_relay, sshd, profile)
    central = tmpfs(relay.dirs["central"], size_mb)
    scratch = workdir / "scratch"
    wl = build_workload(relay.dirs["upload"], rng, profile, scratch=scratch)
    add_awkward(wl, relay.dirs["upload"], scratch)
    too_big = add_too_big(wl, relay.dirs["upload"], scratch, size_mb)
    print(f"{len(wl.names)} entries, central on a {size_mb} MB tmpfs")

    seconds = start_with_seconds(relay, central, workdir / "download-2-files")
    faults = 0
    try:
        for _proc, second_log in seconds:
            relay.wait_for("a standby", lambda p=second_log: "waits as a standby" in p.read_text(), 30)
        faults += 2
        big, replaced = replace_the_big_file_once_sent(relay, wl, scratch)
        faults += 1
        relay.wait_for(
            f"{too_big} failed at once", lambda: relay.states("upload").get(too_big) == "failed", 30
        )
        take_downloads_key_away_for_a_while(relay, wl, key, scratch, profile)
        faults += 1
        faults += stop_each_agent_once(relay, wl, rng)
        wait_settled(relay, wl, profile.deliver_timeout)
        wait_for_both_versions(relay, big)
        failed = verdict(relay, wl, faults=faults, replaced=replaced)
    finally:
        for proc, _log in seconds:
            proc.terminate()
            proc.wait(30)
    assert failed == [too_big]
    reason = {e.name: e.reason for e in relay.entries("upload")}[too_big]
    assert "can ever hold" in reason, reason
    for role in ("central", "download"):
        log = (relay.workdir / f"{role}-2" / "agent.log").read_text()
        assert "takes over" not in log, log
        assert not (relay.workdir / f"{role}-2" / "state.sqlite").exists() or _entries(relay, role) == 0
    assert os.listdir(workdir / "download-2-files") == []


def start_with_seconds(relay, central: Path, files_2: Path) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """Start the relay, then, once central and download are connected, a second central (sharing
    the first one's file_dir) and a second download (its own file_dir), from copied configs."""
    relay.start()
    for role in ("central", "download"):
        relay.wait_for(
            f"{role} connected", lambda r=role: "connected to broker" in relay.log_path(r).read_text()
        )
    files_2.mkdir()
    return [
        start_second(relay, "central", file_dir=str(central)),
        start_second(relay, "download", file_dir=str(files_2)),
    ]


def relay_with_a_key_of_downloads_own(make_relay, sshd, profile: faultkit.Profile) -> tuple[Any, Path]:
    """The relay (upload named `dead`, the dead-letter queue's name in synkler 0.4), and download's
    own copy of the ssh key, to take away for a while; no shared ssh connection for download, so
    that each pull logs in again."""
    workdir = make_relay.next_dir()
    settings = common_settings(workdir, profile, sshd.rsync_opts())
    settings["upload"]["name"] = "dead"
    key = workdir / "download-key"
    ssh = sshd.ssh_command()
    ssh[ssh.index("-i") + 1] = str(key)
    settings["download"]["rsync_opts"] = [
        "-e",
        shlex.join(ssh),
        f"--bwlimit={profile.bwlimit}",
    ]
    settings["download"]["ssh_control_persist"] = 0
    relay = make_relay(settings, verbose=False)
    key.write_bytes(sshd.client_key.read_bytes())
    key.chmod(0o600)
    return relay, key


def add_too_big(wl: faultkit.Workload, upload_dir: Path, scratch: Path, size_mb: int) -> str:
    """A sparse file bigger than central's whole file system: it must fail at once and hold nobody back."""
    too_big = "too-big-for-central.img"
    sparse = scratch / too_big
    with open(sparse, "wb") as f:
        f.truncate(2 * size_mb << 20)
    wl.md5s[too_big] = md5_entry(sparse)
    wl.kinds[too_big] = "file"
    os.rename(sparse, upload_dir / too_big)
    return too_big


def replace_the_big_file_once_sent(
    relay, wl: faultkit.Workload, scratch: Path
) -> tuple[str, faultkit.Replaced]:
    """A newer version of the big file renamed over its name once the first is at central and not
    yet delivered: both arrive, and upload's cleanup never acts on the one not delivered."""
    big = next(n for n in wl.names if n.startswith("big-"))
    relay.wait_for(f"{big} sent", lambda: relay.states("upload").get(big) == "sent", 60, interval=0.02)
    v2 = scratch / "big-v2"
    v2.write_bytes(os.urandom(300_000))
    replaced = {big: (wl.md5s.pop(big), md5_entry(v2))}
    del wl.kinds[big]
    os.rename(v2, relay.dirs["upload"] / big)
    return big, replaced


def take_downloads_key_away_for_a_while(
    relay, wl: faultkit.Workload, key: Path, scratch: Path, profile: faultkit.Profile
) -> None:
    """Download's key goes away while entries still flow (it is refused: a person is needed), and
    comes back after the fault's length; entries wait meanwhile, none fails."""
    relay.wait_for("the first deliveries", lambda: delivered_count(relay) >= 3, 60)
    away = key.parent / "download-key.away"
    key.rename(away)
    # ssh's master connection logged in with the key and would carry every pull on without it:
    # end it, so that the next pull logs in afresh, as after the master's ControlPersist.
    tag = transfer.control_tag(load_config(relay.configs["download"]))
    subprocess.run(["pkill", "-f", f"{tag}-.*\\[mux\\]"], check=False)
    # Entries that must cross while the key is away (on a quiet machine the rest may all have
    # crossed already): download has to log in for them, and is refused.
    for i in range(3):
        tmp = scratch / f"while-key-away-{i}"
        tmp.write_bytes(os.urandom(2000 + i))
        wl.md5s[tmp.name + ".dat"] = md5_entry(tmp)
        wl.kinds[tmp.name + ".dat"] = "file"
        os.rename(tmp, relay.dirs["upload"] / (tmp.name + ".dat"))
    log = relay.log_path("download")
    relay.wait_for("download to say it needs a person", lambda: "needs a person" in log.read_text(), 180)
    time.sleep(profile.sever_s)  # the fault's length: entries wait, none fails
    away.rename(key)


def stop_each_agent_once(relay, wl: faultkit.Workload, rng) -> int:
    """Each agent stopped with SIGTERM at a random moment while entries flow, started at once; each
    stop must take less than STOP_WITHIN. Returns how many were stopped."""
    stopped = 0
    for role in rng.sample(["upload", "central", "download"], 3):
        if faultkit.settled(relay, wl):
            break
        time.sleep(rng.uniform(0.3, 2.0))
        took = stop_and_start(relay, role)
        print(f"SIGTERM {role}: stopped in {took:.1f} s")
        assert took < STOP_WITHIN, f"{role} took {took:.1f} s to stop"
        stopped += 1
    return stopped


def wait_for_both_versions(relay, big: str) -> None:
    relay.wait_for(
        f"both versions of {big} delivered",
        lambda: (
            [e.state for e in relay.entries("download") if e.name == big] == ["done", "done"]
            and [e.state for e in relay.entries("upload") if e.name == big] == ["done", "done"]
        ),
        60,
    )
    first = min((e for e in relay.entries("upload") if e.name == big), key=lambda e: e.created)
    print(f"{big}: the first version's cleanup: {first.cleanup} ({first.reason})")


def _entries(relay, role: str) -> int:
    from synkler.state import State

    state = State(relay.workdir / f"{role}-2" / "state.sqlite", readonly=True)
    try:
        return state.count()
    finally:
        state.close()
