"""Subprocesses for the relay: argument lists built exactly, never a shell, clear results when they fail."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from synkler.errors import Interrupted
from synkler.hops import checksum, cleanup, transfer
from synkler.hops.cleanup import cleanup_argv, run_cleanup
from synkler.hops.transfer import PARTIAL_DIR, effective_opts, rsync_argv, run

ENTRY = "0123456789abcdef0123456789abcdef"


def script_cfg(tmp_path: Path, template, timeout: float = 3600.0) -> SimpleNamespace:
    return SimpleNamespace(
        cleanup_argv=tuple(template), state_db=tmp_path / "state.sqlite", cleanup_timeout=timeout
    )


NASTY_NAME = 'it\'s a "quoted" file; with spaces & $(touch x) `y`.csv'


def rsync_cfg(**changes) -> SimpleNamespace:
    values = dict(
        rsync=("rsync",),
        rsync_opts=("--rsh=ssh -p 2222 -i /home/me/.ssh/key", "--bwlimit=1000"),
        rsync_timeout=77,
        stall_seconds=60.0,
        central_host="central.example",
        rrsync_root=None,
        transport="rsync",
        ssh_control_persist=0,
        id="default",
        name="upload",
        state_db="/tmp/state.sqlite",
    )
    values.update(changes)
    return SimpleNamespace(**values)


# --------------------------------------------------------------------------------------------------
# cleanup_argv


def test_cleanup_argv_substitutes_name_and_full_path_inside_arguments():
    argv = cleanup_argv(["mv", "%F", "/archive/done-%f", "--tag=%f@%F"], "data.csv", "/files/data.csv")
    assert argv == ["mv", "/files/data.csv", "/archive/done-data.csv", "--tag=data.csv@/files/data.csv"]


def test_cleanup_argv_turns_a_double_percent_into_one_literal_percent():
    argv = cleanup_argv(["echo", "100%%", "%%f", "%%F", "%%%f"], "n", "/p/n")
    assert argv == ["echo", "100%", "%f", "%F", "%n"]


def test_cleanup_argv_leaves_other_percent_sequences_alone():
    assert cleanup_argv(["date", "+%Y-%m-%d", "%"], "n", "/p/n") == ["date", "+%Y-%m-%d", "%"]


def test_a_name_with_spaces_quotes_and_shell_syntax_stays_one_argument():
    full = "/files/" + NASTY_NAME
    argv = cleanup_argv(["rm", "--", "%F"], NASTY_NAME, full)
    assert argv == ["rm", "--", full]


def test_percent_signs_in_the_name_are_not_substituted_again():
    argv = cleanup_argv(["echo", "%f"], "50%F %% %f.csv", "/files/50%F %% %f.csv")
    assert argv == ["echo", "50%F %% %f.csv"]


def test_percent_f_inside_the_full_path_is_not_substituted_again():
    argv = cleanup_argv(["rm", "%F"], "50%frac.csv", "/files/50%frac.csv")
    assert argv == ["rm", "/files/50%frac.csv"]


def test_cleanup_argv_does_not_change_the_template():
    template = ("rm", "%F")
    cleanup_argv(template, "a", "/b/a")
    assert template == ("rm", "%F")


# --------------------------------------------------------------------------------------------------
# rsync_argv


def test_rsync_argv_puts_the_users_options_after_synklers_and_before_source_and_destination():
    argv = rsync_argv(rsync_cfg(), "/files/data.csv", "central.example:/srv/in/")
    assert argv[0] == "rsync"
    assert argv[-2:] == ["/files/data.csv", "central.example:/srv/in/"]
    user = argv.index("--rsh=ssh -p 2222 -i /home/me/.ssh/key")
    assert argv[user : user + 2] == ["--rsh=ssh -p 2222 -i /home/me/.ssh/key", "--bwlimit=1000"]
    assert user + 2 == len(argv) - 2
    for own in ("--archive", "--partial", f"--partial-dir={PARTIAL_DIR}", "--timeout=77"):
        assert argv.index(own) < user


def test_rsync_argv_uses_a_dot_prefixed_partial_dir_and_the_configured_timeout():
    argv = rsync_argv(rsync_cfg(rsync_timeout=5), "a", "b")
    assert f"--partial-dir={PARTIAL_DIR}" in argv
    assert PARTIAL_DIR.startswith(".")
    assert "--timeout=5" in argv


def test_rsync_argv_in_place_writes_without_temporary_files_or_a_partial_dir():
    argv = rsync_argv(rsync_cfg(), "a", "b", inplace=True)
    assert "--inplace" in argv
    assert "--partial" not in argv
    assert not any(o.startswith("--partial-dir") for o in argv)


@pytest.mark.parametrize(
    "theirs", ["--partial-dir=.p", "--delay-updates", "--temp-dir=/tmp", "-T", "--inplace", "--append"]
)
def test_rsync_argv_keeps_temporary_files_where_the_users_options_forbid_writing_in_place(theirs):
    argv = rsync_argv(rsync_cfg(rsync_opts=(theirs,)), "a", "b", inplace=True)
    assert argv.count("--inplace") == (1 if theirs == "--inplace" else 0)
    assert f"--partial-dir={PARTIAL_DIR}" in argv


def test_rsync_argv_appends_rather_than_writing_in_place_when_asked_both():
    argv = rsync_argv(rsync_cfg(), "a", "b", append=True, inplace=True)
    assert "--append" in argv
    assert "--inplace" not in argv


def test_rsync_argv_keeps_a_multi_word_rsync_command_and_works_without_user_options():
    argv = rsync_argv(rsync_cfg(rsync=("/usr/bin/env", "rsync"), rsync_opts=()), "/src", "host:/dst/")
    assert argv[:2] == ["/usr/bin/env", "rsync"]
    assert argv[-2:] == ["/src", "host:/dst/"]


def test_rsync_argv_passes_a_name_with_spaces_and_quotes_as_one_argument():
    src = "/files/" + NASTY_NAME
    argv = rsync_argv(rsync_cfg(), src, "central.example:/srv/in/")
    assert argv[-2] == src


# --------------------------------------------------------------------------------------------------
# run


def test_run_captures_output_and_success():
    result = run([sys.executable, "-c", "print('hello'); import sys; print('err', file=sys.stderr)"])
    assert result.ok
    assert result.returncode == 0
    assert "hello" in result.output
    assert "err" in result.output  # stderr is folded into the output
    assert result.argv[0] == sys.executable


def test_run_reports_a_failing_exit_status_with_the_last_output_lines():
    result = run([sys.executable, "-c", "print('a'); print('b'); raise SystemExit(23)"])
    assert not result.ok
    assert result.returncode == 23
    assert result.summary() == "exit 23: a / b"


def test_a_run_ends_when_it_is_no_longer_needed_with_what_it_said_so_far():
    # download's early pull: the fetch ends the run that would go on pulling (here: for an hour).
    cancel = threading.Event()
    code = "import sys, time; print('appended 8 MB', flush=True); time.sleep(3600)"
    threading.Timer(2.0, cancel.set).start()  # the child's first line is out by then, even on a busy machine
    result = run([sys.executable, "-c", code], cancel=cancel)
    assert not result.ok
    assert "appended 8 MB" in result.output and result.output.endswith("stopped: no longer needed")


def test_a_run_with_a_cancel_never_set_ends_as_it_would_without(tmp_path: Path):
    result = run(
        [sys.executable, "-c", "import time; time.sleep(0.3); print('done')"], cancel=threading.Event()
    )
    assert result.ok and result.output == "done\n"
    late = run([sys.executable, "-c", "import time; time.sleep(3600)"], timeout=0.3, cancel=threading.Event())
    assert not late.ok and late.output.endswith("timed out after 0.3 s")


def test_run_reports_a_missing_program_as_exit_127_naming_it(tmp_path: Path):
    missing = str(tmp_path / "no-such-rsync")
    result = run([missing, "--version"])
    assert not result.ok
    assert result.returncode == 127
    assert result.output == f"program not found: {missing}"


def test_run_reports_a_non_executable_program_as_exit_126_naming_it(tmp_path: Path):
    script = tmp_path / "cleanup.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    result = run([str(script)])
    assert not result.ok
    assert result.returncode == 126
    assert str(script) in result.output


def test_run_reports_a_script_without_an_interpreter_line_as_a_failed_result(tmp_path: Path):
    script = tmp_path / "cleanup.sh"
    script.write_text("echo no shebang\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    result = run([str(script)])
    assert not result.ok
    assert str(script) in result.output


def test_run_kills_a_command_that_outlives_its_timeout():
    result = run(
        [sys.executable, "-c", "import signal; print('started', flush=True); signal.pause()"], timeout=1
    )
    assert not result.ok
    assert result.returncode == -1
    assert "started" in result.output
    assert "timed out after 1 s" in result.output


def test_run_gives_the_command_no_stdin():
    result = run([sys.executable, "-c", "import sys; print(repr(sys.stdin.read()))"])
    assert result.output.strip() == "''"


# --------------------------------------------------------------------------------------------------
# run_cleanup

RECORD_ARGS = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"


def test_run_cleanup_runs_the_script_with_substituted_arguments_and_no_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)  # where a shell would have run `touch pwned`
    record = tmp_path / "args.json"
    template = (
        sys.executable,
        "-c",
        RECORD_ARGS,
        str(record),
        "%f",
        "%F",
        "moved to /archive/%f",
        "$(touch pwned)",
        "; touch pwned2",
        "| touch pwned3",
        "*",
        "~",
    )
    full = str(tmp_path / NASTY_NAME)
    result = run_cleanup(script_cfg(tmp_path, template), ENTRY, NASTY_NAME, full)
    assert result.ok, result.output
    assert json.loads(record.read_text()) == [
        NASTY_NAME,
        full,
        f"moved to /archive/{NASTY_NAME}",
        "$(touch pwned)",
        "; touch pwned2",
        "| touch pwned3",
        "*",
        "~",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["args.json", "state.sqlite.scripts"]
    assert list((tmp_path / "state.sqlite.scripts").iterdir()) == []  # the runner's files are collected


def test_run_cleanup_can_remove_the_delivered_file(tmp_path: Path):
    delivered = tmp_path / NASTY_NAME
    delivered.write_text("payload")
    remover = "import os, sys; os.remove(sys.argv[1])"
    cfg = script_cfg(tmp_path, (sys.executable, "-c", remover, "%F"))
    result = run_cleanup(cfg, ENTRY, NASTY_NAME, str(delivered))
    assert result.ok, result.output
    assert not delivered.exists()


def test_run_cleanup_reports_a_failing_script(tmp_path: Path):
    cfg = script_cfg(tmp_path, (sys.executable, "-c", "raise SystemExit(3)", "%F"))
    result = run_cleanup(cfg, ENTRY, "a", str(tmp_path / "a"))
    assert not result.ok
    assert result.returncode == 3


def test_run_cleanup_reports_a_missing_script_by_name(tmp_path: Path):
    missing = str(tmp_path / "cleanup-that-is-not-there")
    result = run_cleanup(script_cfg(tmp_path, (missing, "%F")), ENTRY, "a", "/files/a")
    assert (result.ok, result.returncode) == (False, 127)
    assert missing in result.output


class RecordingSet(set):
    """Stands in for transfer._running and remembers every process ever added."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[object] = []

    def add(self, item) -> None:
        self.added.append(item)
        super().add(item)


