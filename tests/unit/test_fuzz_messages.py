"""Property-based fuzzing (hypothesis) of message decoding: whatever the bytes, `decode` and
`decode_many` raise nothing but MessageError, and what they accept is exactly what `encode` writes
again. Examples: a few dozen per property by default; HYPOTHESIS_PROFILE=long for thousands."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from synkler import messages
from synkler.errors import MessageError
from synkler.messages import KINDS, MAX_SIZE, SCHEMA, SCHEMAS, Message

HEX = "0123456789abcdef"

# Any JSON value, nested a little.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def names() -> st.SearchStrategy[str]:
    """Entry names the validator accepts: printable text, and file names that are not UTF-8."""
    text = st.text(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"), min_size=1, max_size=40
    )
    raw = st.binary(min_size=1, max_size=40).map(os.fsdecode)
    return st.one_of(text, raw).filter(lambda n: messages.name_problem(n) is None)


def paths() -> st.SearchStrategy[str]:
    component = st.text(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"), min_size=1, max_size=12
    )
    return (
        st.lists(component, min_size=1, max_size=6)
        .map(lambda parts: "/" + "/".join(parts))
        .filter(lambda p: messages.path_problem(p) is None)
    )


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": names(),
    "stored_as": names(),
    "kind": st.sampled_from(KINDS),
    "size": st.integers(0, MAX_SIZE),
    "files": st.integers(0, MAX_SIZE),
    "md5": st.text(HEX, min_size=32, max_size=32),
    "got": st.text(HEX, min_size=32, max_size=32),
    "attempt": st.integers(1, 1000),
    "dest": paths(),
    "path": paths(),
    "reason": st.text(max_size=300),
    "hop": st.text(max_size=50),
    "outcome": st.sampled_from(["placed", "present"]),
}
senders = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")


@st.composite
def valid_wire(draw: st.DrawFn) -> dict[str, Any]:
    """A message as it travels: the envelope and every body field of its type, all valid."""
    mtype = draw(st.sampled_from(sorted(SCHEMAS)))
    wire: dict[str, Any] = {
        "v": SCHEMA,
        "type": mtype,
        "entry": draw(st.text(HEX, min_size=32, max_size=32)),
        "from": draw(senders),
        "at": draw(st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2**40)),
    }
    for name in SCHEMAS[mtype]:
        wire[name] = draw(FIELDS[name])
    return wire


@st.composite
def near_wire(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with a few of its fields dropped, replaced by any JSON value, or added."""
    wire = draw(valid_wire())
    for _ in range(draw(st.integers(0, 3))):
        keys = sorted(wire)
        action = draw(st.sampled_from(["drop", "replace", "add", "other-field"]))
        if action == "drop":
            wire.pop(draw(st.sampled_from(keys)))
        elif action == "replace":
            wire[draw(st.sampled_from(keys))] = draw(json_values)
        elif action == "add":
            wire[draw(st.text(max_size=8))] = draw(json_values)
        else:  # a valid value of another field: a path where a name goes, a size for an attempt
            key, other = draw(st.sampled_from(keys)), draw(st.sampled_from(sorted(FIELDS)))
            wire[key] = draw(FIELDS[other])
    return wire


def dumps(value: Any, ascii_only: bool) -> bytes:
    """JSON as a sender may write it: escaped to ASCII (as synkler does) or as UTF-8 (a lone
    surrogate, a name's byte that is not UTF-8, can only travel escaped)."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value).encode("ascii")


def round_trips(msg: Message) -> None:
    again = messages.decode(messages.encode(msg))
    assert again == msg and type(again) is type(msg)


@given(st.binary(max_size=4096))
def test_decoding_any_bytes_raises_nothing_but_a_message_error(raw):
    for decode in (messages.decode, messages.decode_many):
        try:
            decode(raw)
        except MessageError:
            pass


@given(valid_wire(), st.booleans())
def test_every_valid_message_decodes_and_round_trips_through_encode(wire, ascii_only):
    msg = messages.decode(dumps(wire, ascii_only))
    assert msg.TYPE == wire["type"] and (msg.entry, msg.sender) == (wire["entry"], wire["from"])
    assert messages.body(msg) == {name: wire[name] for name in SCHEMAS[msg.TYPE]}
    round_trips(msg)


@given(near_wire() | json_values, st.booleans())
def test_a_message_near_the_schema_is_either_refused_with_a_message_error_or_valid_and_round_trips(
    wire, ascii_only
):
    raw = dumps(wire, ascii_only)
    try:
        msg = messages.decode(raw)
    except MessageError:
        return
    round_trips(msg)
    # Accepted: then every field is one the type has, and each passes its check.
    assert set(wire) == {"v", "type", "entry", "from", "at", *SCHEMAS[msg.TYPE]}
    assert all(check(wire[name]) is None for name, check in SCHEMAS[msg.TYPE].items())


@given(st.lists(near_wire() | valid_wire() | json_values, min_size=0, max_size=6), st.booleans())
def test_a_batch_is_refused_whole_or_each_element_judged_as_it_would_be_alone(items, ascii_only):
    raw = dumps(items, ascii_only)
    try:
        decoded = messages.decode_many(raw)
    except MessageError:
        assert not items  # an empty batch; any list of 1 to 1000 small elements parses
        return
    assert [element for element, _ in decoded] == json.loads(raw)
    for element, outcome in decoded:
        alone = dumps(element, True)
        if isinstance(outcome, MessageError):
            try:
                messages.decode(alone)
            except MessageError:
                continue
            raise AssertionError(f"refused in a batch, accepted alone: {element!r}")
        assert messages.decode(alone) == outcome
        round_trips(outcome)
