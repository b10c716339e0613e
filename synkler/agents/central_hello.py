"""Central's answer to `hello`: a standby of upload or download took over with a state of its own,
and central announces again what it holds open for it (synkler.agents.greeting; docs/protocol.md,
"A standby that takes over").

- To download: `fetch` again for every entry that destination was asked to fetch and has not
  fetched, as sent the first time (same attempt, path and epoch): the standby pulls each; one the
  first agent had placed already is found there (same name, same md5) and not placed twice.
- To upload: `open` for every entry of that upload agent central holds, whatever its state (the
  delivered ones too, as long as central's history keeps them, so that the standby does not offer
  again a file the first agent had delivered), and `admit` again for those being pushed.
- Then `greeted`, with the hello's token: that was all.

Messages from one central reach an agent's queue in the order they were sent, so the answer
comes after anything central had said before the hello, and before anything it says after.
"""

from __future__ import annotations

import logging

from .. import destinations as dests
from ..errors import MessageError
from ..messages import ADMITTED, GIVEN_UP, UNADMITTED, Admit, Fetch, Greeted, Hello, Open
from ..metadata import loads
from ..state import Entry
from .agent import Agent
from .base import Status

log = logging.getLogger("synkler")


class Answering(Agent):
    """Central's answer to a standby's `hello`. `HELD` (set by Central): central's states an upload
    is told about, and how `open` names each."""

    HELD: dict[Status, str] = {}
    UPLOADING: Status  # the state whose `admit` is sent again
    STORED: tuple[Status, ...] = ()  # the states in which central may have asked a destination to fetch

    def fetch_for(self, entry: Entry) -> Fetch:
        raise NotImplementedError

    def admit_for(self, entry: Entry) -> Admit:
        raise NotImplementedError

    def on_hello(self, msg: Hello) -> None:
        if msg.role == "central":
            raise MessageError(f"hello from {msg.sender!r} as a central: only upload agents take it")
        downloads = (self.cfg.download_name, *self.cfg.destinations)
        if msg.role == "download":
            if msg.sender not in downloads:
                raise MessageError(
                    f"hello from {msg.sender!r} as a download: not a destination of this central"
                )
            count = self._fetch_again(msg.sender)
        else:
            if msg.sender in (self.cfg.central_name, *downloads) or (
                self.cfg.uploads and msg.sender not in self.cfg.uploads
            ):
                raise MessageError(
                    f"hello from {msg.sender!r} as an upload: not an upload agent of this central"
                )
            count = self._announce(msg.sender)
        self.send(msg.sender, Greeted(msg.entry, self.name, entries=count))
        log.warning(
            "%s agent %s took over from another of its name: %d entries announced to it again",
            msg.role,
            msg.sender,
            count,
        )

    def _fetch_again(self, destination: str) -> int:
        count = 0
        for entry in self.state.by_state(*self.STORED):
            row = dests.of(self.state, entry.id, self.cfg.download_name).get(destination)
            if row is not None and row.state == dests.FETCHING and entry.path:
                self.send(destination, self.fetch_for(entry))
                count += 1
        return count

    def _announce(self, upload: str) -> int:
        count = 0
        for entry in self.state.by_state(*self.HELD):
            if entry.peer != upload:
                continue
            held = self.HELD[self.STATES(entry.state)]
            pushed = held not in (UNADMITTED, ADMITTED)
            rows = dests.rows(self.state, entry.id)
            self.send(
                upload,
                Open(
                    entry.id,
                    self.name,
                    name=entry.name,
                    kind=entry.kind,
                    size=entry.size,
                    files=entry.files,
                    held=held,
                    md5=(entry.md5 or "") if pushed else "",
                    reason=(entry.reason or "")[:2000] if held == GIVEN_UP else "",
                    meta=loads(self.state.metadata(entry.id)) or None,
                    to=tuple(rows) if self.cfg.routes else (),
                ),
            )
            if entry.state == self.UPLOADING:
                self.send(upload, self.admit_for(entry))
            count += 1
        return count
