"""Indented JSON for people, written faster: the very text json.dumps writes."""

from __future__ import annotations

import enum
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synkler.jsontext import indented


def reference(value: object) -> str:
    return json.dumps(value, ensure_ascii=True, indent=1, sort_keys=True)


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and the infinities too
    | st.text()  # any code point, surrogates and control characters included
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=40,
)


@given(values)
def test_the_text_is_exactly_what_json_dumps_writes(value):
    assert indented(value) == reference(value)


class Kind(str, enum.Enum):
    FILE = "file"


class Level(enum.IntEnum):
    HIGH = 3


def test_subclasses_of_str_and_int_are_written_as_json_writes_them():
    value = {"kind": Kind.FILE, "level": Level.HIGH, "flag": True, "list": [Kind.FILE, Level.HIGH, 1.5]}
    assert indented(value) == reference(value)


def test_what_json_turns_or_refuses_is_left_to_json():
    assert indented({2: "a", 1: [None]}) == reference({2: "a", 1: [None]})  # keys not strings
    with pytest.raises(TypeError):
        indented({"a": object()})
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        indented(loop)
