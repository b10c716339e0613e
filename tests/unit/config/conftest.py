"""Fixtures of the tests of synkler.config: a home, a file_dir and a config path of the test's own,
and `parse`, parse_config on a minimal valid mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from synkler.config import Config, parse_config


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def file_dir(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


@pytest.fixture
def conf_path(tmp_path: Path) -> Path:
    return tmp_path / "etc" / "synkler.conf"


@pytest.fixture
def parse(file_dir: Path, home: Path, conf_path: Path):
    """parse_config on a minimal valid mapping updated with the given keys, hermetically."""

    def run(environ: dict | None = None, **keys: object) -> Config:
        data = {"mode": "upload", "file_dir": str(file_dir), "synkler_server": "broker.example"}
        data.update(keys)
        return parse_config(data, conf_path, environ=environ or {}, home=home)

    return run
