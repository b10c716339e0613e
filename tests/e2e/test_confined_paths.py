"""Paths on central that cannot escape (issue 22, item 3) and ssh keys confined by rrsync as
docs/security.md sets them up (issue 23, item 1), end to end on the real broker, sshd and rsync.

The relay works with upload's key forced to `rrsync -wo -no-lock <place>/staging/upload` and
download's to `rrsync -ro <place>`; a forced command that refuses is told as needing a person; and
each attack of issue 22 is harmless: nothing is written outside the instance's places, and the relay
delivers afterwards.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.metrics_helpers import expected, hop_counters
from support.rabbitnode import free_port
from support.relay_helpers import deliver, place, started, take_dead_letters, write_random

from synkler import messages
from synkler.broker.amqp import Broker
from synkler.devkit.localrelay import LocalRelay
from synkler.devkit.sshd import LocalSshd
from synkler.hops.checksum import md5_entry

RRSYNC = shutil.which("rrsync") or "/usr/bin/rrsync"
pytestmark = pytest.mark.skipif(not os.access(RRSYNC, os.X_OK), reason="rrsync is not installed")


@pytest.fixture(scope="module")
def confined_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSshd]:
    """An sshd of this module's own: its authorized_keys gets forced commands, test by test."""
    server = LocalSshd(tmp_path_factory.mktemp("confined-sshd"))
    server.start()
    for role in ("upload", "download"):
        key = server.workdir / f"{role}_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(key)], check=True)
    try:
        yield server
    finally:
        server.stop()


def key_of(sshd: LocalSshd, role: str) -> Path:
    return sshd.workdir / f"{role}_key"


def rsh_of(sshd: LocalSshd, role: str) -> str:
    """The test sshd's ssh command with the role's own key instead of the unconfined one."""
    argv = sshd.ssh_command()
    argv[argv.index("-i") + 1] = str(key_of(sshd, role))
    return shlex.join(argv)


def authorize(sshd: LocalSshd, **forced: str) -> None:
    """authorized_keys as docs/security.md step 3 says: each role's key with its forced command."""
    lines = [sshd.client_key.with_suffix(".pub").read_text().strip()]  # the sshd's own login check
    for role, command in forced.items():
        pub = key_of(sshd, role).with_suffix(".pub").read_text().strip()
        lines.append(f'command="{command}",restrict {pub}')
    sshd.authorized_keys.write_text("\n".join(lines) + "\n")


@pytest.fixture
def confined(confined_sshd: LocalSshd, broker, instance_id, tmp_path) -> Iterator[LocalRelay]:
    """A relay whose upload and download reach central only through rrsync, as in docs/security.md."""
    relay = LocalRelay(
        tmp_path / "relay", confined_sshd, instance_id, broker_host=broker.host, broker_port=broker.port
    )
    where = str(relay.dirs["central"] / instance_id)
    roots = {"upload": f"{where}/staging/upload", "download": where}
    for role, root in roots.items():
        opts = [f"--rsh={rsh_of(confined_sshd, role)}"]
        relay.write_config(role, {"rsync_opts": opts, "rrsync_root": root})
    authorize(
        confined_sshd,
        upload=f"{RRSYNC} -wo -no-lock {roots['upload']}",
        download=f"{RRSYNC} -ro {roots['download']}",
    )
    try:
        yield relay
    finally:
        relay.close()


def central_reported(relay: LocalRelay) -> bool:
    peek = Broker(relay.broker, relay.instance, "test-peek")
    peek.connect(consume=False)
    try:
        return peek.peek_presence("central") is not None
    finally:
        peek.close()


