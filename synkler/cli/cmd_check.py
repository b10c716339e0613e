"""`synkler check`: the config, the broker, the peers' queues, (upload/download) ssh + rsync to
central, the cleanup script, the files and the disk, one line each as it is looked at. The decisions
are in synkler.cli.checks; this module does the looking."""

from __future__ import annotations

import argparse
import os

from ..broker.amqp import Broker, BrokerParams
from ..broker.connect import address_text
from ..config import Config
from ..errors import BrokerError, ExitStatus, StateError
from ..hops import transfer
from ..linux.fs import free_bytes, total_bytes
from ..messages import confined
from ..observe.progress import size_text
from ..observe.report import Report
from ..private import exposed_secrets
from ..state import State
from ..text import shown
from . import checks
from .cmd_alerts import channel_lines


class _Lines:
    """The lines said so far; each is printed at once (a slow check shows what came before it)."""

    def __init__(self) -> None:
        self.lines: list[checks.Line] = []

    def say(self, line: checks.Line | None) -> None:
        if line is not None:
            self.lines.append(line)
            print(checks.show(line), flush=True)

    @property
    def failed(self) -> bool:
        return any(level == checks.FAIL for level, _ in self.lines)


def cmd_check(cfg: Config, args: argparse.Namespace) -> int:
    out = _Lines()
    out.say((checks.OK, f"config {cfg.path} ({cfg.mode}, id {cfg.id})"))
    for problem in exposed_secrets(cfg.secret_files):  # reported, not failed: the relay works
        out.say((checks.WARN, shown(problem)))
    for line in checks.ignored_lines(cfg):
        out.say(line)
    out.say(checks.receipts_line(cfg))
    central_report = _check_broker(cfg, out)
    if cfg.mode in ("upload", "download"):
        _check_central(cfg, central_report, out)
    out.say(checks.cleanup_line(cfg, os.environ.get("PATH")))
    for line in channel_lines(cfg):
        out.say(line)
    for line in checks.files_lines(cfg):
        out.say(line)
    free = free_bytes(cfg.file_dir)
    if cfg.mode == "central":
        out.say(checks.reserve_line(cfg.file_dir, free, total_bytes(cfg.file_dir), cfg.free_percent))
    else:
        out.say((checks.OK, f"file_dir {cfg.file_dir} ({size_text(free)} free)"))
    return ExitStatus.FAILURE if out.failed else ExitStatus.OK


def _check_broker(cfg: Config, out: _Lines) -> Report | None:
    """The broker, how messages are authenticated and the peers' queues; returns central's
    presence report (None if it has none, or this is central)."""
    central_report: Report | None = None
    params = BrokerParams.from_config(cfg)
    broker = Broker(params, cfg.id, cfg.name)
    try:
        broker.connect(consume=False)
        node = f" (connected to {address_text(broker.address)})" if len(params.addresses) > 1 else ""
        where = f"{params.where} vhost {cfg.broker_vhost}{node}"
        out.say((checks.OK, f"broker {where}{_tls_note(cfg)}"))
        for host, port in params.addresses:
            addresses = checks.broker_addresses(host, port)
            out.say(checks.plain_amqp_line(cfg.broker_tls, host, addresses))
        if cfg.authenticate:
            out.say((checks.OK, f"messages authenticated: this agent publishes as {cfg.broker_username}"))
        else:
            out.say(
                (
                    checks.WARN,
                    "messages are not authenticated (authenticate: false): anyone who can publish "
                    "to the broker can make this agent act (docs/security.md)",
                )
            )
        uploads, outbox = _own_peers(cfg)
        for peer in checks.peers_of(cfg, uploads):
            report = Report.decode(broker.peek_presence(peer))
            if peer == "central":
                central_report = report
            out.say(checks.peer_line(cfg.id, peer, broker.queue_info(peer), report, outbox.get(peer, 0)))
    except BrokerError as e:
        out.say((checks.FAIL, f"broker: {e}"))
    finally:
        broker.close()
    return central_report


def _check_central(cfg: Config, central_report: Report | None, out: _Lines) -> None:
    """rsync itself, and ssh + rsync to central (as the transfers run them)."""
    try:
        transfer.protection(cfg)
    except transfer.RsyncTooOld as e:
        out.say((checks.FAIL, f"rsync: {e}"))
    result = transfer.probe(cfg)
    link = "ssh + SFTP" if cfg.transport == "sftp" else "ssh + rsync"
    if result.ok:
        out.say((checks.OK, f"{link} to central {cfg.central_host}"))
        out.say(_place_line(cfg, central_report))
    else:
        out.say((checks.FAIL, f"{link} to central {cfg.central_host}: {result.summary()}"))


def _place_line(cfg: Config, central: Report | None) -> checks.Line:
    """Upload writes a file into its staging at central and removes it; download lists central's
    store: over ssh, as the transfers do. Where those are, central's presence report says."""
    place = central.place if central else None
    if place is None or not confined(place, cfg.id):
        return (checks.WARN, "central's directory not tried over ssh: central has not reported where it is")
    if cfg.mode == "upload":
        where = f"{place}/staging/{cfg.name}"
        result, what = transfer.probe_write(cfg, where), "write into"
    else:
        where = f"{place}/stored"
        result, what = transfer.probe_read(cfg, where), "read"
    how = "over SFTP" if cfg.transport == "sftp" else "over ssh"
    if cfg.transport == "sftp" and cfg.sftp_root is not None:
        how += f" chrooted to {shown(cfg.sftp_root)}"
    elif cfg.rrsync_root is not None:
        how += f" confined by rrsync to {shown(cfg.rrsync_root)}"
    if result.ok:
        return (checks.OK, f"{what} central's {shown(where)} {how}")
    return (checks.FAIL, f"cannot {what} central's {shown(where)} {how}: {result.summary()}")


def _own_peers(cfg: Config) -> tuple[list[str], dict[str, int]]:
    """From this agent's state database, read-only (absent before the first run): the upload
    agents central has had entries from, and the messages waiting in the outbox per destination."""
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
