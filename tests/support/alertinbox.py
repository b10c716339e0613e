"""A real webhook endpoint, a real SMTP server (STARTTLS, login) and a command: the three alert
channels as an operator has them, and what each received."""

from __future__ import annotations

import contextlib
import email
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from support.rabbitnode import free_port

SMTP_USER, SMTP_PASSWORD = "synkler", "mail-s3cret"
APPEND = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')"


class Inbox:
    """Where the three channels deliver: what each received, as messages (the JSON body)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.webhook: list[dict[str, Any]] = []
        self.mails: list[tuple[Message, bool, bool]] = []  # (mail, over TLS, logged in)
        self.command_out = workdir / "command.jsonl"
        self.lock = threading.Lock()

    def settings(self, **limits: Any) -> dict[str, Any]:
        return {
            "webhook": {"url": self.webhook_url, "headers": {"X-Test": "synkler"}},
            "email": {
                "host": "127.0.0.1",
                "port": self.smtp_port,
                "from": "synkler@relay.test",
                "to": ["ops@relay.test"],
                "username": SMTP_USER,
                "password_file": str(self.password_file),
                "ca_file": str(self.cert),
            },
            "command": {"argv": [sys.executable, "-c", APPEND, str(self.command_out)]},
            "check_seconds": 1,
            "group_seconds": 0,
            **limits,
        }

    def messages(self, channel: str) -> list[dict[str, Any]]:
        with self.lock:
            if channel == "webhook":
                return list(self.webhook)
            if channel == "email":
                return [json.loads(_json_part(m)) for m, _tls, _auth in self.mails]
        if not self.command_out.exists():
            return []
        return [json.loads(line) for line in self.command_out.read_text().splitlines()]

    def told(self, channel: str, key: str) -> list[str]:
        """The states ("started", "cleared") told for condition `key` on `channel`, in order."""
        return [n["state"] for m in self.messages(channel) for n in m["notices"] if n["key"] == key]

    def everywhere(self, key: str, states: list[str]) -> bool:
        return all(self.told(ch, key) == states for ch in ("webhook", "email", "command"))


def _json_part(mail: Message) -> str:
    """The email channel carries the same facts as text; the test reads them back from the text's
    'condition:' and state lines into the notice shape the other channels have."""
    text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    notices = []
    state = None
    for line in text.splitlines():
        for word in ("STARTED", "CLEARED"):
            if line.startswith(word + " ("):
                state = word.lower()
        if line.startswith("  condition: "):
            notices.append({"key": line.split(": ", 1)[1], "state": state})
    return json.dumps({"notices": notices, "subject": mail["Subject"]})


@contextlib.contextmanager
def serving(tmp_path: Path) -> Iterator[Inbox]:
    box = Inbox(tmp_path)

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.headers["Content-Type"] == "application/json"
            assert self.headers["X-Test"] == "synkler"
            with box.lock:
                box.webhook.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    http_thread = threading.Thread(target=http.serve_forever, daemon=True)
    http_thread.start()
    box.webhook_url = f"http://127.0.0.1:{http.server_address[1]}/hook"

    # A private CA-less certificate for 127.0.0.1, trusted by the agents through alerts.email.ca_file.
    box.cert, key = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(box.cert),
        ]
        + ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    box.password_file = tmp_path / "smtp-password"
    box.password_file.write_text(SMTP_PASSWORD + "\n")
    os.chmod(box.password_file, 0o600)

    class Mailbox:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            mail = email.message_from_bytes(envelope.content)
            with box.lock:
                box.mails.append((mail, session.ssl is not None, bool(session.authenticated)))
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False)

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(box.cert, key)
    box.smtp_port = free_port()
    smtp = Controller(
        Mailbox(),
        hostname="127.0.0.1",
        port=box.smtp_port,
        tls_context=tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    smtp.start()
    try:
        yield box
    finally:
        smtp.stop()
        http.shutdown()
        http.server_close()
        http_thread.join(5)
