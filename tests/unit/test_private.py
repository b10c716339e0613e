"""Owner-only files and directories, the agent's umask and what its children get, exposed secrets."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from synkler import private
from synkler.hops.cleanup import run_cleanup, script_status
from synkler.hops.transfer import run
from synkler.private import exposed_secrets, make_dirs, private_dir, private_file

ENTRY = "0123456789abcdef0123456789abcdef"


def script_cfg(tmp_path: Path, template) -> SimpleNamespace:
    return SimpleNamespace(
        cleanup_argv=tuple(template), state_db=tmp_path / "state.sqlite", cleanup_timeout=60.0
    )


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, and no agent umask remembered, restored afterwards (the umask is the process's)."""
    before = os.umask(0o022)
    saved = private._started_umask
    private._started_umask = None
    try:
        yield
    finally:
        os.umask(before)
        private._started_umask = saved


def test_make_dirs_creates_every_missing_level_0700_and_leaves_existing_ones(tmp_path: Path, umask_022):
    shared = tmp_path / "var"
    shared.mkdir(mode=0o755)
    make_dirs(shared / "lib" / "synkler")
    assert (mode(shared), mode(shared / "lib"), mode(shared / "lib" / "synkler")) == (0o755, 0o700, 0o700)


def test_private_dir_tightens_a_directory_of_ours_that_others_may_enter(
    tmp_path: Path, umask_022, caplog: pytest.LogCaptureFixture
):
    old = tmp_path / "staging"
    old.mkdir(mode=0o755)
    (old / "data").write_text("kept")
    private_dir(old)
    assert mode(old) == 0o700
    assert (old / "data").read_text() == "kept"
    assert f"{old} was open to others (mode 0755): now mode 0700" in caplog.text
    private_dir(tmp_path / "new" / "spool")
    assert mode(tmp_path / "new") == mode(tmp_path / "new" / "spool") == 0o700


def test_private_file_creates_an_empty_0600_file_and_tightens_it_and_its_companions(
    tmp_path: Path, umask_022
):
    path = tmp_path / "state" / "agent.sqlite"
    private_file(path, ("-wal", "-shm"))
    assert (mode(path), mode(path.parent), path.read_bytes()) == (0o600, 0o700, b"")
    path.chmod(0o644)
    wal = tmp_path / "state" / "agent.sqlite-wal"
    wal.write_bytes(b"wal")
    wal.chmod(0o664)
    private_file(path, ("-wal", "-shm"))
    assert (mode(path), mode(wal), wal.read_bytes()) == (0o600, 0o600, b"wal")
    assert not (tmp_path / "state" / "agent.sqlite-shm").exists()  # a companion is never created


def test_the_target_of_a_symlink_is_never_changed(tmp_path: Path, umask_022):
    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir(mode=0o755)
    (tmp_path / "spool").symlink_to(elsewhere)
    private_dir(tmp_path / "spool")
    target = tmp_path / "target.sqlite"
    target.write_bytes(b"")
    target.chmod(0o644)
    (tmp_path / "link.sqlite").symlink_to(target)
    private_file(tmp_path / "link.sqlite")
    assert (mode(elsewhere), mode(target)) == (0o755, 0o644)


def test_what_is_not_ours_is_left_as_it_is(tmp_path: Path, umask_022, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "theirs"
    path.mkdir(mode=0o755)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    private_dir(path)
    assert mode(path) == 0o755


@pytest.mark.parametrize(
    "file_mode, readers", [(0o644, "its group and others"), (0o640, "its group"), (0o604, "others")]
)
def test_a_secret_file_others_can_read_is_a_problem_with_its_fix(tmp_path: Path, file_mode, readers):
    secret = tmp_path / "my conf"
    secret.write_text("broker_password: s3cret\n")
    secret.chmod(file_mode)
    assert exposed_secrets([secret]) == [
        f"{secret} holds the broker password and can be read by {readers} "
        f"(mode {file_mode:04o}); make it private: chmod 600 '{secret}'"
    ]


def test_a_private_or_missing_secret_file_is_no_problem(tmp_path: Path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    assert exposed_secrets([secret, tmp_path / "gone"]) == []


def test_a_secret_file_of_another_user_must_become_the_agent_user_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o640)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    monkeypatch.setattr(private, "_user", lambda: "synkler")
    (problem,) = exposed_secrets([secret])
    assert problem.endswith(f"make it private: chown synkler {secret} && chmod 600 {secret}")


UMASK = [sys.executable, "-c", "import os; u = os.umask(0); print(oct(u))"]


def test_the_agent_runs_with_umask_077_and_rsync_and_scripts_with_the_one_it_was_started_with(
    tmp_path: Path, umask_022
):
    assert run(UMASK).output.strip() == "0o22"
    private.restrict_umask()
    assert os.umask(0o077) == 0o077
    private.restrict_umask()  # twice (a daemon mode may set it again): the starting one is kept
    assert private.child_umask() == 0o022
    assert run(UMASK).output.strip() == "0o22"  # transfer.run: rsync's umask
    record = tmp_path / "umask"
    script = [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write(oct(os.umask(0)))"]
    result = run_cleanup(script_cfg(tmp_path, [*script, "%F"]), ENTRY, "umask", str(record))
    assert result.ok, result.output
    assert record.read_text() == "0o22"
    assert mode(record) == 0o644  # the script's file is made under the user's umask
    records = Path(script_status(script_cfg(tmp_path, []), ENTRY)).parent
    assert mode(records) == 0o700


def test_the_cleanup_runner_s_records_are_owner_only_whatever_the_umask(tmp_path: Path, umask_022):
    status = script_status(script_cfg(tmp_path, []), ENTRY)
    look = "import os, sys; open(sys.argv[2], 'w').write(oct(os.stat(sys.argv[1]).st_mode & 0o777))"
    record = tmp_path / "seen"
    cfg = script_cfg(tmp_path, [sys.executable, "-c", look, status + ".pid", "%F"])
    assert run_cleanup(cfg, ENTRY, "seen", str(record)).ok
    assert record.read_text() == "0o600"  # the runner's pid file, while the script runs
    assert mode(Path(status).parent) == 0o700


def test_a_cleanup_script_and_rsync_do_not_see_the_broker_password_from_the_agents_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SYNKLER_BROKER_PASSWORD", "s3cret-broker-pw")
    monkeypatch.setenv("KEEP_ME", "the user's own")
    record = tmp_path / "environment"
    script = [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write(repr(dict(os.environ)))"]
    result = run_cleanup(script_cfg(tmp_path, [*script, "%F"]), ENTRY, "env", str(record))
    assert result.ok, result.output
    seen = record.read_text()
    assert "s3cret-broker-pw" not in seen and "SYNKLER_BROKER_PASSWORD" not in seen
    assert "the user's own" in seen  # the rest of the environment is the script's as before
    shown = run([sys.executable, "-c", "import os; print(dict(os.environ))"]).output  # rsync, ssh
    assert "s3cret-broker-pw" not in shown and "the user's own" in shown
