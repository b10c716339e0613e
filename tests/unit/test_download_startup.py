"""Download's start-up tidy-up of its staging place: what a cut-off pull left is kept for its entry,
everything else goes. Real files and a real state database; start-up needs no broker."""

from __future__ import annotations

import os
import time
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
    unknown_dir = uuid.uuid4().hex  # an early pull leaves a file, never a directory
    (staging / unknown_dir).mkdir()

    start(agent)

    # The unknown entry's file is what an early pull left before its fetch came: kept for it.
    kept = {ids["fetching"], ids["placing"], ids["unknown"]}
    assert sorted(os.listdir(staging)) == sorted([*kept, PARTIAL_DIR])
    assert sorted(os.listdir(partial)) == sorted(kept - {ids["unknown"]})
    assert os.listdir(agent.cfg.file_dir) == [staging.name]  # nothing published, nothing else touched
    assert list(agent.early) == [ids["unknown"]]


def test_start_up_keeps_an_early_copy_without_reading_it(agent: Download) -> None:
    # The md5 of a big copy is made again by the job that uses it, on a worker: never in the main
    # loop, whose start-up would otherwise wait for it (and so would a stop).
    entry_id = uuid.uuid4().hex
    staging = Path(agent.staging.dir)
    staging.mkdir(parents=True)
    (staging / entry_id).write_bytes(b"x" * 1000)
    before = time.time()
    start(agent)
    early = agent.early[entry_id]
    assert (early.hashed, early.local) == (0, str(staging / entry_id))
    assert early.ended is not None and early.ended >= before  # EARLY_KEEP counts from this start


def test_start_up_removes_an_empty_partial_dir(agent: Download) -> None:
    staging = Path(agent.staging.dir)
    (staging / PARTIAL_DIR).mkdir(parents=True)
    start(agent)
    assert os.listdir(staging) == []
