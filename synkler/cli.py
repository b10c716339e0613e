"""Command line: argument parsing, logging set-up, exit codes, one top-level error handler."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .errors import BrokerError, ExitStatus, Refused, StateError, SynklerError

if TYPE_CHECKING:  # annotations only: main() imports the config module when a command needs it
    from .agents.base import Agent
    from .config import Config
    from .state import Entry

log = logging.getLogger("synkler")

REQUEST_WAIT = 30.0  # seconds the retry, forget and resend commands wait for the agent's answer
POLL = 0.1  # seconds between looks for that answer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="synkler",
        description="Relay files from an upload host to a download host through a central host.",
    )
    p.add_argument(
        "-c",
        "--config",
        help="configuration file (default: $SYNKLER_CONF, ~/synkler.conf, "
        "~/.config/synkler/synkler.conf, /etc/synkler.conf)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (INFO)")
    p.add_argument("--debug", action="store_true", help="log everything, show tracebacks")
    p.add_argument("--version", action="version", version=f"synkler {__version__}")
    sub = p.add_subparsers(dest="command", metavar="command")
    sub.add_parser("run", help="run this host's agent in the foreground (the default)")
    st = sub.add_parser("status", help="show this agent's entries")
    st.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    sub.add_parser("check", help="check the config, the broker and (upload/download) ssh+rsync to central")
    for action, what in (
        ("retry", "take up a failed entry again, or run its failed cleanup script again"),
        ("forget", "end an entry on its way or failed, at every role that has it"),
        ("resend", "upload: send an entry's file again as a new entry, unchanged"),
    ):
        cmd = sub.add_parser(action, help=f"{what} (the running agent does it)")
        cmd.add_argument("entry", help="entry id, a unique start of it (status shows one), or the name")
        cmd.add_argument(
            "--wait",
            type=float,
            default=REQUEST_WAIT,
            metavar="SECONDS",
            help=f"how long to wait for the agent's answer (default {REQUEST_WAIT:g}; 0: do not wait)",
        )
    demo = sub.add_parser("demo", help="relay generated files through all three roles on this machine")
    demo.add_argument("--keep", action="store_true", help="keep the demo's directory afterwards")
    demo.add_argument(
        "--timeout", type=float, default=120, help="seconds to wait for the relay (default 120)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if not args.debug:
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        command = args.command or "run"
        if command == "demo":
            from .devkit.demo import run_demo

            return run_demo(keep=args.keep, timeout=args.timeout, verbose=args.verbose or args.debug)
        from .config import find_config, load_config

        cfg = load_config(find_config(args.config))
        commands = {"run": cmd_run, "status": cmd_status, "check": cmd_check}
        return commands.get(command, cmd_request)(cfg, args)
    except SynklerError as e:
        if args.debug:
            log.exception("error")
        print(f"synkler: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from .agents import AGENTS
    from .pidfile import Pidfile, read_pid
    from .runtime import Runtime

    pidfile = Pidfile(cfg.pidfile)
    if not pidfile.acquire():
        # Cron starts us every minute: a live agent is the normal case, not an error.
        log.info("already running (pid %s, pidfile %s)", read_pid(cfg.pidfile), cfg.pidfile)
        return ExitStatus.OK
    try:
        runtime = Runtime(cfg, AGENTS[cfg.mode])
        runtime.run()
    except (OSError, StateError) as e:
        # Typically an unwritable state_db or file_dir: one line, the traceback only with --debug.
        log.debug("agent stopped", exc_info=True)
        print(f"synkler: {cfg.mode} agent cannot run: {e}", file=sys.stderr)
        return ExitStatus.FAILURE
    finally:
        pidfile.release()
    return runtime.exit_status


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    from .agents import AGENTS
    from .state import State

    if not cfg.state_db.exists():
        entries = []
    else:
        state = State(cfg.state_db, readonly=True)
        try:
            entries = state.all()
        finally:
            state.close()
    agent = AGENTS[cfg.mode]
    newest = _newest(entries)
    actions = {e.id: agent.actions(e, newest[e.name] == e.id, present=_present(cfg, e)) for e in entries}
    if args.json:
        rows = []
        for e in entries:
            row = e.as_dict()
            row["md5"] = e.md5 or ""  # as the column holds it: "" until it is known
            row["updated"] = _iso(e.updated)
            row["created"] = _iso(e.created)
            row["actions"] = actions[e.id]
            rows.append(row)
        print(json.dumps(rows, indent=2))
        return ExitStatus.OK
    if not entries:
        print(f"no entries ({cfg.mode} agent, state {cfg.state_db})")
        return ExitStatus.OK
    header = ("ID", "NAME", "SIZE", "MD5", "STATE", "UPDATED", "ACTIONS", "NOTE")
    table = [header]
    short = _short_ids([e.id for e in entries])
    for e in entries:
        note = e.reason or (f"as {_shown(e.stored_as)}" if e.stored_as and e.stored_as != e.name else "")
        if e.cleanup in ("failed", "interrupted"):
            note = f"cleanup {e.cleanup}" + (f": {note}" if note else "")
        table.append(
            (
                short[e.id],
                _shown(e.name),
                str(e.size),
                e.md5 or "-",
                e.state,
                _iso(e.updated, sep=" "),
                ",".join(actions[e.id]) or "-",
                note,
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1])
    return ExitStatus.OK


def _newest(entries: list[Entry]) -> dict[str, str]:
    """Name -> the id of its newest version (entries come oldest first)."""
    return {e.name: e.id for e in entries}


def _present(cfg: Config, entry: Entry) -> bool:
    """Upload: is the entry's name in file_dir (what `retry` and `resend` would send)?"""
    return cfg.mode != "upload" or os.path.lexists(os.path.join(cfg.file_dir, entry.name))


