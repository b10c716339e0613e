"""The wire format: every message type survives a round trip, and anything malformed is refused loudly."""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from typing import Any

import pytest

from synkler import messages
from synkler.errors import MessageError
from synkler.messages import MAX_BODY, MAX_NAME_BYTES, MAX_SIZE, SCHEMAS, TYPES, Corrupt, decode, encode

ENTRY = "0123456789abcdef0123456789abcdef"
MD5 = "d41d8cd98f00b204e9800998ecf8427e"
META = {"name": "data.csv", "kind": "file", "size": 1234, "files": 1}

# One valid body per message type; the test below makes sure a new type cannot be added without one.
BODIES: dict[str, dict[str, Any]] = {
    "offer": dict(META),
    "admit": {"attempt": 1, "dest": "/srv/synkler/.staging/" + ENTRY},
    "wait": {"reason": "not enough free space on central"},
    "sent": {"attempt": 2, "md5": MD5},
    "pushing": {"size": 1 << 30, "path": "/srv/synkler/growing/" + ENTRY},
    "fetch": dict(META, md5=MD5, attempt=1, path="/srv/synkler/stored/data.csv"),
    "fetched": {"stored_as": "data (2).csv", "outcome": "placed"},
    "delivered": {"stored_as": "data.csv"},
    "failed": {"hop": "pull from central", "reason": "rsync: exit 23"},
    "withdraw": {"reason": "superseded by a newer version"},
    "corrupt": {"got": "0" * 32},
    "forget": {"reason": "forgotten by an operator at upload"},
    "hello": {"role": "upload"},
    "open": dict(META, held="arrived", md5=MD5),
    "greeted": {"entries": 3},
}


def make(mtype: str = "offer", sender: str = "upload", **changes: Any) -> messages.Message:
    """A valid message object; `changes` override body fields."""
    return TYPES[mtype](ENTRY, sender, **{**BODIES[mtype], **changes})


def envelope(mtype: str = "offer", **changes: Any) -> dict[str, Any]:
    """A valid message as a dict; `changes` override or add fields."""
    msg = {
        "v": messages.SCHEMA,
        "type": mtype,
        "entry": ENTRY,
        "from": "upload",
        "at": 1700000000.5,
        **BODIES[mtype],
    }
    msg.update(changes)
    return msg


def raw(msg: object) -> bytes:
    return json.dumps(msg).encode("utf-8")


def rejected(msg: object) -> str:
    """Decode `msg` (a dict, or raw bytes) and return the MessageError text it must cause."""
    body = msg if isinstance(msg, bytes) else raw(msg)
    with pytest.raises(MessageError) as info:
        decode(body)
    return str(info.value)


def without(mtype: str, field: str) -> dict[str, Any]:
    msg = envelope(mtype)
    del msg[field]
    return msg


# --------------------------------------------------------------------------------------------------
# Round trips


def test_every_message_type_has_a_sample_body_in_these_tests():
    assert set(BODIES) == set(SCHEMAS)


@pytest.mark.parametrize(
    ("mtype", "field", "value"),
    [
        ("hello", "role", "relay"),  # only the standbys of upload, download and a pool's central greet
        ("open", "held", "delivered"),  # central's own words, not a state name
        ("open", "md5", "not-hex"),
        ("greeted", "entries", -1),
    ],
)
def test_a_greeting_message_with_a_bad_field_is_refused(mtype: str, field: str, value: object):
    assert f"field {field!r}" in rejected(envelope(mtype, **{field: value}))


@pytest.mark.parametrize("mtype", sorted(SCHEMAS))
def test_every_message_type_survives_encode_then_decode(mtype):
    sent = make(mtype, sender="central")
    body = encode(sent)
    assert decode(body) == sent
    assert type(decode(body)) is TYPES[mtype]
    wire = json.loads(body)
    assert wire["v"] == messages.SCHEMA
    assert wire["type"] == mtype
    assert wire["entry"] == ENTRY
    assert wire["from"] == "central"
    assert isinstance(wire["at"], float)
    assert {k: v for k, v in wire.items() if k not in ("v", "type", "entry", "from", "at")} == BODIES[mtype]


