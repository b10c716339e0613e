"""`synkler verify`: delivered data checked again against its receipts (docs/running.md, "Receipts
and synkler verify").

On download: every receipt document kept in receipt_dir (or those of one entry, or of a date range)
is checked — its signature with download's own key, its listing, and the delivered copy in file_dir
at the depth asked for: `fast` (the number of files and their bytes, from lstat), `complete` (every
file present with its kind and size, nothing extra), `full` (every file's md5 and second hash read
again). On upload, whose data may be cleaned up: the copies it keeps of download's documents, their
signatures with download's pinned key, and that they are about what upload sent. One line per entry
that differs, a summary, exit 1 on any difference; `--notify` sends the result through the alert
channels (cron).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .. import bundles, receipts
from ..agents.naming import BAGIT
from ..config import Config
from ..errors import ConfigError, ExitStatus
from ..hops import audit, receiptfiles
from ..observe import alerts, channels
from ..text import shown

DEPTHS = ("fast", "complete", "full")


def parse_when(text: str, *, end: bool) -> float:
    """A date (YYYY-MM-DD: its start, or with `end` its end) or an ISO date and time, local time."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            None, None, f"{text!r} is not a date (YYYY-MM-DD) or an ISO date and time"
        ) from None
    if end and len(text) <= 10:
        when += datetime.timedelta(days=1)
        return when.timestamp() - 1e-6
    return when.timestamp()


def chosen(cfg: Config, args: argparse.Namespace) -> Iterator[Path]:
    """The documents asked for: one entry's (id, a start of it, or a name), or all, by month."""
    paths = receiptfiles.every(cfg.receipt_dir)
    if args.entry and len(args.entry) == 32 and all(c in "0123456789abcdef" for c in args.entry):
        yield from receiptfiles.find(cfg.receipt_dir, args.entry)
        return
    yield from paths


def _keys(cfg: Config) -> dict[str, receipts.PublicKey]:
    """The keys documents are checked with: download's own (under ""), or at upload the pinned key of
    each destination (download_public_key, a single key being download_name's)."""
    if cfg.mode == "download" and cfg.receipt_key is not None:
        try:
            return {"": receipts.public_of(receipts.load_private_key(cfg.receipt_key))}
        except (OSError, ValueError) as e:
            raise ConfigError(cfg.path, "receipt_key", f"{cfg.receipt_key}: {e}") from None
    keys = cfg.download_keys() if cfg.mode == "upload" else {}
    return {dest: receipts.load_public_key(text) for dest, text in keys.items()}


def key_for(
    keys: dict[str, receipts.PublicKey], verdict: audit.Verdict
) -> tuple[receipts.PublicKey | None, str | None]:
    """(the key a document is checked with, or why there is none): its destination's; a single key
    (download's own, or upload's one pinned key) checks every document, as before routes."""
    if len(keys) == 1:
        return next(iter(keys.values())), None
    if not keys or verdict.destination in keys:
        return keys.get(verdict.destination), None
    where = verdict.destination or "a destination it does not name"
    return None, f"download_public_key pins no key for {where}: its signature cannot be checked"


def _wanted(verdict: audit.Verdict, args: argparse.Namespace, since: float, until: float) -> bool:
    if args.entry and not (
        verdict.entry.startswith(args.entry) or verdict.name == args.entry or verdict.path.stem == args.entry
    ):
        return False
    return since <= verdict.delivered_at <= until


def verify_all(cfg: Config, args: argparse.Namespace) -> tuple[list[audit.Verdict], list[audit.Verdict]]:
    """(every verdict, those with problems)."""
    since = parse_when(args.since, end=False) if args.since else 0.0
    until = parse_when(args.until, end=True) if args.until else float("inf")
    keys = _keys(cfg)
    checked: list[audit.Verdict] = []
    places = MemberPlaces(cfg)
    for path in chosen(cfg, args):
        kept, verdict = audit.load(path)
        if kept is not None and not _wanted(verdict, args, since, until):
            continue
        key, missing = key_for(keys, verdict)
        if missing and kept is not None and kept.get("receipt") is not None:
            verdict.problems.append(missing)
        if kept is not None:
            audit.signature(kept, key, verdict)
            if cfg.mode == "download" and kept.get("receipt") is not None and not verdict.problems:
                members = places.of(verdict.entry) if kept["receipt"].get("kind") == bundles.KIND else None
                bagit = cfg.layout == BAGIT
                audit.at_download(kept, cfg.file_dir, args.depth, verdict, members, bagit=bagit)
            elif cfg.mode == "upload":
                audit.at_upload(kept, verdict)
        checked.append(verdict)
    if cfg.mode == "upload" and not args.entry and cfg.state_db.exists():
        checked += unheld(cfg, {(v.entry, v.destination) for v in checked}, since, until)
    return checked, [v for v in checked if not v.ok]


