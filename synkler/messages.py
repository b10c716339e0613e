"""The wire format: JSON envelopes with a schema version, validated field by field on receipt.

Each message type is a small frozen dataclass (`Offer`, `Admit`, ...): agents build them to send and
get them back from `decode`, never a dict. Every body field names its validator; `decode` checks the
envelope and every field before it builds the object, and `encode` checks what it sends.

Pure functions only: no broker, no disk. Anything that fails validation raises MessageError,
which the agent turns into a dead-lettered message and a log line.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Union

from . import metadata
from .errors import MessageError
from .proofs import wire_problem

# 4: `pushing`, later also `forget`, then `hello`, `open` and `greeted` (new types only, so no new
# version: every other message is the same, and an older agent dead-letters them); 3: `fetch.path`
# is stored/<entry id>, the entry itself; 2: md5 in `sent`, not in `offer`
SCHEMA = 4
MAX_BODY = 64 * 1024  # one message
MAX_BATCH_BODY = 1024 * 1024  # one AMQP body carrying a JSON array of messages
MAX_BATCH = 1000
MAX_SIZE = 1 << 62  # bytes; anything larger is absurd and rejected
MAX_NAME_BYTES = 255

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_AGENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_RECEIPT = re.compile(r"^(?:[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# "bundle": many small top-level files of upload's file_dir travelling as one entry, a directory of
# them (docs/architecture.md, "Bundles"); central treats it as a directory, download places each file.
KINDS = ("file", "dir", "symlink", "bundle")

# The second hash an entry may carry beside its md5 (`checksum:` in upload's config; docs/checksums.md).
STRONG = ("sha256", "blake2b")
_STRONG_HEX = {"sha256": 64, "blake2b": 128}


def strong_problem(value: object) -> str | None:
    """Why `value` is not a second hash as messages and receipts carry it, `<alg>:<hex>` (None: it is)."""
    if not isinstance(value, str) or ":" not in value:
        return f"must be <alg>:<hex> with alg one of {', '.join(STRONG)}"
    alg, _, hexdigest = value.partition(":")
    if alg not in _STRONG_HEX or len(hexdigest) != _STRONG_HEX[alg]:
        return f"must be <alg>:<hex> with alg one of {', '.join(STRONG)} and its full digest"
    if any(c not in "0123456789abcdef" for c in hexdigest):
        return "the digest must be lowercase hex"
    return None


OFFERS = "offers:"  # the routing keys of offers in a pool of centrals: offers:<upload name>


def offers_key(upload: str) -> str:
    """The routing key of an upload agent's offers in a pool of centrals (and the outbox's
    destination of them): no agent name has a ':', so it is never an agent's queue's."""
    return f"{OFFERS}{upload}"


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


def stored_problem(stored_as: object) -> str | None:
    """Why `stored_as` cannot be where download placed an entry, relative to its file_dir (None if it
    can): an entry name, or `<upload agent>/<name>` (download's `subdir_per_upload`), each part one
    path component by name_problem's rules, so it never leads out of file_dir."""
    if isinstance(stored_as, str) and stored_as.count("/") == 1:
        subdir, name = stored_as.split("/")
        why = name_problem(subdir)
        return f"its directory: {why}" if why else name_problem(name)
    return name_problem(stored_as)


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


def confined(path: str, *tail: str) -> bool:
    """Is `path` (absolute, from a message) a place of this instance on central: does it end with
    the components `tail` (e.g. <id>, "staging", <agent>), with nothing odd before them?

    Agents never read or write on central where a message says unless the place has the shape only
    central's own directories have, so a forged path can at most name another directory that
    happens to end the same way, never a home directory, ~/.ssh or /etc.
    """
    parts = path.rstrip("/").split("/")
    if path_problem(path) is not None or len(parts) < len(tail) + 2:
        return False
    if any(p in ("", ".", "..") for p in parts[1:]):  # no '//', '/./' or '..': one spelling only
        return False
    return parts[-len(tail) :] == list(tail)


def _int(limit: int) -> Check:
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


Check = Callable[[object], Union[str, None]]  # None: valid; else what is wrong with the value


def _receipt(value: object) -> str | None:
    # Only the shape here: synkler.receipts checks the signature and what it says.
    if not isinstance(value, str) or len(value) > 4096 or not _RECEIPT.fullmatch(value):
        return "must be a signed receipt (<payload>.<signature> in base64url) or empty"
    return None


def _meta(value: object) -> str | None:
    # None: no metadata (a field left out of the wire builds it so); else a checked metadata object.
    return None if value is None else metadata.problem(value)


def _strong(value: object) -> str | None:
    # `<alg>:<hex>`: the entry's second hash beside its md5 (docs/checksums.md); "" when it has none.
    if not isinstance(value, str) or len(value) > 200:
        return "must be <alg>:<hex>"
    return strong_problem(value) if value else None


def _outcome(value: object) -> str | None:
    return None if value in ("placed", "present") else "bad outcome"


def _epoch(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 31:
        return f"must be an integer between 1 and {1 << 31}"
    return None


def _destinations(value: object) -> str | None:
    # The download agents an entry goes to (central's routes, frozen when it admits the entry).
    if (
        not isinstance(value, (list, tuple))
        or len(value) > 32
        or any(_agent(v) for v in value)
        or len(set(value)) != len(value)
    ):
        return "must be a list of up to 32 distinct agent names"
    return None


# The roles whose standby says `hello`: upload and download to the centrals; a central of a pool
# to its upload agents, which then re-own what they held at it.
ROLES = ("upload", "download", "central")
# Where an entry central describes in `open` is (central's states, in words of their own):
# not admitted yet, admitted (its push under way), arrived (verified or being verified: central
# holds the copy), relayed (delivered, its copy kept or expired since), given up (failed).
UNADMITTED, ADMITTED, ARRIVED, RELAYED, GIVEN_UP = HELD = (
    "unadmitted",
    "admitted",
    "arrived",
    "relayed",
    "given-up",
)


def _role(value: object) -> str | None:
    return None if value in ROLES else f"must be one of {', '.join(ROLES)}"


def _held(value: object) -> str | None:
    return None if value in HELD else f"must be one of {', '.join(HELD)}"


def _md5_or_empty(value: object) -> str | None:
    return None if value == "" else _md5(value)


def _agent_or_empty(value: object) -> str | None:
    return None if value == "" else _agent(value)


def _checked(check: Check) -> dict[str, Check]:
    """The metadata of a body field: the validator of its value."""
    return {"check": check}


def _optional(check: Check) -> dict[str, Any]:
    """The metadata of a body field that may be missing on the wire (then it is its default, "" or
    None), and is left out when empty: a field added without a new schema version, so agents that do
    not use it (a 0.4 one, a relay without receipt keys) still understand each other."""
    return {"check": check, "optional": True}


@dataclass(frozen=True)
class Message:
    """The envelope every message has: the entry it is about and the agent that sent it.

    On the wire it also carries the schema version `v`, its `type` and the time it was sent (`at`).
    `decode` keeps `at` (the sender's clock); a message made to be sent has none.
    """

    TYPE: ClassVar[str] = ""
    entry: str
    sender: str
    at: float | None = field(default=None, init=False, compare=False, repr=False)


@dataclass(frozen=True)
class EntryMessage(Message):
    """A message that describes an entry to its receiver."""

    name: str = field(metadata=_checked(name_problem))
    kind: str = field(metadata=_checked(_kind))
    size: int = field(metadata=_checked(_int(MAX_SIZE)))
    files: int = field(metadata=_checked(_int(MAX_SIZE)))


@dataclass(frozen=True)
class Offer(EntryMessage):
    """upload -> central: an entry has settled and is ready to send (its md5 follows with `sent`),
    with its metadata, if it has some (synkler.metadata)."""

    TYPE: ClassVar[str] = "offer"
    meta: dict[str, Any] | None = field(default=None, metadata=_optional(_meta))
    # The entry's ownership in a pool (docs/architecture.md, "Who owns an entry"); None: one central.
    epoch: int | None = field(default=None, metadata=_optional(_epoch))
    # The downloads an operator sends it to again (`synkler resend --to`); (): as central's routes say.
    to: tuple[str, ...] = field(default=(), metadata=_optional(_destinations))


@dataclass(frozen=True)
class Admit(Message):
    """central -> upload: push attempt N into this directory on central."""

    TYPE: ClassVar[str] = "admit"
    attempt: int = field(metadata=_checked(_attempt))
    dest: str = field(metadata=_checked(path_problem))
    # The entry's ownership in a pool (docs/architecture.md, "Who owns an entry"); None: one central.
    epoch: int | None = field(default=None, metadata=_optional(_epoch))
    # The downloads the entry goes to, frozen at its first admission; (): download_name only.
    to: tuple[str, ...] = field(default=(), metadata=_optional(_destinations))


@dataclass(frozen=True)
class Wait(Message):
    """central -> upload: no room yet; the entry waits at central."""

    TYPE: ClassVar[str] = "wait"
    reason: str = field(metadata=_checked(_text))
    # The entry's ownership in a pool (docs/architecture.md, "Who owns an entry"); None: one central.
    epoch: int | None = field(default=None, metadata=_optional(_epoch))


@dataclass(frozen=True)
class Sent(Message):
    """upload -> central: attempt N has been pushed; the md5 upload computed of the entry."""

    TYPE: ClassVar[str] = "sent"
    attempt: int = field(metadata=_checked(_attempt))
    md5: str = field(metadata=_checked(_md5))
    checksum: str = field(default="", metadata=_optional(_strong))  # "sha256:<hex>" …; "": md5 only
    # The entry's ownership in a pool (docs/architecture.md, "Who owns an entry"); None: one central.
    epoch: int | None = field(default=None, metadata=_optional(_epoch))


@dataclass(frozen=True)
class Pushing(Message):
    """central -> download: a big file is being pushed; what has arrived may be pulled early from `path`."""

    TYPE: ClassVar[str] = "pushing"
    size: int = field(metadata=_checked(_int(MAX_SIZE)))
    path: str = field(metadata=_checked(path_problem))


@dataclass(frozen=True)
class Fetch(EntryMessage):
    """central -> download: pull this verified copy."""

    TYPE: ClassVar[str] = "fetch"
    md5: str = field(metadata=_checked(_md5))
    attempt: int = field(metadata=_checked(_attempt))
    path: str = field(metadata=_checked(path_problem))
    meta: dict[str, Any] | None = field(default=None, metadata=_optional(_meta))  # as offered
    checksum: str = field(default="", metadata=_optional(_strong))  # upload's, passed on; "": md5 only
    # The entry's ownership in a pool (docs/architecture.md, "Who owns an entry"); None: one central.
    epoch: int | None = field(default=None, metadata=_optional(_epoch))
    # Why central asks again for an entry this download failed (`synkler retry --to` at central); "": not.
    again: str = field(default="", metadata=_optional(_text))
    # The upload agent it came from (its subdirectory with download's subdir_per_upload); "": unsaid.
    source: str = field(default="", metadata=_optional(_agent_or_empty))


@dataclass(frozen=True)
class Fetched(Message):
    """download -> central: verified and placed under `stored_as` (or already present with the same md5)."""

    TYPE: ClassVar[str] = "fetched"
    stored_as: str = field(metadata=_checked(stored_problem))
    outcome: str = field(metadata=_checked(_outcome))  # "placed" | "present"
    receipt: str = field(default="", metadata=_optional(_receipt))  # signed (synkler.receipts); "": none
    proof: Any = field(default="", metadata=_optional(wire_problem))  # receipt document (synkler.proofs)


@dataclass(frozen=True)
class Delivered(Message):
    """central -> upload: download has a verified copy; upload may run its cleanup script."""

    TYPE: ClassVar[str] = "delivered"
    stored_as: str = field(metadata=_checked(stored_problem))
    receipt: str = field(default="", metadata=_optional(_receipt))  # download's, passed on; "": none
    proof: Any = field(default="", metadata=_optional(wire_problem))  # download's document, passed on
    # The entry's ownership in a pool (docs/architecture.md, "Who owns an entry"); None: one central.
    epoch: int | None = field(default=None, metadata=_optional(_epoch))
    destination: str = field(
        default="", metadata=_optional(_agent_or_empty)
    )  # the download; "": download_name


@dataclass(frozen=True)
class Failed(Message):
    """any -> any: this entry could not be relayed; a person must look."""

    TYPE: ClassVar[str] = "failed"
    hop: str = field(metadata=_checked(_text))
    reason: str = field(metadata=_checked(_text))
    # The entry's ownership in a pool (docs/architecture.md, "Who owns an entry"); None: one central.
    epoch: int | None = field(default=None, metadata=_optional(_epoch))
    destination: str = field(default="", metadata=_optional(_agent_or_empty))  # central -> upload: where


@dataclass(frozen=True)
class Corrupt(Message):
    """download -> central: what I pulled did not match; check your stored copy."""

    TYPE: ClassVar[str] = "corrupt"
    got: str = field(metadata=_checked(_md5))


@dataclass(frozen=True)
class Withdraw(Message):
    """upload -> central: this version changed before it was sent; forget it (a newer one is offered)."""

    TYPE: ClassVar[str] = "withdraw"
    reason: str = field(metadata=_checked(_text))
    # The entry's ownership in a pool (docs/architecture.md, "Who owns an entry"); None: one central.
    epoch: int | None = field(default=None, metadata=_optional(_epoch))


@dataclass(frozen=True)
class Forget(Message):
    """any -> its peers: an operator forgot this entry (`synkler forget`); end it here too."""

    TYPE: ClassVar[str] = "forget"
    reason: str = field(metadata=_checked(_text))
    # The entry's ownership in a pool (docs/architecture.md, "Who owns an entry"); None: one central.
    epoch: int | None = field(default=None, metadata=_optional(_epoch))
    destination: str = field(default="", metadata=_optional(_agent_or_empty))  # only this one; "": all


@dataclass(frozen=True)
class Hello(Message):
    """upload or download -> each central: this agent took over from another of its name (a
    standby) and has a state of its own; re-announce what you hold open for it. `entry` is a fresh
    token, which `greeted` carries back. A central of a pool -> each of its upload agents (`role`
    central): the same, and upload offers again (next epoch) what it held at that central; no
    `greeted` follows."""

    TYPE: ClassVar[str] = "hello"
    role: str = field(metadata=_checked(_role))


@dataclass(frozen=True)
class Open(EntryMessage):
    """central -> upload, answering `hello`: an entry of this upload agent that central holds
    (`held`: where it is), so that the agent that took over adopts it under the same id."""

    TYPE: ClassVar[str] = "open"
    held: str = field(metadata=_checked(_held))
    md5: str = field(default="", metadata=_optional(_md5_or_empty))  # "": not pushed yet
    reason: str = field(default="", metadata=_optional(_text))  # why it failed
    meta: dict[str, Any] | None = field(default=None, metadata=_optional(_meta))  # as offered
    # The entry's ownership in a pool (docs/architecture.md, "Who owns an entry"); None: one central.
    epoch: int | None = field(default=None, metadata=_optional(_epoch))
    to: tuple[str, ...] = field(default=(), metadata=_optional(_destinations))  # frozen at admission


@dataclass(frozen=True)
class Greeted(Message):
    """central -> the agent that said `hello` (`entry`: its token): that was all it holds open
    (`entries` of them: `open` to upload, `fetch` to download)."""

    TYPE: ClassVar[str] = "greeted"
    entries: int = field(metadata=_checked(_int(MAX_SIZE)))


TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Offer,
        Admit,
        Wait,
        Sent,
        Pushing,
        Fetch,
        Fetched,
        Delivered,
        Failed,
        Corrupt,
        Withdraw,
        Forget,
        Hello,
        Open,
        Greeted,
    )
}
_ENVELOPE = ("v", "type", "entry", "from", "at")
# type -> its body fields, in order, and their validators
SCHEMAS: dict[str, dict[str, Check]] = {
    name: {f.name: f.metadata["check"] for f in fields(cls) if "check" in f.metadata}
    for name, cls in TYPES.items()
}
# type -> its body fields that may be missing on the wire (see _optional)
OPTIONAL: dict[str, frozenset[str]] = {
    name: frozenset(f.name for f in fields(cls) if f.metadata.get("optional")) for name, cls in TYPES.items()
}
# type -> the values its optional fields take when missing ("", or None for metadata)
_EMPTY: dict[str, dict[str, Any]] = {
    name: {f.name: f.default for f in fields(cls) if f.metadata.get("optional")}
    for name, cls in TYPES.items()
}


