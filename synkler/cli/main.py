"""Command line: the entry point, logging set-up, exit codes, one top-level error handler, and the
dispatch to the commands (one module each: cmd_run, cmd_status, cmd_check, cmd_repair, cmd_config,
cmd_alerts, cmd_verify, cmd_broker_setup, cmd_completion, cmd_send; the parser is in parser)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable

from ..errors import ExitStatus, SynklerError
from ..service import logs
from ..text import shown
from .parser import build_parser, split_debug

if TYPE_CHECKING:  # annotations only: a command's module is imported when it runs
    from ..config import Config

log = logging.getLogger("synkler")

Command = Callable[["Config", argparse.Namespace], int]


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
    parser = build_parser()
    args = parser.parse_args(split_debug(argv))
    if args.command == "retry" and (args.entry is None) == (args.waiting_for is None):
        parser.error("retry takes an entry or --waiting [CAUSE], one of the two")
    logs.setup(verbose=args.verbose, debug=args.debug, pika=args.debug_pika)
    try:
        return _dispatch(args.command or "run", args)
    except SynklerError as e:
        if args.debug:
            log.exception("error")
        print(f"synkler: {shown(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED


def _dispatch(command: str, args: argparse.Namespace) -> int:
    """Run `command`: the ones without a configuration first, then the agent's."""
    if command == "demo":
        from ..devkit.demo import run_demo

        return run_demo(keep=args.keep, timeout=args.timeout, verbose=args.verbose or args.debug)
    if command == "config":
        from .cmd_config import cmd_config_migrate

        return cmd_config_migrate(args)
    if command == "keygen":
        from .cmd_keygen import cmd_keygen

        return cmd_keygen(args.file, public_only=args.public)
    if command == "completion":
        from .cmd_completion import completion_script

        print(completion_script(build_parser()), end="")
        return ExitStatus.OK
    from ..config import find_config
    from .migrate import load

    cfg = load(find_config(args.config))
    logs.use_agent(cfg.mode, cfg.name, cfg.id, cfg.log_format)
    return _agent_command(command)(cfg, args)


def _agent_command(command: str) -> Command:
    """The code of a command that works on this host's agent (its module imported only now)."""
    if command == "run":
        from .cmd_run import cmd_run

        return cmd_run
    if command == "status":
        from .cmd_status import cmd_status

        return cmd_status
    if command == "check":
        from .cmd_check import cmd_check

        return cmd_check
    if command == "verify":
        from .cmd_verify import cmd_verify

        return cmd_verify
    if command == "alerts":
        from .cmd_alerts import cmd_alerts_test  # its only command: test

        return cmd_alerts_test
    if command == "send":
        from .cmd_send import cmd_send

        return cmd_send
    if command == "broker-setup":
        from .cmd_broker_setup import cmd_broker_setup

        return cmd_broker_setup
    if command == "drain":
        from .cmd_repair import cmd_drain

        return cmd_drain
    from .cmd_repair import cmd_request  # retry, forget, resend

    return cmd_request
