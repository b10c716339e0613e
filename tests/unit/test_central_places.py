"""Central uses no spool directory that is a symlink or not its own (issue 22): it refuses to start
on one, and an entry whose staging directory was replaced by a symlink fails at admission, with
nothing written through the link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.fakes import Role

from synkler.agents.spool import PlaceRefused
from synkler.messages import Failed


@pytest.mark.parametrize("which", ["staging", "stored", "growing"])
def test_central_refuses_to_start_on_a_spool_directory_that_is_a_symlink(tmp_path: Path, which: str):
    r = Role("central", tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = r.file_dir / "lab"
    base.mkdir()
    (base / which).symlink_to(elsewhere)
    with pytest.raises(PlaceRefused, match=f"lab/{which} is a symlink"):
        r.start()


def test_central_refuses_an_instance_directory_that_is_a_symlink(tmp_path: Path):
    r = Role("central", tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (r.file_dir / "lab").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PlaceRefused, match="symlink"):
        r.start()
    assert os.listdir(tmp_path / "elsewhere") == []


def test_an_entry_whose_staging_directory_became_a_symlink_fails_and_nothing_goes_through_it(tmp_path: Path):
    r = Role("central", tmp_path)
    r.start()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "authorized_keys").write_text("ssh-ed25519 AAAA precious\n")
    (r.file_dir / "lab" / "staging" / "upload").symlink_to(victim)
    e = r.given("waiting", peer="upload", attempt=0, name="authorized_keys")
    r.tick()
    entry = r.entry(e.id)
    assert entry.state == "failed" and "is a symlink" in (entry.reason or "")
    assert [type(m) for _, m in r.sent()] == [Failed]
    assert (victim / "authorized_keys").read_text() == "ssh-ed25519 AAAA precious\n"
