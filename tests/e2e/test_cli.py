"""The synkler command run as a real subprocess: exit statuses, one-line errors, status and check output."""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from synkler import __version__, receipts
from synkler.service.pidfile import Pidfile, read_pid
from synkler.state import Entry, State

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60  # seconds; only reached if the command hangs, which is itself the failure


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound and released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of the child: no config found by accident, no real home touched."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SYNKLER_CONF", "XDG_STATE_HOME", "PYTHONPATH")}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture
def synkler(tmp_path: Path, env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess]:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "synkler", *args],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    return run


@pytest.fixture
def settings(tmp_path: Path, instance_id: str) -> dict[str, Any]:
    """A valid central config: every path inside tmp_path, and nothing listening on its broker port."""
    file_dir = tmp_path / "files"
    file_dir.mkdir()
    return {
        "mode": "central",
        "id": instance_id,
        "file_dir": str(file_dir),
        "synkler_server": "127.0.0.1",
        "broker_port": free_port(),
        "state_db": str(tmp_path / "state" / "central.sqlite"),
        "pidfile": str(tmp_path / "run" / "central.pid"),
    }


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(data: dict[str, Any] | str) -> Path:
        path = tmp_path / "etc" / "synkler.conf"
        path.parent.mkdir(exist_ok=True)
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return path

    return write


@pytest.fixture
def config(settings: dict[str, Any], write_config: Callable[..., Path]) -> Path:
    return write_config(settings)


# --------------------------------------------------------------------------------------------------
# --version and configuration errors


def test_version_prints_the_version_and_exits_0(synkler):
    result = synkler("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"synkler {__version__}"


def _unknown_key(s: dict[str, Any]) -> str:
    return yaml.safe_dump({**s, "colour": "blue"})


def _wrong_type(s: dict[str, Any]) -> str:
    return yaml.safe_dump({**s, "keep_minutes": "soon"})


def _missing(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda s: yaml.safe_dump({k: v for k, v in s.items() if k != key})


def _no_file_dir(s: dict[str, Any]) -> str:
    return yaml.safe_dump({**s, "file_dir": s["file_dir"] + "-does-not-exist"})


def _no_password_file(s: dict[str, Any]) -> str:
    return dict(s, broker_password_file=str(Path(s["file_dir"]).parent / "no-such-password"))


def _two_passwords(s: dict[str, Any]) -> str:
    secret = Path(s["file_dir"]).parent / "password"
    secret.write_text("s3cret\n")
    return dict(s, broker_password="s3cret", broker_password_file=str(secret))


@pytest.mark.parametrize(
    "make, key, problem",
    [
        (_unknown_key, "colour", "unknown key"),
        (_wrong_type, "keep_minutes", "must be a number"),
        (_missing("mode"), "mode", "is required"),
        (_missing("file_dir"), "file_dir", "is required"),
        (_missing("synkler_server"), "synkler_server", "is required"),
        (_no_file_dir, "file_dir", "does not exist"),
        (_no_password_file, "broker_password_file", "cannot read (No such file or directory)"),
        (_two_passwords, "broker_password_file", "give broker_password or broker_password_file, not both"),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "no-mode",
        "no-file_dir",
        "no-synkler_server",
        "file_dir-missing",
        "password-file-missing",
        "two-passwords",
    ],
)
@pytest.mark.parametrize("command", ["run", "status", "check"])
def test_a_bad_config_exits_2_with_one_line_naming_the_file_and_the_key(
    synkler, settings, write_config, command, make, key, problem
):
    path = write_config(make(settings))
    result = synkler("-c", str(path), command)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert f": {key}: " in lines[0]
    assert problem in lines[0]
    assert result.stdout == ""


def test_invalid_yaml_exits_2_with_one_line_naming_the_file_and_the_place(synkler, write_config):
    path = write_config("mode: central\nfile_dir: [unclosed\n")
    result = synkler("-c", str(path), "status")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert "invalid YAML" in lines[0]
    assert "line " in lines[0]


def test_a_missing_config_file_given_with_c_exits_2_naming_it(synkler, tmp_path):
    missing = tmp_path / "nowhere" / "synkler.conf"
    result = synkler("-c", str(missing), "status")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(missing) in lines[0]
    assert "no such file" in lines[0]


def test_synkler_conf_in_the_environment_is_used_when_no_c_is_given(synkler, config, env, recorded):
    env["SYNKLER_CONF"] = str(config)
    result = synkler("status", "--json")
    assert result.returncode == 0, result.stderr
    assert [row["id"] for row in json.loads(result.stdout)] == [e.id for e in recorded]


def test_no_config_anywhere_exits_2(synkler, tmp_path):
    if Path("/etc/synkler.conf").exists():
        pytest.skip("/etc/synkler.conf exists on this machine")
    result = synkler("status")
    assert result.returncode == 2
    assert "no configuration file found" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------------
# status


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["resend", "x.dat"]])
def test_status_and_repairs_of_an_agent_that_never_ran_fail_saying_where_they_looked(
    synkler, config, settings, command
):
    # Not "no entries": that reads as an empty relay when the database is only elsewhere.
    result = synkler("-c", str(config), *command)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert f"no state database of the central agent of {config} at {settings['state_db']}: " in line
    assert "has the agent run" in line
    assert not Path(settings["state_db"]).exists()  # looking does not create the database


