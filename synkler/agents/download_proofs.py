"""Download's proofs of delivery: the signed receipt and the receipt document (synkler.proofs) of a
verified copy, written when it is placed or found present, kept in receipt_dir, and sent again when
an operator asks (`synkler resend`)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .. import proofs, receipts
from ..errors import ConfigError, Refused
from ..hops import receiptfiles
from ..hops.checksum import EntryDigest, alg_of
from ..messages import Fetched
from ..metadata import loads
from ..state import Entry, State
from ..text import shown
from .base import Jobs
from .download_bundles import BundleDownload
from .download_pool import PoolDownload

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")


class DownloadProofs(BundleDownload, PoolDownload):
    """Receipts and receipt documents; the rest of download is in Download and its other parts."""

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        self.receipt_key = None
        if cfg.receipt_key is not None:
            try:
                self.receipt_key = receipts.load_private_key(cfg.receipt_key)
            except (OSError, ValueError) as e:
                raise ConfigError(cfg.path, "receipt_key", f"{cfg.receipt_key}: {e}") from None
        self.proofs: dict[str, dict | str] = {}  # entry id -> its receipt document, until `fetched` is sent
        self.retention = receiptfiles.Retention(cfg.receipt_dir, cfg.receipt_keep_days)
        self.receipts = receiptfiles.Batch(cfg.receipt_dir, state.before_commit)

    def resend(self, entry: Entry, to: str | None = None) -> str:
        """Send `fetched` of a delivered entry again, with its receipt and receipt document signed by
        the receipt_key download has now: the way out when that key was made, or its public key pinned
        (or corrected) at central or upload, only after the delivery, which they then refused as not
        proven (docs/security.md, "Delivery receipts"). What download signs is what it verified then."""
        what = f"{shown(entry.name)} (entry {entry.id})"
        if self.receipt_key is None:
            raise Refused(f"{what}: cannot resend: download has no receipt_key, so it has no receipt to send")
        proof = self._kept_document(entry, reseal=True)
        kept = self.state.receipts(entry.id).get(self.name)
        placed_at, outcome = resent_receipt_times(kept, proof, entry)
        stored_as = entry.stored_as or entry.name
        receipt = receipts.for_entry(
            self.cfg.id, entry, self.name, stored_as, placed_at=placed_at, outcome=outcome
        )
        token = receipts.sign(receipt, self.receipt_key)
        self.state.put_receipt(entry.id, self.name, token)
        self.send(
            entry.peer or self.cfg.central_name,
            Fetched(entry.id, self.name, stored_as=stored_as, outcome=outcome, receipt=token, proof=proof),
        )
        return f"{what}: its signed receipt is sent to {entry.peer or self.cfg.central_name} again"

    def _receipt(self, entry: Entry, outcome: str) -> str:
        """The signed receipt of a verified copy just placed (or found present), kept in the state
        with the entry's change; "" without a receipt_key."""
        if self.receipt_key is None:
            return ""
        stored_as = entry.stored_as or entry.name
        receipt = receipts.for_entry(
            self.cfg.id, entry, self.name, stored_as, placed_at=time.time(), outcome=outcome
        )
        token = receipts.sign(receipt, self.receipt_key)
        self.state.put_receipt(entry.id, self.name, token)
        return token

    def document(self, entry: Entry, outcome: str, digest: EntryDigest | None) -> dict | str:
        """Write the receipt document of a verified copy (synkler.proofs) into receipt_dir, signed
        with receipt_key if there is one; what goes back with `fetched` (the listing stays here)."""
        if digest is None:
            return ""
        checksum = digest.strong or ""
        now = time.time()
        items = proofs.listing(digest.files, alg_of(checksum))
        hops = [
            {"role": "central", "agent": entry.peer or "", "at": entry.created},
            {"role": "download", "agent": self.name, "at": now},
        ]
        doc = proofs.document(
            instance=self.cfg.id,
            entry=entry,
            checksum=checksum,
            destination=self.name,
            stored_as=entry.stored_as or entry.name,
            outcome=outcome,
            hops=hops,
            items=items,
            metadata=loads(self.state.metadata(entry.id)),
        )
        sealed = proofs.seal(doc, self.receipt_key)
        # Written with the other documents of the transaction, just before it commits.
        self.receipts.keep(entry.id, shown(entry.name), now, {**sealed, "listing": items})
        return sealed if not proofs.wire_problem(sealed) else ""

    def kept_proof(self, entry: Entry) -> dict | str:
        return self._kept_document(entry)

    def _kept_document(self, entry: Entry, *, reseal: bool = False) -> dict | str:
        """The receipt document written when the copy was verified (after a restart: from its file).
        `reseal`: one not signed by receipt_key (made before it was) is signed with it now, in its file
        too."""
        for path in reversed(receiptfiles.find(self.cfg.receipt_dir, entry.id)):
            try:
                kept = receiptfiles.read(path)
            except (OSError, ValueError):
                continue
            sealed = {"receipt": kept.get("receipt"), "signature": kept.get("signature")}
            if proofs.wire_problem(sealed):
                continue
            key = self.receipt_key
            if reseal and key is not None and proofs.signature_problem(sealed, receipts.public_of(key)):
                sealed = proofs.seal(sealed["receipt"], key)
                try:
                    receiptfiles.write_at(path, {**kept, **sealed})
                except OSError as e:
                    log.error("%s: cannot sign its receipt document %s again: %s", entry.name, path, e)
            return sealed
        return ""


def resent_receipt_times(kept: str | None, proof: dict | str, entry: Entry) -> tuple[float, str]:
    """When the copy was placed (or found present) and which of the two, for a receipt sent again:
    from the receipt kept (signed before, perhaps with another key), else the receipt document, else
    the entry's last change. Pure."""
    if kept:
        try:
            receipt = receipts.parse(kept)[0]
            return receipt.placed_at, receipt.outcome
        except receipts.ReceiptError:
            pass
    if isinstance(proof, dict):
        doc = proof["receipt"]
        at = [h.get("at") for h in doc.get("hops", []) if isinstance(h, dict) and h.get("role") == "download"]
        when = at[-1] if at and isinstance(at[-1], (int, float)) else entry.updated
        return float(when), doc["outcome"]
    return entry.updated, "placed"