def _short_ids(ids: list[str]) -> dict[str, str]:
    """The shortest start of every id, at least 8 digits, that tells it from every other."""
    ordered = sorted(ids)
    length = 8
    for a, b in zip(ordered, ordered[1:]):
        length = max(length, len(os.path.commonprefix([a, b])) + 1)
    return {i: i[:length] for i in ids}


def cmd_request(cfg: Config, args: argparse.Namespace) -> int:
    """retry, forget or resend: write the request into the agent's state database, for the running
    agent to take in its main loop (no broker credentials needed: who may write the state database is
    the operator), and print its answer."""
    from .agents import AGENTS
    from .pidfile import holder
    from .state import State

    action = args.command
    if not cfg.state_db.exists():
        raise Refused(f"no entry {args.entry!r}: no entries yet ({cfg.mode} agent, state {cfg.state_db})")
    state = State(cfg.state_db)
    try:
        entries = state.all()
        agent = AGENTS[cfg.mode]
        entry = _resolve(agent, action, args.entry, entries)
        what = f"{_shown(entry.name)} (entry {entry.id})"
        why = agent.refusal(
            action, entry, _newest(entries)[entry.name] == entry.id, present=_present(cfg, entry)
        )
        if why is not None:
            raise Refused(f"{what}: cannot {action}: {why}")
        with state.transaction():
            seq = state.add_request(entry.id, action)
        pid = holder(cfg.pidfile)
        if pid is None:
            print(f"the {cfg.mode} agent is not running: it will {action} {what} when it starts")
            return ExitStatus.OK
        deadline = time.monotonic() + args.wait
        while True:
            request = state.get_request(seq)
            if request is not None and request.answered is not None:
                with state.transaction():
                    state.drop_request(seq)
                if not request.ok:
                    raise Refused(request.answer or f"the agent refused to {action} {what}")
                print(request.answer)
                return ExitStatus.OK
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        if args.wait <= 0:
            print(f"asked the {cfg.mode} agent (pid {pid}) to {action} {what}; see `synkler status`")
            return ExitStatus.OK
        print(
            f"synkler: no answer from the {cfg.mode} agent (pid {pid}) within {args.wait:g} s; it will "
            f"{action} {what} when it gets to it: `synkler status` shows the outcome",
            file=sys.stderr,
        )
        return ExitStatus.FAILURE
    finally:
        state.close()


def _resolve(agent: type[Agent], action: str, ref: str, entries: list[Entry]) -> Entry:
    """The entry `ref` names: its id, a start of its id (at least 4 digits), or its name. Where a name
    or a start fits several, the one the action applies to, if only one does."""
    key = ref.lower()
    found = [
        e
        for e in entries
        if (len(key) >= 4 and e.id.startswith(key)) or e.name == ref or _shown(e.name) == ref
    ]
    if len(found) > 1:
        newest = _newest(entries)
        # (Whether the file is there does not tell versions of one name apart: not asked here.)
        fitting = [e for e in found if agent.refusal(action, e, newest[e.name] == e.id) is None]
        if len(fitting) == 1:
            return fitting[0]
        short = _short_ids([e.id for e in entries])
        listed = "; ".join(f"{short[e.id]} {_shown(e.name)} ({e.state})" for e in found[-5:])
        raise Refused(f"{ref!r} fits {len(found)} entries, give the id: {listed}")
    if not found:
        raise Refused(f"no entry {ref!r} at this {agent.mode} agent (`synkler status` lists them)")
    return found[0]


def _shown(name: str) -> str:
    """A name as a person can read it on any terminal: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _iso(ts: float, sep: str = "T") -> str:
    return datetime.datetime.fromtimestamp(ts).astimezone().isoformat(sep=sep, timespec="seconds")


def cmd_check(cfg: Config, args: argparse.Namespace) -> int:
    from .broker import Broker, BrokerParams
    from .hops import transfer
    from .linux.fs import free_bytes

    failures = 0
    print(f"ok    config {cfg.path} ({cfg.mode}, id {cfg.id})")
    broker = Broker(BrokerParams.from_config(cfg), cfg.id, cfg.name)
    try:
        broker.connect(consume=False)
        print(f"ok    broker {cfg.synkler_server}:{cfg.broker_port} vhost {cfg.broker_vhost}")
    except BrokerError as e:
        failures += 1
        print(f"FAIL  broker: {e}")
    finally:
        broker.close()
    if cfg.mode in ("upload", "download"):
        result = transfer.probe(cfg)
        if result.ok:
            print(f"ok    ssh + rsync to central {cfg.central_host}")
        else:
            failures += 1
            print(f"FAIL  ssh + rsync to central {cfg.central_host}: {result.summary()}")
    print(f"ok    file_dir {cfg.file_dir} ({free_bytes(cfg.file_dir) / 1e9:.1f} GB free)")
    return ExitStatus.FAILURE if failures else ExitStatus.OK