def test_transfers_are_tracked_for_shutdown_but_cleanup_scripts_are_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    running = RecordingSet()
    monkeypatch.setattr(transfer, "_running", running)
    cfg = script_cfg(tmp_path, (sys.executable, "-c", "pass", "%f"))
    assert run_cleanup(cfg, ENTRY, "a", "/files/a").ok
    assert running.added == []
    assert run([sys.executable, "-c", "pass"]).ok
    assert len(running.added) == 1
    assert len(running) == 0  # and forgotten once finished


def test_no_transfer_starts_once_the_agent_stops_but_a_cleanup_script_does(tmp_path: Path):
    # terminate_all ends the transfers going on; one a job would start after it would run unended.
    started = tmp_path / "started"
    checksum.STOPPING.set()
    try:
        with pytest.raises(Interrupted):
            run([sys.executable, "-c", f"open({str(started)!r}, 'w')"])
        assert not started.exists()
        cfg = script_cfg(tmp_path, (sys.executable, "-c", "pass", "%f"))
        assert run_cleanup(cfg, ENTRY, "a", "/files/a").ok  # a stop never cuts a script short
    finally:
        checksum.STOPPING.clear()


# ---------------------------------------------------------------- ssh connection sharing


def test_connection_sharing_is_appended_to_the_users_ssh_command_whose_options_still_win():
    opts, shared = effective_opts(rsync_cfg(ssh_control_persist=60))
    assert opts[1] == "--bwlimit=1000" and len(opts) == 2
    assert opts[0] == f"--rsh={shared}"
    assert shared.startswith("ssh -p 2222 -i /home/me/.ssh/key -o ControlMaster=auto -o ControlPersist=60 ")
    assert "-o ControlPath=" in shared and "-%C " in shared
    assert "-o ServerAliveInterval=15 -o ServerAliveCountMax=4" in shared