def test_every_message_class_names_a_validator_for_each_body_field():
    for mtype, cls in TYPES.items():
        assert cls.TYPE == mtype
        assert [f.name for f in fields(cls) if f.init] == ["entry", "sender", *SCHEMAS[mtype]]


def test_a_decoded_message_keeps_when_it_was_sent_and_one_made_here_has_no_time():
    made = Corrupt(ENTRY, "download", got="b" * 32)
    assert made.at is None
    before = time.time()
    got = decode(encode(made))
    assert before <= (got.at or 0) <= time.time()
    assert got == made  # the time is not part of what the message says


def test_encode_produces_compact_ascii_json():
    body = encode(make(name="café€.csv"))
    body.decode("ascii")  # raises if not ASCII
    assert b" " not in body


def test_encode_refuses_to_build_an_invalid_message():
    with pytest.raises(MessageError, match="name"):
        encode(make(name="a/b"))


def test_a_fresh_entry_id_is_valid_and_unique():
    ids = {messages.new_entry_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(messages.is_valid_entry_id(i) for i in ids)


@pytest.mark.parametrize(
    "name",
    [
        "my data file.csv",
        'it\'s "quoted".txt',
        "Grüße aus Köln – 東京.txt",
        "-starts-with-dash",
        "x" * MAX_NAME_BYTES,
        "é" * (MAX_NAME_BYTES // 2),  # 254 bytes of UTF-8
        "$(touch pwned); rm -rf ~",
    ],
)
def test_unusual_but_legal_names_are_accepted_and_survive_a_round_trip(name):
    msg = decode(encode(make(name=name)))
    assert msg.name == name


def test_a_name_that_is_not_utf8_on_disk_survives_as_surrogate_escapes():
    on_disk = b"caf\xe9 r\xe9sum\xe9 \xff.csv"  # Latin-1 bytes: not valid UTF-8
    name = os.fsdecode(on_disk)
    msg = decode(encode(make(name=name)))
    assert msg.name == name
    assert os.fsencode(msg.name) == on_disk


def test_a_surrogate_escaped_name_counts_its_bytes_on_disk_not_its_escape_length():
    name = os.fsdecode(b"\xff" * MAX_NAME_BYTES)  # 255 bytes on disk
    assert decode(encode(make(name=name))).name == name
    too_long = os.fsdecode(b"\xff" * (MAX_NAME_BYTES + 1))
    assert "255 bytes" in rejected(envelope(name=too_long))


def test_size_zero_and_the_largest_allowed_size_are_accepted():
    assert decode(raw(envelope(size=0))).size == 0
    assert decode(raw(envelope(size=MAX_SIZE))).size == MAX_SIZE


# --------------------------------------------------------------------------------------------------
# Rejections: the envelope


def test_a_body_that_is_not_json_is_rejected():
    assert "not valid JSON" in rejected(b"this is not json")


def test_a_body_that_is_not_utf8_is_rejected():
    body = raw(envelope()).replace(b"data.csv", b"data\xff.csv")
    assert "not valid JSON" in rejected(body)


def test_a_json_array_is_rejected():
    assert "not a JSON object" in rejected(b"[1, 2, 3]")


def test_a_json_string_is_rejected():
    assert "not a JSON object" in rejected(b'"offer"')


def test_an_empty_body_is_rejected():
    assert "not valid JSON" in rejected(b"")


def test_a_body_larger_than_64_kib_is_rejected_before_parsing():
    text = rejected(b" " * (MAX_BODY + 1))
    assert f"more than {MAX_BODY}" in text


def test_a_valid_message_padded_beyond_64_kib_is_rejected():
    body = raw(envelope()) + b" " * MAX_BODY
    assert str(MAX_BODY) in rejected(body)


@pytest.mark.parametrize("version", [0, 1, 2, 3, 5, "4", None])
def test_another_schema_version_is_rejected(version):
    assert "schema version" in rejected(envelope(v=version))


def test_a_message_without_schema_version_is_rejected():
    assert "schema version" in rejected(without("offer", "v"))


def test_a_boolean_schema_version_is_rejected():
    assert "schema version" in rejected(envelope(v=True))


@pytest.mark.parametrize("mtype", ["bogus", "", None, 1, ["offer"]])
def test_an_unknown_message_type_is_rejected(mtype):
    msg = envelope()
    msg["type"] = mtype
    assert "unknown message type" in rejected(msg)


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "0123",
        ENTRY.upper(),
        ENTRY + "0",
        "g" * 32,
        "../../../../etc/passwd00000000000",
        12345,
        None,
    ],
)
def test_a_bad_entry_id_is_rejected(entry):
    assert "entry id" in rejected(envelope(entry=entry))


