"""The rabbitmqctl commands of `synkler broker-setup` (synkler.broker.users)."""

from __future__ import annotations

from synkler.broker.users import commands


def test_a_password_that_starts_with_a_dash_is_not_taken_for_an_option_by_rabbitmqctl():
    # secrets.token_urlsafe, which broker-setup uses, starts one password in 64 with '-'.
    argv = commands("lab", ["up"], passwords={"central@lab": "-Xy_9", "download@lab": "plain"})
    adds = [a for a in argv if a[0] == "add_user"]
    assert adds[0] == ["add_user", "central@lab", "--", "-Xy_9"]
    assert adds[1] == ["add_user", "download@lab", "--", "plain"]
    assert adds[2] == ["add_user", "up@lab"]  # no password: rabbitmqctl reads it from its input
