"""One version, said the same everywhere (issue 23, item 8: the 0.4 build and a later one both said
`synkler 0.4.0`, so an upgrade could not be confirmed): the package's metadata, `--version` and the
relay view (`synkler.__version__`), and the newest release in CHANGELOG.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import synkler

REPO = Path(__file__).resolve().parents[2]


def test_the_version_of_the_package_is_the_one_synkler_says_and_the_newest_in_the_changelog():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on; the floor is older
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == synkler.__version__
    released = re.findall(r"^## (\d+\.\d+\.\d+)\b", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert released[0] == synkler.__version__
