"""The relay over SFTP (`transport: sftp`, issue 28): three real agents, RabbitMQ, and a central
reached through an sshd that serves only internal-sftp, chrooted (no shell, no rsync), with the
SFTP transport on the push, on the pull, and on both.

What a user checks: the bytes and md5 at download, each cleanup script run once, nothing left in
staging; a transfer cut in the middle of a file resumes from what arrived; an unknown host key is
refused as needing a person.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.netproxy import NetProxy
from support.relay_helpers import deliver, place, write_random
from support.sftphost import chrooted_sshd, need_root, sftp_settings

from synkler.devkit.localrelay import ROLES, LocalRelay
from synkler.hops.checksum import md5_entry

RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


def recorder(log: Path) -> str:
    return shlex.join([sys.executable, "-c", RECORD, str(log), "%f"])


def runs(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def sftp_server(tmp_path_factory) -> Iterator:
    need_root()
    with chrooted_sshd(tmp_path_factory.mktemp("sftp-sshd")) as server:
        yield server


@pytest.fixture
def make_sftp_relay(sftp_server, sshd, broker, instance_id):
    """make(hops, **settings by role): a LocalRelay whose work directory is inside the SFTP
    account's chroot, with `transport: sftp` on the ends named in `hops` (the others use rsync
    through the ordinary test sshd)."""
    relays: list[LocalRelay] = []
    assert sftp_server.sftp_chroot is not None

    def make(hops: tuple[str, ...], **by_role: dict) -> LocalRelay:
        n = len(relays)
        settings: dict[str, dict] = {role: {} for role in ROLES}
        for end in hops:
            settings[end] = sftp_settings(sftp_server)
        for role, more in by_role.items():
            settings[role].update(more)
        relay = LocalRelay(
            sftp_server.sftp_chroot / f"{instance_id}-{n}",
            sshd,
            f"{instance_id}-{n}",
            broker_host=broker.host,
            broker_port=broker.port,
            settings=settings,
        )
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        procs = list(relay.procs.values())
        relay.close()
        assert all(p.poll() is not None for p in procs), "an agent survived the teardown"


HOPS = {"push": ("upload",), "pull": ("download",), "both": ("upload", "download")}


@pytest.mark.parametrize("over", sorted(HOPS))
def test_files_a_directory_and_awkward_names_relay_over_sftp_verified_and_cleaned_up_once(
    make_sftp_relay, over, tmp_path
):
    up_log, down_log = tmp_path / "up.log", tmp_path / "down.log"
    relay = make_sftp_relay(
        HOPS[over],
        upload={"cleanup_script": recorder(up_log)},
        download={"cleanup_script": recorder(down_log)},
    )
    tree = relay.workdir / "run 7"
    (tree / "raw" / "deep").mkdir(parents=True)
    (tree / "empty").mkdir()
    write_random(tree / "raw" / "big.dat", 3 << 20)  # through a temporary file
    (tree / "raw" / "deep" / "b.dat").write_bytes(b"b")
    (tree / ".hidden").write_text("inside a directory, a dot-name travels\n")
    os.symlink("raw/big.dat", tree / "latest")
    md5s = {"run 7": md5_entry(tree)}
    os.rename(tree, relay.dirs["upload"] / "run 7")
    names = ['it\'s "quoted" & spaced.txt', "données €.csv", "#hash", ";semi", "-dash"]
    md5s.update({name: place(relay.dirs["upload"], name, name.encode() * 999) for name in names})
    md5s["empty"] = place(relay.dirs["upload"], "empty", b"")
    relay.start()
    deliver(relay, md5s, timeout=120)
    got = relay.dirs["download"] / "run 7"
    assert os.readlink(got / "latest") == "raw/big.dat" and (got / "empty").is_dir()
    assert relay.states("central") == dict.fromkeys(md5s, "delivered")
    relay.wait_for("cleanup scripts", lambda: len(runs(up_log)) == len(md5s) == len(runs(down_log)))
    assert sorted(runs(up_log)) == sorted(runs(down_log)) == sorted(md5s)


@pytest.mark.parametrize("over", ["push", "pull"])
def test_small_files_in_bundles_relay_over_sftp_each_placed_and_cleaned_up_once(
    make_sftp_relay, over, tmp_path
):
    """Bundles (many small files as one entry, a directory of links at upload) over SFTP: each file
    verified, placed under its own name and cleaned up once at each end."""
    up_log, down_log = tmp_path / "up.log", tmp_path / "down.log"
    relay = make_sftp_relay(
        HOPS[over],
        upload={"cleanup_script": recorder(up_log), "bundle_files": 20, "bundle_min": 5},
        download={"cleanup_script": recorder(down_log)},
    )
    source = relay.workdir / "source"
    source.mkdir()
    names = [f"s{i:02d} é.dat" for i in range(30)]
    md5s = {}
    for name in names:
        (source / name).write_bytes(os.urandom(3000))
        md5s[name] = md5_entry(source / name)
    relay.start()
    relay.wait_for("upload connected", lambda: "connected to broker" in relay.log_path("upload").read_text())
    for name in names:  # one after another: they settle together
        os.rename(source / name, relay.dirs["upload"] / name)
    deliver(relay, md5s, timeout=120)
    assert any(e.kind == "bundle" for e in relay.entries("central"))
    assert sum(e.files for e in relay.entries("central")) == len(names)  # each file crossed once
    relay.wait_for("cleanup scripts", lambda: len(runs(up_log)) == len(md5s) == len(runs(down_log)))
    assert sorted(runs(up_log)) == sorted(runs(down_log)) == sorted(md5s)


def _temporary_bytes(top: Path) -> int:
    """Bytes in temporary and partial files below `top` (rsync's and SFTP's: dot-names)."""
    if not top.exists():
        return 0
    return sum(
        p.stat().st_size
        for p in top.rglob("*")
        if p.is_file() and any(part.startswith(".") for part in p.relative_to(top).parts)
    )


def test_a_push_cut_mid_file_by_a_killed_upload_resumes_from_what_arrived(make_sftp_relay):
    relay = make_sftp_relay(HOPS["push"])
    write_random(relay.workdir / "big.bin", 192 << 20)
    md5s = {"big.bin": md5_entry(relay.workdir / "big.bin")}
    os.rename(relay.workdir / "big.bin", relay.dirs["upload"] / "big.bin")
    relay.start()
    staging = relay.dirs["central"] / relay.instance / "staging"
    relay.wait_for("upload mid-push", lambda: _temporary_bytes(staging) > 16 << 20, 60, interval=0.02)
    relay.kill("upload")
    arrived = _temporary_bytes(staging)
    relay.start("upload")
    deliver(relay, md5s, timeout=180)
    log = relay.log_path("upload").read_text()
    resumed = re.search(r"big\.bin: resuming the push from the (\d+) of (\d+) bytes", log)
    assert resumed, log[-3000:]
    assert int(resumed[1]) >= arrived > 0
    assert sorted(os.listdir(relay.dirs["download"])) == sorted(["big.bin", f".synkler-{relay.instance}"])
    assert [e.state for e in relay.entries("upload")] == ["done"]


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_pull_cut_mid_file_by_a_stopped_or_killed_download_resumes_from_what_arrived(make_sftp_relay, how):
    relay = make_sftp_relay(HOPS["pull"])
    tree = relay.workdir / "dir"  # a directory: pulled after central verified it, never early
    tree.mkdir()
    write_random(tree / "big.bin", 192 << 20)
    md5s = {"dir": md5_entry(tree)}
    os.rename(tree, relay.dirs["upload"] / "dir")
    relay.start()
    staging = relay.dirs["download"] / f".synkler-{relay.instance}"
    relay.wait_for("download mid-pull", lambda: _temporary_bytes(staging) > 16 << 20, 60, interval=0.02)
    if how == "stop":
        relay.stop("download")  # the orderly stop: the temporary file goes to the partial dir
    else:
        relay.kill("download")  # the temporary file stays in the entry's directory, which is kept
    arrived = _temporary_bytes(staging)
    relay.start("download")
    deliver(relay, md5s, timeout=180)
    log = relay.log_path("download").read_text()
    resumed = re.search(r"big\.bin: resuming the pull from the (\d+) of (\d+) bytes", log)
    assert resumed, log[-3000:]
    assert int(resumed[1]) == arrived > 0
    assert [e.state for e in relay.entries("download")] == ["done"]


def test_an_unknown_host_key_is_refused_as_needing_a_person_and_the_entry_waits(make_sftp_relay, sftp_server):
    relay = make_sftp_relay(HOPS["push"])
    strangers = relay.workdir / "known_hosts"
    strangers.write_text("")  # central's key is in no known_hosts
    relay.write_config("upload", {**sftp_settings(sftp_server), "known_hosts": str(strangers)})
    relay.start()
    place(relay.dirs["upload"], "waits.txt", b"for a person")
    relay.wait_for(
        "upload to say that central's host key is unknown",
        lambda: "This needs a person" in relay.log_path("upload").read_text(),
    )
    log = relay.log_path("upload").read_text()
    assert re.search(
        r" ERROR waits\.txt: push to central refused .*Host key verification failed: no host key", log
    )
    [entry] = relay.entries("upload")
    assert (entry.state, entry.tries) == ("uploading", 0)
    assert not (relay.dirs["central"] / relay.instance / "staging" / "upload" / "waits.txt").exists()
    status = subprocess.run(relay.command("upload", "status"), capture_output=True, text=True, check=True)
    assert "needs a person" in status.stdout and "Host key verification failed" in status.stdout


def test_check_logs_in_writes_into_staging_and_reads_the_store_over_sftp(make_sftp_relay, sftp_server):
    relay = make_sftp_relay(HOPS["both"])
    relay.start("central")
    relay.wait_for("central's presence", lambda: (relay.dirs["central"] / relay.instance / "stored").is_dir())
    for role, line in (("upload", "write into central's"), ("download", "read central's")):
        ok = subprocess.run(relay.command(role, "check"), capture_output=True, text=True, timeout=60)
        assert f"ok    ssh + SFTP to central {sftp_server.target}" in ok.stdout, ok.stdout + ok.stderr
        assert re.search(rf"ok    {line} .* over SFTP chrooted to", ok.stdout), ok.stdout


@pytest.mark.parametrize("fault", ["sever", "stall"])
def test_a_push_whose_link_is_severed_or_stalls_mid_file_resumes_without_loss_or_repetition(
    make_sftp_relay, sftp_server, fault
):
    with NetProxy(sftp_server.port) as proxy:
        relay = make_sftp_relay(HOPS["push"])
        known = relay.workdir / "known_hosts"  # central's key, for the proxy's port
        keytype, blob = sftp_server.known_hosts.read_text().split()[1:3]
        known.write_text(f"[127.0.0.1]:{proxy.port} {keytype} {blob}\n")
        down_log = relay.workdir / "down.log"
        relay.write_config(
            "upload",
            {
                **sftp_settings(sftp_server),
                "sftp_port": proxy.port,
                "known_hosts": str(known),
                "rsync_timeout": 4,  # a stalled link is given up after 4 s without an answer
                "max_attempts": 1,  # a link that is down must not use up attempts
            },
        )
        relay.write_config("download", {"cleanup_script": recorder(down_log)})
        write_random(relay.workdir / "big.bin", 192 << 20)
        md5s = {"big.bin": md5_entry(relay.workdir / "big.bin")}
        os.rename(relay.workdir / "big.bin", relay.dirs["upload"] / "big.bin")
        relay.start()
        staging = relay.dirs["central"] / relay.instance / "staging"
        relay.wait_for("upload mid-push", lambda: _temporary_bytes(staging) > 16 << 20, 60, interval=0.02)
        if fault == "sever":
            assert proxy.sever() > 0
        else:
            proxy.stall()
        relay.wait_for(
            "upload to notice the link is down",
            lambda: "big.bin: push to central failed" in relay.log_path("upload").read_text(),
            60,
        )
        arrived = _temporary_bytes(staging)
        proxy.restore()
        deliver(relay, md5s, timeout=180)
    log = relay.log_path("upload").read_text()
    resumed = re.search(r"big\.bin: resuming the push from the (\d+) of (\d+) bytes", log)
    assert resumed and int(resumed[1]) >= arrived > 0, log[-3000:]
    relay.wait_for("download's cleanup script", lambda: runs(down_log) == ["big.bin"])
    assert [(e.state, e.tries) for e in relay.entries("upload")][0][0] == "done"


def test_a_big_file_is_pulled_over_sftp_while_it_is_pushed_over_sftp(make_sftp_relay):
    relay = make_sftp_relay(HOPS["both"])
    write_random(relay.workdir / "big.bin", 192 << 20)  # from 64 MiB, download pulls while upload pushes
    md5s = {"big.bin": md5_entry(relay.workdir / "big.bin")}
    os.rename(relay.workdir / "big.bin", relay.dirs["upload"] / "big.bin")
    relay.start()
    deliver(relay, md5s, timeout=180)
    log = relay.log_path("download").read_text()
    # (A fetch that comes while the first early run still goes cancels it: the bytes it brought
    # count, though no run of it ended to say "pulling entry … early".)
    early = re.search(r"big\.bin: (\d+) of (\d+) bytes were pulled while upload pushed it", log)
    assert early and 0 < int(early[1]) <= int(early[2]) == 192 << 20, log[-3000:]
