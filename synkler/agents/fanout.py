"""Central's side of fan-out: an entry's destinations, frozen at its first admission, and the
`fetch` each of them is asked for (synkler.destinations keeps the rows; synkler.routes decides)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .. import destinations as dests
from .. import routes
from ..metadata import loads

if TYPE_CHECKING:
    from ..config import Config
    from ..messages import Fetch, Message
    from ..state import Entry, State


def route(state: State, cfg: Config, entry: Entry) -> list[str]:
    """The downloads an entry goes to: those recorded at its first admission, else decided now by
    central's routes (download_name without routes) and recorded, so a rule changed later applies to
    new entries only."""
    known = dests.rows(state, entry.id)
    if known:
        return list(known)
    if cfg.routes:
        meta = loads(state.metadata(entry.id))
        to = routes.destinations(cfg.routes, entry.peer or "", entry.name, meta)
    else:
        to = [cfg.download_name]
    dests.route(state, entry.id, to)
    return to


def ask_to_fetch(
    state: State, cfg: Config, entry: Entry, fetch: Fetch, send: Callable[[str, Message], None]
) -> list[str]:
    """Send `fetch` to every destination that has not proved a copy yet (each its own queue) and mark
    their rows; the names asked."""
    asked = []
    for dest, row in dests.of(state, entry.id, cfg.download_name).items():
        if row.state in dests.ENDED:
            continue
        send(dest, fetch)
        dests.mark(state, entry.id, dest, dests.FETCHING)
        asked.append(dest)
    return asked