def test_an_entry_id_with_a_trailing_newline_is_rejected():
    assert "entry id" in rejected(envelope(entry=ENTRY + "\n"))


@pytest.mark.parametrize("sender", ["", "up load", "a/b", ".hidden", "x" * 65, None, 7])
def test_a_bad_sender_is_rejected(sender):
    assert "sender" in rejected(envelope(**{"from": sender}))


def test_a_sender_with_a_trailing_newline_is_rejected():
    assert "sender" in rejected(envelope(**{"from": "central\n"}))


@pytest.mark.parametrize("at", [None, "now", True, [1]])
def test_a_bad_timestamp_is_rejected(at):
    assert "'at'" in rejected(envelope(at=at))


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity"])
def test_a_non_finite_timestamp_is_rejected(constant):
    body = raw(envelope(at=0)).replace(b'"at": 0', b'"at": ' + constant)
    assert b"NaN" in body or b"Infinity" in body
    assert "'at'" in rejected(body)


def test_deeply_nested_json_is_rejected_as_a_bad_message():
    body = b"[" * 30000 + b"]" * 30000
    assert len(body) <= MAX_BODY
    rejected(body)


# --------------------------------------------------------------------------------------------------
# Rejections: the body fields


@pytest.mark.parametrize(
    "mtype, field",
    [
        (mtype, field)
        for mtype, schema in sorted(SCHEMAS.items())
        for field in schema
        if field not in messages.OPTIONAL[mtype]  # an optional one is "" (tests/unit/test_receipts.py)
    ],
)
def test_a_missing_body_field_is_rejected_and_named(mtype, field):
    assert f"missing field {field!r}" in rejected(without(mtype, field))


@pytest.mark.parametrize("field", ["v", "type", "entry", "from", "at"])
def test_a_missing_envelope_field_is_rejected(field):
    rejected(without("sent", field))


def test_an_extra_field_is_rejected_and_named():
    assert "priority" in rejected(envelope(priority=9))


def test_a_field_of_another_message_type_is_an_extra_field():
    assert "attempt" in rejected(envelope("offer", attempt=1))


@pytest.mark.parametrize(
    "md5",
    [
        "",
        MD5.upper(),
        MD5[:-1],
        MD5 + "0",
        "z" * 32,
        None,
        123,
    ],
)
def test_a_bad_md5_is_rejected(md5):
    assert "field 'md5'" in rejected(envelope("sent", md5=md5))
    assert "field 'md5'" in rejected(envelope("fetch", md5=md5))


def test_an_md5_with_a_trailing_newline_is_rejected():
    assert "field 'md5'" in rejected(envelope("sent", md5=MD5 + "\n"))


def test_an_offer_does_not_carry_the_md5_any_more():
    assert "unknown fields ['md5']" in rejected(envelope("offer", md5=MD5))


@pytest.mark.parametrize("size", [-1, MAX_SIZE + 1, 10**30, True, False, 1.5, "12", None])
def test_a_negative_absurd_boolean_or_non_integer_size_is_rejected(size):
    assert "'size'" in rejected(envelope(size=size))


@pytest.mark.parametrize("files", [-1, True, 2.0])
def test_a_bad_file_count_is_rejected(files):
    assert "'files'" in rejected(envelope(files=files))


@pytest.mark.parametrize("kind", ["fifo", "", None, "FILE"])
def test_an_unknown_kind_is_rejected(kind):
    assert "'kind'" in rejected(envelope(kind=kind))


