"""`synkler status`: this agent's entries, from its state database (read-only), as a table or JSON.
`--relay` shows the whole relay through the broker (synkler.cli.relay)."""

from __future__ import annotations

import argparse
import json
import sys

from .. import bundles
from .. import destinations as dests
from ..agents import AGENTS, FACTS
from ..config import Config
from ..errors import ExitStatus
from ..metadata import Metadata, entry_metadata
from ..private import exposed_secrets
from ..state import Entry, State
from ..text import shown, some_entries
from .entries import agent_state, iso, newest, present, short_ids


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    for problem in exposed_secrets(cfg.secret_files):
        print(f"synkler: warning: {shown(problem)}", file=sys.stderr)
    if args.relay or args.watch:
        from .relay import cmd_relay

        return cmd_relay(cfg, as_json=args.json, watch=args.watch, all_finished=args.all)

    cfg = agent_state(cfg)
    entries, latest, signed, metas, rows, members = _read(cfg, args)
    agent = AGENTS[cfg.mode]
    actions = {e.id: agent.actions(e, latest[e.name] == e.id, present=present(cfg, e)) for e in entries}
    if args.json:
        print(
            json.dumps(
                [
                    _row(e, actions[e.id], signed.get(e.id, {}), metas.get(e.id, {}))
                    | _where(rows[e.id])
                    | _members(members.get(e.id))
                    for e in entries
                ],
                indent=2,
            )
        )
    elif not entries:
        print(f"no entries ({cfg.mode} agent, state {cfg.state_db})")
    else:
        shown_rows = {i: r for i, r in rows.items() if len(r) > 1 or set(r) - {cfg.download_name}}
        _print_table(entries, actions, shown_rows, members)
    return ExitStatus.OK


def _read(
    cfg: Config, args: argparse.Namespace
) -> tuple[
    list[Entry], dict[str, str], dict[str, dict[str, str]], dict[str, Metadata], dict[str, Rows], Members
]:
    """The entries to show, per name the id of its newest version, with --json each entry's
    receipts (synkler.receipts) by destination and its metadata (synkler.metadata), each entry's
    rows per destination (synkler.destinations), and each bundle's members (synkler.bundles)."""
    hidden = hidden_open = 0
    signed: dict[str, dict[str, str]] = {}
    metas: dict[str, Metadata] = {}
    state = State(cfg.state_db, readonly=True)
    try:
        if args.all:
            entries = state.all()
            latest = newest(entries)
        else:
            entries, hidden, hidden_open = _status_entries(cfg, state, args.last, args.open)
            latest = _latest_versions(state, entries)
        if args.json:
            signed = {e.id: state.receipts(e.id) for e in entries}
            metas = {e.id: entry_metadata(state.metadata(e.id)) for e in entries}
        rows = {e.id: dests.rows(state, e.id) for e in entries}
        members = {e.id: bundles.of(state, e.id) for e in entries if e.kind == bundles.KIND}
    finally:
        state.close()
    # On stderr: the table or JSON on stdout stays what it was for a reader.
    if hidden_open:
        print(
            f"({hidden_open} more entries on their way not shown, the newest: `synkler status --open N` "
            "shows the N oldest of each kind)",
            file=sys.stderr,
        )
    if hidden:
        print(
            f"({hidden} older finished entries not shown: `synkler status --all` lists every entry)",
            file=sys.stderr,
        )
    return entries, latest, signed, metas, rows, members


Rows = dict[str, dests.Row]  # an entry's rows per destination
Members = dict[str, list[bundles.Member]]  # a bundle's members, by the bundle's entry id


def _members(found: list[bundles.Member] | None) -> dict[str, object]:
    """--json: a bundle's files, each with its md5, the name it took at download and its cleanup."""
    if found is None:
        return {}
    return {
        "members": [
            {
                "name": m.name,
                "size": m.size,
                "md5": m.md5 or "",
                "stored_as": m.stored_as,
                "placed": ("no", "placed", "present")[m.placed] if m.placed in (0, 1, 2) else m.placed,
                "cleanup": m.cleanup,
                "reason": m.reason,
            }
            for m in found
        ]
    }