def test_files_relay_md5_verified_with_both_keys_confined_by_rrsync_and_check_says_so(confined):
    relay = confined
    relay.start()
    odd = "run 1; $(touch x) & more.dat"
    md5s = {
        odd: place(relay.dirs["upload"], odd, os.urandom(5000)),
        "plain.bin": place(relay.dirs["upload"], "plain.bin", os.urandom(300_000)),
    }
    tree = relay.dirs["upload"] / "a dir"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f.txt").write_bytes(b"inside")
    md5s["a dir"] = md5_entry(tree)
    deliver(relay, md5s)
    assert not (relay.dirs["central"] / "x").exists() and not Path("x").exists()
    for role, said in (("upload", "write into"), ("download", "read")):
        out = subprocess.run(relay.command(role, "check"), capture_output=True, text=True, timeout=120)
        assert "FAIL" not in out.stdout, out.stdout
        assert f"ok    {said} central's" in out.stdout and "confined by rrsync" in out.stdout, out.stdout


def test_a_refusal_by_the_forced_command_is_told_as_needing_a_person_not_a_link_down(confined, tmp_path):
    relay = confined
    wrong = tmp_path / "not-the-instances-directory"
    wrong.mkdir()
    upload_root = str(relay.dirs["central"] / relay.instance / "staging" / "upload")
    authorize(relay.sshd, upload=f"{RRSYNC} -wo -no-lock {upload_root}", download=f"{RRSYNC} -ro {wrong}")
    notices = tmp_path / "notices.jsonl"  # download's alerts, by a command that appends each message
    append = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')"
    cfg = yaml.safe_load(relay.configs["download"].read_text())
    cfg["alerts"] = {
        "command": {"argv": [sys.executable, "-c", append, str(notices)]},
        "check_seconds": 1,
        "group_seconds": 0,
    }
    relay.configs["download"].write_text(yaml.safe_dump(cfg, sort_keys=False))
    relay.start()
    md5 = place(relay.dirs["upload"], "waits.bin", b"until the key is fixed")

    def told() -> list[str]:
        lines = notices.read_text().splitlines() if notices.exists() else []
        return [
            n["state"] for m in map(json.loads, lines) for n in m["notices"] if n["key"] == "needs-person:ssh"
        ]

    relay.wait_for("download's notice that ssh needs a person", lambda: told() == ["started"], 60)
    entry = relay.entries("download")[0]
    assert (
        entry.state == "fetching"
        and "rrsync error" in (entry.reason or "")
        and "needs a person" in entry.reason
    )
    log = relay.log_path("download").read_text()
    assert " ERROR waits.bin: pull from central refused by ssh or the key's forced command" in log
    status = subprocess.run(relay.command("download", "status"), capture_output=True, text=True, timeout=60)
    assert "needs a person" in status.stdout, status.stdout
    assert os.listdir(wrong) == []
    check = subprocess.run(relay.command("download", "check"), capture_output=True, text=True, timeout=120)
    assert "FAIL  cannot read central's" in check.stdout and "rrsync error" in check.stdout, check.stdout
    # The operator fixes the forced command and makes the waiting entry move now (issue 23, item 4).
    authorize(
        relay.sshd,
        upload=f"{RRSYNC} -wo -no-lock {upload_root}",
        download=f"{RRSYNC} -ro {relay.dirs['central'] / relay.instance}",
    )
    retried = subprocess.run(
        relay.command("download", "retry", "--waiting"), capture_output=True, text=True, timeout=60
    )
    assert retried.returncode == 0, retried.stdout + retried.stderr
    deliver(relay, {"waits.bin": md5}, timeout=60)
    relay.wait_for("the notice that it cleared", lambda: told() == ["started", "cleared"], 60)


