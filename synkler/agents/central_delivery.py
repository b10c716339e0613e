"""Central and the destinations of an entry: their `fetched` (believed on download's signed receipt
when its key is pinned, synkler.receipts), passed on to upload; their `corrupt` and `failed`; and
the stored copy removed keep_minutes after the delivery, once its receipts still prove it.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

from .. import destinations as dests
from .. import receipts
from ..errors import MessageError
from ..linux.fs import remove_tree
from ..messages import Corrupt, Delivered, Failed, Fetched
from ..state import Entry, State
from .base import ENTRY, RECHECK, Jobs, Key
from .central_states import Mid
from .central_verify import Verifying
from .pools import Pool

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")


class Delivering(Verifying):
    """What central does with its destinations' answers, and the expiry of delivered copies."""

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        # download name -> its pinned public key (checked by the config)
        self.download_keys = {d: receipts.load_public_key(k) for d, k in cfg.download_keys().items()}

    def on_fetched(self, msg: Fetched) -> None:
        entry, row = self._at_destination(msg)
        if row.state == dests.FETCHED and msg.receipt and entry.state != Mid.FORGOTTEN:
            self._delivered_again(entry, row, msg)
            return
        if entry.state in (Mid.DELIVERED, Mid.EXPIRED, Mid.FORGOTTEN) or row.state in dests.ENDED:
            return  # a copy of one taken already, or an entry an operator forgot meanwhile
        # Download has a say only over an entry central asked it to fetch: one downloading, or one
        # failed since (`path` is set with the fetch): download, retried by an operator, got the
        # verified copy central kept. Not one that failed before it was stored.
        if not (entry.state == Mid.DOWNLOADING or (entry.state == Mid.FAILED and entry.path)):
            if self.cfg.uploads:
                # A pool: download's answer to this central's fetch of an earlier ownership, which
                # ended (re-owned) and began again here since. The fetch of this one is still to come.
                log.info(
                    "%s: fetched of an earlier ownership (it is %s here now): ignored",
                    entry.name,
                    entry.state,
                )
                return
            raise MessageError(
                f"fetched for entry {entry.id}, which is {entry.state} at central: "
                "central never asked download to fetch it"
            )
        self._check_receipt(entry, msg)
        dests.mark(self.state, entry.id, msg.sender, dests.FETCHED, stored_as=msg.stored_as)
        if msg.receipt:
            self.state.put_receipt(entry.id, msg.sender, msg.receipt)
        self._pass_on(entry, msg)
        rest = dests.waiting_for(dests.of(self.state, entry.id, self.cfg.download_name))
        if rest:
            log.info(
                "%s: delivered to %s as %s; central copy kept for %s",
                entry.name,
                msg.sender,
                msg.stored_as,
                ", ".join(rest),
            )
            return
        keep = self.cfg.keep_minutes * 60
        self.move(entry, Mid.DELIVERED, stored_as=msg.stored_as, due=time.time() + keep, reason=None)
        log.info(
            "%s: delivered to %s as %s; central copy kept %g min",
            entry.name,
            msg.sender,
            msg.stored_as,
            self.cfg.keep_minutes,
        )

    def _at_destination(self, msg: Fetched | Corrupt | Failed) -> tuple[Entry, dests.Row]:
        """The entry a download's message is about, and that download's row: only a destination of
        the entry has a say over it (MessageError otherwise)."""
        rows = dests.of(self.state, msg.entry, self.cfg.download_name)
        entry = self.entry_for(msg, *rows)
        row = rows[msg.sender]
        if not row.updated:  # an entry of an older synkler, which kept no rows: as its state says
            if entry.state == Mid.DOWNLOADING or (entry.state == Mid.FAILED and entry.path):
                row = row._replace(state=dests.FETCHING)
            elif entry.state in (Mid.DELIVERED, Mid.EXPIRED):
                row = row._replace(state=dests.FETCHED, stored_as=entry.stored_as)
        return entry, row

    def _delivered_again(self, entry: Entry, row: dests.Row, msg: Fetched) -> None:
        """A destination's receipt of an entry it fetched, again (`synkler resend` on download, or a
        copy): kept, and passed on to upload, which may have refused the first as not proven (its key
        was pinned after the delivery); upload takes it once."""
        if msg.stored_as != row.stored_as:
            raise MessageError(
                f"fetched for entry {entry.id} as {msg.stored_as!r}: it was delivered as {row.stored_as!r}"
            )
        self._check_receipt(entry, msg)
        self.state.put_receipt(entry.id, msg.sender, msg.receipt)
        self._pass_on(entry, msg)
        log.info("%s: %s's receipt came again; passed on to %s", entry.name, msg.sender, entry.peer)

    def _pass_on(self, entry: Entry, msg: Fetched) -> None:
        """Tell upload of a destination's `fetched`, with its receipt and receipt document."""
        where = msg.sender if self.cfg.routes else ""  # a relay without routes: as before (download_name)
        said = dict(stored_as=msg.stored_as, receipt=msg.receipt, proof=msg.proof, destination=where)
        self.send(entry.peer or "", Delivered(entry.id, self.name, **said))

    def _check_receipt(self, entry: Entry, msg: Fetched) -> None:
        """With download's key pinned, a `fetched` acts only with download's signed receipt for this
        very entry and content (ReceiptError, a MessageError: dead-lettered, nothing done)."""
        key = self.download_keys.get(msg.sender)
        if key is None:
            if self.download_keys:
                raise receipts.ReceiptError(
                    f"fetched for entry {entry.id} from {msg.sender!r}, whose key download_public_key does "
                    "not pin: not believed"
                )
            return
        if not msg.receipt:
            raise receipts.ReceiptError(f"fetched for entry {entry.id} without a receipt: not believed")
        expected = self._expected(entry, msg.sender, msg.stored_as, msg.outcome)
        receipts.check(msg.receipt, key, expected)

    def _expected(
        self, entry: Entry, destination: str, stored_as: str, outcome: str = ""
    ) -> receipts.Receipt:
        return receipts.for_entry(self.cfg.id, entry, destination, stored_as, outcome=outcome)

    def on_corrupt(self, msg: Corrupt) -> None:
        entry, _ = self._at_destination(msg)
        if entry.state == Mid.DOWNLOADING and not self.jobs.busy(Key(RECHECK, entry.id)):
            log.warning(
                "%s: download got md5 %s instead of %s; checking central's copy",
                entry.name,
                msg.got,
                entry.md5,
            )
            self._recheck(entry)

    def _failed_at(self, entry: Entry, row: dests.Row, msg: Failed) -> None:
        """A destination gave up its pull: its row fails (the others go on), the entry fails (a person
        must look; central keeps its verified copy), and upload is told."""
        ended = (Mid.FAILED, Mid.DELIVERED, Mid.EXPIRED, Mid.WITHDRAWN, Mid.FORGOTTEN)
        if row.state in (dests.FAILED, *dests.ENDED) or (
            row.state != dests.FETCHING and entry.state in ended
        ):
            return  # ended already (or failed: told once)
        if row.state != dests.FETCHING or entry.state not in (Mid.DOWNLOADING, Mid.FAILED):
            raise MessageError(
                f"failed for entry {entry.id} from {msg.sender!r} while it is {entry.state} at central: "
                f"{msg.sender!r} has no say over it now"
            )
        reason = f"{msg.hop}: {msg.reason}"
        dests.mark(self.state, entry.id, msg.sender, dests.FAILED, reason=reason)
        if entry.state == Mid.DOWNLOADING:
            self.move(entry, Mid.FAILED, reason=reason)
        self._unfollow(entry.id)
        log.error("%s: %s reports failure: %s", entry.name, msg.sender, reason)
        where = msg.sender if self.cfg.routes else ""
        self.send(
            entry.peer or "", Failed(entry.id, self.name, hop=msg.hop, reason=msg.reason, destination=where)
        )

    def _expire(self, entry: Entry) -> None:
        problem = self._unproven(entry)
        if problem:
            # Only a changed key or a changed database gets here (`fetched` is refused without a
            # good receipt): keep the copy, and say so every hour until a person looks.
            self.state.update(entry, due=time.time() + 3600, reason=f"central copy kept: {problem}")
            log.error("%s: not removing central's copy: %s", entry.name, problem)
            return
        self.jobs.submit(
            Pool.REMOVE,
            [Key(ENTRY, entry.id)],
            functools.partial(remove_tree, self.spool.stored(entry.id)),
            functools.partial(self._expired, entry.id),
        )

    def _unproven(self, entry: Entry) -> str | None:
        """Why the delivery of an entry about to expire is not proven by the receipt central keeps
        (None: it is, or no key is pinned, or it was delivered before a key was: no receipt kept)."""
        tokens = self.state.receipts(entry.id)
        for dest, row in dests.of(self.state, entry.id, self.cfg.download_name).items():
            token, key = tokens.get(dest), self.download_keys.get(dest)
            if key is None or token is None:
                continue
            try:
                receipts.check(
                    token, key, self._expected(entry, dest, row.stored_as or entry.stored_as or "")
                )
            except receipts.ReceiptError as e:
                return f"{dest}: {e}"
        return None

    def _expired(self, entry_id: str, _result: None, error: BaseException | None) -> None:
        self.admit_due = True  # space was freed
        entry = self.entry(entry_id)
        if error is not None:
            log.error("%s: cannot remove central copy %s: %s", entry.name, self.spool.stored(entry_id), error)
            self.state.update(entry, due=time.time() + 60)
            return
        self.move(entry, Mid.EXPIRED)
        log.info("%s: central copy removed (%g min after delivery)", entry.name, self.cfg.keep_minutes)
