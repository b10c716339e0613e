"""Command line: argument parsing, logging set-up, exit codes, one top-level error handler."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..service import logs
from ..errors import BrokerError, ConfigError, ExitStatus, Refused, StateError, SynklerError

if TYPE_CHECKING:  # annotations only: main() imports the config module when a command needs it
    from ..agents.base import Agent
    from ..config import Config
    from ..state import Entry, State

log = logging.getLogger("synkler")

STATUS_LAST = 50  # finished entries `status` shows besides those on their way (--all: every one)
REQUEST_WAIT = 30.0  # seconds the retry, forget and resend commands wait for the agent's answer
POLL = 0.1  # seconds between looks for that answer


# Each command's --help ends with examples; global options are shown there too.
EXAMPLES = {
    "": """\
examples:
  synkler -c /etc/synkler.conf -v            run this host's agent (run is the default command)
  synkler -c /etc/synkler.conf status        what this agent has seen and where each entry is
  synkler config migrate old.conf -o new.conf  convert a synkler 0.0.x configuration

Global options (-c, -v, --debug) go before or after the command: `synkler status -c FILE` works.""",
    "run": """\
examples:
  synkler -c /etc/synkler.conf run -v
  synkler -c /etc/synkler.conf run --daemon    detached; log in log_file, reopened on SIGHUP
  * * * * * /opt/synkler/bin/synkler -c /etc/synkler.conf >> /var/log/synkler/synkler.log 2>&1

A second start on the same configuration finds the agent running and exits 0 at once (cron).""",
    "status": """\
examples:
  synkler status -c /etc/synkler.conf
  synkler status -c /etc/synkler.conf
  synkler status -c /etc/synkler.conf --all --json | jq '.[] | select(.state == "failed")'
  synkler status --relay                  all agents and entries of the relay, through the broker
  synkler status --relay --watch          the same, redrawn every 2 s until Ctrl-C
  synkler status --relay --json | jq .verdict

Without --relay: every entry on its way, failed or with a failed cleanup script, and the most
recently finished ones (--last); --all shows every entry the history keeps (keep_history_days).""",
    "check": """\
examples:
  synkler check -c /etc/synkler.conf      one line per check; exits 1 if one says FAIL""",
    "retry": """\
examples:
  synkler retry -c /etc/synkler.conf 3f2c81d0     a failed entry (its id or a start of it), or its cleanup
  synkler retry -c /etc/synkler.conf run42.csv    by name, where one entry of that name can be retried

Upload sends a failed entry again as a new entry, download pulls it again from central's copy.""",
    "forget": """\
examples:
  synkler forget -c /etc/synkler.conf 3f2c81d0    end a stuck or failed entry at every role""",
    "resend": """\
examples:
  synkler resend -c /etc/synkler.conf run42.csv   send the newest version of run42.csv again, unchanged""",
    "demo": """\
examples:
  synkler demo                 relay generated files through all three roles on this machine
  synkler demo --keep -v       keep the demo's directory and show the agents' log lines""",
    "config": """\
examples:
  synkler config migrate /etc/synkler.conf.0.0 -o /etc/synkler.conf""",
    "config migrate": """\
examples:
  synkler config migrate ~/synkler.conf                      print the YAML version
  synkler config migrate /etc/synkler.conf.0.0 -o /etc/synkler.conf

Reads a synkler 0.0.x configuration (INI, a [default] section) and writes the same settings in
YAML, with comments saying what changed in meaning. An existing output file is not overwritten.""",
    "broker-setup": """\
examples:
  synkler broker-setup -c /etc/synkler.conf --upload lab-a --upload lab-b
  (umask 077; synkler broker-setup -c central.conf --upload lab-a > broker-setup.sh)

Prints the rabbitmqctl commands that make one broker user per agent (<name>@<id>), each with a new
random password and the least permissions it needs, and which settings each agent's configuration
then needs (authenticate: true, broker_username, broker_password). The output holds the passwords:
keep it private. See docs/security.md.""",
    "keygen": """\
examples:
  synkler keygen /etc/synkler/receipt.key             on download: write the key, print the config lines
  synkler keygen --public /etc/synkler/receipt.key    print its public key again

The private key (0600, never overwritten) goes into download's config as receipt_key; the public key
it prints goes into upload's and central's configs as download_public_key. See docs/security.md.""",
    "completion": """\
examples:
  synkler completion bash > /etc/bash_completion.d/synkler
  source <(synkler completion bash)""",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' lines as written."""