def test_the_production_set_up_of_security_md_to_its_end_relays_and_check_says_every_line_ok(
    private_rabbit, confined_sshd: LocalSshd, instance_id: str, tmp_path: Path, tmp_path_factory
):
    """docs/security.md, "Setting up a production relay", as 0.6 has it: broker-setup's least
    privileged users with `authenticate: true` (step 1, 3), upload named lab-a with its key forced
    to `rrsync -wo -no-lock <place>/staging/lab-a`, download's to `rrsync -ro <place>` (step 4),
    receipts signed by download and pinned at upload and central (step 5). A big file (pulled while
    it is pushed, through `growing/`), a directory and a small file arrive md5-verified, each
    cleanup script runs once per entry, no agent logs an ERROR, each agent's hop counters equal
    the deliveries and their bytes, and `check` (step 6) says every line ok. From an operator's
    shell (another home, no systemd environment), `status` finds each agent's database and `alerts
    test` reaches the webhook, the mail server and the command (issue 23, items 6 and 7); no agent
    sent a notice of its own on the way (no false alarm)."""
    from support.alertinbox import serving
    from support.authrelay import UPLOAD, authenticated_relay

    with (
        serving(tmp_path_factory.mktemp("inbox")) as inbox,
        authenticated_relay(private_rabbit, confined_sshd, tmp_path, instance_id) as relay,
    ):
        where = relay.dirs["central"] / instance_id
        roots = {"upload": f"{where}/staging/{UPLOAD}", "download": str(where)}
        ports = {role: free_port() for role in ("upload", "central", "download")}
        for role in ("upload", "central", "download"):
            cfg = yaml.safe_load(relay.configs[role].read_text())
            cfg["metrics_listen"] = f"127.0.0.1:{ports[role]}"
            password = relay.workdir / role / "broker.password"  # step 3: in a file only the agent reads
            password.touch(mode=0o600)
            password.write_text(cfg.pop("broker_password") + "\n")
            cfg["broker_password_file"] = str(password)
            cfg["alerts"] = inbox.settings()
            if role in roots:
                del cfg["keep_minutes"]  # the harness's, which only central reads (check warns)
                cfg.update(rsync_opts=[f"--rsh={rsh_of(confined_sshd, role)}"], rrsync_root=roots[role])
            relay.configs[role].write_text(yaml.safe_dump(cfg, sort_keys=False))
        authorize(
            confined_sshd,
            upload=f"{RRSYNC} -wo -no-lock {roots['upload']}",
            download=f"{RRSYNC} -ro {roots['download']}",
        )
        started(relay, "central")  # first, as step 4 says: it makes <place>/staging
        relay.wait_for("central's staging", lambda: (where / "staging").is_dir(), 30)
        (where / "staging" / UPLOAD).mkdir(mode=0o700, exist_ok=True)
        relay.start("download")
        relay.start("upload")
        big = relay.dirs["upload"].parent / ".big"
        write_random(big, 80 << 20)  # above the early pull's 64 MiB
        md5s = {"big.bin": md5_entry(big), "small.txt": place(relay.dirs["upload"], "small.txt", b"s" * 999)}
        os.rename(big, relay.dirs["upload"] / "big.bin")
        tree = relay.dirs["upload"] / "run 7"
        (tree / "sub").mkdir(parents=True)
        (tree / "sub" / "f.txt").write_bytes(b"inside")
        md5s["run 7"] = md5_entry(tree)
        deliver(relay, md5s, timeout=180)
        for log in (relay.up_log, relay.down_log):
            relay.wait_for(
                f"{log.name}: one run per entry",
                lambda log=log: log.exists() and len(log.read_text().splitlines()) == 3,
            )
        for role in ("upload", "central", "download"):
            assert " ERROR " not in relay.log_path(role).read_text(), role
            # Every hop counter equals the deliveries and their bytes (issue 23, item 2).
            assert hop_counters(ports[role]) == expected(role, 3, (80 << 20) + 999 + 6), role
        want = {
            "upload": [
                "ok    messages authenticated",
                "ok    deliveries proven",
                "ok    write into central's",
            ],
            "central": ["ok    messages authenticated", "ok    deliveries proven"],
            "download": [
                "ok    messages authenticated",
                "ok    delivery receipts signed with",
                "ok    read central's",
            ],
        }
        for role, lines in want.items():
            out = subprocess.run(relay.command(role, "check"), capture_output=True, text=True, timeout=120)
            assert out.returncode == 0 and "FAIL" not in out.stdout and "WARN" not in out.stdout, out.stdout
            for line in lines:
                assert line in out.stdout, (role, line, out.stdout)
            if role != "central":
                assert f"confined by rrsync to {roots[role]}" in out.stdout, out.stdout
        assert inbox.messages("webhook") == [], inbox.messages("webhook")  # no false alarm on the way

        shell = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "XDG_STATE_HOME")}
        shell["HOME"] = str(tmp_path / "operator-home")
        for role in ("upload", "central", "download"):
            out = subprocess.run(
                relay.command(role, "status", "--json"), capture_output=True, text=True, timeout=60, env=shell
            )
            assert out.returncode == 0, out.stderr
            assert {row["name"] for row in json.loads(out.stdout)} == set(md5s), (role, out.stdout)
            out = subprocess.run(
                relay.command(role, "alerts", "test"), capture_output=True, text=True, timeout=60, env=shell
            )
            assert out.returncode == 0, out.stdout + out.stderr
            assert [line.split()[:2] for line in out.stdout.splitlines()] == [
                ["ok", "webhook:"],
                ["ok", "email:"],
                ["ok", "command:"],
            ], out.stdout
        for channel in ("webhook", "email", "command"):
            assert inbox.told(channel, "test") == ["started"] * 3, channel
        assert not (tmp_path / "operator-home").exists()  # nothing made in the shell's own places


