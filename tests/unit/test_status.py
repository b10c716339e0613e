"""`synkler status` in-process on a long history: what it shows without --all, and that it reads only
what it shows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from synkler.cli import main as cli
from synkler.state import Entry, State


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "files").mkdir()
    path = tmp_path / "synkler.conf"
    path.write_text(
        yaml.safe_dump(
            {
                "mode": "download",
                "file_dir": str(tmp_path / "files"),
                "synkler_server": "127.0.0.1",
                "state_db": str(tmp_path / "state.sqlite"),
            }
        )
    )
    return path


def history(db: Path, done: int) -> dict[str, Entry]:
    """`done` finished entries, one a minute, and one entry of each kind status always shows."""
    state = State(db)
    now = time.time()
    made: dict[str, Entry] = {}
    try:
        with state.transaction():
            for i in range(done):
                made[f"done-{i}"] = Entry(
                    id=f"{i:032x}", name=f"done-{i}", kind="file", md5="a" * 32, state="done", created=i
                )
            made["fetching"] = Entry(
                id="f" * 32, name="fetching", kind="file", md5="a" * 32, state="fetching"
            )
            made["failed"] = Entry(id="e" * 32, name="failed", kind="file", md5="a" * 32, state="failed")
            made["cleanup"] = Entry(
                id="c" * 32, name="cleanup", kind="file", md5="a" * 32, state="done", cleanup="failed"
            )
            for e in made.values():
                state.insert(e)
            for i in range(done):
                state._db.execute(
                    "UPDATE entries SET updated = ? WHERE id = ?", (now - (done - i) * 60, f"{i:032x}")
                )
            state._db.execute("UPDATE entries SET updated = 1 WHERE id = ?", ("c" * 32,))
    finally:
        state.close()
    return made


def names(out: str) -> list[str]:
    """The NAME column of a status table (after ID)."""
    return [line.split()[1] for line in out.splitlines()[1:]]


def test_status_shows_what_is_on_its_way_failed_or_needs_a_person_and_the_newest_finished(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    history(tmp_path / "state.sqlite", 200)
    assert cli.main(["-c", str(config), "status"]) == 0
    out, err = capsys.readouterr()
    newest = [f"done-{i}" for i in range(150, 200)]
    assert sorted(names(out)) == sorted(["fetching", "failed", "cleanup", *newest])
    assert "150 older finished entries not shown" in err and "--all" in err

    assert cli.main(["-c", str(config), "status", "--last", "3", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)  # stdout stays pure JSON; the note is on stderr
    assert {r["name"] for r in rows} == {"fetching", "failed", "cleanup", "done-197", "done-198", "done-199"}
    assert "197 older finished entries not shown" in err


def test_status_all_lists_every_entry_oldest_first(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    made = history(tmp_path / "state.sqlite", 200)
    assert cli.main(["-c", str(config), "status", "--all", "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == len(made) and err == ""


def test_status_offers_actions_knowing_the_newest_version_even_when_it_is_not_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "data.csv").write_text("v2")
    config = tmp_path / "synkler.conf"
    config.write_text(
        yaml.safe_dump(
            {
                "mode": "upload",
                "file_dir": str(tmp_path / "files"),
                "synkler_server": "127.0.0.1",
                "state_db": str(tmp_path / "state.sqlite"),
            }
        )
    )
    state = State(tmp_path / "state.sqlite")
    try:
        with state.transaction():
            state.insert(
                Entry(id="1" * 32, name="data.csv", kind="file", md5="a" * 32, state="failed", created=1)
            )
            state.insert(
                Entry(id="2" * 32, name="data.csv", kind="file", md5="b" * 32, state="done", created=2)
            )
    finally:
        state.close()
    assert cli.main(["-c", str(config), "status", "--last", "0", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["id"] == "1" * 32
    assert "retry" not in row["actions"]  # a newer version (hidden, delivered) has come since


def test_status_with_a_big_backlog_shows_the_oldest_on_their_way_every_failed_one_and_counts_the_others(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    state = State(tmp_path / "state.sqlite")
    try:
        with state.transaction():
            # 5,000 on their way in two states, interleaved in age, and 30 failed among them.
            for i in range(5000):
                status = "failed" if i % 170 == 0 else ("fetching" if i % 2 else "placing")
                state.insert(
                    Entry(
                        id=f"{i:032x}",
                        name=f"e-{i}",
                        kind="file",
                        md5="a" * 32,
                        state=status,
                        created=10_000 - i,
                    )
                )
            state.insert(
                Entry(id="d" * 32, name="done-0", kind="file", md5="a" * 32, state="done", created=1)
            )
    finally:
        state.close()
    assert cli.main(["-c", str(config), "status", "--json", "--open", "100"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    on_the_way = [r for r in rows if r["state"] in ("fetching", "placing")]
    # The oldest 100 of those on their way (the highest numbers: made oldest), oldest first.
    oldest_first = sorted((i for i in range(5000) if i % 170), reverse=True)[:100]
    assert [r["name"] for r in on_the_way] == [f"e-{i}" for i in oldest_first]
    assert sorted(r["name"] for r in rows if r["state"] == "failed") == sorted(
        f"e-{i}" for i in range(0, 5000, 170)
    )
    assert [r["name"] for r in rows if r["state"] == "done"] == ["done-0"]
    assert [r["created"] for r in rows] == sorted(r["created"] for r in rows)
    assert f"{5000 - 30 - 100} more entries on their way not shown" in err
    assert "older finished" not in err

    assert cli.main(["-c", str(config), "status"]) == 0  # the default: 1,000
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 + 1000 + 30 + 1
    assert f"{5000 - 30 - 1000} more entries on their way not shown" in err
