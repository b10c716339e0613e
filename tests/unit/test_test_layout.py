"""The test tree itself: pytest imports test modules by their base name (the tests folders are not
packages), so two test modules of one name in different folders fail to collect, and only when the
whole suite runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_name():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []
