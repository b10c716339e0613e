"""hypothesis strategies for synkler's messages: any JSON, valid messages as they travel, and
messages near the schema (tests/unit/test_fuzz_messages.py, tests/unit/test_fuzz_handlers.py)."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import strategies as st

from synkler import messages, metadata
from synkler.messages import HELD, KINDS, MAX_SIZE, ROLES, SCHEMA, SCHEMAS

HEX = "0123456789abcdef"

# Any JSON value, nested a little.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def metadata_objects() -> st.SearchStrategy[dict[str, Any]]:
    """Metadata objects the validator accepts (synkler.metadata): string keys, JSON values."""
    keys = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
    leaves = (
        st.none()
        | st.booleans()
        | st.integers(-(2**53), 2**53)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    values = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=12,
    )
    return st.dictionaries(keys, values, min_size=1, max_size=6).filter(lambda m: metadata.problem(m) is None)


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
    # A name, or `<upload agent>/<name>` (download's subdir_per_upload).
    "stored_as": names() | st.tuples(st.sampled_from(["upload", "lab-a"]), names()).map("/".join),
    "kind": st.sampled_from(KINDS),
    "size": st.integers(0, MAX_SIZE),
    "files": st.integers(0, MAX_SIZE),
    "md5": st.text(HEX, min_size=32, max_size=32),
    "source": st.sampled_from(["upload", "lab-a", "lab-b"]),  # the upload agent of a fetch
    "got": st.text(HEX, min_size=32, max_size=32),
    "attempt": st.integers(1, 1000),
    "epoch": st.integers(1, 3),  # a pool of centrals' ownership number
    "dest": paths(),
    "path": paths(),
    "reason": st.text(max_size=300),
    "hop": st.text(max_size=50),
    "outcome": st.sampled_from(["placed", "present"]),
    "role": st.sampled_from(ROLES),  # a standby's `hello`
    "held": st.sampled_from(HELD),  # where central holds an entry it announces again (`open`)
    "entries": st.integers(0, MAX_SIZE),
    # Download agent names: where an entry goes (`to` of admit), which one fetched or failed it or is
    # forgotten (`destination`).
    "to": st.lists(st.sampled_from(["download", "analysis", "archive"]), min_size=1, max_size=3, unique=True),
    "destination": st.sampled_from(["download", "analysis", "archive"]),
    # Why central asks a download again for an entry it failed (`synkler retry --to` at central).
    "again": st.text(min_size=1, max_size=100),  # ("" is left out on the wire)
    # Its shape only (synkler.receipts checks the signature); an empty one is left out on the wire.
    "receipt": st.from_regex(r"\A[A-Za-z0-9_-]{1,40}\.[A-Za-z0-9_-]{1,40}\Z"),
    "meta": metadata_objects(),
    # `<alg>:<hex>` (an empty one is left out on the wire)
    "checksum": st.one_of(
        st.text(HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h),
        st.text(HEX, min_size=128, max_size=128).map(lambda h: "blake2b:" + h),
    ),
    # A receipt document (synkler.proofs) of any content, signed or not: its shape only.
    "proof": st.fixed_dictionaries(
        {
            "receipt": st.fixed_dictionaries(
                {
                    "v": st.just(1),
                    "instance": st.text(max_size=10),
                    "entry": st.text(HEX, min_size=32, max_size=32),
                    "name": names(),
                    "stored_as": names(),
                    "kind": st.sampled_from(KINDS),
                    "size": st.integers(0, MAX_SIZE),
                    "files": st.integers(0, MAX_SIZE),
                    "md5": st.text(HEX, min_size=32, max_size=32),
                    "checksum": st.just(""),
                    "destination": st.text(max_size=10),
                    "outcome": st.sampled_from(["placed", "present"]),
                    "hops": st.just([]),
                    "metadata": st.none(),
                    "listing_sha256": st.text(HEX, min_size=64, max_size=64),
                }
            ),
            "signature": st.from_regex(r"\A[A-Za-z0-9_-]{0,40}\Z"),
        }
    ),
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
        if name not in messages.OPTIONAL[mtype]:
            wire[name] = draw(FIELDS[name])
        elif draw(st.booleans()):
            value = draw(FIELDS[name])
            if value not in ("", None, (), [], {}):  # an empty optional field is left out on the wire
                wire[name] = value
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
