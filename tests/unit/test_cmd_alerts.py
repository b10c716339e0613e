"""What `synkler check` and `synkler alerts test` say of a channel: where it sends, never a secret."""

from __future__ import annotations

from synkler.cli.cmd_alerts import where
from synkler.config import CommandChannel, EmailChannel, WebhookChannel


def test_a_webhook_is_shown_by_its_host_only_never_its_token_or_login():
    hook = WebhookChannel("https://bot:s3cret@hooks.example.org:8443/services/T000/B000/XXXXSECRET?x=1")
    assert where(hook) == "POST to https://hooks.example.org:8443/…"
    assert where(WebhookChannel("http://[::1]/hook")) == "POST to http://[::1]/…"


def test_mail_and_command_channels_say_where_they_go():
    to = ("ops@example.org", "b@example.org")
    mail = EmailChannel(host="mail.example.org", to=to, sender="s@x.org", username="synkler", password="pw")
    said = "mail to ops@example.org, b@example.org through mail.example.org:587 (starttls, login synkler)"
    assert where(mail) == said
    assert "pw" not in where(mail)
    assert where(CommandChannel(("/usr/local/bin/page-me", "--urgent"))) == "run /usr/local/bin/page-me"
