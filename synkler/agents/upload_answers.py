"""Central's answers about upload's entries: admitted (push), waiting for room, delivered (with
download's signed receipt and its receipt document, checked and kept), failed, or forgotten at one
destination (synkler.agents.upload)."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from .. import bundles, proofs, receipts
from .. import destinations as dests
from ..errors import MessageError
from ..hops import receiptfiles
from ..messages import Admit, Delivered, Failed, Forget, Wait
from ..state import Entry, State
from ..text import shown
from .base import Jobs
from .facts import BUNDLE_AT_CENTRAL
from .upload_offers import Offering
from .upload_states import AFTER_STORE, ENDS, UNSENT, Up

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")


class Answers(Offering):
    """Upload's handlers of central's messages about its entries."""

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        # download name -> its pinned public key (checked by the config)
        self.download_keys = {d: receipts.load_public_key(k) for d, k in cfg.download_keys().items()}
        self.receipts = receiptfiles.Batch(cfg.receipt_dir, state.before_commit)

    def on_admit(self, msg: Admit) -> None:
        self.take_admit(msg)
        self.on_central(msg, "dest", "staging", self.name)
        entry = self.entry_for(msg)
        if self.cfg.centrals and entry.state in ENDS:
            # Taken from the offers queue after a central re-owned from delivered it (signed receipts).
            self.release(entry, msg.sender, "delivered already through another central (signed receipts)")
            return
        newest = self.state.latest_by_name(entry.name)
        stale = newest is not None and newest.id != entry.id
        if entry.state == Up.SUPERSEDED or (stale and entry.state in (*UNSENT, Up.SENT)):
            # Central asks again for a version that has changed since: withdraw it (again).
            self.withdraw(entry, "superseded by a newer version")
        elif entry.state in (*UNSENT, Up.SENT) and msg.attempt > entry.attempt:
            if entry.attempt and entry.kind == bundles.KIND and (changed := self.bundle_changed(entry)):
                # Asked again (central's md5 did not match): a bundle whose files changed since is
                # not pushed again and again; they settle again, and go as they are now.
                self.withdraw(entry, changed)
                return
            self.move(entry, Up.UPLOADING, attempt=msg.attempt, path=msg.dest, tries=0, due=0, reason=None)
            if msg.to and not dests.rows(self.state, entry.id):  # frozen at the first admission
                dests.route(self.state, entry.id, msg.to)
            self.transfer_due = True

    def on_wait(self, msg: Wait) -> None:
        known = self.state.get(msg.entry)
        if known is not None and known.state == Up.OFFERED:
            self.take_wait(known, msg.sender)  # in a pool: the central that took the offer holds it
        entry = self.entry_for(msg)
        if entry.state == Up.OFFERED:
            self.move(entry, Up.WAITING, reason=msg.reason)

    def on_delivered(self, msg: Delivered) -> None:
        late = self.late_proof(msg)  # of an older epoch, with a receipt: checked below as any other
        entry = self.entry_for(msg, *self.cfg.centrals) if late else self.entry_for(msg)
        dest = msg.destination or self.cfg.download_name
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        if dest not in rows:
            raise MessageError(
                f"delivered for entry {entry.id} to {dest!r}, which is not one of its destinations "
                f"({', '.join(rows)})"
            )
        if entry.state in (Up.DELIVERED, Up.DONE, Up.FORGOTTEN) or rows[dest].state in dests.ENDED:
            return  # a copy of one taken already, or an entry an operator forgot meanwhile
        if (entry.state in (Up.OFFERED, Up.WAITING) and not late) or (
            entry.state == Up.FAILED and not (entry.reason or "").startswith(f"{AFTER_STORE}: ")
        ):
            raise MessageError(
                f"delivered for entry {entry.id}, which is {entry.state} at upload "
                f"({shown(entry.reason or '')}): central never held a verified copy of it"
            )
        self._check_receipt(entry, msg, dest)
        self._check_proof(entry, msg, dest)
        dests.mark(self.state, entry.id, dest, dests.FETCHED, stored_as=msg.stored_as)
        if msg.receipt:
            self.state.put_receipt(entry.id, dest, msg.receipt)
        self._keep_proof(entry, msg, dest)
        rest = dests.waiting_for(dests.of(self.state, entry.id, self.cfg.download_name))
        if rest:  # the cleanup script waits for every destination's verified copy
            log.info(
                "%s: delivered to %s (as %s); waiting for %s",
                entry.name,
                dest,
                msg.stored_as,
                ", ".join(rest),
            )
            return
        owner = entry.peer
        self.delivered(entry, stored_as=msg.stored_as, reason=None, tries=0)
        log.info("%s: delivered (md5 %s, as %s at %s)", entry.name, entry.md5, msg.stored_as, dest)
        if late and owner and owner != msg.sender:
            why = f"delivered through {msg.sender} at epoch {msg.epoch} (signed receipts)"
            self.release(entry, owner, why)

    def _check_proof(self, entry: Entry, msg: Delivered, dest: str) -> None:
        """Download's receipt document, passed on by central, must be about this entry and content,
        and signed by download's pinned key (ReceiptError: dead-lettered, nothing done)."""
        if not msg.proof:
            return
        doc = msg.proof["receipt"]
        mine = self.state.checksum(entry.id)
        if doc["entry"] != entry.id or doc["md5"] != entry.md5 or (mine and doc["checksum"] != mine):
            raise receipts.ReceiptError(
                f"delivered for entry {entry.id}: its receipt document is about other content "
                f"(md5 {doc['md5']}, {doc['checksum'] or 'no second hash'})"
            )
        key = self.download_keys.get(dest)
        if key is not None:
            why = proofs.signature_problem(msg.proof, key)
            if why:
                raise receipts.ReceiptError(f"delivered for entry {entry.id}: receipt document {why}")

    def _keep_proof(self, entry: Entry, msg: Delivered, dest: str) -> None:
        """Keep upload's copy of the receipt (docs/running.md, "Receipts"): download's document as it
        signed it, and what upload knows of the entry, so that delivery can be shown after cleanup.
        With central's routes, one document per destination (`<entry id>.<destination>.json`), each
        naming its destination: never one in place of another."""
        now = time.time()
        kept = {
            "receipt": msg.proof["receipt"] if msg.proof else None,
            "signature": msg.proof["signature"] if msg.proof else "",
            "token": msg.receipt,
            "upload": {
                "agent": self.name,
                "entry": entry.id,
                "name": proofs.name_out(os.fsencode(entry.name)),
                "md5": entry.md5,
                "checksum": self.state.checksum(entry.id),
                "offered_at": entry.created,
                "delivered_at": now,
                "stored_as": proofs.name_out(os.fsencode(msg.stored_as)),
                "destination": dest,
            },
        }
        # (with the transaction's others)
        self.receipts.keep(entry.id, shown(entry.name), now, kept, msg.destination)

    def _check_receipt(self, entry: Entry, msg: Delivered, dest: str) -> None:
        """With the destination's key pinned, its delivery counts only with its signed receipt for this
        very entry and content (ReceiptError: dead-lettered, nothing done)."""
        key = self.download_keys.get(dest)
        if key is None:
            if self.download_keys:
                raise receipts.ReceiptError(
                    f"delivered for entry {entry.id} to {dest!r}, whose key download_public_key does not "
                    "pin: not believed"
                )
            return
        if not msg.receipt:
            raise receipts.ReceiptError(f"delivered for entry {entry.id} without a receipt: not believed")
        if entry.md5 is None:
            raise receipts.ReceiptError(f"delivered for entry {entry.id}, which upload has not hashed yet")
        expected = receipts.for_entry(self.cfg.id, entry, dest, msg.stored_as)
        receipts.check(msg.receipt, key, expected)

    def on_forget(self, msg: Forget) -> None:
        """`forget` with a destination: an operator at central forgot the entry there only. Upload
        stops waiting for that destination's receipt; once every other has sent one, it is delivered."""
        if not msg.destination:
            super().on_forget(msg)
            return
        entry = self.entry_for(msg)
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        if msg.destination not in rows or rows[msg.destination].state in dests.ENDED:
            return  # not one of its destinations, or ended there already: nothing to do
        dests.mark(self.state, entry.id, msg.destination, dests.FORGOTTEN, reason=msg.reason)
        log.info("%s: %s", entry.name, msg.reason)
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        if dests.all_fetched(rows) and entry.state in (*UNSENT, Up.SENT, Up.SUPERSEDED, Up.FAILED):
            stored_as = next(r.stored_as for r in rows.values() if r.state == dests.FETCHED)
            self.delivered(entry, stored_as=stored_as or entry.name, reason=None, tries=0)
            log.info("%s: delivered to every destination it still goes to", entry.name)

    def on_failed(self, msg: Failed) -> None:
        if msg.hop == BUNDLE_AT_CENTRAL:
            self.bundle_refused(msg)
            return
        entry = self.entry_for(msg)
        if msg.destination in dests.rows(self.state, entry.id):
            dests.mark(self.state, entry.id, msg.destination, dests.FAILED, reason=f"{msg.hop}: {msg.reason}")
        if entry.state not in (Up.DELIVERED, Up.DONE, Up.FAILED, Up.SUPERSEDED, Up.FORGOTTEN):
            self.move(entry, Up.FAILED, reason=f"{msg.hop}: {msg.reason}")
            log.error(
                "%s: central reports failure at %s: %s; the data stays here", entry.name, msg.hop, msg.reason
            )