def test_status_of_an_agent_without_entries_says_so(synkler, config, settings):
    State(settings["state_db"]).close()
    result = synkler("-c", str(config), "status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no entries (central agent")
    assert json.loads(synkler("-c", str(config), "status", "--json").stdout) == []


@pytest.fixture
def recorded(settings: dict[str, Any]) -> list[Entry]:
    """Two entries written into the configured state database, the way an agent would."""
    state = State(settings["state_db"])
    try:
        with state.transaction():
            first = state.insert(
                Entry(
                    id="a" * 32,
                    name="first file.csv",
                    kind="file",
                    md5="d41d8cd98f00b204e9800998ecf8427e",
                    state="stored",
                    size=1234,
                    files=1,
                    created=1_700_000_000.0,
                )
            )
            second = state.insert(
                Entry(
                    id="b" * 32,
                    name="Grüße run",
                    kind="dir",
                    md5="0123456789abcdef0123456789abcdef",
                    state="failed",
                    size=99,
                    files=3,
                    reason="md5 mismatch at central",
                    created=1_700_000_100.0,
                )
            )
    finally:
        state.close()
    return [first, second]


def test_status_json_lists_the_recorded_entries_with_their_fields(synkler, config, recorded):
    result = synkler("-c", str(config), "status", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == [e.name for e in recorded]
    for row, entry in zip(rows, recorded):
        assert row["size"] == entry.size
        assert row["md5"] == entry.md5
        assert row["state"] == entry.state
        updated = datetime.datetime.fromisoformat(row["updated"])
        assert abs(updated.timestamp() - entry.updated) < 1
    assert rows[1]["reason"] == "md5 mismatch at central"
    assert [row["id"] for row in rows] == [e.id for e in recorded]
    assert [row["actions"] for row in rows] == [[], ["forget"]]  # "stored" is no state of central's


def test_status_prints_a_table_with_one_line_per_entry(synkler, config, recorded):
    result = synkler("-c", str(config), "status")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "SIZE", "MD5", "STATE", "UPDATED", "ACTIONS", "NOTE"]
    assert len(lines) == 2
    for line, entry in zip(lines, recorded):
        assert line.startswith(f"{entry.id[:8]}  {entry.name}")  # a start of the id the commands take
        assert entry.md5 in line
        assert entry.state in line
    assert lines[1].split()[-5:] == ["forget", "md5", "mismatch", "at", "central"]  # what one can do


# --------------------------------------------------------------------------------------------------
# check


def test_check_against_an_unreachable_broker_prints_a_fail_line_and_exits_non_zero(synkler, config, settings):
    result = synkler("-c", str(config), "check")
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1
    assert "broker" in fails[0]
    assert str(settings["broker_port"]) in fails[0]