@pytest.mark.parametrize(
    "given",
    [("-e", "ssh -p 2222"), ("--rsh", "ssh -p 2222"), ("-essh -p 2222",)],
)
def test_every_spelling_of_the_remote_shell_option_is_recognised(given):
    opts, shared = effective_opts(rsync_cfg(rsync_opts=(*given, "--bwlimit=1"), ssh_control_persist=60))
    assert shared.startswith("ssh -p 2222 -o ControlMaster=auto")
    assert opts == (f"--rsh={shared}", "--bwlimit=1")


def test_without_an_rsh_option_plain_ssh_is_shared():
    opts, shared = effective_opts(rsync_cfg(rsync_opts=(), ssh_control_persist=30))
    assert opts == (f"--rsh={shared}",) and shared.startswith(
        "ssh -o ControlMaster=auto -o ControlPersist=30 "
    )


def test_a_remote_shell_other_than_ssh_is_left_alone():
    cfg = rsync_cfg(rsync_opts=("--rsh=/usr/local/bin/my-tunnel -x",), ssh_control_persist=60)
    assert effective_opts(cfg) == (("--rsh=/usr/local/bin/my-tunnel -x",), None)


def test_zero_persist_turns_sharing_off():
    cfg = rsync_cfg(ssh_control_persist=0)
    assert effective_opts(cfg) == (cfg.rsync_opts, None)


