"""Property-based fuzzing (hypothesis) of message decoding: whatever the bytes, `decode` and
`decode_many` raise nothing but MessageError, and what they accept is exactly what `encode` writes
again. Examples: a few dozen per property by default; HYPOTHESIS_PROFILE=long for thousands."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from support.strategies import dumps, json_values, near_wire, valid_wire

from synkler import messages
from synkler.errors import MessageError
from synkler.messages import SCHEMAS, Message


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
    assert messages.body(msg) == {name: wire[name] for name in SCHEMAS[msg.TYPE] if name in wire}
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
    every = {"v", "type", "entry", "from", "at", *SCHEMAS[msg.TYPE]}
    assert every - messages.OPTIONAL[msg.TYPE] <= set(wire) <= every
    assert all(check(wire[name]) is None for name, check in SCHEMAS[msg.TYPE].items() if name in wire)


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
