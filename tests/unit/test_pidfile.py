"""A second agent started by cron must see that the first still runs; a dead one's file is taken over."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from synkler.errors import PidfileError
from synkler.service.pidfile import Pidfile, read_pid

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys
from synkler.service.pidfile import Pidfile
p = Pidfile(sys.argv[1])
print("held" if p.acquire() else "refused", flush=True)
sys.stdin.read()
p.release()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A child process that owns tmp_path/agent.pid until its stdin closes."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "agent.pid")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def test_acquire_writes_our_pid_and_release_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.pid"
    pidfile = Pidfile(path)
    assert pidfile.acquire() is True
    assert path.read_text() == f"{os.getpid()}\n"
    assert read_pid(path) == os.getpid()
    pidfile.release()
    assert not path.exists()


def test_release_is_idempotent_and_harmless_without_acquire(tmp_path: Path) -> None:
    pidfile = Pidfile(tmp_path / "agent.pid")
    pidfile.release()
    assert pidfile.acquire()
    pidfile.release()
    pidfile.release()
    assert not (tmp_path / "agent.pid").exists()


def test_acquiring_twice_through_the_same_object_keeps_ownership(tmp_path: Path) -> None:
    pidfile = Pidfile(tmp_path / "agent.pid")
    assert pidfile.acquire()
    assert pidfile.acquire()
    pidfile.release()


def test_a_second_pidfile_in_the_same_process_is_refused_while_the_first_holds(tmp_path: Path) -> None:
    first = Pidfile(tmp_path / "agent.pid")
    second = Pidfile(tmp_path / "agent.pid")
    assert first.acquire()
    try:
        assert second.acquire() is False
        assert read_pid(tmp_path / "agent.pid") == os.getpid()
    finally:
        first.release()
    assert second.acquire() is True
    second.release()


def test_a_refused_acquire_leaves_the_holders_file_alone(tmp_path: Path) -> None:
    first = Pidfile(tmp_path / "agent.pid")
    second = Pidfile(tmp_path / "agent.pid")
    assert first.acquire()
    assert not second.acquire()
    second.release()
    assert (tmp_path / "agent.pid").read_text() == f"{os.getpid()}\n"
    first.release()


def test_a_live_child_process_holding_the_file_makes_us_refuse(
    tmp_path: Path, holder: subprocess.Popen
) -> None:
    ours = Pidfile(tmp_path / "agent.pid")
    assert ours.acquire() is False
    assert read_pid(tmp_path / "agent.pid") == holder.pid


def test_the_context_manager_names_the_pid_that_holds_the_file(
    tmp_path: Path, holder: subprocess.Popen
) -> None:
    with (
        pytest.raises(PidfileError, match=rf"agent\.pid is held by pid {holder.pid}$"),
        Pidfile(tmp_path / "agent.pid"),
    ):
        pass


def test_a_sigkilled_owners_file_is_taken_over_with_our_pid(tmp_path: Path, holder: subprocess.Popen) -> None:
    path = tmp_path / "agent.pid"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert path.exists(), "a killed owner cannot clean up; the stale file must still be there"
    assert read_pid(path) == holder.pid
    ours = Pidfile(path)
    assert ours.acquire() is True
    assert read_pid(path) == os.getpid()
    ours.release()


def test_an_owner_that_exits_normally_removes_its_file(tmp_path: Path, holder: subprocess.Popen) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=10) == 0
    assert not (tmp_path / "agent.pid").exists()


def test_garbage_content_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "agent.pid"
    path.write_bytes(b"not a pid at all, and longer than any pid we would write\n\x00\xff")
    assert read_pid(path) is None
    pidfile = Pidfile(path)
    assert pidfile.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    pidfile.release()


def test_a_stale_file_naming_an_unrelated_live_pid_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "agent.pid"
    path.write_text("1\n")  # init is alive, but does not hold our lock
    pidfile = Pidfile(path)
    assert pidfile.acquire()
    assert read_pid(path) == os.getpid()
    pidfile.release()


def test_the_context_manager_acquires_and_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.pid"
    with Pidfile(path) as pidfile:
        assert pidfile.held
        assert read_pid(path) == os.getpid()
    assert not pidfile.held
    assert not path.exists()


def test_missing_parent_directories_are_created_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    shared = tmp_path / "var"
    shared.mkdir(mode=0o755)
    path = shared / "run" / "synkler" / "agent.pid"
    old_umask = os.umask(0o022)
    try:
        with Pidfile(path):
            assert read_pid(path) == os.getpid()
            assert (path.stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old_umask)
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert (path.parent.parent.stat().st_mode & 0o777) == 0o700
    assert (shared.stat().st_mode & 0o777) == 0o755  # an existing parent is left as it was


def test_a_pidfile_left_open_to_others_by_an_older_version_is_taken_over_owner_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agent.pid"
    path.write_text("999999\n")
    path.chmod(0o644)
    with Pidfile(path):
        assert (path.stat().st_mode & 0o777) == 0o600
    assert "mode 0644" in caplog.text


def test_an_unwritable_location_raises_pidfile_error_with_path_and_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = blocker / "agent.pid"
    with pytest.raises(PidfileError, match=r"a-file.*Not a directory"):
        Pidfile(path).acquire()


def test_a_symlink_at_the_pidfile_path_is_refused_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    os.symlink(target, tmp_path / "agent.pid")
    with pytest.raises(PidfileError, match="agent.pid"):
        Pidfile(tmp_path / "agent.pid").acquire()
    assert target.read_text() == "keep me"


def test_release_does_not_remove_a_file_that_someone_else_replaced(tmp_path: Path) -> None:
    path = tmp_path / "agent.pid"
    pidfile = Pidfile(path)
    assert pidfile.acquire()
    os.unlink(path)
    path.write_text("4242\n")
    pidfile.release()
    assert path.read_text() == "4242\n"


def test_acquire_retries_when_the_file_is_replaced_between_open_and_lock(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "agent.pid"
    path.write_text("")
    real_flock = fcntl.flock
    calls = []

    def flock_after_replacement(fd: int, op: int) -> None:
        calls.append(fd)
        if len(calls) == 1:  # the previous owner unlinks and someone recreates the path
            os.unlink(path)
            path.write_text("")
        real_flock(fd, op)

    monkeypatch.setattr("synkler.service.pidfile.fcntl.flock", flock_after_replacement)
    pidfile = Pidfile(path)
    assert pidfile.acquire()
    assert len(calls) == 2
    assert read_pid(path) == os.getpid()
    pidfile.release()
    assert not path.exists()


@pytest.mark.parametrize("content", [b"", b"0\n", b"-5\n", b"abc\n", b"12 13\n"])
def test_read_pid_returns_none_for_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "agent.pid"
    path.write_bytes(content)
    assert read_pid(path) is None


def test_read_pid_returns_none_for_a_missing_file(tmp_path: Path) -> None:
    assert read_pid(tmp_path / "nope.pid") is None


def test_read_pid_accepts_surrounding_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "agent.pid"
    path.write_text(" 1234 \n")
    assert read_pid(path) == 1234


DETACHER = """
import os, sys
from synkler.service.pidfile import Pidfile
p = Pidfile(sys.argv[1])
assert p.acquire()
if os.fork():
    os._exit(0)  # the launcher leaves as a daemon's launcher does: no release, no atexit
p.adopt()
print(os.getpid(), flush=True)
sys.stdin.read()
p.release()
print("released", flush=True)
"""


def test_a_forked_child_that_adopts_the_pidfile_owns_it_and_the_lock_never_lapses(tmp_path: Path) -> None:
    # A daemon's detach: the launcher acquires, the forked daemon adopts, the launcher leaves.
    path = tmp_path / "agent.pid"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    launcher = subprocess.Popen(
        [sys.executable, "-c", DETACHER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        daemon_pid = int(launcher.stdout.readline())
        assert launcher.wait(10) == 0
        assert daemon_pid != launcher.pid
        assert read_pid(path) == daemon_pid
        assert not Pidfile(path).acquire()  # the lock went over with the open file, held all along
    finally:
        launcher.stdin.close()  # the daemon releases
    assert launcher.stdout.readline() == b"released\n"
    assert not path.exists()
    launcher.stdout.close()


def test_adopt_without_holding_the_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PidfileError, match="not held"):
        Pidfile(tmp_path / "agent.pid").adopt()
