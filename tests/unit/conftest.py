"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.fakes import Role


@pytest.fixture(autouse=True)
def close_roles() -> Iterator[None]:
    """Close every fake agent a test made (its state database, its watcher)."""
    yield
    while Role.OPEN:
        Role.OPEN.pop().close()
