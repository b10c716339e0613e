"""`synkler verify`'s look at the disk: one receipt document checked against what it names.

At download: the document is read, its signature checked with download's own key, its listing with
the digest the signature covers, and the delivered copy in file_dir against the listing at the
depth asked for (synkler.proofs.differences). At upload, whose data may be gone: the copy it keeps
of download's document, its signature with download's pinned key, and that it is about the entry
and content upload sent. Reading data goes through synkler.hops.checksum (one read per file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import bundles, proofs, receipts
from ..hops import receiptfiles
from ..messages import stored_problem
from .checksum import alg_of, digest_entry, list_entry


@dataclass
class Verdict:
    """What verify found of one receipt document: `problems` empty when all agrees."""

    path: Path
    entry: str = ""
    name: str = ""
    delivered_at: float = 0.0
    destination: str = ""  # the download whose delivery it proves ("": not said)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def delivered_at(doc: dict[str, Any]) -> float:
    """When download delivered it (its hop's time)."""
    for hop in doc.get("hops") or ():
        if isinstance(hop, dict) and hop.get("role") == "download":
            return float(hop.get("at") or 0.0)
    return 0.0


def delivered_by(doc: dict[str, Any]) -> str:
    """The download agent that signed it (its hop's agent; "" if it names none)."""
    for hop in doc.get("hops") or ():
        if isinstance(hop, dict) and hop.get("role") == "download":
            return str(hop.get("agent") or "")
    return ""


def load(path: Path) -> tuple[dict[str, Any] | None, Verdict]:
    """A kept document and the verdict to fill; None if it cannot be read as one."""
    entry_id, destination = receiptfiles.named(path.stem)
    verdict = Verdict(path, entry=entry_id, destination=destination)
    try:
        kept = receiptfiles.read(path)
    except (OSError, ValueError) as e:
        verdict.problems.append(f"cannot be read: {e}")
        return None, verdict
    if not isinstance(kept, dict):
        verdict.problems.append("not a receipt document")
        return None, verdict
    up = kept.get("upload")
    if isinstance(up, dict) and isinstance(up.get("destination"), str):  # upload's record says whose
        verdict.destination = verdict.destination or up["destination"]
    if kept.get("receipt") is None and isinstance(up, dict):  # upload's, without download's
        verdict.entry, verdict.name = str(up.get("entry", "")), _name(up.get("name"))
        verdict.delivered_at = float(up.get("delivered_at") or 0.0)
        return kept, verdict
    why = proofs.problem(kept)
    if why:
        verdict.problems.append(f"not a receipt document: {why}")
        return None, verdict
    doc = kept["receipt"]
    verdict.entry, verdict.name, verdict.delivered_at = doc["entry"], _name(doc["name"]), delivered_at(doc)
    verdict.destination = verdict.destination or delivered_by(doc)
    return kept, verdict


def _name(value: object) -> str:
    try:
        return os.fsdecode(proofs.name_in(value))
    except proofs.ProofError:
        return "?"


def signature(kept: dict[str, Any], key: receipts.PublicKey | None, verdict: Verdict) -> None:
    if kept.get("receipt") is None:
        verdict.problems.append("download's receipt document never came (only upload's record is kept)")
        return
    if key is None:
        return
    why = proofs.signature_problem(kept, key)
    if why:
        verdict.problems.append(f"receipt {why}")


def at_download(
    kept: dict[str, Any],
    file_dir: Path,
    depth: str,
    verdict: Verdict,
    members: dict[bytes, bytes] | None = None,
    *,
    bagit: bool = False,
) -> None:
    """The delivered copy in file_dir against the document's listing, at `depth`. A bundle's files
    are each where download placed it: `members` maps a file's path in the bundle to its place in
    file_dir (from download's state; a file it does not know is looked for under its own name).
    `bagit` (download's `layout: bagit`): each place is a bag, the copy in it at `data/<name>`."""
    why = proofs.listing_problem(kept)
    if why:
        verdict.problems.append(why)
        return
    doc = kept["receipt"]
    if doc.get("kind") == bundles.KIND:
        _bundle_at_download(kept, os.fsencode(file_dir), depth, verdict, members or {}, bagit)
        return
    stored = proofs.name_in(doc["stored_as"])
    wrong = stored_problem(os.fsdecode(stored))
    if wrong:  # never a path that leads out of file_dir: only a name, or <upload agent>/<name>
        verdict.problems.append(f"stored_as {os.fsdecode(stored)!r} is not a place in file_dir ({wrong})")
        return
    where = os.path.join(os.fsencode(file_dir), stored)
    if bagit:
        where = os.path.join(where, b"data", proofs.name_in(doc["name"]))
    if not os.path.lexists(where):
        verdict.problems.append(
            f"{os.fsdecode(where)!r} is missing (moved or removed since it was delivered?)"
        )
        return
    alg = alg_of(doc["checksum"])
    try:
        found = digest_entry(where, alg).files if depth == "full" else list_entry(where)
    except (OSError, ValueError) as e:
        verdict.problems.append(f"cannot read {os.fsdecode(where)!r}: {e}")
        return
    shown = proofs.differences(kept["listing"], found, depth, alg)
    verdict.problems += shown[: proofs.MAX_SHOWN]
    if len(shown) > proofs.MAX_SHOWN:
        verdict.problems.append(f"… and {len(shown) - proofs.MAX_SHOWN} more")


def _bundle_at_download(
    kept: dict[str, Any],
    file_dir: bytes,
    depth: str,
    verdict: Verdict,
    members: dict[bytes, bytes],
    bagit: bool,
) -> None:
    """A bundle's document: each file of its listing read at its own place in file_dir."""
    alg = alg_of(kept["receipt"]["checksum"])
    found = []
    for item in kept["listing"]:
        path = proofs.name_in(item.get("path"))
        stored = members.get(path, path)
        wrong = stored_problem(os.fsdecode(stored))
        if wrong:
            verdict.problems.append(f"{os.fsdecode(stored)!r} is not a place in file_dir ({wrong})")
            continue
        where = os.path.join(file_dir, stored, b"data", path) if bagit else os.path.join(file_dir, stored)
        if not os.path.lexists(where):
            continue  # reported as missing by the comparison
        try:
            files = digest_entry(where, alg).files if depth == "full" else list_entry(where)
        except (OSError, ValueError) as e:
            verdict.problems.append(f"cannot read {os.fsdecode(where)!r}: {e}")
            continue
        found += [replace(f, path=path) for f in files if not f.path]  # a member is one file
    shown = proofs.differences(kept["listing"], found, depth, alg)
    verdict.problems += shown[: proofs.MAX_SHOWN]
    if len(shown) > proofs.MAX_SHOWN:
        verdict.problems.append(f"… and {len(shown) - proofs.MAX_SHOWN} more")


def at_upload(kept: dict[str, Any], verdict: Verdict) -> None:
    """Upload's copy: download's document is about the entry and content upload sent, and was signed
    by the destination it is kept for."""
    up, doc = kept.get("upload"), kept.get("receipt")
    if not isinstance(up, dict) or doc is None:
        return
    named = receiptfiles.named(verdict.path.stem)[1]
    names = {n for n in (named, up.get("destination"), delivered_by(doc)) if n}
    if len(names) > 1:  # one destination's receipt kept as another's
        verdict.problems.append(
            f"its file name, upload's record and download's signed document do not name one "
            f"destination ({', '.join(sorted(map(str, names)))})"
        )
    if doc["entry"] != up.get("entry") or doc["md5"] != up.get("md5"):
        verdict.problems.append(
            f"download's receipt is about entry {doc['entry']} md5 {doc['md5']}, upload sent "
            f"{up.get('entry')} md5 {up.get('md5')}"
        )
    elif up.get("checksum") and doc["checksum"] != up.get("checksum"):
        verdict.problems.append(
            f"download's receipt has {doc['checksum'] or 'no second hash'}, upload sent {up['checksum']}"
        )
