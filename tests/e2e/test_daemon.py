"""`synkler --daemon` as a real detached process: its launcher leaves, the pidfile names the daemon,
a second start exits 0 while it lives, SIGTERM stops it and removes the pidfile, SIGHUP reopens its
log. And what SIGHUP means in the foreground.

The central role is enough (it needs only the broker); every daemon a test leaves is killed by pid,
read from that test's own pidfile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from synkler.service.pidfile import read_pid

TIMEOUT = 60  # seconds; only reached when something hangs, which is itself the failure


def proc_state(pid: int) -> str | None:
    """The process's state letter from /proc (Z for a zombie), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


def alive(pid: int) -> bool:
    # A finished daemon is a zombie until whoever adopted it (init) reaps it: that is gone too.
    return proc_state(pid) not in (None, "Z", "X")


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, session, tty_nr, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def wait_until(what: str, predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def relay(make_relay):
    return make_relay()


@pytest.fixture
def daemons(relay) -> Iterator[list[int]]:
    """Pids of daemons a test started; any still alive at the end is killed (SIGKILL), but only if
    its command line names this relay's configuration."""
    pids: list[int] = []
    yield pids
    for role in ("upload", "central", "download"):
        pid = read_pid(relay.workdir / role / "synkler.pid")
        if pid is not None:
            pids.append(pid)
    for pid in set(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                ours = str(relay.workdir).encode() in f.read()
        except OSError:
            continue
        if ours and alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_until(f"pid {pid} to die", lambda pid=pid: not alive(pid), 10)


def launch(relay, *args: str, role: str = "central") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        relay.command(role, "-v", *args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def pidfile(relay, role: str = "central") -> Path:
    return relay.workdir / role / "synkler.pid"


def default_log(relay, role: str = "central") -> Path:
    return relay.workdir / role / f"{relay.instance}-{role}.log"


def test_a_daemon_detaches_from_its_launcher_and_stops_on_sigterm_removing_its_pidfile(
    relay, daemons
) -> None:
    started = time.monotonic()
    run = launch(relay, "--daemon", "run")
    assert run.returncode == 0, run.stderr
    assert time.monotonic() - started < 20
    assert "started as a daemon" in run.stderr
    pid = read_pid(pidfile(relay))
    assert pid is not None
    daemons.append(pid)
    assert alive(pid)
    # Not the launcher, not our child, not in our session, no controlling terminal.
    _state, ppid, _pgrp, session, tty_nr = stat_fields(pid)[:5]
    assert int(ppid) != os.getpid()
    assert int(session) != os.getsid(0) and int(session) != pid  # setsid, then a second fork
    assert tty_nr == "0"
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    assert "Umask:\t0077" in text(Path(f"/proc/{pid}/status"))
    log = default_log(relay)  # <stem>.log beside state_db
    wait_until("the daemon to connect", lambda: "connected to broker" in text(log))
    assert "starting" in text(log)
    assert (log.stat().st_mode & 0o777) == 0o640

    os.kill(pid, signal.SIGTERM)
    wait_until("the daemon to stop", lambda: not alive(pid))
    assert not pidfile(relay).exists()
    assert text(log).rstrip().endswith("INFO stopped")


def test_a_second_start_exits_0_at_once_while_the_daemon_lives(relay, daemons) -> None:
    assert launch(relay, "--daemon", "run").returncode == 0
    first = read_pid(pidfile(relay))
    assert first is not None
    daemons.append(first)
    for args in (("--daemon", "run"), ("run", "--daemon"), ("run",)):  # cron's every-minute start
        started = time.monotonic()
        again = launch(relay, *args)
        assert again.returncode == 0, again.stderr
        assert time.monotonic() - started < 10
        assert f"already running (pid {first}" in again.stderr
    assert read_pid(pidfile(relay)) == first and alive(first)


def test_a_stale_pidfile_is_taken_over_by_a_new_daemon(relay, daemons) -> None:
    dead = _a_dead_pid()
    pidfile(relay).write_text(f"{dead}\n")
    assert launch(relay, "--daemon", "run").returncode == 0
    pid = read_pid(pidfile(relay))
    assert pid is not None and pid != dead
    daemons.append(pid)
    assert alive(pid)


def _a_dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_sighup_reopens_the_log_file_that_logrotate_moved_away(relay, daemons, tmp_path) -> None:
    log = tmp_path / "logs" / "central.log"
    relay.write_config("central", {"log_file": str(log)})
    assert launch(relay, "--daemon", "run").returncode == 0
    pid = read_pid(pidfile(relay))
    assert pid is not None
    daemons.append(pid)
    wait_until("the daemon to connect", lambda: "connected to broker" in text(log))
    rotated = log.with_name("central.log.1")
    os.rename(log, rotated)  # what logrotate does before it signals

    os.kill(pid, signal.SIGHUP)
    wait_until("a new log file", lambda: "reopened" in text(log))
    assert (log.stat().st_mode & 0o777) == 0o640  # the old one's mode, not the daemon's umask's 0600
    assert alive(pid)  # SIGHUP of a daemon is not a stop
    os.kill(pid, signal.SIGTERM)
    wait_until("the daemon to stop", lambda: not alive(pid))
    assert "INFO stopped" in text(log)
    assert "stopped" not in text(rotated) and "reopened" not in text(rotated)


def test_a_daemon_that_cannot_start_shows_why_and_its_launcher_exits_1(relay, daemons, tmp_path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    log = tmp_path / "central.log"
    relay.write_config("central", {"log_file": str(log), "state_db": str(blocker / "state.sqlite")})
    run = launch(relay, "--daemon", "run")
    assert run.returncode == 1
    assert "synkler: central agent cannot run:" in run.stderr  # what the daemon wrote to its log
    assert f"the agent stopped before it had started as a daemon (log {log})" in run.stderr
    assert "synkler: central agent cannot run:" in text(log)
    wait_until("the failed daemon's pidfile to go", lambda: not pidfile(relay).exists(), 10)


def test_a_log_file_that_cannot_be_opened_fails_before_detaching(relay, daemons, tmp_path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    relay.write_config("central", {"log_file": str(blocker / "central.log")})
    run = launch(relay, "--daemon", "run")
    assert run.returncode == 1
    assert "synkler: central agent cannot run:" in run.stderr and "not-a-directory" in run.stderr
    assert not pidfile(relay).exists()


def test_daemon_true_in_the_config_detaches_and_foreground_overrides_it(relay, daemons) -> None:
    relay.write_config("central", {"daemon": True})
    assert launch(relay, "run").returncode == 0
    pid = read_pid(pidfile(relay))
    assert pid is not None
    daemons.append(pid)
    assert alive(pid)
    os.kill(pid, signal.SIGTERM)
    wait_until("the daemon to stop", lambda: not alive(pid))

    with open(relay.log_path("central"), "ab") as out:
        proc = subprocess.Popen(
            relay.command("central", "-v", "--foreground", "run"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        wait_until("the agent to connect", lambda: "connected to broker" in text(relay.log_path("central")))
        assert proc.poll() is None and read_pid(pidfile(relay)) == proc.pid
    finally:
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0


def test_sighup_stops_an_agent_in_the_foreground_that_logs_to_stderr(relay) -> None:
    # Its terminal hung up: the old meaning, kept where there is no log file to reopen.
    relay.start("central")
    relay.wait_for("central to connect", lambda: "connected to broker" in text(relay.log_path("central")))
    proc = relay.procs["central"]
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(TIMEOUT) == 0
    assert "INFO stopped" in text(relay.log_path("central"))


def test_an_agent_in_the_foreground_with_a_log_file_writes_there_and_reopens_it_on_sighup(
    relay, tmp_path
) -> None:
    log = tmp_path / "central.log"
    relay.write_config("central", {"log_file": str(log)})
    relay.start("central")
    proc = relay.procs["central"]
    relay.wait_for("central to connect", lambda: "connected to broker" in text(log))
    os.rename(log, tmp_path / "central.log.1")
    proc.send_signal(signal.SIGHUP)
    relay.wait_for("a new log file", lambda: "reopened" in text(log))
    assert proc.poll() is None
    relay.stop("central")
    assert proc.returncode == 0
    assert "INFO stopped" in text(log)
    assert "connected to broker" not in text(relay.log_path("central"))  # stderr went to the file too
