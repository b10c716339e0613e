"""The decisions behind `synkler check`'s new lines, without a broker, ssh or a running agent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synkler.cli import checks
from synkler.config import parse_config
from synkler.observe.report import Report


def cfg_of(tmp_path: Path, **settings):
    data = {"mode": "upload", "file_dir": str(tmp_path), "synkler_server": "broker.example", **settings}
    return parse_config(data, tmp_path / "synkler.conf", check_dirs=False, environ={}, home=tmp_path)


# peers


def test_a_peer_that_consumes_its_queue_is_ok():
    assert checks.peer_line("lab", "central", (0, 1), None) == (
        "ok",
        "the central agent consumes synkler:lab:inbox:central",
    )


def test_messages_waiting_for_a_peer_that_never_reported_fail_naming_the_id_as_the_likely_cause():
    level, text = checks.peer_line("lab-typo", "central", (3, 0), None)
    assert level == "FAIL"
    assert "no agent consumes synkler:lab-typo:inbox:central (3 messages wait for it)" in text
    assert "is the central agent running, and is `id` the same on all three hosts?" in text


def test_messages_held_in_the_own_outbox_count_as_waiting_even_without_a_queue():
    level, text = checks.peer_line("lab", "central", None, None, outbox=1)
    assert level == "FAIL" and "(1 message wait for it)" in text


def test_a_peer_not_consuming_with_nothing_waiting_is_only_a_warning():
    level, text = checks.peer_line("lab", "download", None, None)
    assert level == "WARN" and "no download agent has ever reported under id 'lab'" in text


def test_a_peer_that_reported_and_stopped_is_named_with_its_host_and_when():
    report = Report("dl-1", at=1.0e9, stopped=1.0e9)
    level, text = checks.peer_line("lab", "download", (2, 0), report)
    assert level == "FAIL"
    assert "the download agent on host dl-1 stopped at 2001-09-0" in text and "start it" in text


def test_central_checks_download_and_the_upload_agents_it_has_entries_from(tmp_path):
    central = cfg_of(tmp_path, mode="central")
    assert checks.peers_of(central, ["lab-a", "lab-b"]) == ["download", "lab-a", "lab-b"]
    assert checks.peers_of(cfg_of(tmp_path), []) == ["central", "download"]
    assert checks.peers_of(cfg_of(tmp_path, mode="download"), ["x"]) == ["central"]
    named = cfg_of(tmp_path, mode="central", name="hub", download_name="archive")
    assert checks.peers_of(named, ["lab-a"]) == ["archive", "lab-a"]
    assert checks.peers_of(cfg_of(tmp_path, name="lab-a", central_name="hub"), []) == ["hub", "download"]


def test_a_presence_report_that_is_not_one_counts_as_none():
    assert Report.decode(b"{not json") is None
    assert Report.decode(b"[1]") is None
    assert Report.decode(b'{"at": 1}') is None  # names no host: not a report, nor a holder record


# central's free space


def test_central_without_room_above_its_reserve_fails_and_with_room_is_ok():
    level, text = checks.reserve_line(Path("/srv"), free=5 * 10**9, total=100 * 10**9, free_percent=10)
    assert level == "FAIL" and "5 GB free, reserve 10 GB (free_percent 10)" in text
    # A small disk is shown in units that fit it, not as "0.2 GB free, reserve 0.0 GB".
    level, text = checks.reserve_line(Path("/srv"), free=20 * 10**6, total=400 * 10**6, free_percent=10)
    assert level == "FAIL" and "20 MB free, reserve 40 MB (free_percent 10)" in text
    assert "central admits nothing" in text
    assert checks.reserve_line(Path("/srv"), 50 * 10**9, 100 * 10**9, 10)[0] == "ok"


# cleanup script


def test_a_cleanup_program_missing_from_path_or_not_executable_is_a_problem(tmp_path):
    script = tmp_path / "clean"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    assert "is not executable" in checks.program_problem(str(script), None)
    script.chmod(0o755)
    assert checks.program_problem(str(script), None) is None
    assert checks.program_problem("clean", str(tmp_path)) is None
    assert "not found on PATH" in checks.program_problem("no-such-program-x", str(tmp_path))
    assert "does not exist" in checks.program_problem(str(tmp_path / "gone"), None)
    assert "is a directory" in checks.program_problem(str(tmp_path), None)


def test_the_cleanup_line_fails_for_a_missing_script_and_is_absent_at_central_or_without_one(tmp_path):
    level, text = checks.cleanup_line(cfg_of(tmp_path, cleanup_script=f"{tmp_path}/gone %F"), None)
    assert level == "FAIL" and text.startswith(f"cleanup_script: {tmp_path}/gone does not exist")
    assert checks.cleanup_line(cfg_of(tmp_path), None) is None
    assert checks.cleanup_line(cfg_of(tmp_path, mode="central"), None) is None


# the agent's files


def test_a_state_file_under_a_regular_file_or_a_directory_cannot_be_written(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert checks.writable_problem(blocker / "sub" / "state.sqlite") == f"{blocker} is not a directory"
    assert checks.writable_problem(tmp_path) == f"{tmp_path} is a directory"
    assert checks.writable_problem(tmp_path / "new" / "deeper" / "state.sqlite") is None
    assert not (tmp_path / "new").exists()  # nothing created


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_state_dir_without_write_permission_cannot_be_written(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert checks.writable_problem(locked / "state.sqlite") == f"cannot write in {locked}"


# keys


def test_keys_set_for_another_role_are_warned_of_by_name(tmp_path):
    lines = checks.ignored_lines(cfg_of(tmp_path, keep_minutes=5, free_percent=3, settle_seconds=2))
    assert lines == [
        ("WARN", "keep_minutes is set, but an upload agent ignores it (used by central)"),
        ("WARN", "free_percent is set, but an upload agent ignores it (used by central)"),
    ]
    central = cfg_of(tmp_path, mode="central", rsync_opts=["-v"], keep_minutes=5)
    assert [text.split(" is set")[0] for _, text in checks.ignored_lines(central)] == ["rsync_opts"]


def test_plain_amqp_to_a_broker_off_this_host_is_a_warning_naming_tls():
    level, text = checks.plain_amqp_line(False, "central.example.org", ["192.0.2.7"])
    assert level == checks.WARN
    assert "central.example.org" in text and "in clear" in text and "broker_tls" in text
    # A name that resolves to a loopback address and to another one still leaves the host.
    assert checks.plain_amqp_line(False, "central", ["127.0.1.1", "192.0.2.7"]) is not None
    # Unresolvable: cannot tell, so warn.
    assert checks.plain_amqp_line(False, "nowhere.invalid", []) is not None


def test_plain_amqp_on_loopback_and_tls_anywhere_draw_no_warning():
    assert checks.plain_amqp_line(False, "localhost", ["127.0.0.1", "::1"]) is None
    assert checks.plain_amqp_line(False, "central", ["127.0.1.1"]) is None  # Debian's own hostname
    assert checks.plain_amqp_line(True, "central.example.org", ["192.0.2.7"]) is None
    assert checks.broker_addresses("127.0.0.1", 5672) == ["127.0.0.1"]