def test_agents_get_separate_control_sockets():
    _, up = effective_opts(rsync_cfg(ssh_control_persist=60, name="upload"))
    _, down = effective_opts(rsync_cfg(ssh_control_persist=60, name="download"))
    assert up.split("ControlPath=")[1] != down.split("ControlPath=")[1]


@pytest.fixture
def fresh_cipher_choice():
    transfer.preferred_ciphers.cache_clear()
    yield
    transfer.preferred_ciphers.cache_clear()


def default_ciphers() -> list[str]:
    return transfer._ssh_ciphers(["ssh", "-F", "/dev/null", "-G", "central.example"]) or []


def test_with_aes_instructions_aes_gcm_goes_first_and_the_set_of_ciphers_stays(
    monkeypatch, fresh_cipher_choice
):
    monkeypatch.setattr(transfer, "_cpu_has_aes", lambda: True)
    chosen = transfer.preferred_ciphers("ssh -F /dev/null -p 2222", "central.example")
    default = default_ciphers()
    if not set(transfer.GCM) & set(default) or default[0] in transfer.GCM:
        assert chosen is None  # nothing to reorder with this OpenSSH
        return
    assert chosen.split(",")[0] in transfer.GCM
    assert sorted(chosen.split(",")) == sorted(default)
    _, shared = effective_opts(rsync_cfg(rsync_opts=("--rsh=ssh -F /dev/null",), ssh_control_persist=60))
    assert shared.endswith(f" -o Ciphers={chosen}")


@pytest.mark.parametrize("rsh", ["ssh -F /dev/null -c aes256-ctr", "ssh -F /dev/null -o Ciphers=aes128-ctr"])
def test_ciphers_someone_chose_are_left_alone(monkeypatch, fresh_cipher_choice, rsh):
    monkeypatch.setattr(transfer, "_cpu_has_aes", lambda: True)
    assert transfer.preferred_ciphers(rsh, "central.example") is None
    _, shared = effective_opts(rsync_cfg(rsync_opts=(f"--rsh={rsh}",), ssh_control_persist=60))
    assert "Ciphers=" not in shared.removeprefix(rsh)