@pytest.fixture
def real_broker_settings(broker, settings: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Settings pointing at the test broker; the exchanges `check` declares are removed afterwards."""
    settings = dict(
        settings,
        synkler_server=broker.host,
        broker_port=broker.port,
        broker_username=broker.username,
        broker_password=broker.password,
        broker_vhost=broker.vhost,
    )
    yield settings
    from synkler.broker.amqp import Broker, BrokerParams

    cleanup = Broker(
        BrokerParams(broker.host, broker.port, broker.username, broker.password, broker.vhost),
        settings["id"],
        "central",
    )
    cleanup.connect(consume=False)
    try:
        cleanup.delete_instance([])
    finally:
        cleanup.close()


def test_check_against_the_real_broker_prints_ok_lines_and_the_unauthenticated_warning_and_exits_0(
    synkler, write_config, real_broker_settings
):
    config = write_config(real_broker_settings)
    result = synkler("-c", str(config), "check")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines, "check printed nothing"
    # The lines that are not "ok": deliveries are not proven (no receipt keys), this relay's messages
    # are not authenticated (the shared login), and no download agent consumes its queue (none runs),
    # which is only a warning while nothing waits.
    warned = [line.split(" (")[0].split(",")[0] for line in lines if not line.startswith("ok")]
    assert warned == [
        "WARN  download_public_key is not set: deliveries are not proven",
        "WARN  messages are not authenticated",
        f"WARN  no agent consumes synkler:{real_broker_settings['id']}:inbox:download",
    ], result.stdout
    assert any("broker" in line for line in lines)
    assert any("config" in line and str(config) in line for line in lines)
    assert any("file_dir" in line for line in lines)


# --------------------------------------------------------------------------------------------------
# the broker password: from a file or the environment; a file others can read is reported


def password_file(tmp_path: Path, password: str, file_mode: int) -> Path:
    path = tmp_path / "etc" / "broker-password"
    path.parent.mkdir(exist_ok=True)
    path.write_text(password + "\n")
    path.chmod(file_mode)
    return path


def test_check_logs_in_to_the_real_broker_with_the_password_from_broker_password_file(
    synkler, write_config, real_broker_settings, tmp_path
):
    secret = password_file(tmp_path, real_broker_settings.pop("broker_password"), 0o600)
    config = write_config(dict(real_broker_settings, broker_password_file=str(secret)))
    result = synkler("-c", str(config), "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(
        line.startswith("ok")
        or "not authenticated" in line
        or "not proven" in line
        or line.startswith("WARN  no agent consumes")
        for line in result.stdout.splitlines()
    ), result.stdout
    assert any(line.startswith("ok    broker") for line in result.stdout.splitlines())


def test_the_password_comes_from_the_environment_only_when_the_config_names_none(
    synkler, write_config, real_broker_settings, env
):
    env["SYNKLER_BROKER_PASSWORD"] = "not-the-password"
    with_password = write_config(real_broker_settings)  # broker_password: guest, the right one
    assert synkler("-c", str(with_password), "check").returncode == 0
    without = write_config({k: v for k, v in real_broker_settings.items() if k != "broker_password"})
    result = synkler("-c", str(without), "check")
    assert result.returncode == 1
    assert "FAIL  broker" in result.stdout and "ACCESS_REFUSED" in result.stdout


def test_a_config_holding_a_password_others_can_read_is_a_warn_line_in_check_and_a_warning_in_status(
    synkler, settings, write_config, recorded
):
    # Receipts pinned and a state database there, so that the password is the only thing to warn of.
    pinned = receipts.public_text(receipts.new_key())
    config = write_config(dict(settings, broker_password="s3cret", download_public_key=pinned))
    State(Path(settings["state_db"])).close()
    config.chmod(0o644)
    result = synkler("-c", str(config), "check")
    warns = [line for line in result.stdout.splitlines() if line.startswith("WARN")]
    assert warns == [
        f"WARN  {config} holds the broker password and can be read by its group and others (mode 0644); "
        f"make it private: chmod 600 {config}"
    ]
    status = synkler("-c", str(config), "status")
    assert status.returncode == 0
    assert status.stderr.startswith(f"synkler: warning: {config} holds the broker password")
    config.chmod(0o600)
    result = synkler("-c", str(config), "check")
    assert not [line for line in result.stdout.splitlines() if line.startswith("WARN")]
    assert synkler("-c", str(config), "status").stderr == ""


def test_an_agent_whose_password_file_others_can_read_says_so_at_error_and_runs(
    real_broker_settings, write_config, env, tmp_path, broker
):
    secret = password_file(tmp_path, real_broker_settings.pop("broker_password"), 0o644)
    config = write_config(dict(real_broker_settings, broker_password_file=str(secret)))
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "synkler", "-c", str(config), "-v", "run"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while "connected to broker" not in log.read_text() and time.monotonic() < deadline:
            assert agent.poll() is None, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert "connected to broker" in text, text
        (error,) = [line for line in text.splitlines() if " ERROR " in line]
        assert error.endswith(
            f"{secret} holds the broker password and can be read by its group and others (mode 0644); "
            f"make it private: chmod 600 {secret} (said again every 10 minutes while it lasts)"
        )
    finally:
        agent.terminate()
        assert agent.wait(TIMEOUT) == 0
        from synkler.broker.amqp import Broker, BrokerParams

        admin = Broker(BrokerParams(broker.host, broker.port), real_broker_settings["id"], "admin")
        admin.connect(consume=False)
        try:
            admin.delete_instance(["central"])
        finally:
            admin.close()


# --------------------------------------------------------------------------------------------------
# run while another agent holds the pidfile


@pytest.fixture
def held_pidfile(settings: dict[str, Any]) -> Iterator[Pidfile]:
    pidfile = Pidfile(settings["pidfile"])
    assert pidfile.acquire()
    try:
        yield pidfile
    finally:
        pidfile.release()


def test_run_while_another_agent_holds_the_pidfile_exits_0_silently(synkler, config, settings, held_pidfile):
    result = synkler("-c", str(config), "run")
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr == ""
    assert held_pidfile.held
    assert read_pid(settings["pidfile"]) == os.getpid()
    assert not Path(settings["state_db"]).exists()  # it never started an agent


def test_run_while_another_agent_holds_the_pidfile_says_so_with_v(synkler, config, settings, held_pidfile):
    result = synkler("-v", "-c", str(config), "run")
    assert result.returncode == 0
    assert "already running" in result.stderr
    assert str(os.getpid()) in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------------
# habits: options after the command, a closed pipe, help


def test_global_options_after_the_command_work_as_before_it(
    synkler, config, settings, held_pidfile, recorded
):
    result = synkler("run", "-v", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stderr  # -v after the command was heard
    result = synkler("status", "--json", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == len(recorded)


def test_a_log_line_names_the_agent_it_comes_from(synkler, config, held_pidfile):
    result = synkler("-c", str(config), "run", "--verbose")
    [line] = result.stderr.splitlines()
    # Role, name, instance id and the process: a second agent's lines in a shared log read as its own.
    assert re.search(r" central\[central@[\w.-]+,pid=\d+\] INFO already running \(pid ", line), line


def _through_head(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`synkler … | head -1` in a real shell, with pipefail so that synkler's own status shows."""
    line = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "synkler", *argv])
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{line} | head -1"],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_check_into_a_pipe_closed_early_ends_without_a_traceback(config, env, tmp_path):
    result = _through_head(["-c", str(config), "check"], env, tmp_path)
    assert result.stdout.startswith("ok    config ")
    assert result.stderr == ""  # no BrokenPipeError, no "Exception ignored"
    assert result.returncode in (1, 141)  # the broker FAIL line, or the pipe closed first


