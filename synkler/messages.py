"""The wire format: JSON envelopes with a schema version, validated field by field on receipt.

Pure functions only: no broker, no disk. Anything that fails validation raises MessageError,
which the agent turns into a dead-lettered message and a log line.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import Any

from .errors import MessageError

# 4: `pushing`; 3: `fetch.path` is stored/<entry id>, the entry itself; 2: md5 in `sent`, not in `offer`
SCHEMA = 4
MAX_BODY = 64 * 1024  # one message
MAX_BATCH_BODY = 1024 * 1024  # one AMQP body carrying a JSON array of messages
MAX_BATCH = 1000
MAX_SIZE = 1 << 62  # bytes; anything larger is absurd and rejected
MAX_NAME_BYTES = 255

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_AGENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
KINDS = ("file", "dir", "symlink")


def new_entry_id() -> str:
    """A fresh entry id: one per version of an entry, so a changed file is a new entry."""
    return uuid.uuid4().hex


def is_valid_entry_id(value: object) -> bool:
    return isinstance(value, str) and bool(_HEX32.fullmatch(value))


def name_problem(name: object) -> str | None:
    """Why `name` cannot be an entry name (None if it can).

    An entry name is one path component: it never contains '/', NUL or control characters, is never
    '.' or '..', and never starts with '.' (dot names are synkler's own staging places and are ignored).
    """
    if not isinstance(name, str) or not name:
        return "name must be a non-empty string"
    if "/" in name:
        return "name contains '/'"
    if _CONTROL.search(name):
        return "name contains control characters"
    if name.startswith("."):
        return "name starts with '.'"
    try:
        encoded = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "name is not encodable"
    if len(encoded) > MAX_NAME_BYTES:
        return f"name is longer than {MAX_NAME_BYTES} bytes"
    return None


def path_problem(path: object) -> str | None:
    """Why `path` cannot be a remote path in a message: absolute, no '..', no control characters."""
    if not isinstance(path, str) or not path.startswith("/"):
        return "path must be an absolute path"
    if _CONTROL.search(path):
        return "path contains control characters"
    if ".." in path.split("/"):
        return "path contains '..'"
    if len(path) > 4096:
        return "path is too long"
    return None


def _int(limit: int):
    def check(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            return f"must be an integer between 0 and {limit}"
        return None

    return check


def _md5(value: object) -> str | None:
    return None if isinstance(value, str) and _HEX32.fullmatch(value) else "must be 32 lowercase hex digits"


def _kind(value: object) -> str | None:
    return None if value in KINDS else f"must be one of {', '.join(KINDS)}"


def _agent(value: object) -> str | None:
    return None if isinstance(value, str) and _AGENT.fullmatch(value) else "must be an agent name"


def _text(value: object) -> str | None:
    return None if isinstance(value, str) and len(value) <= 2000 else "must be a string"


def _attempt(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        return "must be an integer between 1 and 1000"
    return None


_ENTRY_META = {
    "name": name_problem,
    "kind": _kind,
    "size": _int(MAX_SIZE),
    "files": _int(MAX_SIZE),
}

# type -> required body fields and their validators
SCHEMAS: dict[str, dict[str, Any]] = {
    # upload -> central: an entry has settled and is ready to send (its md5 follows with `sent`)
    "offer": dict(_ENTRY_META),
    # central -> upload: push attempt N into this directory on central
    "admit": {"attempt": _attempt, "dest": path_problem},
    # central -> upload: no room yet; the entry waits at central
    "wait": {"reason": _text},
    # upload -> central: attempt N has been pushed; the md5 upload computed of the entry
    "sent": {"attempt": _attempt, "md5": _md5},
    # central -> download: a big file is being pushed; what has arrived may be pulled early from `path`
    "pushing": {"size": _int(MAX_SIZE), "path": path_problem},
    # central -> download: pull this verified copy
    "fetch": dict(_ENTRY_META, md5=_md5, attempt=_attempt, path=path_problem),
    # download -> central: verified and placed under `stored_as` (or already present with the same md5)
    "fetched": {
        "stored_as": name_problem,
        "outcome": lambda v: None if v in ("placed", "present") else "bad outcome",
    },
    # central -> upload: download has a verified copy; upload may run its cleanup script
    "delivered": {"stored_as": name_problem},
    # any -> any: this entry could not be relayed; a person must look
    "failed": {"hop": _text, "reason": _text},
    # download -> central: what I pulled did not match; check your stored copy
    "corrupt": {"got": _md5},
    # upload -> central: this version changed before it was sent; forget it (a newer one is offered)
    "withdraw": {"reason": _text},
}


def encode(mtype: str, entry: str, sender: str, **body: Any) -> bytes:
    """Build and validate a message; raising here means a bug in the sender, not bad input."""
    msg = {"v": SCHEMA, "type": mtype, "entry": entry, "from": sender, "at": time.time(), **body}
    validate(msg)
    return json.dumps(msg, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def decode(raw: bytes) -> dict[str, Any]:
    """Parse and validate a message body; MessageError says what is wrong with it."""
    if len(raw) > MAX_BODY:
        raise MessageError(f"message is {len(raw)} bytes, more than {MAX_BODY}")
    msg = _parse(raw)
    validate(msg)
    return msg


def decode_many(raw: bytes) -> list[dict[str, Any] | MessageError]:
    """Parse an AMQP body: one message (a JSON object) or a batch (a JSON array of them).

    Batches let an agent send many messages with one publisher confirm. Each element is validated on
    its own: the result holds the message, or the MessageError that rejects just that element.
    A body that is not valid JSON at all raises MessageError.
    """
    if not raw.lstrip().startswith(b"["):
        return [decode(raw)]
    if len(raw) > MAX_BATCH_BODY:
        raise MessageError(f"batch is {len(raw)} bytes, more than {MAX_BATCH_BODY}")
    items = _parse(raw)
    if not 1 <= len(items) <= MAX_BATCH:
        raise MessageError(f"batch holds {len(items)} messages, not 1 to {MAX_BATCH}")
    out: list[dict[str, Any] | MessageError] = []
    for item in items:
        try:
            validate(item)
            out.append(item)
        except MessageError as e:
            e.element = item  # kept for the dead-letter queue
            out.append(e)
    return out


def encode_batch(bodies: list[bytes]) -> bytes:
    """One AMQP body for several encoded messages (a single one is sent as it is)."""
    return bodies[0] if len(bodies) == 1 else b"[" + b",".join(bodies) + b"]"


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MessageError(f"message is not valid JSON: {e}") from None


def validate(msg: object) -> None:
    if not isinstance(msg, dict):
        raise MessageError("message is not a JSON object")
    if type(msg.get("v")) is not int or msg["v"] != SCHEMA:
        raise MessageError(f"unsupported schema version {msg.get('v')!r} (this synkler speaks {SCHEMA})")
    mtype = msg.get("type")
    schema = SCHEMAS.get(mtype) if isinstance(mtype, str) else None
    if schema is None:
        raise MessageError(f"unknown message type {mtype!r}")
    if not is_valid_entry_id(msg.get("entry")):
        raise MessageError(f"{mtype}: entry id {msg.get('entry')!r} is not 32 hex digits")
    if _agent(msg.get("from")):
        raise MessageError(f"{mtype}: sender {msg.get('from')!r} is not a valid agent name")
    at = msg.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        raise MessageError(f"{mtype}: 'at' must be a timestamp")
    for field, check in schema.items():
        if field not in msg:
            raise MessageError(f"{mtype}: missing field {field!r}")
        problem = check(msg[field])
        if problem:
            raise MessageError(f"{mtype}: field {field!r} {problem}")
    extra = set(msg) - set(schema) - {"v", "type", "entry", "from", "at"}
    if extra:
        raise MessageError(f"{mtype}: unknown fields {sorted(extra)}")
