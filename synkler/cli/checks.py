"""What `synkler check` looks at beyond the config, the broker and the path to central.

Each check gives one line, `ok`, `WARN` or `FAIL`, with the reason (docs/status.md, "synkler
check"). The decisions are plain functions over what was looked up (`peer_line`, `reserve_line`,
`program_problem`, `writable_problem`, `ignored_lines`), so they are unit-tested without a broker;
synkler.cli.cmd_check does the looking. Nothing here creates a file or a queue, so `check`
never disturbs a running agent.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from .. import receipts
from ..broker.names import queue_name
from ..config import KEYS, Config, ignored_keys
from ..observe.progress import size_text
from ..observe.report import Report
from ..text import count, shown

OK, WARN, FAIL = "ok", "WARN", "FAIL"
Line = tuple[str, str]  # (OK | WARN | FAIL, the text after it)


def show(line: Line) -> str:
    level, text = line
    return f"{level:<5} {text}"


# peers -----------------------------------------------------------------------------------------


def peers_of(cfg: Config, upload_agents: list[str]) -> list[str]:
    """The agents whose queues this agent's messages go to, or whose work it waits for: every role
    but its own (central and download by their names), and at central the upload agents it has heard of."""
    fixed = [p for p in (cfg.central_name, cfg.download_name) if p != cfg.name]
    if cfg.mode != "central":
        return fixed
    return fixed + sorted(a for a in upload_agents if a not in fixed and a != cfg.name)


def peer_line(
    instance: str,
    peer: str,
    queue: tuple[int, int] | None,
    report: Report | None,
    outbox: int = 0,
) -> Line:
    """Does an agent consume `peer`'s queue?

    `queue`: (messages, consumers) of `synkler:<id>:inbox:<peer>`, None if it does not exist;
    `report`: the peer's latest presence report (None: it never reported under this id); `outbox`:
    this agent's messages to it not yet published. No consumer while messages wait for it is a
    FAIL (nothing moves until a person acts); with nothing waiting yet, a WARN.
    """
    name = queue_name(instance, peer)
    if queue is not None and queue[1] > 0:
        return OK, f"the {peer} agent consumes {name}"
    waiting = (queue[0] if queue is not None else 0) + outbox
    level = FAIL if waiting else WARN
    wait = f" ({count(waiting, 'message')} wait for it)" if waiting else ""
    if not report:
        return level, (
            f"no agent consumes {name}{wait}, and no {peer} agent has ever reported under id "
            f"{instance!r}: is the {peer} agent running, and is `id` the same on all three hosts?"
        )
    when = report.stopped or report.at
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else "?"
    how = f"stopped at {stamp}" if report.stopped else f"was last heard at {stamp}"
    where = f" on host {shown(report.host)}" if report.host else ""
    return level, f"no agent consumes {name}{wait}: the {peer} agent{where} {how}; start it"


# central's free space --------------------------------------------------------------------------


def reserve_line(file_dir: Path, free: int, total: int, free_percent: float) -> Line:
    """Central: is there room above the `free_percent` reserve? Without it nothing is admitted."""
    reserve = int(total * free_percent / 100)
    figures = f"{size_text(free)} free, reserve {size_text(reserve)} (free_percent {free_percent:g})"
    if free <= reserve:
        return FAIL, (
            f"file_dir {file_dir}: {figures}: no room above the reserve, so central admits nothing; "
            "free space or lower free_percent"
        )
    return OK, f"file_dir {file_dir} ({figures})"


# cleanup script ---------------------------------------------------------------------------------


def program_problem(program: str, path_env: str | None) -> str | None:
    """Why `program` (a cleanup script's argv[0]) cannot be run; None if it can. A bare name is
    looked up on PATH, as the agent's exec does; a path is taken as it is."""
    if "%" in program:
        return None  # named by the entry (%f, %F): cannot be told before it arrives
    if "/" not in program:
        if shutil.which(program, path=path_env) is None:
            return f"{program!r} is not found on PATH ({path_env or os.defpath})"
        return None
    if not os.path.exists(program):
        return f"{program} does not exist"
    if os.path.isdir(program):
        return f"{program} is a directory"
    if not os.access(program, os.X_OK):
        return f"{program} is not executable (chmod +x)"
    return None


def cleanup_line(cfg: Config, path_env: str | None) -> Line | None:
    """Upload and download with a cleanup_script: can its program be run?"""
    if cfg.mode not in KEYS["cleanup_script"].roles or not cfg.cleanup_argv:
        return None
    program = cfg.cleanup_argv[0]
    problem = program_problem(program, path_env)
    if problem is not None:
        return FAIL, f"cleanup_script: {shown(problem)}; no delivered entry could be cleaned up"
    where = program if "/" in program else (shutil.which(program, path=path_env) or program)
    return OK, f"cleanup_script runs {shown(where)}"


# the agent's own files --------------------------------------------------------------------------


def writable_problem(path: Path) -> str | None:
    """Why the agent could not create or write the file `path` (None: it can), creating nothing.

    SQLite also creates `-wal` and `-shm` files beside the database, and the pidfile is replaced
    in its directory: the directory must be writable too. Directories that do not exist yet are
    made by the agent, so the nearest one that exists must be writable.
    """
    if os.path.isdir(path):
        return f"{path} is a directory"
    if os.path.lexists(path) and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        verb = "write in" if parent == path.parent else "create directories in"
        return f"cannot {verb} {parent}"
    return None


def files_lines(cfg: Config) -> list[Line]:
    out: list[Line] = []
    for key, path in (("state_db", cfg.state_db), ("pidfile", cfg.pidfile)):
        problem = writable_problem(path)
        if problem is None:
            out.append((OK, f"{key} {path} can be written"))
        else:
            out.append((FAIL, f"{key} {path}: {shown(problem)}; the agent cannot run"))
    return out


# keys -------------------------------------------------------------------------------------------


def ignored_lines(cfg: Config) -> list[Line]:
    """A WARN per key the file sets that this role does not read (a key meant for another host?)."""
    article = "an" if cfg.mode == "upload" else "a"
    agent = f"{article} {cfg.mode} agent"
    return [
        (WARN, f"{key} is set, but {agent} ignores it (used by {', '.join(KEYS[key].roles)})")
        for key in ignored_keys(cfg)
    ]


# the way to the broker --------------------------------------------------------------------------


def plain_amqp_line(tls: bool, host: str, addresses: Sequence[str]) -> Line | None:
    """A WARN when the agent talks plain AMQP to a broker off this host: its password and every
    message cross the network readable. `addresses`: what `host` resolves to (none: unknown)."""
    if tls:
        return None
    if addresses and all(_loopback(a) for a in addresses):
        return None  # never leaves this host
    return WARN, (
        f"plain AMQP to {shown(host)}: the broker password and every message cross the network "
        "in clear; use TLS (broker_tls: true, docs/security.md)"
    )


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def broker_addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to ([] if it does not)."""
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})
    except OSError:
        return []


def receipts_line(cfg: Config) -> Line:
    """Whether deliveries are proven by download's signed receipts (docs/security.md, "Delivery
    receipts"): download signs with receipt_key, upload and central pin download_public_key."""
    if cfg.mode == "download":
        if cfg.receipt_key is None:
            return (
                WARN,
                "receipt_key is not set: deliveries are not proven (no signed receipt); "
                "make one with `synkler keygen FILE` (docs/security.md)",
            )
        try:
            key = receipts.load_private_key(cfg.receipt_key)
        except (OSError, ValueError) as e:
            return (FAIL, f"receipt_key {cfg.receipt_key}: {e}")
        return (OK, f"delivery receipts signed with {cfg.receipt_key} ({receipts.public_text(key)})")
    if cfg.download_public_key is None:
        return (
            WARN,
            "download_public_key is not set: deliveries are not proven, a `fetched` from download's "
            "login is believed without a signed receipt (docs/security.md, 'Delivery receipts')",
        )
    return (OK, "deliveries proven: download's receipts are checked against its pinned public key")