def test_status_into_a_pipe_closed_early_ends_quietly_with_status_141(config, settings, env, tmp_path):
    # More than a pipe holds (64 KiB): synkler is still writing when head has gone.
    state = State(settings["state_db"])
    try:
        with state.transaction():
            for i in range(2000):
                state.insert(
                    Entry(id=f"{i:032x}", name=f"entry {i:04d}.dat", kind="file", md5="", state="stored")
                )
    finally:
        state.close()
    # --open: all 2,000 shown (by default the 1,000 oldest, and a note on stderr about the others)
    result = _through_head(["status", "-c", str(config), "--open", "5000"], env, tmp_path)
    assert result.stdout.split() == ["ID", "NAME", "SIZE", "MD5", "STATE", "UPDATED", "ACTIONS", "NOTE"]
    assert result.stderr == ""
    assert result.returncode == 141


@pytest.mark.parametrize("command", [[], ["run"], ["status"], ["check"], ["demo"], ["config", "migrate"]])
def test_every_command_has_help_with_an_example(synkler, command):
    result = synkler(*command, "--help")
    assert result.returncode == 0, result.stderr
    examples = result.stdout.split("examples:\n", 1)[1]
    assert examples.lstrip().startswith("synkler ")


# --------------------------------------------------------------------------------------------------
# --debug and pika; log_format: json