def _command(
    sub: argparse._SubParsersAction, name: str, help: str, key: str | None = None
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help, description=help, epilog=EXAMPLES.get(key or name), formatter_class=_HelpFormatter
    )


def _add_global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    # Given to every command as well, with no default there, so that a value given before the
    # command is not reset by the command's parser when it is not given again after it.
    keep: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    group = p.add_argument_group("global options")
    group.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="configuration file (default: $SYNKLER_CONF, ~/synkler.conf, "
        "~/.config/synkler/synkler.conf, /etc/synkler.conf)",
        **keep,
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", help="log the life of each entry (INFO)", **keep
    )
    group.add_argument(
        "--debug",
        action="store_true",
        help="log synkler's detail, show tracebacks; --debug=pika adds pika's own log lines",
        **keep,
    )
    group.add_argument("--debug-pika", action="store_true", help=argparse.SUPPRESS, **keep)


def _add_run_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    # Before the command (`synkler --daemon`, run being the default) or after it, as the global ones.
    keep: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    group = p.add_argument_group("run options").add_mutually_exclusive_group()
    group.add_argument(
        "--daemon", action="store_true", help="run: detach, log to log_file (daemon: true)", **keep
    )
    group.add_argument(
        "--foreground", action="store_true", help="run: stay in the foreground despite daemon: true", **keep
    )


