"""The command line's parser: every command, its options and its --help examples. The commands' code
lives in the cmd_* modules, one per command or family of commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .. import __version__

STATUS_OPEN = 1000  # entries on their way `status` shows at most, the oldest (and as many failed ones)
STATUS_LAST = 50  # finished entries `status` shows besides those on their way (--all: every one)
# `--to DEST` of retry, forget and resend (docs/runbook.md, "At one destination")
TO_HELP = {
    "retry": "central: ask this destination (download) only to pull the verified copy again, where the "
    "entry failed; without it, every destination where it failed (never one that has it)",
    "forget": "central: forget the entry at this destination (download) only; the others keep it, "
    "and upload cleans up once every other destination has it",
    "resend": "upload: send the entry again to this destination (download) only; without it, to every "
    "destination it went to",
}
REQUEST_WAIT = 30.0  # seconds the retry, forget and resend commands wait for the agent's answer
# What `retry --waiting` takes: synkler.agents.waits CAUSES and ANY (spelled here so that parsing
# does not import the agents; a test keeps them equal).
WAIT_CAUSES, ANY_CAUSE = ("link", "disk", "failure"), "any"


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
  synkler retry -c /etc/synkler.conf 3f2c81d0     a failed or waiting entry (its id or a start of it)
  synkler retry -c /etc/synkler.conf run42.csv    by name, where one entry of that name can be retried
  synkler retry -c /etc/synkler.conf --waiting link   every entry waiting for the link (a key fixed)
  synkler retry -c /etc/synkler.conf --waiting        every entry waiting for a retry, whatever the cause
  synkler retry -c central.conf 3f2c81d0 --to archive   (central) archive pulls the verified copy again

Upload sends a failed entry again as a new entry, download pulls it again from central's copy. A
waiting entry is tried again now instead of when its wait runs out (causes: link, disk, failure).""",
    "forget": """\
examples:
  synkler forget -c /etc/synkler.conf 3f2c81d0    end a stuck or failed entry at every role
  synkler forget -c central.conf 3f2c81d0 --to archive   (central) at that destination only""",
    "resend": """\
examples:
  synkler resend -c /etc/synkler.conf run42.csv   send the newest version of run42.csv again, unchanged
  synkler resend -c /etc/synkler.conf run42.csv   (download) sign and send run42.csv's receipt again
  synkler resend -c upload.conf run42.csv --to archive   (upload) to that destination only""",
    "drain": """\
examples:
  synkler drain -c /etc/synkler.conf central-b          central-b takes no new offers, finishes the rest
  synkler drain -c /etc/synkler.conf central-b --undo   it takes offers again

A central of a pool only (its configuration sets `uploads`); CENTRAL is its own name, as a check.""",
    "verify": """\
examples:
  synkler verify -c /etc/synkler.conf                      every delivery, every file present (complete)
  synkler verify -c /etc/synkler.conf --depth full run42   read every file of run42 again
  synkler verify -c /etc/synkler.conf --since 2026-03-01 --until 2026-03-31 --depth fast
  0 3 * * 0 synkler -c /etc/synkler.conf verify --depth full --notify

On download: the delivered data against its receipts; on upload: the receipts it keeps (their
signatures). Exits 1 on any difference; --notify sends the result on the alert channels.""",
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
    "alerts": """\
examples:
  synkler alerts test -c /etc/synkler.conf""",
    "alerts test": """\
examples:
  synkler alerts test -c /etc/synkler.conf

Sends one test notice (key `test`) on each channel of the `alerts` setting and prints what each
answered: the HTTP status, the mail server's reply, the command's exit status. Exits 1 if one
failed. The agent need not run.""",
    "broker-setup": """\
examples:
  synkler broker-setup -c /etc/synkler.conf --upload lab-a --upload lab-b
  (umask 077; synkler broker-setup -c central.conf --upload lab-a > broker-setup.sh)
  synkler broker-setup -c upload.conf          a pool: every central of upload's `centrals`

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
    "send": """\
examples:
  synkler send -k sample_id:S12 -k project:soil run42.raw     copy it into file_dir with its metadata
  synkler send -m run42.json --move /data/incoming/run42      rename it in (same file system)
  synkler send -k sample_id:S12 run42.raw                     an entry already in file_dir: set its metadata

