"""Helpers of the tests of synkler.config (tests/unit/config/; its conftest.py has the fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synkler.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample-config"


def error_of(parse, **keys: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(**keys)
    return info.value


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
