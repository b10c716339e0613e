"""`synkler send`, run in-process on real files: the data and its sidecar appear in upload's
file_dir, the data never before its metadata, nothing is ever replaced, and bad input is exit 2
with nothing placed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from synkler.cli.main import main


@pytest.fixture
def setup(tmp_path: Path):
    file_dir = tmp_path / "files"
    file_dir.mkdir()
    conf = tmp_path / "upload.conf"
    conf.write_text(
        yaml.safe_dump(
            {
                "mode": "upload",
                "file_dir": str(file_dir),
                "synkler_server": "central.example",
                "state_db": str(tmp_path / "state.sqlite"),
            }
        )
    )
    return conf, file_dir, tmp_path


def send(conf: Path, *args: str) -> int:
    return main(["-c", str(conf), "send", *args])


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_send_copies_a_file_and_a_directory_in_with_their_metadata(setup):
    conf, file_dir, tmp = setup
    (tmp / "run.raw").write_bytes(b"data")
    (tmp / "tree" / "sub").mkdir(parents=True)
    (tmp / "tree" / "sub" / "x").write_bytes(b"x")
    os.symlink("sub/x", tmp / "tree" / "link")
    (tmp / "m.json").write_text(json.dumps({"sample_id": "S1", "gain": 2.5}))
    assert (
        send(conf, "-m", str(tmp / "m.json"), "-k", "sample_id:S2", str(tmp / "run.raw"), str(tmp / "tree"))
        == 0
    )
    assert listing(file_dir) == ["run.raw", "run.raw.meta.json", "tree", "tree.meta.json"]
    assert (file_dir / "run.raw").read_bytes() == b"data" and (tmp / "run.raw").exists()
    assert os.readlink(file_dir / "tree" / "link") == "sub/x"
    assert json.loads((file_dir / "tree.meta.json").read_text()) == {"sample_id": "S2", "gain": 2.5}


def test_send_move_renames_it_in(setup):
    conf, file_dir, tmp = setup
    (tmp / "run.raw").write_bytes(b"data")
    assert send(conf, "--move", "-k", "a:b", str(tmp / "run.raw")) == 0
    assert not (tmp / "run.raw").exists() and listing(file_dir) == ["run.raw", "run.raw.meta.json"]


def test_send_on_an_entry_already_there_adds_keys_to_its_sidecar(setup):
    conf, file_dir, _tmp = setup
    (file_dir / "run.raw").write_bytes(b"data")
    (file_dir / "run.raw.meta.json").write_text('{"a": 1}')
    assert send(conf, "-k", "b:2", "run.raw") == 0
    assert send(conf, "-k", "a:3", str(file_dir / "run.raw")) == 0
    assert json.loads((file_dir / "run.raw.meta.json").read_text()) == {"a": "3", "b": "2"}
    assert listing(file_dir) == ["run.raw", "run.raw.meta.json"]


def test_bad_metadata_is_exit_2_naming_the_file_and_places_nothing(setup, capsys):
    conf, file_dir, tmp = setup
    (tmp / "run.raw").write_bytes(b"data")
    (tmp / "m.json").write_text('{"a": NaN}')
    assert send(conf, "-m", str(tmp / "m.json"), str(tmp / "run.raw")) == 2
    assert str(tmp / "m.json") in capsys.readouterr().err
    assert send(conf, "-k", "novalue", str(tmp / "run.raw")) == 2
    assert listing(file_dir) == []


def test_send_never_replaces_an_entry_or_a_sidecar(setup, capsys):
    conf, file_dir, tmp = setup
    (tmp / "run.raw").write_bytes(b"new")
    (tmp / "other").write_bytes(b"other")
    (file_dir / "run.raw").write_bytes(b"old")
    (file_dir / "other.meta.json").write_text("{}")
    assert send(conf, "-k", "a:b", str(tmp / "run.raw")) == 2  # another path, a name already taken
    assert send(conf, "-k", "a:b", str(tmp / "other")) == 2
    assert (file_dir / "run.raw").read_bytes() == b"old"
    assert listing(file_dir) == ["other.meta.json", "run.raw"]
    (tmp / "x.meta.json").write_text("{}")
    assert send(conf, str(tmp / "x.meta.json")) == 2  # a sidecar's name is never an entry's
