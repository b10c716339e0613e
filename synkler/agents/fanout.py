"""Central's side of fan-out: an entry's destinations, frozen at its first admission, and the
`fetch` each of them is asked for (synkler.destinations keeps the rows; synkler.routes decides)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .. import destinations as dests
from .. import routes
from ..messages import Fetch
from ..metadata import loads

if TYPE_CHECKING:
    from ..config import Config
    from ..messages import Message
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


def bundle_refusal(cfg: Config) -> str | None:
    """Why central cannot take a bundle (synkler.bundles): a rule of its routes chooses by name, and
    a bundle's name says nothing of its files' (the offer does not list them). None: it can (no
    routes, or rules by upload agent and metadata only, which a bundle's files match as one: they
    come from one upload and have no metadata)."""
    by_name = [r for r in cfg.routes if r.name is not None]
    if not by_name:
        return None
    return (
        f"central routes entries by name (a rule with name: {by_name[0].name!r}), which a bundle's name "
        "does not tell: its files go one by one (set bundle_files: 0 at upload to skip this round)"
    )


def unknown(cfg: Config, to: tuple[str, ...]) -> str | None:
    """Why central refuses an offer's `to` (an operator's `synkler resend --to` at upload, recorded
    as the entry's destinations in place of the routes'): it names a download central does not send
    to. None: it may."""
    strangers = [d for d in to if d not in cfg.destinations]
    if not strangers:
        return None
    return (
        f"sent again to {', '.join(strangers)}, which central does not send to "
        f"(its destinations: {', '.join(cfg.destinations)})"
    )


def fetch_of(state: State, central: str, entry: Entry, *, again: str = "") -> Fetch:
    """The `fetch` of a stored entry (`again`: why central asks a destination that failed again)."""
    return Fetch(
        entry.id,
        central,
        name=entry.name,
        kind=entry.kind,
        size=entry.size,
        files=entry.files,
        md5=entry.known_md5(),
        attempt=entry.attempt,  # grows when central had to get the entry again
        path=entry.path or "",
        meta=loads(state.metadata(entry.id)),
        checksum=state.checksum(entry.id),
        again=again,
        source=entry.peer or "",  # the upload agent: download's subdir_per_upload
    )


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
