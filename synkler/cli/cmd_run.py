"""`synkler run` (the default command): this host's agent, in the foreground or as a daemon."""

from __future__ import annotations

import argparse
import logging
import sys

from ..agents import AGENTS
from ..config import Config
from ..errors import ExitStatus, StateError
from ..private import remember_umask, restrict_umask
from ..runtime.loop import Runtime
from ..service.pidfile import Pidfile, read_pid
from ..text import shown

log = logging.getLogger("synkler")


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
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
        restrict_umask()  # what the agent creates from here on is its own (docs/installing.md)
        runtime = Runtime(cfg, AGENTS[cfg.mode])
        launch.started(runtime)
        runtime.run()
    except (OSError, StateError) as e:
        # Typically an unwritable state_db or file_dir: one line, the traceback only with --debug.
        log.debug("agent stopped", exc_info=True)
        print(f"synkler: {cfg.mode} agent cannot run: {shown(str(e))}", file=sys.stderr)
        return ExitStatus.FAILURE
    finally:
        pidfile.release()
    return runtime.exit_status
