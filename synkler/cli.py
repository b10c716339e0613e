"""Command line: argument parsing, logging set-up, exit codes, one top-level error handler."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, logs
from .errors import BrokerError, ConfigError, ExitStatus, StateError, SynklerError

if TYPE_CHECKING:  # annotations only: main() imports the config module when a command needs it
    from .config import Config

log = logging.getLogger("synkler")


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
  synkler status -c /etc/synkler.conf --json | jq '.[] | select(.state == "failed")'""",
    "check": """\
examples:
  synkler check -c /etc/synkler.conf      one line per check; exits 1 if one says FAIL""",
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
    _command(sub, "check", "check the config, the broker and (upload/download) ssh+rsync to central")
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
            from .devkit.demo import run_demo

            return run_demo(keep=args.keep, timeout=args.timeout, verbose=args.verbose or args.debug)
        if command == "config":
            return cmd_config_migrate(args)
        if command == "completion":
            print(completion_script(build_parser()), end="")
            return ExitStatus.OK
        from .config import find_config, load_config

        cfg = load_config(find_config(args.config))
        logs.use_agent(cfg.mode, cfg.name, cfg.id, cfg.log_format)
        return {"run": cmd_run, "status": cmd_status, "check": cmd_check}[command](cfg, args)
    except SynklerError as e:
        if args.debug:
            log.exception("error")
        print(f"synkler: {logs.shown(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from .agents import AGENTS
    from .pidfile import Pidfile, read_pid
    from .private import remember_umask, restrict_umask
    from .runtime import Runtime

    remember_umask()  # the one synkler was started with: rsync's and the cleanup scripts'
    pidfile = Pidfile(cfg.pidfile)
    if not pidfile.acquire():
        # Cron starts us every minute: a live agent is the normal case, not an error.
        log.info("already running (pid %s, pidfile %s)", read_pid(cfg.pidfile), cfg.pidfile)
        return ExitStatus.OK
    try:
        from .daemonize import prepare

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
    from .private import exposed_secrets
    from .state import State

    for problem in exposed_secrets(cfg.secret_files):
        print(f"synkler: warning: {logs.shown(problem)}", file=sys.stderr)
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
        if e.cleanup in ("failed", "interrupted", "skipped"):
            note = f"cleanup {e.cleanup}" + (f": {note}" if note else "")
        table.append((_shown(e.name), str(e.size), e.md5 or "-", e.state, _iso(e.updated, sep=" "), note))
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1])
    return ExitStatus.OK


def _shown(name: str) -> str:
    """A name as a person can read it on any terminal: bytes that are not UTF-8 as \\xNN, controls escaped."""
    return logs.shown(name)


def _iso(ts: float, sep: str = "T") -> str:
    return datetime.datetime.fromtimestamp(ts).astimezone().isoformat(sep=sep, timespec="seconds")


def cmd_check(cfg: Config, args: argparse.Namespace) -> int:
    from .broker import Broker, BrokerParams
    from .hops import transfer
    from .linux.fs import free_bytes
    from .private import exposed_secrets

    failures = 0
    print(f"ok    config {cfg.path} ({cfg.mode}, id {cfg.id})")
    for problem in exposed_secrets(cfg.secret_files):  # reported, not failed: the relay works
        print(f"WARN  {logs.shown(problem)}")
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


def cmd_config_migrate(args: argparse.Namespace) -> int:
    """Print or write the YAML equivalent of a synkler 0.0.x configuration."""
    import yaml

    from .config import _parse_yaml, looks_like_ini, parse_config
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