def test_without_aes_instructions_the_ciphers_are_left_alone(monkeypatch, fresh_cipher_choice):
    monkeypatch.setattr(transfer, "_cpu_has_aes", lambda: False)
    assert transfer.preferred_ciphers("ssh -F /dev/null", "central.example") is None


# ---------------------------------------------------------------- cleanup scripts across agent crashes


def test_a_result_left_by_a_runner_whose_agent_died_is_collected_without_running_again(tmp_path: Path):
    cfg = script_cfg(tmp_path, (sys.executable, "-c", "raise SystemExit('must not run')"))
    status = cleanup.script_status(cfg, ENTRY)
    Path(status).write_text('{"returncode": 0, "output": "ran before the crash"}')
    result = run_cleanup(cfg, ENTRY, "a", "/files/a", resume=True)
    assert result.ok and result.output == "ran before the crash"
    assert not Path(status).exists()


def test_a_runner_that_died_mid_script_means_interrupted_and_no_second_run(tmp_path: Path):
    cfg = script_cfg(tmp_path, (sys.executable, "-c", "raise SystemExit('must not run')"))
    status = cleanup.script_status(cfg, ENTRY)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    Path(status + ".pid").write_text(dead.stdout)
    assert run_cleanup(cfg, ENTRY, "a", "/files/a", resume=True) is None
    assert not Path(status + ".pid").exists() and not Path(status).exists()


def test_a_script_that_never_started_is_started_on_resume(tmp_path: Path):
    marker = tmp_path / "ran"
    cfg = script_cfg(
        tmp_path, (sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write('x')", str(marker))
    )
    assert run_cleanup(cfg, ENTRY, "a", "/files/a", resume=True).ok
    assert marker.read_text() == "x"


def test_a_runner_still_going_after_the_agent_died_is_waited_for(tmp_path: Path):
    gate = tmp_path / "gate"
    waiter = (
        "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)\nprint('finished')"
    )
    cfg = script_cfg(tmp_path, (sys.executable, "-c", waiter, str(gate)))
    status = cleanup.script_status(cfg, ENTRY)
    runner = subprocess.Popen(
        [sys.executable, "-m", "synkler.hops.scriptrunner", status, "--", *cfg.cleanup_argv],
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not Path(status + ".pid").exists():
        assert time.monotonic() < deadline, "the runner never wrote its pid file"
        time.sleep(0.02)
    threading.Timer(0.3, gate.touch).start()  # the script ends a little after the "restart"
    result = run_cleanup(cfg, ENTRY, "a", "/files/a", resume=True)
    runner.wait(10)
    assert result.ok and result.output.strip() == "finished"


def test_an_agent_killed_while_its_runner_starts_does_not_run_the_script_twice(tmp_path: Path):
    # The agent starts the runner and dies at once, before the runner (still starting Python) has
    # written its pid; the restarted agent must wait for that runner, not start the script again.
    log = tmp_path / "runs"
    append_x = "import sys; open(sys.argv[1], 'a').write('x')"
    cfg = script_cfg(tmp_path, (sys.executable, "-c", append_x, str(log)))
    agent = (
        "import os, signal, subprocess, sys\n"
        "from types import SimpleNamespace\n"
        "from synkler.hops import cleanup\n"
        "def run_then_die(argv, **kw):\n"
        "    subprocess.Popen(argv, **kw)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "subprocess.run = run_then_die\n"
        "cfg = SimpleNamespace(cleanup_argv=tuple(sys.argv[3:]), state_db=sys.argv[1],\n"
        "                      cleanup_timeout=3600.0)\n"
        "cleanup.run_cleanup(cfg, sys.argv[2], 'a', '/files/a')\n"
    )
    died = subprocess.run([sys.executable, "-c", agent, str(cfg.state_db), ENTRY, *cfg.cleanup_argv])
    assert died.returncode == -signal.SIGKILL
    result = run_cleanup(cfg, ENTRY, "a", "/files/a", resume=True)
    assert result.ok and log.read_text() == "x"


def test_a_script_over_its_time_limit_is_stopped_with_its_children_and_counts_as_failed(tmp_path: Path):
    # The script starts a grandchild that would outlive it, then hangs; both must be gone afterwards.
    pidfile = tmp_path / "child.pid"
    hang = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "open(sys.argv[1], 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(600)"
    )
    cfg = script_cfg(tmp_path, (sys.executable, "-c", hang, str(pidfile)), timeout=1.5)
    started = time.monotonic()
    result = run_cleanup(cfg, ENTRY, "a", "/files/a")
    assert time.monotonic() - started < 30
    assert not result.ok and result.returncode == -signal.SIGTERM
    assert "started" in result.output and "stopped after 1.5 s (cleanup_timeout)" in result.output
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the script's child survived the time limit"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "code, output, space, link",
    [
        (0, "", False, False),
        (11, 'rsync: [receiver] write failed on "/c/big.bin": No space left on device (28)', True, False),
        (11, 'rsync: [receiver] mkstemp "/c/.b.XYZ" failed: Plus d\'espace disponible (28)', True, False),
        (23, 'rsync: [receiver] write failed on "/c/x": Disk quota exceeded (122)', True, False),
        (23, 'rsync: [receiver] open "/c/a (28)" failed: Permission denied (13)', False, False),
        (255, "ssh: connect to host central port 22: Connection refused", False, True),
        (255, "kex_exchange_identification: Connection closed by remote host", False, True),
        (12, "rsync: connection unexpectedly closed (0 bytes received so far) [sender]", False, True),
        (30, "[sender] io timeout after 6 seconds -- exiting", False, True),
        (23, 'rsync: [sender] link_stat "/u/gone" failed: No such file or directory (2)', False, False),
        (12, 'rsync: [receiver] write failed on "/c/f": No space left on device (28)', True, False),
    ],
)
def test_a_failed_run_says_whether_a_disk_was_full_or_the_link_was_down(code, output, space, link):
    result = transfer.Result(code == 0, code, output)
    assert (result.out_of_space, result.link_down) == (space, link)


