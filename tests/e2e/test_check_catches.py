"""`synkler check` against real agents, the real broker, sshd and rsync: what it used to miss."""

from __future__ import annotations

import subprocess
import sys

from support.relay_helpers import place

from synkler.broker.amqp import Broker


def check(relay, role: str) -> subprocess.CompletedProcess:
    return subprocess.run(relay.command(role, "check"), capture_output=True, text=True, timeout=90)


def lines(result: subprocess.CompletedProcess, level: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(level)]


def test_an_id_mistyped_on_upload_is_one_fail_line_naming_the_likely_cause(make_relay):
    relay = make_relay()
    typo = relay.instance + "x"
    relay.write_config("upload", {"id": typo})
    try:
        relay.start()
        place(relay.dirs["upload"], "a.csv", b"1,2\n")
        relay.wait_for("a.csv offered", lambda: relay.states("upload") == {"a.csv": "offered"})
        result = check(relay, "upload")
        assert result.returncode == 1, result.stdout + result.stderr
        fails = lines(result, "FAIL")
        assert len(fails) == 1, result.stdout
        # The offer waits, in upload's outbox or in a queue nobody reads.
        assert fails[0].startswith(f"FAIL  no agent consumes synkler:{typo}:inbox:central (1 message wait")
        assert "is `id` the same on all three hosts?" in fails[0]
        # Seen from the hosts whose id is right, the peers are there.
        down = check(relay, "download")
        assert "ok    the central agent consumes" in down.stdout, down.stdout
        assert down.returncode == 0, down.stdout
    finally:
        relay.stop()
        admin = Broker(relay.broker, typo, "admin")
        admin.connect(consume=False)
        admin.delete_instance(["upload", "central", "download"])
        admin.close()


def test_a_missing_cleanup_script_an_unwritable_state_dir_and_a_key_of_another_role_are_named(
    make_relay, tmp_path
):
    relay = make_relay()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    relay.write_config(
        "download",
        {
            "cleanup_script": f"{tmp_path}/no-such-script %F",
            "state_db": str(blocker / "state" / "download.sqlite"),
            "settle_seconds": 3,
        },
    )
    result = check(relay, "download")
    assert result.returncode == 1, result.stdout
    fails = lines(result, "FAIL")
    assert f"FAIL  cleanup_script: {tmp_path}/no-such-script does not exist" in "\n".join(fails)
    assert any(
        f.startswith(f"FAIL  state_db {blocker}/state/download.sqlite: {blocker} is not a") for f in fails
    )
    assert len(fails) == 2, result.stdout
    warns = lines(result, "WARN")
    assert "WARN  settle_seconds is set, but a download agent ignores it (used by upload)" in warns
    assert "WARN  keep_minutes is set, but a download agent ignores it (used by central)" in warns
    assert "ok    pidfile" in result.stdout

    script = tmp_path / "clean.py"
    script.write_text(f"#!{sys.executable}\n")
    script.chmod(0o644)
    relay.write_config("download", {"cleanup_script": f"{script} %F"})
    result = check(relay, "download")
    assert lines(result, "FAIL") == [
        f"FAIL  cleanup_script: {script} is not executable (chmod +x); no delivered entry could be cleaned up"
    ], result.stdout
    script.chmod(0o755)
    result = check(relay, "download")
    assert result.returncode == 0, result.stdout
    assert f"ok    cleanup_script runs {script}" in result.stdout


def test_check_writes_into_centrals_staging_and_reads_its_store_over_ssh_and_leaves_nothing(make_relay):
    relay = make_relay()
    relay.start()
    relay.wait_for(
        "central's first report", lambda: "ok    the central agent consumes" in check(relay, "upload").stdout
    )
    staging = relay.dirs["central"] / relay.instance / "staging"
    up = check(relay, "upload")
    assert f"ok    write into central's {staging}/upload over ssh" in up.stdout, up.stdout
    assert [p.name for p in staging.rglob(".synkler-check-*")] == []  # written, then removed
    down = check(relay, "download")
    assert f"ok    read central's {relay.dirs['central'] / relay.instance / 'stored'} over ssh" in down.stdout
    # Central's staging for this upload agent is not a directory: the pushes could not land there.
    relay.stop("central")
    if (staging / "upload").exists():
        (staging / "upload").rmdir()
    (staging / "upload").write_text("in the way")
    broken = check(relay, "upload")
    assert broken.returncode == 1
    [fail] = [line for line in lines(broken, "FAIL") if "write into" in line]
    assert fail.startswith(f"FAIL  cannot write into central's {staging}/upload over ssh: exit ")
