"""Delivery receipts: download's signed word that it holds a verified copy of an entry.

A receipt is a small JSON document (what was delivered, where, when) signed with the download
agent's own Ed25519 key. Upload runs its cleanup script, and central removes its copy, only on a
receipt that verifies against the public key pinned in their configs: a broker login alone (even
download's) cannot make one. docs/protocol.md, "Receipts", describes the format.

On the wire and in the state databases a signed receipt is one ASCII string,
``<payload>.<signature>``, both base64url without padding: the payload is the exact JSON bytes that
were signed, so nothing has to be re-serialised to check it.

Pure functions only, besides reading and writing the key files.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import MessageError

if TYPE_CHECKING:
    from .state import Entry

VERSION = 1
MAX_TOKEN = 4096  # characters of a signed receipt: a few hundred in practice, with two 255-byte names
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
PUBLIC_KEY_PREFIX = "ed25519:"  # how a public key is written in a config: ed25519:<base64 of 32 bytes>

# A name that is UTF-8 is a JSON string; one that is not is {"bytes": <base64 of its bytes>}, so
# every name the file system allows is kept byte-exact and the common case stays readable.
Name = Union[str, dict]


class ReceiptError(MessageError):
    """A receipt that is malformed, not signed by the pinned key, or about something else."""


@dataclass(frozen=True)
class Receipt:
    """What download states it delivered. `name` and `stored_as` are names as synkler holds them
    (str, undecodable bytes as surrogate escapes)."""

    instance: str  # the relay's `id`
    entry: str  # the entry id
    name: str  # the entry's name at upload and central
    kind: str
    size: int
    files: int
    md5: str  # verified at download
    destination: str  # the download agent's name: whose key signed it (one receipt per destination)
    placed_at: float  # when the copy was placed (or found present), seconds since the epoch
    stored_as: str  # the name it has in download's file_dir
    outcome: str  # "placed" | "present" (already there with the same md5)


def for_entry(
    instance: str,
    entry: Entry,
    destination: str,
    stored_as: str,
    *,
    placed_at: float = 0.0,
    outcome: str = "",
) -> Receipt:
    """The receipt of `entry`'s delivery to `destination` as its agent's state knows the entry. A
    checker leaves `placed_at` and `outcome` empty: `mismatch` does not compare them."""
    return Receipt(
        instance=instance,
        entry=entry.id,
        name=entry.name,
        kind=entry.kind,
        size=entry.size,
        files=entry.files,
        md5=entry.known_md5(),
        destination=destination,
        placed_at=placed_at,
        stored_as=stored_as,
        outcome=outcome,
    )


def _name_out(name: str) -> Name:
    raw = os.fsencode(name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"bytes": base64.b64encode(raw).decode("ascii")}


def _name_in(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"bytes"} and isinstance(value["bytes"], str):
        try:
            return os.fsdecode(base64.b64decode(value["bytes"], validate=True))
        except (binascii.Error, ValueError):
            pass
    raise ReceiptError("receipt: a name is neither a string nor {'bytes': <base64>}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def payload(receipt: Receipt) -> bytes:
    """The JSON bytes that are signed: keys sorted, no spaces, ASCII only."""
    doc: dict[str, Any] = {"v": VERSION, **asdict(receipt)}
    doc["name"], doc["stored_as"] = _name_out(receipt.name), _name_out(receipt.stored_as)
    return json.dumps(doc, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def sign(receipt: Receipt, key: Ed25519PrivateKey) -> str:
    """The signed receipt, as it travels and is stored."""
    body = payload(receipt)
    return f"{_b64(body)}.{_b64(key.sign(body))}"


_FIELDS = {
    "instance": str,
    "entry": str,
    "kind": str,
    "md5": str,
    "destination": str,
    "outcome": str,
    "size": int,
    "files": int,
    "placed_at": float,
}


def sign_bytes(body: bytes, key: Ed25519PrivateKey) -> str:
    """A detached signature of `body` (a receipt document's, synkler.proofs), base64url."""
    return _b64(key.sign(body))


def signed_by(body: bytes, signature: str, key: Ed25519PublicKey) -> bool:
    """Did `key` make `signature` (base64url) of `body`?"""
    try:
        key.verify(_unb64(signature), body)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def parse(token: str) -> tuple[Receipt, bytes, bytes]:
    """The receipt in a signed token, the payload and the signature (not checked here)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or not _TOKEN.fullmatch(token):
        raise ReceiptError("receipt: not <payload>.<signature> in base64url")
    head, tail = token.split(".")
    try:
        body, signature = _unb64(head), _unb64(tail)
        doc = json.loads(body.decode("ascii"))
    except (binascii.Error, ValueError) as e:
        raise ReceiptError(f"receipt: cannot be read: {e}") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION or type(doc.get("v")) is not int:
        raise ReceiptError(f"receipt: version must be {VERSION}")
    if set(doc) != {"v", "name", "stored_as", *_FIELDS}:
        raise ReceiptError(f"receipt: fields are {sorted(doc)}, not those of version {VERSION}")
    for key, kind in _FIELDS.items():
        value = doc[key]
        ok = (
            isinstance(value, (int, float)) and math.isfinite(value)
            if kind is float
            else isinstance(value, kind)
        )
        if not ok or isinstance(value, bool):
            raise ReceiptError(f"receipt: {key} must be a {kind.__name__}")
    fields = {key: doc[key] for key in _FIELDS}
    fields["placed_at"] = float(doc["placed_at"])
    receipt = Receipt(name=_name_in(doc["name"]), stored_as=_name_in(doc["stored_as"]), **fields)
    return receipt, body, signature


def verify(token: str, key: Ed25519PublicKey) -> Receipt:
    """The receipt in `token` if `key` signed it; ReceiptError if not."""
    receipt, body, signature = parse(token)
    try:
        key.verify(signature, body)
    except InvalidSignature:
        raise ReceiptError("receipt: not signed with download's pinned key") from None
    return receipt


_COMPARED = (
    *("instance", "entry", "destination", "name", "kind", "size", "files", "md5"),
    *("stored_as", "outcome"),
)


def mismatch(receipt: Receipt, expected: Receipt) -> str | None:
    """What in a verified receipt differs from what the checker knows of the delivery (None: all
    agrees). `placed_at` is download's to say; an empty `stored_as`/`outcome` in `expected` is not
    known to the checker and not compared."""
    for key in _COMPARED:
        want = getattr(expected, key)
        if key in ("stored_as", "outcome") and not want:
            continue
        if getattr(receipt, key) != want:
            return f"receipt: {key} is {getattr(receipt, key)!r}, not {want!r}"
    return None


def check(token: str, key: Ed25519PublicKey, expected: Receipt) -> Receipt:
    """A receipt signed by `key` that says what `expected` says; ReceiptError says why not."""
    receipt = verify(token, key)
    problem = mismatch(receipt, expected)
    if problem:
        raise ReceiptError(problem)
    return receipt


# keys ---------------------------------------------------------------------------------------------


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_bytes(key: Ed25519PrivateKey) -> bytes:
    """The private key as an unencrypted PKCS#8 PEM file (the file itself is 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Download's signing key; ValueError says what is wrong with the file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (TypeError, ValueError) as e:
        raise ValueError(f"not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 key")
    return key


def public_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """A public key as written in upload's and central's configs: ed25519:<base64>."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def public_of(key: Ed25519PrivateKey) -> Ed25519PublicKey:
    return key.public_key()


PrivateKey = Ed25519PrivateKey
PublicKey = Ed25519PublicKey


def load_public_key(text: str) -> Ed25519PublicKey:
    """The public key written as `ed25519:<base64 of 32 bytes>`; ValueError if it is not one."""
    if not isinstance(text, str) or not text.startswith(PUBLIC_KEY_PREFIX):
        raise ValueError(f"must be {PUBLIC_KEY_PREFIX}<base64>, as `synkler keygen` prints it")
    try:
        raw = base64.b64decode(text[len(PUBLIC_KEY_PREFIX) :].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this one {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)
