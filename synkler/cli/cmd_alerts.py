"""`synkler alerts test`: a test notice sent on every configured alert channel, and what each
answered (docs/notices.md, "Testing the channels"). `channel_lines` also gives `synkler check`
its lines about the channels, which it shows without sending."""

from __future__ import annotations

import argparse
import time
import urllib.parse

from ..config import CommandChannel, Config, EmailChannel, WebhookChannel
from ..errors import ExitStatus
from ..observe import alerts, channels
from ..text import shown
from . import checks


def where(channel: channels.Channel) -> str:
    """Where a channel sends, for a person: never a secret (a webhook's path and query often hold
    its token, and its URL may hold a login: only its scheme, host and port are shown)."""
    if isinstance(channel, WebhookChannel):
        url = urllib.parse.urlsplit(channel.url)
        host = f"[{url.hostname}]" if ":" in (url.hostname or "") else url.hostname
        port = f":{url.port}" if url.port else ""
        return f"POST to {url.scheme}://{host}{port}/…"
    if isinstance(channel, EmailChannel):
        login = f", login {channel.username}" if channel.username else ""
        to = ", ".join(channel.to)
        return f"mail to {to} through {channel.host}:{channel.port} ({channel.tls}{login})"
    assert isinstance(channel, CommandChannel)
    return f"run {channel.argv[0]}"


def channel_lines(cfg: Config) -> list[checks.Line]:
    """`check`'s lines about the alert channels (nothing is sent)."""
    configured = cfg.alerts.channels if cfg.alerts else {}
    if not configured:
        return [(checks.OK, "alerts: no channel configured (conditions are only logged and shown in status)")]
    return [
        (checks.OK, f"alerts: {name}: {shown(where(ch))} (not tried: `synkler alerts test` sends a notice)")
        for name, ch in configured.items()
    ]


def cmd_alerts_test(cfg: Config, args: argparse.Namespace) -> int:
    """Send one test notice on each channel, one line each with the answer; 1 if one failed."""
    configured = cfg.alerts.channels if cfg.alerts else {}
    if not configured:
        print(checks.show((checks.FAIL, f"alerts: no channel configured in {shown(str(cfg.path))}")))
        return ExitStatus.FAILURE
    now = time.time()
    msg = alerts.message(
        [alerts.notice(alerts.test_condition(cfg), "started", now, now)], alerts.sender(cfg, cfg.mode), now
    )
    failed = False
    for name, channel in configured.items():
        try:
            answer = channels.deliver(channel, msg)
        except channels.NoticeError as e:
            failed = True
            print(checks.show((checks.FAIL, f"{name}: {shown(where(channel))}: {shown(str(e))}")), flush=True)
        else:
            print(checks.show((checks.OK, f"{name}: {shown(where(channel))}: {shown(answer)}")), flush=True)
    return ExitStatus.FAILURE if failed else ExitStatus.OK
