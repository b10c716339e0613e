"""An operator's requests at central (`synkler retry`, `forget`, each at one destination with
`--to`), and what an entry forgotten here drops."""

from __future__ import annotations

import logging
import time

from .. import destinations as dests
from ..errors import Refused
from ..messages import Forget
from ..state import Entry, Request
from ..text import shown, some_entries
from . import fanout, waits
from .admission import ROOM_WAIT
from .base import FORGET, RETRY
from .central_delivery import Delivering
from .central_states import Mid

log = logging.getLogger("synkler")


class Operating(Delivering):
    """An operator's requests at central."""

    @classmethod
    def refusal(cls, action: str, entry: Entry, latest: bool, *, present: bool = True) -> str | None:
        base, _, destination = action.partition(":")
        stored = entry.state == Mid.DOWNLOADING or (entry.state == Mid.FAILED and entry.path)
        if base == RETRY and entry.state == Mid.FAILED and entry.path:  # where its pulls failed
            return None
        if destination:  # at one destination: forget, once central asked it to fetch; retry, above
            if base not in (FORGET, RETRY):
                return f"only upload sends an entry again: `synkler {base} ENTRY --to {destination}` there"
            if base == FORGET and stored:
                return None
            if base == FORGET:
                return f"it is {entry.state}: only a stored, undelivered entry is forgotten at a destination"
            return f"it is {entry.state}: only an entry that failed at a destination is retried there"
        if action == RETRY and entry.state == Mid.WAITING:
            return None  # looked at again now (it is every second anyway)
        if action == RETRY:
            return (
                "central does not retry: run `synkler retry` on upload (it sends the entry again), or on "
                "download for a failed pull (it pulls central's verified copy again)"
            )
        return super().refusal(action, entry, latest, present=present)

    def on_request(self, request: Request) -> str:
        action, _, destination = request.action.partition(":")
        if not destination:
            return super().on_request(request)
        entry = self.state.get(request.entry)
        if entry is None:
            raise Refused(f"the central agent has no entry {request.entry}")
        why = self.refusal(request.action, entry, True)
        if why is not None:
            raise Refused(f"{shown(entry.name)} (entry {entry.id}): cannot {action} at {destination}: {why}")
        if action == RETRY:
            return self._retry_at(entry, destination)
        return self._forget_at(entry, destination)

    def _forget_at(self, entry: Entry, destination: str) -> str:
        """`forget --to DEST`: the entry ends at that destination only (it is told, and so is upload,
        which stops waiting for its receipt); once every other destination has fetched it, it is
        delivered."""
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        what = f"{shown(entry.name)} (entry {entry.id})"
        if destination not in rows:
            raise Refused(f"{what} does not go to {destination!r} (it goes to {', '.join(rows)})")
        if rows[destination].state in dests.ENDED:
            raise Refused(f"{what}: {destination} has {rows[destination].state} it already")
        reason = f"forgotten at {destination} by an operator at central"
        dests.mark(self.state, entry.id, destination, dests.FORGOTTEN, reason=reason)
        self.send(destination, Forget(entry.id, self.name, reason=reason))
        self.send(entry.peer or "", Forget(entry.id, self.name, reason=reason, destination=destination))
        log.info("%s: %s", entry.name, reason)
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        if dests.all_fetched(rows):
            keep = self.cfg.keep_minutes * 60
            self.move(entry, Mid.DELIVERED, due=time.time() + keep, reason=None)
            return f"{what} is forgotten at {destination}; every other destination has it: delivered"
        if not dests.waiting_for(rows):  # forgotten everywhere
            self.forget(entry, reason)
            return f"{what} is forgotten at every destination, so here too; its peers are told"
        return f"{what} is forgotten at {destination}; still waiting for {', '.join(dests.waiting_for(rows))}"

    def _retry_at(self, entry: Entry, destination: str | None) -> str:
        """`retry [--to DEST]` of an entry that failed at a destination: central asks it (without
        `--to`: every destination where it failed) to pull the verified copy it kept again; the
        others are not touched. The entry is on its way again once no destination has failed."""
        what = f"{shown(entry.name)} (entry {entry.id})"
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        try:
            chosen = dests.acted_on(RETRY, rows, destination)
        except ValueError as e:
            raise Refused(f"{what}: cannot retry: {e}") from None
        fetch = fanout.fetch_of(self.state, self.name, entry, again="retried by an operator at central")
        for dest in chosen:
            self.send(dest, fetch)
            dests.mark(self.state, entry.id, dest, dests.FETCHING)
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        failed = [d for d, r in rows.items() if r.state == dests.FAILED]
        if not failed:
            self.move(entry, Mid.DOWNLOADING, reason=None)
        log.info("%s: retried by an operator at %s", entry.name, ", ".join(chosen))
        others = [d for d in rows if d not in chosen]
        told = f"; {', '.join(others)} not touched" if others else ""
        return f"{what}: {', '.join(chosen)} asked to pull central's verified copy again{told}"

    def retry(self, entry: Entry) -> str:
        """A waiting entry: admitted now if there is room, else the answer says what it waits for; one
        that failed at its destinations: asked again there (_retry_at)."""
        if entry.state == Mid.FAILED:
            return self._retry_at(entry, None)
        self._admit_waiting()
        now = self.entry(entry.id)
        if now.state != Mid.WAITING:
            return f"{shown(entry.name)} (entry {entry.id}): admitted now"
        return f"{shown(entry.name)} (entry {entry.id}): still waits: {shown(now.reason or ROOM_WAIT)}"

    def retry_waiting(self, cause: str) -> str:
        """Central's entries wait only for room (a cause of `disk`): admitted now where there is."""
        if cause not in (waits.DISK, waits.ANY):
            return f"no entry at central waits for {waits.what(cause)}: central's entries wait only for room"
        before = [e.id for e in self.state.by_state(Mid.WAITING)]
        self._admit_waiting()
        still = {e.id for e in self.state.by_state(Mid.WAITING)}
        admitted = [e.name for e in map(self.entry, before) if e.state == Mid.UPLOADING]
        if not before:
            return "no entry at central waits for room"
        told = f"{some_entries([shown(n) for n in admitted])} admitted now" if admitted else "none admitted"
        return f"{told}; {len(still)} still waiting for room (`synkler status` says what each needs)"

    def peers(self, entry: Entry) -> list[str]:
        return [entry.peer or "", *dests.of(self.state, entry.id, self.cfg.download_name)]

    def drop(self, entry: Entry) -> None:
        """Its copies go: the staged one (a running push may still write there: the sweep removes that a
        minute later, as for a withdrawn version) and the stored one. A running md5 check or expiry
        finds the entry forgotten and records nothing."""
        self._unfollow(entry.id)
        if entry.state in (Mid.UPLOADING, Mid.VERIFYING):  # only then is the staging path this version's
            self.spool.drop_staged(entry)
            self.spool.drop_partial(entry)
        self.spool.drop_stored(entry.id)
        self.admit_due = True  # its room and its name are free
