"""Cleanup scripts act only on the content that was delivered, at upload and at download: driven
without a broker, sshd or rsync."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import pytest
from support.fakes import Role
from support.transitions import only, role

from synkler.agents.base import Cleanup
from synkler.errors import Interrupted
from synkler.hops import checksum
from synkler.hops.checksum import md5_entry, stat_entry
from synkler.hops.cleanup import script_status
from synkler.messages import (
    Offer,
)
from synkler.state import Entry

RAN = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


def recording_script(tmp_path: Path) -> tuple[str, Path]:
    """A cleanup script that appends its %F to a log, and the log."""
    log = tmp_path / "ran"
    return shlex.join([sys.executable, "-c", RAN, str(log), "%F"]), log


def change(path: Path, how: str) -> None:
    """Do to a delivered entry what a writer or a person might, before its cleanup script starts."""
    if how == "touched":  # the same content: still the delivered one
        os.utime(path, (time.time() + 5, time.time() + 5))
    elif how == "replaced":  # a newer version renamed over the name
        newer = path.parent.parent / ".newer"
        newer.write_bytes(b"a newer version")
        os.rename(newer, path)
    elif how == "removed":
        path.unlink()
    elif how == "a directory":
        path.unlink()
        path.mkdir()


def delivered_at_upload(tmp_path: Path, cleanup: str = Cleanup.PENDING) -> tuple[Role, Entry, Path]:
    """Upload with data.bin delivered and its cleanup script due; the script logs what it ran on."""
    script, log = recording_script(tmp_path)
    r = role(tmp_path, "upload", cleanup_script=script, settle_seconds=0)
    path = r.file_dir / "data.bin"
    path.write_bytes(b"version 1")
    e = r.given(
        "delivered",
        peer="central",
        cleanup=cleanup,
        md5=md5_entry(path),
        size=path.stat().st_size,
        signature=stat_entry(path).signature,  # as it was offered
    )
    return r, e, log


@pytest.mark.parametrize(
    ("how", "outcome", "why"),
    [
        ("untouched", "done", None),
        ("touched", "done", None),
        ("replaced", "skipped", "the name now holds other content (md5 {md5}, delivered {delivered})"),
        ("removed", "skipped", "the name is gone"),
        ("a directory", "skipped", "the name now holds a dir, not the delivered file"),
    ],
)
def test_upload_runs_its_cleanup_script_only_if_the_name_still_holds_the_delivered_content(
    tmp_path: Path, caplog, how: str, outcome: str, why: str | None
):
    r, e, log = delivered_at_upload(tmp_path)
    path = r.file_dir / "data.bin"
    change(path, how)
    md5 = md5_entry(path) if path.is_file() else None
    r.tick()
    r.run(r.job("script"))
    entry = r.entry(e.id)
    assert (entry.state, entry.cleanup) == ("done", outcome)
    if outcome == "done":
        assert log.read_text() == f"{path}\n"
        return
    assert not log.exists()  # the script never started
    assert entry.reason == why.format(md5=md5, delivered=e.md5)
    [warning] = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    assert warning.startswith(
        f"data.bin: cleanup script not run: {path} no longer holds the delivered content"
    )


def test_upload_offers_the_newer_version_whose_name_a_skipped_cleanup_left_alone(tmp_path: Path):
    r, e, log = delivered_at_upload(tmp_path)
    path = r.file_dir / "data.bin"
    change(path, "replaced")
    r.tick()  # the cleanup script is due (and a scan)
    r.run(r.job("script"))
    assert r.entry(e.id).cleanup == "skipped"
    for _ in range(2):  # seen once, then settled
        r.run(r.job("scan"))
        r.tick(time.time() + 10)
    r.run(r.job("hash"))  # a name relayed before is hashed before a new version is offered
    _, offer = only(r.sent(), Offer)
    assert (offer.name, r.entry(offer.entry).md5) == ("data.bin", md5_entry(path))
    assert offer.entry != e.id and not log.exists()


def test_a_cleanup_script_that_ran_while_the_agent_was_down_is_collected_whatever_the_name_holds_now(
    tmp_path: Path,
):
    r, e, log = delivered_at_upload(tmp_path, cleanup=Cleanup.RUNNING)
    Path(script_status(r.cfg, e.id)).write_text(json.dumps({"returncode": 0, "output": "moved it"}))
    change(r.file_dir / "data.bin", "replaced")  # e.g. the script moved it, and a newer one came
    r.start()
    r.run(r.job("script"))
    assert (r.entry(e.id).state, r.entry(e.id).cleanup) == ("done", "done")


def test_a_cleanup_script_that_had_not_started_when_the_agent_died_is_checked_at_the_next_start(
    tmp_path: Path,
):
    r, e, log = delivered_at_upload(tmp_path, cleanup=Cleanup.RUNNING)  # no runner ever started
    change(r.file_dir / "data.bin", "replaced")
    r.start()
    r.run(r.job("script"))
    assert (r.entry(e.id).state, r.entry(e.id).cleanup) == ("done", "skipped")
    assert not log.exists()


def test_a_stop_while_the_target_is_hashed_starts_no_script_and_leaves_the_check_to_the_next_start(
    tmp_path: Path,
):
    r, e, log = delivered_at_upload(tmp_path)
    change(r.file_dir / "data.bin", "touched")  # a new fingerprint: the check reads the md5
    r.tick()
    job = r.job("script")
    checksum.STOPPING.set()
    try:
        with pytest.raises(Interrupted):  # the runtime records nothing of a job that ends so
            job.work()
    finally:
        checksum.STOPPING.clear()
    assert r.entry(e.id).cleanup == Cleanup.RUNNING  # collected, and so checked, at the next start
    assert not log.exists() and not os.path.exists(script_status(r.cfg, e.id) + ".pid")


@pytest.mark.parametrize(
    ("how", "outcome"),
    [("untouched", "done"), ("touched", "done"), ("replaced", "skipped"), ("removed", "skipped")],
)
def test_download_runs_its_cleanup_script_only_on_the_copy_it_placed(tmp_path: Path, how: str, outcome: str):
    script, log = recording_script(tmp_path)
    r = role(tmp_path, "download", cleanup_script=script)
    r.start()
    e = r.given("placing", peer="central", stored_as="data (2).bin", md5=hashlib.md5(b"data").hexdigest())
    Path(r.agent.staging.of(e.id)).write_bytes(b"data")
    r.tick()  # placed, and its cleanup script is due
    path = r.file_dir / "data (2).bin"
    assert r.entry(e.id).signature == stat_entry(path).signature  # what it placed, as placed
    change(path, how)
    r.run(r.job("script"))
    entry = r.entry(e.id)
    assert (entry.state, entry.cleanup) == ("done", outcome)
    assert (log.read_text() if log.exists() else "") == (f"{path}\n" if outcome == "done" else "")
    if how == "replaced":
        assert path.read_bytes() == b"a newer version"  # someone else's, left alone