class MemberPlaces:
    """Download: where each file of a bundle was placed (`stored_as` in its members table), read
    from the state database when a bundle's document is checked."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def of(self, entry_id: str) -> dict[bytes, bytes]:
        from ..state import State

        if not self.cfg.state_db.exists():
            return {}
        state = State(self.cfg.state_db, readonly=True)
        try:
            return {
                os.fsencode(m.name): os.fsencode(m.stored_as)
                for m in bundles.of(state, entry_id)
                if m.stored_as
            }
        finally:
            state.close()


def unheld(cfg: Config, held: set[tuple[str, str]], since: float, until: float) -> list[audit.Verdict]:
    """Upload: the entries its history says were delivered with a download's signed receipt (in the
    selected range) whose receipt document it does not hold, one per destination that signed one."""
    from ..agents.upload import Up
    from ..state import State

    state = State(cfg.state_db, readonly=True)
    try:
        missing = []
        entries = {entry for entry, _ in held}
        for e in state.by_state(Up.DELIVERED, Up.DONE):
            signed = state.receipts(e.id)  # destination -> its signed receipt
            if not since <= e.updated <= until or not signed or (len(signed) == 1 and e.id in entries):
                continue  # (one destination: its document, whatever name it gives it)
            for dest in sorted(d for d in signed if (e.id, d) not in held):
                verdict = audit.Verdict(
                    cfg.receipt_dir, entry=e.id, name=e.name, delivered_at=e.updated, destination=dest
                )
                verdict.problems.append(
                    f"delivered with {dest}'s signed receipt, but no receipt document is kept"
                )
                missing.append(verdict)
        return missing
    finally:
        state.close()


def cmd_verify(cfg: Config, args: argparse.Namespace) -> int:
    if cfg.mode == "central":
        raise ConfigError(cfg.path, "mode", "verify runs on download (the data) or upload (its receipts)")
    checked, bad = verify_all(cfg, args)
    for verdict in bad:
        to = f", to {verdict.destination}" if verdict.destination and cfg.mode == "upload" else ""
        label = shown(str(verdict.path))
        if verdict.entry:
            label = f"{shown(verdict.name)} (entry {verdict.entry}{to})"
        for problem in verdict.problems:
            print(f"FAIL {label}: {shown(problem)}")
    what = "the data against its receipts" if cfg.mode == "download" else "the receipts kept"
    depth = f" at depth {args.depth}" if cfg.mode == "download" else ""
    summary = (
        f"verify: {len(checked)} entries checked ({what}{depth}): "
        f"{len(checked) - len(bad)} ok, {len(bad)} with differences"
    )
    if args.entry and not checked:
        summary = f"verify: no receipt of {shown(args.entry)} in {shown(str(cfg.receipt_dir))}"
    print(summary, flush=True)
    failed = bool(bad) or (args.entry and not checked)
    if args.notify and (failed or args.notify == "always"):
        _notify(cfg, summary, bad, failed)
    return ExitStatus.FAILURE if failed else ExitStatus.OK


def _notify(cfg: Config, summary: str, bad: list[audit.Verdict], failed: bool) -> None:
    """The result as one notice on each alert channel (docs/notices.md)."""
    configured = cfg.alerts.channels if cfg.alerts else {}
    if not configured:
        print(f"verify: --notify, but {shown(str(cfg.path))} has no alert channel", file=sys.stderr)
        return
    details = {
        f"{v.name} ({v.entry})" if v.entry else str(v.path): "; ".join(v.problems)[:500]
        for v in bad[: alerts.LISTED]
    }
    condition = alerts.Condition(
        key="verify",
        severity=alerts.ERROR if failed else alerts.WARNING,
        summary=shown(summary),
        todo=(
            "Look at each entry named (docs/runbook.md, 'verify reports a difference')."
            if failed
            else "Nothing: every delivery checked agrees with its receipt."
        ),
        details=details,
    )
    now = time.time()
    msg = alerts.message([alerts.notice(condition, "started", now, now)], alerts.sender(cfg, cfg.mode), now)
    for name, channel in configured.items():
        try:
            channels.deliver(channel, msg)
        except channels.NoticeError as e:
            print(f"verify: the notice did not go out on {shown(name)}: {shown(str(e))}", file=sys.stderr)