RSYNC_AFTER_SSH = (
    "rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"
    "rsync error: unexplained error (code 255) at io.c(232) [sender=3.5.0]"
)


@pytest.mark.parametrize(
    "ssh_says, person",
    [
        ("root@central: Permission denied (publickey).", True),
        ("Host key verification failed.", True),
        ("@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @", True),
        (
            "Warning: Identity file /home/synkler/.ssh/id_ed25519 not accessible: No such file or directory.",
            True,
        ),
        ("ssh: Could not resolve hostname centrl: Name or service not known", True),
        ("ssh: connect to host central port 22: Connection refused", False),
        ("ssh: connect to host central port 22: No route to host", False),
        ('rsync: [receiver] open "/c/x" failed: Permission denied (13)', False),  # rsync's, not ssh's
    ],
)
def test_ssh_refusals_only_a_person_can_fix_are_told_from_a_link_that_is_down(ssh_says, person):
    result = transfer.Result(False, 255, f"{ssh_says}\n{RSYNC_AFTER_SSH}\nmore rsync\nand more")
    assert result.link_down  # neither counts as a failed attempt
    assert result.needs_person == person
    if ssh_says.startswith("ssh: ") or person:
        assert ssh_says in result.summary()  # kept, though rsync's lines came after it


# --------------------------------------------------------------------------------------------------
# remote paths never reach central's shell (issue 22), and are relative under rrsync (issue 23)


def record_rsync(tmp_path: Path) -> tuple[str, ...]:
    """An "rsync" that says its version and otherwise writes down its arguments and environment."""
    script = tmp_path / "rsync"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "if sys.argv[1:] == ['--version']:\n"
        "    print('rsync  version 3.5.0  protocol version 32'); sys.exit(0)\n"
        f"open({str(tmp_path / 'run.json')!r}, 'w').write(json.dumps([sys.argv[1:], dict(os.environ)]))\n"
    )
    script.chmod(0o755)
    return (str(script),)