def _bundle_note(found: list[bundles.Member]) -> str:
    """The table's note of a bundle: its files, the first few named."""
    return f"bundle of {some_entries([m.name for m in found], noun='file')}"


def _where(rows: dict[str, dests.Row]) -> dict[str, object]:
    """--json: where the entry stands at each of its destinations (none: download_name only)."""
    return {"destinations": {d: {"state": r.state, "stored_as": r.stored_as} for d, r in rows.items()}}


def _at(rows: dict[str, dests.Row]) -> str:
    return "to " + ", ".join(f"{d} {r.state}" for d, r in rows.items())


def _row(e: Entry, actions: list[str], signed: dict[str, str], meta: Metadata) -> dict:
    row = e.as_dict()
    row["md5"] = e.md5 or ""  # as the column holds it: "" until it is known
    row["updated"] = iso(e.updated)
    row["created"] = iso(e.created)
    row["actions"] = actions
    row["receipts"] = signed
    row["metadata"] = meta
    return row


def _print_table(
    entries: list[Entry],
    actions: dict[str, list[str]],
    rows: dict[str, dict[str, dests.Row]],
    members: Members,
) -> None:
    header = ("ID", "NAME", "SIZE", "MD5", "STATE", "UPDATED", "ACTIONS", "NOTE")
    table = [header]
    short = short_ids([e.id for e in entries])
    for e in entries:
        note = e.reason or (f"as {shown(e.stored_as)}" if e.stored_as and e.stored_as != e.name else "")
        if e.cleanup in ("failed", "interrupted", "skipped"):
            note = f"cleanup {e.cleanup}" + (f": {note}" if note else "")
        if e.id in rows:  # several destinations: where it stands at each
            note = _at(rows[e.id]) + (f"; {note}" if note else "")
        if e.id in members:
            note = _bundle_note(members[e.id]) + (f"; {note}" if note else "")
        # A reason may come from a peer's message: shown escaped, like a name.
        table.append(
            (
                short[e.id],
                shown(e.name),
                str(e.size),
                e.md5 or "-",
                e.state,
                iso(e.updated, sep=" "),
                ",".join(actions[e.id]) or "-",
                shown(note),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1])


def _status_entries(cfg: Config, state: State, last: int, first: int) -> tuple[list[Entry], int, int]:
    """What `status` shows without --all, oldest first, how many finished entries it leaves out and
    how many on their way: the `first` oldest entries on their way, and as many of the failed ones
    (a person must look at those), every one whose cleanup script failed or was interrupted, and the
    `last` most recently finished. Read through indexes: as quick with a million entries (or 100,000
    on their way) as with a hundred."""
    finished = {str(s) for s in AGENTS[cfg.mode].FINISHED}
    failed = FACTS[cfg.mode].failed
    counts = state.counts()
    open_states = [s for s in counts if s not in finished]
    listed: dict[str, Entry] = {}
    for group in ([s for s in open_states if s == failed], [s for s in open_states if s != failed]):
        if group:
            listed.update((e.id, e) for e in state.listed(group, limit=max(0, first)))
    hidden_open = sum(counts[s] for s in open_states) - len(listed)
    listed.update((e.id, e) for e in state.cleanups_needing_a_person())
    for e in state.listed([s for s in counts if s in finished], latest=True, limit=max(0, last)):
        listed.setdefault(e.id, e)
    hidden = sum(counts.values()) - len(listed) - hidden_open
    return sorted(listed.values(), key=lambda e: e.created), hidden, hidden_open


def _latest_versions(state: State, entries: list[Entry]) -> dict[str, str]:
    """Name -> the id of its newest version, of the names of `entries`, wherever that version is."""
    latest = {name: state.latest_by_name(name) for name in {e.name for e in entries}}
    return {name: e.id for name, e in latest.items() if e is not None}
