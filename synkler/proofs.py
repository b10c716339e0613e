"""Receipt documents: what was sent and what arrived, one small JSON document per delivered entry.

Download writes one for every entry it delivers (synkler.hops.receiptfiles says where), signs it
with its receipt_key when it has one, and sends it back with `fetched`, so that central passes it
on and upload keeps a copy of its own. `synkler verify` checks delivered data against them.
docs/protocol.md, "Receipt documents", describes the format.

A document on disk and on the wire is ``{"receipt": {...}, "signature": "<base64url>"}`` (the
signature "" when download has no key): the signature is over the canonical JSON of "receipt"
(keys sorted, no spaces, ASCII), so it survives any re-serialisation. The per-file listing is kept
only at download, beside the document (``"listing"``), bound to it by ``listing_sha256`` inside
the signed part: a directory of 100,000 files would not fit a message, and the entry's md5 (and
second hash) already commit to every file.

Pure functions only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from . import receipts
from .errors import MessageError
from .text import shown

if TYPE_CHECKING:
    from .state import Entry

VERSION = 1
DEPTHS = ("fast", "complete", "full")
MAX_PROOF = 48 * 1024  # bytes of a document as it travels (without its listing)
MAX_SHOWN = 20  # differences told per entry


class ProofError(MessageError):
    """A receipt document that is malformed."""


class FileLike(Protocol):
    """One file of an entry as synkler.hops.checksum lists it (FileDigest)."""

    @property
    def path(self) -> bytes: ...
    @property
    def kind(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def md5(self) -> str: ...
    @property
    def strong(self) -> str | None: ...


def canonical(value: object) -> bytes:
    """The bytes a document is signed and digested as."""
    return json.dumps(
        value, sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=False
    ).encode("ascii")


def name_out(raw: bytes) -> str | dict[str, str]:
    """A name or path as a document holds it: a string if it is UTF-8, else {"bytes": <base64>}."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"bytes": base64.b64encode(raw).decode("ascii")}


def name_in(value: object) -> bytes:
    """The bytes of a name or path a document holds; ProofError if it is neither form."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, dict) and set(value) == {"bytes"} and isinstance(value["bytes"], str):
        try:
            return base64.b64decode(value["bytes"], validate=True)
        except (binascii.Error, ValueError):
            pass
    raise ProofError("receipt document: a name is neither a string nor {'bytes': <base64>}")


def listing(files: Iterable[FileLike], alg: str | None) -> list[dict[str, Any]]:
    """The per-file listing of a document: path within the entry ("" for the entry itself), kind,
    size, md5 and, with a second hash, that hash under its algorithm's name."""
    items = []
    for f in files:
        item: dict[str, Any] = {"path": name_out(f.path), "kind": f.kind, "size": f.size, "md5": f.md5}
        if alg and f.strong:
            item[alg] = f.strong
        items.append(item)
    return items


def listing_digest(items: Sequence[dict[str, Any]]) -> str:
    return hashlib.sha256(canonical(list(items))).hexdigest()


def document(
    *,
    instance: str,
    entry: Entry,
    checksum: str,
    destination: str,
    stored_as: str,
    outcome: str,
    hops: list[dict[str, Any]],
    items: Sequence[dict[str, Any]],
    metadata: object = None,
) -> dict[str, Any]:
    """The signed part of the receipt document of `entry`'s delivery to `destination`.

    `hops`: each hop's role, agent and time ({"role", "agent", "at"}). `metadata`: the entry's
    metadata, if it has any (None: none)."""
    return {
        "v": VERSION,
        "instance": instance,
        "entry": entry.id,
        "name": name_out(os.fsencode(entry.name)),
        "kind": entry.kind,
        "size": entry.size,
        "files": entry.files,
        "md5": entry.known_md5(),
        "checksum": checksum,
        "destination": destination,
        "stored_as": name_out(os.fsencode(stored_as)),
        "outcome": outcome,
        "hops": hops,
        "metadata": metadata,
        "listing_sha256": listing_digest(items),
    }


def seal(doc: dict[str, Any], key: receipts.PrivateKey | None) -> dict[str, Any]:
    """The document as it is kept and sent: the receipt and download's signature of it ("": none)."""
    return {"receipt": doc, "signature": receipts.sign_bytes(canonical(doc), key) if key else ""}


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "instance": str,
    "entry": str,
    "kind": str,
    "size": int,
    "files": int,
    "md5": str,
    "checksum": str,
    "destination": str,
    "outcome": str,
    "hops": list,
    "listing_sha256": str,
}