# The attacks of issue 22 (item 3), on an unconfined relay: each harmless -------------------------


def forge_admit(relay: LocalRelay, entry_id: str, dest: str) -> list[bytes]:
    """Publish an admit as central would, with `dest`; return what reached the dead-letter queue."""
    attacker = Broker(relay.broker, relay.instance, "test-attacker")
    attacker.connect(consume=False)
    try:
        attacker.publish("upload", messages.encode(messages.Admit(entry_id, "central", attempt=9, dest=dest)))
        dead: list[bytes] = []
        relay.wait_for(
            "the dead letter",
            lambda: dead.extend(take_dead_letters(relay.broker, relay.instance)) or bool(dead),
            30,
        )
        return dead
    finally:
        attacker.close()


def offered_while_central_is_down(relay: LocalRelay, name: str, data: bytes) -> tuple[str, str]:
    """Central has run once (its report says where its directory is), then stops: the entry stays
    offered at upload and only a forged admit could move it. (entry id, md5)"""
    started(relay, "central")
    relay.wait_for("central's first report", lambda: central_reported(relay), 30)
    relay.stop("central")
    relay.start("upload")
    md5 = place(relay.dirs["upload"], name, data)
    relay.wait_for("the offer", lambda: relay.states("upload").get(name) == "offered")
    return relay.entries("upload")[0].id, md5


def test_a_forged_admit_with_a_shell_command_in_its_dest_runs_nothing_even_with_rsync_old_args(
    make_relay, tmp_path, monkeypatch
):
    monkeypatch.setenv("RSYNC_OLD_ARGS", "1")  # the agents inherit it: rsync would pass paths to the shell
    relay = make_relay()
    # Central's own directory has shell syntax in its name: only protected paths reach it whole.
    odd = tmp_path / "central files; touch PWNED3 &"
    odd.mkdir()
    relay.dirs["central"] = odd
    relay.write_config("central", {"file_dir": str(odd)})
    entry_id, md5 = offered_while_central_is_down(relay, "secret.bin", b"never anywhere else")
    pwned = tmp_path / "PWNED"
    dest = f"{tmp_path}/x;touch {pwned};echo /{relay.instance}/staging/upload"
    assert messages.confined(dest, relay.instance, "staging", "upload")  # what the old check let through
    forge_admit(relay, entry_id, dest)
    assert not pwned.exists()
    assert relay.states("upload")["secret.bin"] == "offered"
    said = f"is not <central's file_dir>/{relay.instance}/staging/upload"
    assert said in relay.log_path("upload").read_text()
    relay.start("central", "download")
    nasty = "a; touch PWNED2 $(id).txt"
    deliver(relay, {"secret.bin": md5, nasty: place(relay.dirs["upload"], nasty, b"quoted")})
    assert not pwned.exists()
    # Central's shell would have run in the ssh login's home: nothing there either.
    assert not [p for p in tmp_path.rglob("PWNED*")] and not (Path.home() / "PWNED3").exists()