def _json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object


@pytest.mark.parametrize("debug, pika", [("--debug", False), ("--debug=pika", True)])
def test_pika_s_own_log_lines_come_only_with_debug_pika(
    synkler, write_config, real_broker_settings, debug, pika
):
    config = write_config({**real_broker_settings, "log_format": "json"})
    result = synkler("check", debug, "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = _json_lines(result.stderr)
    assert all(r["role"] == "central" and r["agent"] == "central" for r in lines)
    assert any(r["logger"].startswith("pika") for r in lines) == pika


# --------------------------------------------------------------------------------------------------
# upgrading from synkler 0.0.x

# A synkler 0.0.x configuration as its sample-config had it: INI, a [default] section.
OLD_CONF = """
[default]
# Directory where the files live. Required.
file_dir = {file_dir}

# How long to keep a file on the central server after the transfer is complete, in minutes.
keep_minutes = 30

# 'upload', 'central', or 'download'. Required.
mode = upload

pidfile = {pidfile}

# location of the system's rsync command. Required.
rsync = /usr/bin/env rsync

# Additional options to pass to rsync, if necessary.  Separate multiple
#   values by commas.
rsync_opts = --rsh=/usr/bin/ssh -p 2222,--bwlimit=1000

# The rabbitmq server. Required
synkler_server = 127.0.0.1

# Options are automatically enclosed in quotes.
cleanup_script = mv %F /home/user/downloads
"""


@pytest.fixture
def old_conf(tmp_path: Path, settings: dict[str, Any]) -> Path:
    path = tmp_path / "etc" / "synkler.conf.0.0"
    path.parent.mkdir(exist_ok=True)
    path.write_text(OLD_CONF.format(file_dir=settings["file_dir"], pidfile=tmp_path / "run" / "old.pid"))
    return path


@pytest.mark.parametrize("command", ["run", "status", "check"])
def test_a_0_0_x_ini_config_exits_2_saying_to_migrate_it(synkler, old_conf, command):
    result = synkler(command, "-c", str(old_conf))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"synkler: {old_conf}: ")
    assert f"synkler config migrate {old_conf} -o " in line


def test_a_config_that_is_not_utf8_exits_2_saying_where_and_what_to_do(synkler, write_config, settings):
    path = write_config(yaml.safe_dump(settings))
    path.write_bytes(path.read_bytes() + b"# caf\xe9\n")
    result = synkler("status", "-c", str(path))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "not UTF-8 text (byte 0xe9 at line " in line
    assert "iconv" in line


def test_config_migrate_writes_a_yaml_config_the_agent_loads(synkler, old_conf, tmp_path, env):
    new = tmp_path / "etc" / "synkler.conf"
    result = synkler("config", "migrate", str(old_conf), "-o", str(new))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    status = synkler("status", "--json", "-c", str(new))
    assert "no state database of the upload agent" in status.stderr  # loaded: only the agent never ran
    # Printed, it is the same text; and an existing file is never overwritten.
    printed = synkler("config", "migrate", str(old_conf))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == new.read_text()
    again = synkler("config", "migrate", str(old_conf), "-o", str(new))
    assert again.returncode == 1
    assert "exists" in again.stderr
    assert new.read_text() == printed.stdout


def test_config_migrate_of_a_yaml_config_says_there_is_nothing_to_do(synkler, config):
    result = synkler("config", "migrate", str(config))
    assert result.returncode == 2
    assert "already a YAML configuration" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("mode", ["upload", "download"])
def test_an_agent_whose_rsync_cannot_protect_remote_paths_refuses_to_run_naming_the_version(
    synkler, settings, write_config, tmp_path, mode
):
    old = tmp_path / "old-rsync"
    old.write_text("#!/bin/sh\necho 'rsync  version 2.6.9  protocol version 29'\n")
    old.chmod(0o755)
    config = write_config({**settings, "mode": mode, "rsync": str(old), "central_host": "central.example"})
    run = synkler("-c", str(config), "run")
    assert run.returncode == 1, run.stderr
    assert "rsync 2.6.9" in run.stderr and "3.0.0 or newer" in run.stderr
    assert "Traceback" not in run.stderr
    check = synkler("-c", str(config), "check")
    assert "FAIL  rsync: rsync 2.6.9" in check.stdout