The metadata is written first, as NAME.meta.json beside NAME, then the data appears whole (a copy
under a hidden name, renamed in), so upload never offers it without its metadata. -m gives a JSON
object, -k adds string values (KEY:VALUE, repeatable, after -m). On an entry already in file_dir the
keys are added to its sidecar, and an entry central refused for its metadata is offered again.
See docs/metadata.md.""",
    "completion": """\
examples:
  synkler completion bash > /etc/bash_completion.d/synkler
  source <(synkler completion bash)""",
}

Commands = argparse._SubParsersAction


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' lines as written."""


def _command(sub: Commands, name: str, help: str, key: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help, description=help, epilog=EXAMPLES.get(key or name), formatter_class=_HelpFormatter
    )


def add_global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
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


def spread_global_options(p: argparse.ArgumentParser) -> None:
    """Give every command (and every command of a command) the global options."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(s): s for s in action.choices.values()}.values():
                if "--config" not in sub._option_string_actions:
                    add_global_options(sub, top=False)
                spread_global_options(sub)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="synkler",
        description="Relay files from an upload host to a download host through a central host.",
        epilog=EXAMPLES[""],
        formatter_class=_HelpFormatter,
    )
    add_global_options(p, top=True)
    _add_run_options(p, top=True)
    p.add_argument("--version", action="version", version=f"synkler {__version__}")
    sub = p.add_subparsers(dest="command", metavar="command")
    run = _command(sub, "run", "run this host's agent (the default); in the foreground unless --daemon")
    _add_run_options(run, top=False)
    _add_status(sub)
    _command(sub, "check", "check the config, the broker and (upload/download) ssh+rsync to central")
    _add_repairs(sub)
    _add_drain(sub)
    demo = _command(sub, "demo", "relay generated files through all three roles on this machine")
    demo.add_argument("--keep", action="store_true", help="keep the demo's directory afterwards")
    demo.add_argument(
        "--timeout", type=float, default=120, help="seconds to wait for the relay (default 120)"
    )
    _add_config(sub)
    _add_broker_setup(sub)
    _add_keygen(sub)
    _add_send(sub)
    _add_verify(sub)
    alerts = _command(sub, "alerts", "work on the alert channels")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", metavar="command", required=True)
    _command(alerts_sub, "test", "send a test notice on every configured alert channel", "alerts test")
    completion = _command(sub, "completion", "print a shell completion script")
    completion.add_argument(
        "shell", choices=["bash"], help="the shell (bash; zsh reads it with bashcompinit)"
    )
    spread_global_options(p)
    return p


def _add_status(sub: Commands) -> None:
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
        "--open",
        type=int,
        default=STATUS_OPEN,
        metavar="N",
        help=f"how many of the entries on their way to show, the oldest, and as many failed ones "
        f"(default {STATUS_OPEN})",
    )
    st.add_argument(
        "--last",
        type=int,
        default=STATUS_LAST,
        metavar="N",
        help=f"how many of the most recently finished entries to show (default {STATUS_LAST})",
    )


def _add_repairs(sub: Commands) -> None:
    for action, what in (
        ("retry", "take up a failed entry again, a waiting one now, or run a failed cleanup script again"),
        ("forget", "end an entry on its way or failed, at every role that has it"),
        (
            "resend",
            "upload: send a delivered entry's file again as a new entry, unchanged; "
            "download: send a delivered entry's signed receipt again",
        ),
    ):
        cmd = _command(sub, action, f"{what} (the running agent does it)")
        entry_help = "entry id, a unique start of it (status shows one), or the name"
        if action == "retry":
            cmd.add_argument("entry", nargs="?", help=entry_help)
            cmd.add_argument(
                "--waiting",
                nargs="?",
                const=ANY_CAUSE,
                choices=(*WAIT_CAUSES, ANY_CAUSE),
                metavar="CAUSE",
                dest="waiting_for",
                help="instead of one entry: every entry that waits for a retry, or only those waiting "
                "for CAUSE: link (link down, ssh refused), disk (disk space, room at central) or "
                "failure (the next try after a failed one)",
            )
        else:
            cmd.add_argument("entry", help=entry_help)
        cmd.add_argument("--to", metavar="DEST", help=TO_HELP[action])
        cmd.add_argument(
            "--wait",
            type=float,
            default=REQUEST_WAIT,
            metavar="SECONDS",
            help=f"how long to wait for the agent's answer (default {REQUEST_WAIT:g}; 0: do not wait)",
        )


def _add_drain(sub: Commands) -> None:
    drain = _command(
        sub, "drain", "central of a pool: take no new offers and finish what it holds (the running agent)"
    )
    drain.add_argument("central", metavar="CENTRAL", help="the central's name (its `name`; a check)")
    drain.add_argument("--undo", action="store_true", help="take offers again")
    drain.add_argument(
        "--wait",
        type=float,
        default=REQUEST_WAIT,
        metavar="SECONDS",
        help=f"how long to wait for the agent's answer (default {REQUEST_WAIT:g}; 0: do not wait)",
    )


def _add_config(sub: Commands) -> None:
    config = _command(sub, "config", "work on configuration files")
    config_sub = config.add_subparsers(dest="config_command", metavar="command", required=True)
    migrate = _command(
        config_sub, "migrate", "convert a synkler 0.0.x configuration (INI) to YAML", "config migrate"
    )
    migrate.add_argument("old", metavar="OLD", help="the 0.0.x configuration file")
    migrate.add_argument(
        "-o", "--output", metavar="NEW", help="write the YAML here (default: print it); never overwrites"
    )


def _add_keygen(sub: Commands) -> None:
    keygen = _command(
        sub, "keygen", "download: make the key that signs delivery receipts; print its public key"
    )
    keygen.add_argument("file", metavar="FILE", help="where to write the private key (never overwritten)")
    keygen.add_argument(
        "--public", action="store_true", help="print the public key of the existing private key FILE"
    )


def _add_send(sub: Commands) -> None:
    send = _command(sub, "send", "upload: put files into file_dir with their metadata, or set an entry's")
    send.add_argument("paths", nargs="+", metavar="PATH", help="a file or directory, or an entry of file_dir")
    send.add_argument("-m", "--meta", metavar="FILE", help="the metadata: a JSON object in FILE")
    send.add_argument(
        "-k",
        "--key",
        action="append",
        metavar="KEY:VALUE",
        help="a metadata key and its (string) value; repeat for more; over -m's keys of the same name",
    )
    send.add_argument(
        "--move", action="store_true", help="rename PATH into file_dir instead of copying (same file system)"
    )


def _add_verify(sub: Commands) -> None:
    verify = _command(
        sub, "verify", "check delivered data (download) or receipts (upload) against the receipts"
    )
    verify.add_argument(
        "entry", nargs="?", help="one entry: its id, a start of it, or its name (default: all)"
    )
    verify.add_argument(
        "--depth",
        choices=("fast", "complete", "full"),
        default="complete",
        help="fast: file count and bytes; complete: every file present, nothing extra (default); "
        "full: every file's hashes read again",
    )
    verify.add_argument("--since", metavar="DATE", help="deliveries from this date (YYYY-MM-DD, local time)")
    verify.add_argument("--until", metavar="DATE", help="deliveries up to this date, included")
    verify.add_argument(
        "--notify",
        nargs="?",
        const="differences",
        choices=("differences", "always"),
        help="send the result as a notice on the alert channels: on a difference (default), or always",
    )


def _add_broker_setup(sub: Commands) -> None:
    setup = _command(sub, "broker-setup", "print the rabbitmqctl commands that make the relay's broker users")
    setup.add_argument(
        "--upload",
        metavar="NAME",
        action="append",
        help="an upload agent's name (repeat for each; default: a central's `uploads`, this config's "
        "name if it is an upload agent's, else 'upload')",
    )
    setup.add_argument(
        "--central",
        metavar="NAME",
        action="append",
        help="a central's name (repeat for each central of a pool; default: the config's `centrals`, "
        "else central's name)",
    )


def split_debug(argv: Sequence[str]) -> list[str]:
    """--debug=pika is --debug plus pika's own lines (argparse has no optional value for a flag
    that may stand right before a command)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        out += ["--debug", "--debug-pika"] if arg == "--debug=pika" else [arg]
    return out
