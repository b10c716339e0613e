"""The alert channels: one message sent by webhook (POST of its JSON), email (the same facts as
text, through an SMTP server) or a command (its JSON on stdin), on the alert worker thread or by
`synkler alerts test`. The only module that imports smtplib and urllib; what is sent and when is
decided in synkler.observe.alerts. The message format: docs/notices.md."""

from __future__ import annotations

import json
import smtplib
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Union

from ..config import CommandChannel, EmailChannel, WebhookChannel
from ..private import child_env

Channel = Union[WebhookChannel, EmailChannel, CommandChannel]


class NoticeError(Exception):
    """A message could not be sent on a channel (it stays queued and is tried again)."""


def email_text(msg: Mapping[str, Any]) -> tuple[str, str]:
    """(subject, body) of a message sent by email: the same facts as the JSON, for a person."""
    lines = [
        msg["text"],
        "",
        f"instance {msg.get('instance')}, {msg.get('role')} agent {msg.get('agent')!r} on {msg.get('host')}",
    ]
    for n in msg["notices"]:
        lines += ["", f"{n['state'].upper()} ({n['severity']}): {n['summary']}", f"  condition: {n['key']}"]
        lines.append(f"  since: {when_text(n['since'])}; {n['state']} at {when_text(n['at'])}")
        for k, v in n.get("details", {}).items():
            lines.append(f"  {k}: {v}")
        lines.append(f"  what to do: {n['todo']}")
    if msg.get("more"):
        lines += ["", f"... and {msg['more']} more notices (see `synkler status` on the agent)."]
    lines += ["", "What each notice means and what to do: docs/notices.md."]
    return msg["text"][:200], "\n".join(lines) + "\n"


def when_text(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(ts))


def deliver(channel: Channel, msg: Mapping[str, Any]) -> str:
    """Send one message on one channel and return what the other end answered, in one line
    (`synkler alerts test` shows it); NoticeError if it did not go out."""
    try:
        if isinstance(channel, WebhookChannel):
            return _webhook(channel, msg)
        if isinstance(channel, EmailChannel):
            return _email(channel, msg)
        return _command(channel, msg)
    except NoticeError:
        raise
    except smtplib.SMTPResponseException as e:  # the server's refusal, in its own words
        said = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) else e.smtp_error
        raise NoticeError(f"{type(e).__name__}: SMTP {e.smtp_code} {' '.join(str(said).split())}") from None
    except (OSError, smtplib.SMTPException, ValueError, subprocess.SubprocessError) as e:
        raise NoticeError(f"{type(e).__name__}: {e}") from None


def body(msg: Mapping[str, Any]) -> bytes:
    return json.dumps(msg, ensure_ascii=True, sort_keys=False).encode("ascii")


def _webhook(ch: WebhookChannel, msg: Mapping[str, Any]) -> str:
    request = urllib.request.Request(ch.url, data=body(msg), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", "synkler")
    for k, v in ch.headers:
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=ch.timeout) as response:
            response.read(4096)
            return f"HTTP {response.status} {response.reason}"
    except urllib.error.HTTPError as e:
        raise NoticeError(f"{ch.url} answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise NoticeError(f"{ch.url}: {e.reason}") from None


def _email(ch: EmailChannel, msg: Mapping[str, Any]) -> str:
    mail = email_message(ch, msg)
    context = ssl.create_default_context(cafile=str(ch.ca_file) if ch.ca_file else None)
    smtp: smtplib.SMTP
    if ch.tls == "ssl":
        smtp = smtplib.SMTP_SSL(ch.host, ch.port, timeout=ch.timeout, context=context)
    else:
        smtp = smtplib.SMTP(ch.host, ch.port, timeout=ch.timeout)
    with smtp:
        if ch.tls == "starttls":
            smtp.starttls(context=context)
        if ch.username:
            smtp.login(ch.username, ch.password or "")
        return _send(smtp, mail, ch)


def email_message(ch: EmailChannel, msg: Mapping[str, Any]) -> EmailMessage:
    """The mail of a message, with the Date and Message-ID that mail systems expect (a mail
    without them is scored as spam)."""
    subject, text = email_text(msg)
    mail = EmailMessage()
    mail["Subject"] = subject
    mail["From"] = ch.sender
    mail["To"] = ", ".join(ch.to)
    mail["Date"] = formatdate(msg.get("at") or time.time(), localtime=True)
    # The sender's domain, not the host's name: socket.getfqdn() can wait on DNS for seconds.
    mail["Message-ID"] = make_msgid("synkler", domain=ch.sender.rpartition("@")[2])
    mail.set_content(text)
    return mail


def _send(smtp: smtplib.SMTP, mail: EmailMessage, ch: EmailChannel) -> str:
    """Send `mail` as smtplib's send_message does, keeping the server's answer to the data (its
    queue id, for the person who tests the channel)."""
    smtp.ehlo_or_helo_if_needed()
    code, answer = smtp.mail(ch.sender)
    if code != 250:
        smtp.rset()
        raise smtplib.SMTPSenderRefused(code, answer, ch.sender)
    refused = {}
    for to in ch.to:
        code, answer = smtp.rcpt(to)
        if code not in (250, 251):
            refused[to] = (code, answer)
    if len(refused) == len(ch.to):
        smtp.rset()
        raise smtplib.SMTPRecipientsRefused(refused)
    # SMTP's lines end in CRLF (smtplib fixes them in a str only); its answer to the data is the
    # server's word that it took the mail: anything but 250 is a refusal, as smtplib.sendmail has it.
    code, answer = smtp.data(mail.as_bytes(policy=mail.policy.clone(linesep="\r\n")))
    if code != 250:
        smtp.rset()
        raise smtplib.SMTPDataError(code, answer)
    said = f"SMTP {code} {answer.decode('utf-8', 'replace').strip()}"
    if refused:
        each = (f"{to} ({c} {a.decode('utf-8', 'replace')})" for to, (c, a) in refused.items())
        said += "; refused " + ", ".join(each)
    return said


def _command(ch: CommandChannel, msg: Mapping[str, Any]) -> str:
    try:
        done = subprocess.run(
            list(ch.argv),
            input=body(msg),
            capture_output=True,
            timeout=ch.timeout,
            check=False,
            env=child_env(),  # the agent's environment without its secrets
        )
    except FileNotFoundError:
        raise NoticeError(f"no such program: {ch.argv[0]}") from None
    except PermissionError:
        raise NoticeError(f"not executable: {ch.argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise NoticeError(f"{ch.argv[0]} did not end within {ch.timeout:g} s") from None
    if done.returncode != 0:
        out = (done.stderr or done.stdout or b"").decode("utf-8", "replace").strip()[-300:]
        raise NoticeError(f"{ch.argv[0]} exited with {done.returncode}: {out}")
    return f"{ch.argv[0]} exited with 0"
