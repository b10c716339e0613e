"""Download's start-up tidy-up of its staging place: what a cut-off pull left is kept for its entry,
everything else goes. Real files and a real state database; start-up needs no broker."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from synkler.agents.download import Download
from synkler.config import parse_config
from synkler.hops.transfer import PARTIAL_DIR
from synkler.state import Entry, State


@pytest.fixture
def agent(tmp_path: Path):
    file_dir = tmp_path / "files"
    file_dir.mkdir()
    data = {
        "mode": "download",
        "file_dir": str(file_dir),
        "synkler_server": "broker.example",
        "state_db": str(tmp_path / "state.sqlite"),
    }
    cfg = parse_config(data, tmp_path / "synkler.conf", environ={}, home=tmp_path)
    state = State(cfg.state_db)
    yield Download(cfg, state, jobs=None)
    state.close()


def start(agent: Download) -> None:
    with agent.state.transaction():
        agent.startup()


def test_start_up_keeps_what_pulls_to_resume_left_and_removes_the_rest(agent: Download) -> None:
    ids = {what: uuid.uuid4().hex for what in ("fetching", "placing", "done", "unknown")}
    with agent.state.transaction():
        for what in ("fetching", "placing", "done"):
            agent.state.insert(Entry(id=ids[what], name=f"{what}.bin", kind="file", md5="0" * 32, state=what))
    staging = Path(agent.staging.dir)
    partial = staging / PARTIAL_DIR
    partial.mkdir(parents=True)
    for entry_id in ids.values():
        (staging / entry_id).write_bytes(b"pulled")
        (partial / entry_id).write_bytes(b"half")
    (staging / "stray").mkdir()

    start(agent)

    kept = {ids["fetching"], ids["placing"]}
    assert sorted(os.listdir(staging)) == sorted([*kept, PARTIAL_DIR])
    assert sorted(os.listdir(partial)) == sorted(kept)
    assert os.listdir(agent.cfg.file_dir) == [staging.name]  # nothing published, nothing else touched


def test_start_up_removes_an_empty_partial_dir(agent: Download) -> None:
    staging = Path(agent.staging.dir)
    (staging / PARTIAL_DIR).mkdir(parents=True)
    start(agent)
    assert os.listdir(staging) == []