def recorded(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    argv, env = json.loads((tmp_path / "run.json").read_text())
    return argv, env


def test_a_push_protects_its_paths_and_passes_no_rsync_old_args_on_whatever_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from synkler.hops import transfer

    monkeypatch.setenv("RSYNC_OLD_ARGS", "1")
    monkeypatch.setenv("RSYNC_PROTECT_ARGS", "0")
    cfg = rsync_cfg(rsync=record_rsync(tmp_path), rsync_opts=())
    assert transfer.push(cfg, str(tmp_path), ["a"], "/srv/central/lab/staging/upload").ok
    argv, env = recorded(tmp_path)
    assert "--protect-args" in argv
    assert argv[-1] == "central.example:/srv/central/lab/staging/upload/"
    assert "RSYNC_OLD_ARGS" not in env and "RSYNC_PROTECT_ARGS" not in env


def test_under_rrsync_paths_go_relative_to_its_root_without_protect_args_which_it_refuses(tmp_path: Path):
    from synkler.hops import transfer

    cfg = rsync_cfg(rsync=record_rsync(tmp_path), rsync_opts=(), rrsync_root="/srv/central/lab")
    assert transfer.pull(cfg, "/srv/central/lab/stored", ["x"], str(tmp_path / "in")).ok
    argv, _env = recorded(tmp_path)
    assert "--protect-args" not in argv
    assert argv[-2:] == ["central.example:stored/", f"{tmp_path / 'in'}/"]


def test_a_place_outside_the_rrsync_root_is_not_tried_and_needs_a_person(tmp_path: Path):
    from synkler.hops import transfer

    root = "/srv/central/lab/staging/upload"
    cfg = rsync_cfg(rsync=record_rsync(tmp_path), rsync_opts=(), rrsync_root=root)
    result = transfer.pull(cfg, "/srv/central/lab/stored", ["x"], str(tmp_path / "in"))
    assert not (tmp_path / "run.json").exists()
    assert result.needs_person and "rrsync_root" in result.summary()


def test_a_refusal_by_rrsync_needs_a_person_not_a_link_that_comes_back():
    from synkler.hops.transfer import Result

    output = (
        "/usr/bin/rrsync error: post-realpath open failed (race detected): /srv/central/lab/stored/ "
        "No such file or directory\nrsync: connection unexpectedly closed (0 bytes received so far) "
        "[Receiver]\nrsync error: error in rsync protocol data stream (code 12) at io.c(232) [Receiver=3.5.0]"
    )
    result = Result(False, 12, output)
    assert result.needs_person and "rrsync error" in result.summary()


def test_a_single_file_rrsync_cannot_find_is_a_missing_file_not_a_refusal():
    """An early pull of growing/<entry> after central dropped it: the fetch decides, no person."""
    from synkler.hops.transfer import Result

    output = (
        "/usr/bin/rrsync error: post-realpath open failed (race detected): growing/0123abcd "
        "No such file or directory\nrsync error: error in rsync protocol data stream (code 12)"
    )
    assert not Result(False, 12, output).needs_person


@pytest.mark.parametrize("refused, retired", [(True, 1), (False, 0)])
def test_a_run_refused_by_the_forced_command_makes_the_next_log_in_afresh(
    tmp_path, monkeypatch, refused, retired
):
    """A key's forced command is fixed when ssh logs in: once it refused, the shared connection takes
    no new runs, so a fixed authorized_keys on central counts from the next run (issue 23, item 4)."""
    output = "/usr/bin/rrsync error: post-realpath open failed (race detected): stored/ No such file"
    outcome = (
        transfer.Result(False, 12, output) if refused else transfer.Result(False, 12, "connection reset")
    )
    assert outcome.needs_person is refused
    monkeypatch.setattr(transfer, "run", lambda *a, **k: outcome)
    stops: list[object] = []
    monkeypatch.setattr(transfer, "retire_shared_connection", stops.append)
    cfg = rsync_cfg(rsync=record_rsync(tmp_path))
    assert transfer.pull(cfg, "/srv/central/lab/stored", ["x"], str(tmp_path / "in")) is outcome
    assert stops == [cfg] * retired


def test_retiring_the_shared_connection_asks_its_master_to_stop_not_to_exit(monkeypatch, tmp_path):
    monkeypatch.setattr(transfer, "control_dir", lambda: tmp_path)
    ran: list[list[str]] = []
    monkeypatch.setattr(transfer, "run", lambda argv, **k: ran.append(list(argv)))
    monkeypatch.setattr(transfer, "preferred_ciphers", lambda rsh, host: None)
    transfer.retire_shared_connection(rsync_cfg(ssh_control_persist=60))
    [argv] = ran
    assert argv[-3:] == ["-O", "stop", "central.example"] and argv[0] == "ssh"
