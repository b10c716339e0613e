"""Command line: argument parsing, logging set-up, exit codes, one top-level error handler."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .errors import BrokerError, ExitStatus, StateError, SynklerError

if TYPE_CHECKING:  # annotations only: main() imports the config module when a command needs it
    from .config import Config

log = logging.getLogger("synkler")


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
    fg = p.add_mutually_exclusive_group()
    fg.add_argument("--daemon", action="store_true", help="run: detach and log to log_file (as daemon: true)")
    fg.add_argument(
        "--foreground", action="store_true", help="run: stay in the foreground despite daemon: true"
    )
    sub = p.add_subparsers(dest="command", metavar="command")
    sub.add_parser("run", help="run this host's agent (the default); in the foreground unless --daemon")
    st = sub.add_parser("status", help="show this agent's entries")
    st.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    sub.add_parser("check", help="check the config, the broker and (upload/download) ssh+rsync to central")
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
        return {"run": cmd_run, "status": cmd_status, "check": cmd_check}[command](cfg, args)
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
        from .daemonize import prepare

        # As a daemon, the launching process exits in there, once the daemon has started.
        launch = prepare(cfg, pidfile, daemon=(args.daemon or cfg.daemon) and not args.foreground)
        runtime = Runtime(cfg, AGENTS[cfg.mode])
        launch.started(runtime)
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
    from .state import State

    if not cfg.state_db.exists():
        entries = []
    else:
        state = State(cfg.state_db, readonly=True)
        try:
            entries = state.all()
        finally:
            state.close()
    if args.json:
        rows = []
        for e in entries:
            row = e.as_dict()
            row["md5"] = e.md5 or ""  # as the column holds it: "" until it is known
            row["updated"] = _iso(e.updated)
            row["created"] = _iso(e.created)
            rows.append(row)
        print(json.dumps(rows, indent=2))
        return ExitStatus.OK
    if not entries:
        print(f"no entries ({cfg.mode} agent, state {cfg.state_db})")
        return ExitStatus.OK
    header = ("NAME", "SIZE", "MD5", "STATE", "UPDATED", "NOTE")
    table = [header]
    for e in entries:
        note = e.reason or (f"as {_shown(e.stored_as)}" if e.stored_as and e.stored_as != e.name else "")
        if e.cleanup in ("failed", "interrupted"):
            note = f"cleanup {e.cleanup}" + (f": {note}" if note else "")
        table.append((_shown(e.name), str(e.size), e.md5 or "-", e.state, _iso(e.updated, sep=" "), note))
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1])
    return ExitStatus.OK


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