@pytest.mark.parametrize("attempt", [0, -1, 1001, True, 1.0, "1"])
def test_an_attempt_outside_1_to_1000_is_rejected(attempt):
    assert "'attempt'" in rejected(envelope("sent", attempt=attempt))


def test_an_unknown_fetched_outcome_is_rejected():
    assert "'outcome'" in rejected(envelope("fetched", outcome="overwritten"))


def test_an_overlong_reason_is_rejected():
    assert "'reason'" in rejected(envelope("wait", reason="x" * 2001))


@pytest.mark.parametrize(
    "name, why",
    [
        ("a/b", "'/'"),
        ("/etc/passwd", "'/'"),
        ("..", "'.'"),
        (".", "'.'"),
        (".hidden", "starts with '.'"),
        (".synkler-partial", "starts with '.'"),
        ("nul\x00byte", "control"),
        ("new\nline", "control"),
        ("carriage\rreturn", "control"),
        ("tab\there", "control"),
        ("escape\x1b[31m", "control"),
        ("delete\x7f", "control"),
        ("", "non-empty"),
        (None, "non-empty"),
        (42, "non-empty"),
        ("x" * (MAX_NAME_BYTES + 1), "255 bytes"),
        ("é" * 128, "255 bytes"),  # 128 characters, 256 bytes of UTF-8
    ],
)
def test_a_bad_entry_name_is_rejected_with_the_reason(name, why):
    text = rejected(envelope(name=name))
    assert "'name'" in text
    assert why in text


@pytest.mark.parametrize("mtype, field", [("fetched", "stored_as"), ("delivered", "stored_as")])
def test_stored_as_names_follow_the_same_rules_as_entry_names(mtype, field):
    assert "'/'" in rejected(envelope(mtype, **{field: "../../etc/passwd"}))
    assert "starts with '.'" in rejected(envelope(mtype, **{field: ".."}))


@pytest.mark.parametrize("mtype, field", [("admit", "dest"), ("fetch", "path")])
@pytest.mark.parametrize(
    "path, why",
    [
        ("relative/dir", "absolute"),
        ("", "absolute"),
        ("~/files", "absolute"),
        ("/srv/../etc", "'..'"),
        ("/srv/files/..", "'..'"),
        ("/srv/new\nline", "control"),
        ("/" + "x" * 4096, "too long"),
        (None, "absolute"),
    ],
)
def test_a_relative_or_escaping_remote_path_is_rejected(mtype, field, path, why):
    text = rejected(envelope(mtype, **{field: path}))
    assert repr(field) in text
    assert why in text


def test_a_path_with_dots_inside_a_component_is_accepted():
    msg = decode(raw(envelope("fetch", path="/srv/files/run..v1/data...csv")))
    assert msg.path == "/srv/files/run..v1/data...csv"


# --------------------------------------------------------------------------------------------------
# Batches: many messages in one AMQP body


def test_a_batch_round_trips_and_a_single_message_is_sent_as_it_is():
    bodies = [raw(envelope("sent", attempt=n)) for n in (1, 2, 3)]
    assert messages.encode_batch(bodies[:1]) == bodies[0]
    got = messages.decode_many(messages.encode_batch(bodies))
    assert [m.attempt for _, m in got] == [1, 2, 3]  # type: ignore[union-attr]
    assert [element for element, _ in got] == [json.loads(b) for b in bodies]


def test_a_bad_element_of_a_batch_is_rejected_alone_and_kept_for_the_dead_letter_queue():
    bad = envelope("offer", name="../etc/passwd")
    got = messages.decode_many(raw([envelope("sent"), bad, envelope("wait")]))
    assert isinstance(got[0][1], messages.Sent) and isinstance(got[2][1], messages.Wait)
    assert isinstance(got[1][1], MessageError) and got[1][0] == bad


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"[" + b",".join([raw(envelope("sent"))] * (messages.MAX_BATCH + 1)) + b"]",
        b"[1, 2",
        b"[" + b" " * (1 << 20),
    ],
)
def test_an_empty_oversized_or_broken_batch_is_rejected_whole(body):
    with pytest.raises(MessageError):
        messages.decode_many(body)