def body(msg: Message) -> dict[str, Any]:
    """The body fields of a message, by name (an optional one only when it is not empty)."""
    optional = OPTIONAL[msg.TYPE]
    return {
        name: list(value) if isinstance(value := getattr(msg, name), tuple) else value  # `to`: a list
        for name in SCHEMAS[msg.TYPE]
        if name not in optional or getattr(msg, name) not in ("", None, {}, ())
    }


def encode(msg: Message) -> bytes:
    """The wire form of a message; raising here means a bug in the sender, not bad input."""
    wire = {
        "v": SCHEMA,
        "type": msg.TYPE,
        "entry": msg.entry,
        "from": msg.sender,
        "at": time.time(),
        **body(msg),
    }
    _validate(wire)
    return json.dumps(wire, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def decode(raw: bytes) -> Message:
    """Parse and validate a message body; MessageError says what is wrong with it."""
    if len(raw) > MAX_BODY:
        raise MessageError(f"message is {len(raw)} bytes, more than {MAX_BODY}")
    return _validate(_parse(raw))


def decode_many(raw: bytes) -> list[tuple[Any, Message | MessageError]]:
    """Parse an AMQP body: one message (a JSON object) or a batch (a JSON array of them).

    Batches let an agent send many messages with one publisher confirm. Each element is validated on
    its own: the result pairs each element as parsed (what goes to the dead-letter queue) with its
    message, or with the MessageError that rejects just that element. A body that is not valid JSON
    at all raises MessageError.
    """
    if not raw.lstrip().startswith(b"["):
        if len(raw) > MAX_BODY:
            raise MessageError(f"message is {len(raw)} bytes, more than {MAX_BODY}")
        item = _parse(raw)
        return [(item, _validate(item))]
    if len(raw) > MAX_BATCH_BODY:
        raise MessageError(f"batch is {len(raw)} bytes, more than {MAX_BATCH_BODY}")
    items = _parse(raw)
    if not 1 <= len(items) <= MAX_BATCH:
        raise MessageError(f"batch holds {len(items)} messages, not 1 to {MAX_BATCH}")
    out: list[tuple[Any, Message | MessageError]] = []
    for item in items:
        try:
            out.append((item, _validate(item)))
        except MessageError as e:
            out.append((item, e))
    return out


def encode_batch(bodies: list[bytes]) -> bytes:
    """One AMQP body for several encoded messages (a single one is sent as it is)."""
    return bodies[0] if len(bodies) == 1 else b"[" + b",".join(bodies) + b"]"


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MessageError(f"message is not valid JSON: {e}") from None


def _validate(msg: object) -> Message:
    """Check a parsed message field by field and build its typed object."""
    if not isinstance(msg, dict):
        raise MessageError("message is not a JSON object")
    if type(msg.get("v")) is not int or msg["v"] != SCHEMA:
        raise MessageError(f"unsupported schema version {msg.get('v')!r} (this synkler speaks {SCHEMA})")
    mtype = msg.get("type")
    cls = TYPES.get(mtype) if isinstance(mtype, str) else None
    if cls is None:
        raise MessageError(f"unknown message type {mtype!r}")
    schema = SCHEMAS[cls.TYPE]
    if not is_valid_entry_id(msg.get("entry")):
        raise MessageError(f"{mtype}: entry id {msg.get('entry')!r} is not 32 hex digits")
    if _agent(msg.get("from")):
        raise MessageError(f"{mtype}: sender {msg.get('from')!r} is not a valid agent name")
    at = msg.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        raise MessageError(f"{mtype}: 'at' must be a timestamp")
    optional = OPTIONAL[cls.TYPE]
    for name, check in schema.items():
        if name not in msg:
            if name in optional:
                continue
            raise MessageError(f"{mtype}: missing field {name!r}")
        problem = check(msg[name])
        if problem:
            raise MessageError(f"{mtype}: field {name!r} {problem}")
    extra = set(msg) - set(schema) - set(_ENVELOPE)
    if extra:
        raise MessageError(f"{mtype}: unknown fields {sorted(extra)}")
    empty = _EMPTY[cls.TYPE]
    values = [msg.get(name, "") if name not in empty else msg.get(name) or empty[name] for name in schema]
    values = [tuple(v) if isinstance(v, list) else v for v in values]  # lists (`to`) are kept as tuples
    message = cls(msg["entry"], msg["from"], *values)
    object.__setattr__(message, "at", float(at))  # not an argument: messages made to send have none
    return message
