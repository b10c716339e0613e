"""Download's part in a pool of centrals (`centrals` in its config; docs/architecture.md, "Who owns
an entry"): it pulls an entry from the central that sent its `fetch`, over that central's ssh
destination, and believes a `fetch` only at an epoch at least the highest it has seen for the entry.
When upload re-owned an entry, the new owner's `fetch` (a higher epoch) makes download answer that
central: it pulls from it if it had not finished, or tells it `fetched` again with its receipt.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from ..messages import Fetch, Fetched, Message, Pushing
from ..state import Entry
from .greeting import Greeting

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")


class PoolDownload(Greeting):
    """The pool's rules at download (and its greeting of the centrals after a takeover)."""

    ROLE = "download"

    def fenced(self, msg: Message) -> str | None:
        if isinstance(msg, Pushing):
            # Pulled early only from one central (its host is central_host): in a pool, the fetch does it.
            return "a pool of centrals pulls no entry early"
        epoch = getattr(msg, "epoch", None)
        if not isinstance(msg, Fetch) or epoch is None:
            return None
        seen = self.state.epoch(msg.entry)
        if epoch < seen:
            return f"it is of epoch {epoch}; this agent has seen epoch {seen} of the entry"
        return None

    def newer(self, msg: Fetch) -> bool:
        """Is this fetch of a newer ownership than the last download saw (upload re-owned the
        entry: from another central, or from a central whose standby took over with a state of its
        own, under the same name)? Its pull then starts afresh from the new owner's copy."""
        return self.pooled and (msg.epoch or 0) > self.state.epoch(msg.entry)

    def new_owner(self, msg: Fetch, entry: Entry) -> bool:
        """A fetch of a newer epoch (upload re-owned the entry): its central is the one download
        answers now. True if the entry needs no more (its `fetched` went again)."""
        epoch = msg.epoch or 0
        if epoch <= self.state.epoch(entry.id):
            return False
        self.state.put_epoch(entry.id, epoch)
        log.info("%s: now owned by %s (epoch %d)", entry.name, msg.sender, epoch)
        entry = self.state.update(entry, peer=msg.sender)
        if entry.state not in (self.DELIVERED, self.DONE):
            return False  # pulled from the new owner (a higher attempt, or at the next try)
        token = self.state.receipts(entry.id).get(self.name, "")
        self.send(
            msg.sender,
            Fetched(
                entry.id,
                self.name,
                stored_as=entry.stored_as or entry.name,
                outcome="placed",
                receipt=token,
                proof=self.kept_proof(entry),
            ),
        )
        return True

    def kept_proof(self, entry: Entry) -> dict | str:
        return ""

    def link_cfg(self, entry: Entry) -> Config:
        """The configuration a pull from the entry's central runs with (its ssh destination)."""
        if not self.cfg.centrals or entry.peer is None:
            return self.cfg
        return dataclasses.replace(self.cfg, central_host=self.cfg.central_host_of(entry.peer))