def problem(sealed: object) -> str | None:
    """Why `sealed` is not a receipt document as synkler writes them (None: it is one)."""
    if not isinstance(sealed, dict) or not {"receipt", "signature"} <= set(sealed):
        return "not {receipt, signature}"
    doc, signature = sealed["receipt"], sealed["signature"]
    if not isinstance(signature, str) or not isinstance(doc, dict):
        return "receipt must be an object and signature a string"
    if doc.get("v") != VERSION or type(doc.get("v")) is not int:
        return f"version must be {VERSION}"
    for key, kind in _FIELDS.items():
        value = doc.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key} is missing or not a {getattr(kind, '__name__', kind)}"
    for key in ("name", "stored_as"):
        try:
            name_in(doc.get(key))
        except ProofError as e:
            return str(e)
    for hop in doc["hops"]:
        if not isinstance(hop, dict) or not isinstance(hop.get("agent"), str):
            return "a hop is not {role, agent, at}"
        at = hop.get("at")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
            return "a hop's time is not a number"
    try:
        canonical(doc)
    except ValueError as e:
        return f"cannot be written as JSON: {e}"
    return None


def wire_problem(value: object) -> str | None:
    """A document as a message carries it ("" : none): shape and size only (synkler.messages)."""
    if value == "":
        return None
    why = problem(value)
    if why:
        return f"must be a receipt document ({why})"
    if len(canonical(value)) > MAX_PROOF:
        return f"a receipt document is at most {MAX_PROOF} bytes"
    return None


def signature_problem(sealed: dict[str, Any], key: receipts.PublicKey) -> str | None:
    """Why the document is not download's (None: `key` signed exactly this receipt)."""
    if not sealed["signature"]:
        return "not signed"
    if not receipts.signed_by(canonical(sealed["receipt"]), sealed["signature"], key):
        return "signature does not verify with download's key: forged or altered"
    return None


def listing_problem(sealed: dict[str, Any]) -> str | None:
    """Why the listing kept beside a document is not the one it was signed with (None: it is)."""
    items = sealed.get("listing")
    if not isinstance(items, list):
        return "no listing"
    if listing_digest(items) != sealed["receipt"]["listing_sha256"]:
        return "the listing is not the one the receipt names (listing_sha256 differs)"
    return None


def _key(item: dict[str, Any]) -> bytes:
    return name_in(item.get("path"))


def _shown(path: bytes) -> str:
    """A path in the entry, quoted, escaped as every name shown to people is (synkler.text)."""
    return f"'{shown(os.fsdecode(path))}'" if path else "the entry"


def differences(
    items: Sequence[dict[str, Any]], found: Sequence[FileLike], depth: str, alg: str | None
) -> list[str]:
    """How what is on disk (`found`, from synkler.hops.checksum: with digests only for "full")
    differs from a document's listing at `depth` (fast: the number of files and their bytes;
    complete: every file present, of its kind and size, nothing extra; full: and every digest)."""
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {', '.join(DEPTHS)}")
    out: list[str] = []
    want_bytes = sum(int(i.get("size", 0)) for i in items)
    got_bytes = sum(f.size for f in found)
    if len(found) != len(items):
        out.append(f"{len(found)} files, not {len(items)}")
    if got_bytes != want_bytes:
        out.append(f"{got_bytes} bytes, not {want_bytes}")
    if depth == "fast":
        return out
    expected = {_key(i): i for i in items}
    present = {f.path: f for f in found}
    for path in sorted(set(expected) - set(present)):
        out.append(f"{_shown(path)} is missing")
    for path in sorted(set(present) - set(expected)):
        out.append(f"{_shown(path)} is not in the receipt")
    for path in sorted(set(expected) & set(present)):
        want, got = expected[path], present[path]
        if got.kind != want.get("kind"):
            out.append(f"{_shown(path)} is a {got.kind}, not a {want.get('kind')}")
        elif got.size != want.get("size"):
            out.append(f"{_shown(path)} has {got.size} bytes, not {want.get('size')}")
        elif depth == "full" and got.md5 != want.get("md5"):
            out.append(f"{_shown(path)} has md5 {got.md5}, not {want.get('md5')}")
        elif depth == "full" and alg and want.get(alg) and got.strong != want.get(alg):
            out.append(f"{_shown(path)} has {alg} {got.strong}, not {want.get(alg)}")
    return out