def test_a_forged_admit_into_a_planted_symlink_ending_like_the_staging_writes_nothing_there(
    make_relay, tmp_path
):
    relay = make_relay()
    entry_id, md5 = offered_while_central_is_down(relay, "authorized_keys", b"ssh-ed25519 AAAA mallory\n")
    victim = tmp_path / "home" / ".ssh"
    victim.mkdir(parents=True)
    (victim / "authorized_keys").write_text("ssh-ed25519 AAAA the-owner\n")
    planted = tmp_path / "planted" / relay.instance / "staging"
    planted.mkdir(parents=True)
    (planted / "upload").symlink_to(victim)
    forge_admit(relay, entry_id, str(planted / "upload"))
    assert (victim / "authorized_keys").read_text() == "ssh-ed25519 AAAA the-owner\n"
    assert os.listdir(victim) == ["authorized_keys"]
    relay.start("central", "download")
    deliver(relay, {"authorized_keys": md5})
    assert (victim / "authorized_keys").read_text() == "ssh-ed25519 AAAA the-owner\n"


def test_centrals_own_staging_replaced_by_a_symlink_is_refused_and_the_relay_delivers_once_removed(
    make_relay, tmp_path
):
    relay = make_relay()
    relay.start()
    md5 = place(relay.dirs["upload"], "first.bin", b"first")
    deliver(relay, {"first.bin": md5})
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "authorized_keys").write_text("precious\n")
    staging = relay.dirs["central"] / relay.instance / "staging" / "upload"
    shutil.rmtree(staging)
    staging.symlink_to(victim)
    place(relay.dirs["upload"], "authorized_keys", b"mallory\n")
    relay.wait_for("upload told it failed", lambda: relay.states("upload").get("authorized_keys") == "failed")
    assert (victim / "authorized_keys").read_text() == "precious\n"
    assert "is a symlink" in relay.log_path("central").read_text()
    staging.unlink()
    entry = next(e for e in relay.entries("upload") if e.name == "authorized_keys")
    retried = subprocess.run(
        relay.command("upload", "retry", entry.id), capture_output=True, text=True, timeout=60
    )
    assert retried.returncode == 0, retried.stdout + retried.stderr
    relay.wait_for(
        "the retried entry delivered",
        lambda: relay.states("download").get("authorized_keys") == "done",
    )
    assert (relay.dirs["download"] / "authorized_keys").read_bytes() == b"mallory\n"
    assert (victim / "authorized_keys").read_text() == "precious\n"


def test_old_args_in_rsync_opts_is_refused_at_start_naming_the_file_and_the_key(make_relay):
    relay = make_relay()
    conf = relay.configs["upload"]
    good = conf.read_text()
    cfg = yaml.safe_load(good)
    cfg["rsync_opts"] = [*cfg["rsync_opts"], "--old-args"]
    conf.write_text(yaml.safe_dump(cfg))
    try:
        run = subprocess.run(relay.command("upload", "run"), capture_output=True, text=True, timeout=60)
    finally:
        conf.write_text(good)  # for the relay's own teardown
    assert run.returncode == 2
    assert str(conf) in run.stderr and "rsync_opts" in run.stderr and "--old-args" in run.stderr, run.stderr
    assert relay.entries("upload") == []
