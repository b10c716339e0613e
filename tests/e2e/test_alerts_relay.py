"""Alerts on a real relay (RabbitMQ, sshd, rsync): notices reach a webhook (an HTTP server on
loopback), a mail server (aiosmtpd, with STARTTLS and a login) and a command, once when a condition
starts and once when it clears."""

from __future__ import annotations

import email
import email.utils
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.alertinbox import Inbox, free_port, serving
from support.relay_helpers import TOOLS, place


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[Inbox]:
    with serving(tmp_path) as box:
        yield box


def _queued_notices(relay: Any, role: str) -> int:
    db = sqlite3.connect(f"file:{relay.workdir / role / 'state.sqlite'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM alert_notices").fetchone()[0])
    finally:
        db.close()


def synkler(relay: Any, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(relay.command(role, *args), capture_output=True, text=True, timeout=60)


def test_a_failed_entry_and_a_failed_cleanup_are_each_told_once_by_every_channel_and_the_retry_clears(
    make_relay, inbox
):
    relay = make_relay()
    # Upload's first rsync run fails and max_attempts is 1: the first entry fails. Later runs work.
    failing = [sys.executable, str(TOOLS / "failing_rsync.py"), str(relay.workdir / "failed-once")]
    refusing = shlex.join(
        [sys.executable, "-c", "import sys; sys.exit('refused by the test: ' + sys.argv[1])", "%f"]
    )
    relay.write_config(
        "upload", {"rsync": shlex.join(failing), "max_attempts": 1, "alerts": inbox.settings()}
    )
    relay.write_config("central", {"alerts": inbox.settings()})
    relay.write_config("download", {"cleanup_script": refusing, "alerts": inbox.settings()})
    relay.start()

    place(relay.dirs["upload"], "run-a.dat", os.urandom(100_000))
    relay.wait_for("the entry to fail at central", lambda: relay.states("central") == {"run-a.dat": "failed"})
    [a] = relay.entries("central")
    failed = f"entry-failed:{a.id}"
    relay.wait_for("central's notice on every channel", lambda: inbox.everywhere(failed, ["started"]))
    [hooked] = [m for m in inbox.messages("webhook") if any(n["key"] == failed for n in m["notices"])]
    assert hooked["kind"] == "synkler-notice" and hooked["v"] == 1 and hooked["role"] == "central"
    assert hooked["instance"] == relay.instance and hooked["text"].endswith(
        "started: entry run-a.dat failed (push to central)"
    )
    [n] = hooked["notices"]
    assert n["severity"] == "error" and n["details"]["hop"] == "push to central"
    assert "failed by the test" in n["details"]["reason"] and "synkler retry" in n["todo"]

    place(relay.dirs["upload"], "run-b.dat", os.urandom(100_000))
    relay.wait_for("run-b delivered", lambda: relay.states("download").get("run-b.dat") == "done")
    [b] = [e for e in relay.entries("download") if e.name == "run-b.dat"]
    cleanup = f"cleanup-failed:{b.id}"
    relay.wait_for("download's notice on every channel", lambda: inbox.everywhere(cleanup, ["started"]))
    assert inbox.everywhere(failed, ["started"])  # told once, not at every look since

    result = synkler(relay, "upload", "retry", "run-a.dat")
    assert result.returncode == 0, result.stdout + result.stderr
    relay.wait_for("the cleared notice", lambda: inbox.everywhere(failed, ["started", "cleared"]), timeout=90)
    assert inbox.everywhere(cleanup, ["started"])

    mail, over_tls, logged_in = inbox.mails[0]
    assert over_tls and logged_in
    assert mail["From"] == "synkler@relay.test" and mail["To"] == "ops@relay.test"
    assert mail["Subject"].startswith(f"[synkler {relay.instance}/")
    assert "what to do: " in mail.get_payload(decode=True).decode()  # type: ignore[union-attr]


def test_a_stopped_download_is_told_silent_by_central_and_cleared_when_it_is_back(make_relay, inbox):
    relay = make_relay()
    relay.write_config("central", {"alerts": inbox.settings(silent_minutes=0.05)})
    relay.start()
    relay.wait_for(
        "download's first report", lambda: "connected to broker" in relay.log_path("download").read_text()
    )
    relay.stop("download")
    key = "agent-silent:download"
    relay.wait_for("the silent notice", lambda: inbox.everywhere(key, ["started"]), timeout=60)
    [n] = [n for m in inbox.messages("webhook") for n in m["notices"] if n["key"] == key]
    assert n["summary"].startswith("download agent download stopped for ") and n["details"]["stopped"] is True
    relay.start("download")
    relay.wait_for("the cleared notice", lambda: inbox.everywhere(key, ["started", "cleared"]), timeout=60)


def test_a_broker_that_refuses_the_login_is_told_and_cleared_once_the_password_is_right(make_relay, inbox):
    relay = make_relay()
    settings = {"alerts": inbox.settings()}
    relay.write_config("upload", {**settings, "broker_password": "not-the-password"})
    relay.start("upload")
    key = "needs-person:broker"
    relay.wait_for("the notice", lambda: inbox.everywhere(key, ["started"]), timeout=60)
    [n] = [n for m in inbox.messages("webhook") for n in m["notices"] if n["key"] == key]
    assert n["severity"] == "error" and "refuses the login of the upload agent" in n["summary"]
    # A send the agent has not recorded as done when it stops goes out again at its next start (by
    # design: never lost, rarely twice): wait for the record, so the test counts what it means to.
    relay.wait_for("the sends recorded", lambda: _queued_notices(relay, "upload") == 0)
    relay.stop("upload")
    relay.write_config("upload", settings)
    relay.start("upload")
    relay.wait_for("the cleared notice", lambda: inbox.everywhere(key, ["started", "cleared"]), timeout=60)


def test_alerts_test_sends_a_test_notice_on_every_channel_and_says_what_each_answered(make_relay, inbox):
    relay = make_relay()
    relay.write_config("central", {"alerts": inbox.settings()})
    result = synkler(relay, "central", "alerts", "test")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", "webhook:"], ["ok", "email:"], ["ok", "command:"]]
    webhook, mail, command = lines
    assert webhook.endswith(": HTTP 200 OK") and "/hook" not in webhook  # the path may be a secret
    assert "through 127.0.0.1:" in mail and mail.endswith(": SMTP 250 OK")
    assert command.endswith(f"{sys.executable} exited with 0")
    for channel in ("webhook", "email", "command"):
        assert inbox.told(channel, "test") == ["started"], channel
    [hooked] = inbox.messages("webhook")
    summary = "a test notice from central agent central: this channel works"
    assert hooked["text"] == f"[synkler {relay.instance}/central] started: {summary}"
    [(sent, _tls, _login)] = inbox.mails
    assert email.utils.parsedate_to_datetime(sent["Date"]).tzinfo is not None
    assert re.fullmatch(r"<[^@<>\s]+@relay\.test>", sent["Message-ID"])

    # Nothing is recorded: the agent, when it runs, has no notice of the test to send.
    state = relay.workdir / "central" / "state.sqlite"
    assert not state.exists()


def test_alerts_test_says_which_channel_failed_and_exits_1(make_relay, inbox):
    relay = make_relay()
    settings = inbox.settings()
    settings["webhook"] = {"url": f"http://127.0.0.1:{free_port()}/hook"}
    settings["command"] = {"argv": [sys.executable, "-c", "import sys; sys.exit('no pager today')"]}
    relay.write_config("upload", {"alerts": settings})
    result = synkler(relay, "upload", "alerts", "test")
    assert result.returncode == 1, result.stdout + result.stderr
    webhook, mail, command = result.stdout.splitlines()
    assert webhook.startswith("FAIL  webhook: POST to http://127.0.0.1:") and "Connection refused" in webhook
    assert mail.startswith("ok    email: ") and inbox.told("email", "test") == ["started"]
    assert command.startswith("FAIL  command: ") and command.endswith("exited with 1: no pager today")

    # The mail server's refusal, in its words.
    wrong = inbox.workdir / "wrong-password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    relay.write_config("upload", {"alerts": {"email": {**settings["email"], "password_file": str(wrong)}}})
    result = synkler(relay, "upload", "alerts", "test")
    assert result.returncode == 1, result.stdout + result.stderr
    [mail] = result.stdout.splitlines()
    assert mail.startswith("FAIL  email: mail to ops@relay.test through 127.0.0.1:"), mail
    assert ": SMTPAuthenticationError: SMTP 535 " in mail and "b'" not in mail, mail


def test_check_lists_the_alert_channels_without_sending(make_relay, inbox):
    relay = make_relay()
    relay.write_config("central", {"alerts": inbox.settings()})
    result = synkler(relay, "central", "check")
    said = [line for line in result.stdout.splitlines() if " alerts: " in line]
    assert [line.split()[:3] for line in said] == [
        ["ok", "alerts:", "webhook:"],
        ["ok", "alerts:", "email:"],
        ["ok", "alerts:", "command:"],
    ], result.stdout
    assert "mail to ops@relay.test through 127.0.0.1:" in said[1] and "(starttls, login synkler)" in said[1]
    assert inbox.messages("webhook") == inbox.mails == inbox.messages("command") == []