def _spread_global_options(p: argparse.ArgumentParser) -> None:
    """Give every command (and every command of a command) the global options."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(s): s for s in action.choices.values()}.values():
                if "--config" not in sub._option_string_actions:
                    _add_global_options(sub, top=False)
                _spread_global_options(sub)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="synkler",
        description="Relay files from an upload host to a download host through a central host.",
        epilog=EXAMPLES[""],
        formatter_class=_HelpFormatter,
    )
    _add_global_options(p, top=True)
    _add_run_options(p, top=True)
    p.add_argument("--version", action="version", version=f"synkler {__version__}")
    sub = p.add_subparsers(dest="command", metavar="command")
    run = _command(sub, "run", "run this host's agent (the default); in the foreground unless --daemon")
    _add_run_options(run, top=False)
    st = _command(sub, "status", "show this agent's entries")
    st.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    st.add_argument(
        "--relay",
        action="store_true",
        help="the whole relay (every agent, entry and queue), through the broker",
    )
    st.add_argument("--watch", action="store_true", help="with --relay: redraw it every 2 s until Ctrl-C")
    st.add_argument(
        "--all",
        action="store_true",
        help="every entry this agent's history keeps, not only those on their way and the newest ended "
        "(with --relay: every finished entry the agents report)",
    )
    st.add_argument(
        "--last",
        type=int,
        default=STATUS_LAST,
        metavar="N",
        help=f"how many of the most recently finished entries to show (default {STATUS_LAST})",
    )
    _command(sub, "check", "check the config, the broker and (upload/download) ssh+rsync to central")
    for action, what in (
        ("retry", "take up a failed entry again, or run its failed cleanup script again"),
        ("forget", "end an entry on its way or failed, at every role that has it"),
        ("resend", "upload: send a delivered entry's file again as a new entry, unchanged"),
    ):
        cmd = _command(sub, action, f"{what} (the running agent does it)")
        cmd.add_argument("entry", help="entry id, a unique start of it (status shows one), or the name")
        cmd.add_argument(
            "--wait",
            type=float,
            default=REQUEST_WAIT,
            metavar="SECONDS",
            help=f"how long to wait for the agent's answer (default {REQUEST_WAIT:g}; 0: do not wait)",
        )
    demo = _command(sub, "demo", "relay generated files through all three roles on this machine")
    demo.add_argument("--keep", action="store_true", help="keep the demo's directory afterwards")
    demo.add_argument(
        "--timeout", type=float, default=120, help="seconds to wait for the relay (default 120)"
    )
    config = _command(sub, "config", "work on configuration files")
    config_sub = config.add_subparsers(dest="config_command", metavar="command", required=True)
    migrate = _command(
        config_sub, "migrate", "convert a synkler 0.0.x configuration (INI) to YAML", "config migrate"
    )
    migrate.add_argument("old", metavar="OLD", help="the 0.0.x configuration file")
    migrate.add_argument(
        "-o", "--output", metavar="NEW", help="write the YAML here (default: print it); never overwrites"
    )
    setup = _command(sub, "broker-setup", "print the rabbitmqctl commands that make the relay's broker users")
    setup.add_argument(
        "--upload",
        metavar="NAME",
        action="append",
        help="an upload agent's name (repeat for each; default: this config's name if it is an upload "
        "agent's, else 'upload')",
    )
    keygen = _command(
        sub, "keygen", "download: make the key that signs delivery receipts; print its public key"
    )
    keygen.add_argument("file", metavar="FILE", help="where to write the private key (never overwritten)")
    keygen.add_argument(
        "--public", action="store_true", help="print the public key of the existing private key FILE"
    )
    completion = _command(sub, "completion", "print a shell completion script")
    completion.add_argument(
        "shell", choices=["bash"], help="the shell (bash; zsh reads it with bashcompinit)"
    )
    _spread_global_options(p)
    return p


def _split_debug(argv: Sequence[str]) -> list[str]:
    """--debug=pika is --debug plus pika's own lines (argparse has no optional value for a flag
    that may stand right before a command)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        out += ["--debug", "--debug-pika"] if arg == "--debug=pika" else [arg]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _main(sys.argv[1:] if argv is None else argv)
        finally:
            sys.stdout.flush()  # a reader gone shows here, inside the handler below, not at exit
    except BrokenPipeError:
        # `synkler check | head -1`: the reader has all it wanted. Nobody is left to tell, and
        # Python would complain about the unflushed rest at exit: send that to /dev/null.
        try:
            stdout = sys.stdout.fileno()
        except (OSError, ValueError):  # not a file (tests): nothing will be flushed into a pipe
            return ExitStatus.BROKEN_PIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout)
        os.close(devnull)
        return ExitStatus.BROKEN_PIPE


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(_split_debug(argv))
    logs.setup(verbose=args.verbose, debug=args.debug, pika=args.debug_pika)
    try:
        command = args.command or "run"
        if command == "demo":
            from ..devkit.demo import run_demo

            return run_demo(keep=args.keep, timeout=args.timeout, verbose=args.verbose or args.debug)
        if command == "config":
            return cmd_config_migrate(args)
        if command == "keygen":
            from .keygen import cmd_keygen

            return cmd_keygen(args.file, public_only=args.public)
        if command == "completion":
            print(completion_script(build_parser()), end="")
            return ExitStatus.OK
        from ..config import find_config, load_config

        cfg = load_config(find_config(args.config))
        logs.use_agent(cfg.mode, cfg.name, cfg.id, cfg.log_format)
        commands = {
            "run": cmd_run,
            "status": cmd_status,
            "check": cmd_check,
            "broker-setup": cmd_broker_setup,
        }
        return commands.get(command, cmd_request)(cfg, args)
    except SynklerError as e:
        if args.debug:
            log.exception("error")
        print(f"synkler: {logs.shown(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from ..agents import AGENTS
    from ..service.pidfile import Pidfile, read_pid
    from ..private import remember_umask, restrict_umask
    from ..runtime.loop import Runtime

    remember_umask()  # the one synkler was started with: rsync's and the cleanup scripts'
    pidfile = Pidfile(cfg.pidfile)
    if not pidfile.acquire():
        # Cron starts us every minute: a live agent is the normal case, not an error.
        log.info("already running (pid %s, pidfile %s)", read_pid(cfg.pidfile), cfg.pidfile)
        return ExitStatus.OK
    try:
        from ..service.daemonize import prepare

        # As a daemon, the launching process exits in there, once the daemon has started.
        launch = prepare(cfg, pidfile, daemon=(args.daemon or cfg.daemon) and not args.foreground)
        restrict_umask()  # what the agent creates from here on is its own (docs/operations.md)
        runtime = Runtime(cfg, AGENTS[cfg.mode])
        launch.started(runtime)
        runtime.run()
    except (OSError, StateError) as e:
        # Typically an unwritable state_db or file_dir: one line, the traceback only with --debug.
        log.debug("agent stopped", exc_info=True)
        print(f"synkler: {cfg.mode} agent cannot run: {logs.shown(str(e))}", file=sys.stderr)
        return ExitStatus.FAILURE
    finally:
        pidfile.release()
    return runtime.exit_status


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    from ..agents import AGENTS
    from ..private import exposed_secrets
    from ..state import State

    for problem in exposed_secrets(cfg.secret_files):
        print(f"synkler: warning: {logs.shown(problem)}", file=sys.stderr)
    if args.relay or args.watch:
        from ..observe.relayview import cmd_relay

        return cmd_relay(cfg, as_json=args.json, watch=args.watch, all_finished=args.all)

    hidden = 0
    entries: list[Entry] = []
    newest: dict[str, str] = {}
    signed: dict[str, dict[str, str]] = {}  # entry id -> its receipts (synkler.receipts), by destination
    if cfg.state_db.exists():
        state = State(cfg.state_db, readonly=True)
        try:
            if args.all:
                entries = state.all()
                newest = _newest(entries)
            else:
                entries, hidden = _status_entries(cfg, state, args.last)
                newest = _latest_versions(state, entries)
            if args.json:
                signed = {e.id: state.receipts(e.id) for e in entries}
        finally:
            state.close()
    if hidden:
        # On stderr: the table or JSON on stdout stays what it was for a reader.
        print(
            f"({hidden} older finished entries not shown: `synkler status --all` lists every entry)",
            file=sys.stderr,
        )
    agent = AGENTS[cfg.mode]
    actions = {e.id: agent.actions(e, newest[e.name] == e.id, present=_present(cfg, e)) for e in entries}
    if args.json:
        rows = []
        for e in entries:
            row = e.as_dict()
            row["md5"] = e.md5 or ""  # as the column holds it: "" until it is known
            row["updated"] = _iso(e.updated)
            row["created"] = _iso(e.created)
            row["actions"] = actions[e.id]
            row["receipts"] = signed.get(e.id, {})
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
        if e.cleanup in ("failed", "interrupted", "skipped"):
            note = f"cleanup {e.cleanup}" + (f": {note}" if note else "")
        # A reason may come from a peer's message: shown escaped, like a name.
        table.append(
            (
                short[e.id],
                _shown(e.name),
                str(e.size),
                e.md5 or "-",
                e.state,
                _iso(e.updated, sep=" "),
                ",".join(actions[e.id]) or "-",
                _shown(note),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1])
    return ExitStatus.OK


def _status_entries(cfg: Config, state: State, last: int) -> tuple[list[Entry], int]:
    """What `status` shows without --all, oldest first, and how many others there are: every entry
    not finished (on its way, failed), every one whose cleanup script failed or was interrupted, and
    the `last` most recently finished. Read through indexes: as quick with a million entries as with
    a hundred."""
    from ..agents import AGENTS

    finished = {str(s) for s in AGENTS[cfg.mode].FINISHED}
    counts = state.counts()
    open_states = [s for s in counts if s not in finished]
    shown = {e.id: e for e in state.by_state(*open_states)} if open_states else {}
    shown.update((e.id, e) for e in state.cleanups_needing_a_person())
    for e in state.listed([s for s in counts if s in finished], latest=True, limit=max(0, last)):
        shown.setdefault(e.id, e)
    return sorted(shown.values(), key=lambda e: e.created), sum(counts.values()) - len(shown)


def _latest_versions(state: State, entries: list[Entry]) -> dict[str, str]:
    """Name -> the id of its newest version, of the names of `entries`, wherever that version is."""
    latest = {name: state.latest_by_name(name) for name in {e.name for e in entries}}
    return {name: e.id for name, e in latest.items() if e is not None}


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
    from ..agents import AGENTS
    from ..service.pidfile import holder
    from ..state import State

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
    """A name as a person can read it on any terminal: bytes that are not UTF-8 as \\xNN, controls escaped."""
    return logs.shown(name)


def _iso(ts: float, sep: str = "T") -> str:
    return datetime.datetime.fromtimestamp(ts).astimezone().isoformat(sep=sep, timespec="seconds")


def cmd_check(cfg: Config, args: argparse.Namespace) -> int:
    from . import checks
    from ..broker.amqp import Broker, BrokerParams
    from ..hops import transfer
    from ..linux.fs import free_bytes, total_bytes
    from ..private import exposed_secrets

    lines: list[checks.Line] = []
    central_report: dict | None = None

    def say(line: checks.Line | None) -> None:
        if line is not None:
            lines.append(line)
            print(checks.show(line), flush=True)

    say((checks.OK, f"config {cfg.path} ({cfg.mode}, id {cfg.id})"))
    for problem in exposed_secrets(cfg.secret_files):  # reported, not failed: the relay works
        say((checks.WARN, logs.shown(problem)))
    for line in checks.ignored_lines(cfg):
        say(line)
    say(checks.receipts_line(cfg))
    broker = Broker(BrokerParams.from_config(cfg), cfg.id, cfg.name)
    try:
        broker.connect(consume=False)
        say(
            (
                checks.OK,
                f"broker {cfg.synkler_server}:{cfg.broker_port} vhost {cfg.broker_vhost}{_tls_note(cfg)}",
            )
        )
        if cfg.authenticate:
            say((checks.OK, f"messages authenticated: this agent publishes as {cfg.broker_username}"))
        else:
            say(
                (
                    checks.WARN,
                    "messages are not authenticated (authenticate: false): anyone who can publish "
                    "to the broker can make this agent act (docs/security.md)",
                )
            )
        uploads, outbox = _own_peers(cfg)
        for peer in checks.peers_of(cfg, uploads):
            report = checks.parse_report(broker.peek_presence(peer))
            if peer == "central":
                central_report = report
            say(checks.peer_line(cfg.id, peer, broker.queue_info(peer), report, outbox.get(peer, 0)))
    except BrokerError as e:
        say((checks.FAIL, f"broker: {e}"))
    finally:
        broker.close()
    if cfg.mode in ("upload", "download"):
        try:
            transfer.rsync_protection(tuple(cfg.rsync))
        except transfer.RsyncTooOld as e:
            say((checks.FAIL, f"rsync: {e}"))
        result = transfer.probe(cfg)
        if result.ok:
            say((checks.OK, f"ssh + rsync to central {cfg.central_host}"))
            say(_place_line(cfg, central_report))
        else:
            say((checks.FAIL, f"ssh + rsync to central {cfg.central_host}: {result.summary()}"))
    say(checks.cleanup_line(cfg, os.environ.get("PATH")))
    for line in checks.files_lines(cfg):
        say(line)
    free = free_bytes(cfg.file_dir)
    if cfg.mode == "central":
        say(checks.reserve_line(cfg.file_dir, free, total_bytes(cfg.file_dir), cfg.free_percent))
    else:
        say((checks.OK, f"file_dir {cfg.file_dir} ({free / 1e9:.1f} GB free)"))
    failed = any(level == checks.FAIL for level, _ in lines)
    return ExitStatus.FAILURE if failed else ExitStatus.OK


def _place_line(cfg: Config, central: dict | None) -> tuple[str, str]:
    """Upload writes a file into its staging at central and removes it; download lists central's
    store: over ssh, as the transfers do. Where those are, central's presence report says."""
    from . import checks
    from ..hops import transfer
    from ..messages import confined

    place = central.get("place") if central else None
    if not isinstance(place, str) or not confined(place, cfg.id):
        return (checks.WARN, "central's directory not tried over ssh: central has not reported where it is")
    if cfg.mode == "upload":
        where = f"{place}/staging/{cfg.name}"
        result, what = transfer.probe_write(cfg, where), "write into"
    else:
        where = f"{place}/stored"
        result, what = transfer.probe_read(cfg, where), "read"
    if result.ok:
        return (checks.OK, f"{what} central's {logs.shown(where)} over ssh")
    return (checks.FAIL, f"cannot {what} central's {logs.shown(where)} over ssh: {result.summary()}")


def _own_peers(cfg: Config) -> tuple[list[str], dict[str, int]]:
    """From this agent's state database, read-only (absent before the first run): the upload
    agents central has had entries from, and the messages waiting in the outbox per destination."""
    from ..state import State

    if not cfg.state_db.exists():
        return [], {}
    try:
        state = State(cfg.state_db, readonly=True)
    except StateError:
        return [], {}
    try:
        uploads = state.peers(64) if cfg.mode == "central" else []
        return uploads, state.outbox_counts()
    except StateError:
        return [], {}
    finally:
        state.close()


def _tls_note(cfg: Config) -> str:
    """How `check` connected: plain, or TLS verified against what, logged in how."""
    if not cfg.broker_tls:
        return " (plain AMQP, no TLS)"
    ca = cfg.broker_ca_file or "the system's CAs"
    name = cfg.broker_tls_server_name or cfg.synkler_server
    login = "EXTERNAL login (client certificate)" if cfg.broker_login == "external" else "password login"
    cert = f", client certificate {cfg.broker_cert_file}" if cfg.broker_cert_file else ""
    return f" (TLS: certificate for {name} verified against {ca}{cert}; {login})"


def cmd_broker_setup(cfg: Config, args: argparse.Namespace) -> int:
    import secrets

    from ..broker.amqp import broker_user
    from ..broker.users import commands

    uploads = args.upload or [cfg.name if cfg.mode == "upload" else "upload"]
    names = ["central", "download", *uploads]
    passwords = {broker_user(cfg.id, n): secrets.token_urlsafe(24) for n in names}
    print(f"# broker users of synkler instance {cfg.id!r} on vhost {cfg.broker_vhost!r}")
    print("# This holds new passwords: keep it private, run it on the broker's host, then delete it.")
    for argv in commands(cfg.id, uploads, vhost=cfg.broker_vhost, passwords=passwords):
        print(shlex.join(["rabbitmqctl", *argv]))
    print("#\n# Then, in each agent's synkler.conf (or broker_password_file):")
    for user, password in passwords.items():
        name = user.split("@")[0]
        print(f"#   {name}: authenticate: true, broker_username: {user}, broker_password: {password}")
    return ExitStatus.OK


def cmd_config_migrate(args: argparse.Namespace) -> int:
    """Print or write the YAML equivalent of a synkler 0.0.x configuration."""
    import yaml

    from ..config import _parse_yaml, looks_like_ini, parse_config
    from .migrate import migrate

    old = Path(args.old)
    try:
        raw = old.read_bytes()
    except OSError as e:
        raise ConfigError(old, None, f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            old, None, "not UTF-8 text; save it as UTF-8 first, e.g. iconv -f latin1 -t utf-8 OLD > OLD.utf8"
        ) from None
    if not looks_like_ini(text):
        try:
            data = _parse_yaml(text, old)
        except ConfigError:
            data = None
        if isinstance(data, dict):
            raise ConfigError(old, None, "already a YAML configuration: nothing to migrate")
    result = migrate(text, old)
    for warning in result.warnings:
        print(f"synkler: {logs.shown(str(old))}: {logs.shown(warning)}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(result.text)
        target = None
    else:
        target = Path(args.output)
        _write_new(target, result.text)
        print(
            f"synkler: wrote {logs.shown(str(target))}; check it, then start the agent with -c",
            file=sys.stderr,
        )
    try:  # the result must load (file_dir may live on another host: not looked at here)
        parse_config(yaml.safe_load(result.text), target or old, check_dirs=False)
    except ConfigError as e:
        print(f"synkler: the result does not load yet: {logs.shown(e.problem)} ({e.key})", file=sys.stderr)
        return ExitStatus.CONFIG
    return ExitStatus.OK


def _write_new(path: Path, text: str) -> None:
    """Write a file that must not exist yet, whole or not at all."""
    if os.path.lexists(path):
        raise SynklerError(f"{path}: exists; choose another name or move it aside (it is never overwritten)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # unlike a rename, fails if the name was taken meanwhile
    except FileExistsError:
        raise SynklerError(f"{path}: exists; choose another name or move it aside") from None
    except OSError as e:
        raise SynklerError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def completion_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion function for synkler, made from the parser (so it never lags behind)."""
    words: dict[str, list[str]] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        options = [s for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings]
        subs: list[str] = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    subs.append(name)
                    walk(sub, f"{path} {name}".strip())
        words[path] = subs + options

    walk(parser, "")
    cases = "\n".join(f'        "{path}") words="{" ".join(w)}" ;;' for path, w in sorted(words.items()))
    return f"""# bash completion for synkler (from: synkler completion bash)
_synkler() {{
    local cur prev path="" word i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        -c|--config|-o|--output) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in
            -c|--config|-o|--output) ((i++)) ;;
            -*) ;;
            *) case " {" ".join(sorted(p for p in words if p))} " in
                   *" ${{path:+$path }}$word "*) path="${{path:+$path }}$word" ;;
                   *) ;;
               esac ;;
        esac
    done
    local words
    case "$path" in
{cases}
    esac
    if [[ $cur != -* && $path == "config migrate" ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
}}
complete -F _synkler synkler
"""
