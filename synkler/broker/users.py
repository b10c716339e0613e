"""The broker users and permissions of an authenticated relay: one user per agent, least privilege.

`commands` gives the `rabbitmqctl` commands that make them; `synkler broker-setup` prints them.
Each agent's user `<name>@<id>` (see synkler.broker.amqp.broker_user) may
- declare, bind and read only the instance's exchanges and dead-letter queue, its own queue and its
  own holder queue (an authenticated agent declares no other agent's queue: each declares its own),
  and read the other agents' presence reports (their holder queues: `status --relay`);
- bind a queue to the instance's topic exchange only with its own name (topic read), so it cannot
  have another agent's messages copied to it;
- publish to that exchange only with the routing keys of the agents it talks to (topic write):
  upload and download only to `central`; central to anyone.
RabbitMQ checks the `user_id` of every publish against the login, so with `authenticate: true` an
agent believes a message only when the broker user of the agent it claims to come from sent it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .amqp import broker_user, exchange_name


def permissions(instance: str, mode: str, name: str) -> tuple[str, str, str, str, str]:
    """(configure, write, read, topic write, topic read) regular expressions for one agent."""
    base = re.escape(exchange_name(instance))
    own = re.escape(name)
    resources = f"^{base}(:dead|:holder|:agent:{own}|:holder:{own})?$"
    # Reading every agent's presence report (holder queue) is what `status --relay` does.
    readable = f"^{base}(:dead|:holder|:agent:{own}|:holder:[^:]+)?$"
    topic_write = ".*" if mode == "central" else "^central$"
    return resources, resources, readable, topic_write, f"^{own}$"


def commands(
    instance: str,
    uploads: Sequence[str],
    *,
    vhost: str = "/",
    passwords: Mapping[str, str] | None = None,
) -> list[list[str]]:
    """rabbitmqctl argument lists (without the program) that make the relay's users.

    `passwords`: user -> password; a user without one gets `add_user` without a password, which
    rabbitmqctl then reads from its standard input.
    """
    agents = [("central", "central"), ("download", "download"), *(("upload", u) for u in uploads)]
    out: list[list[str]] = []
    for mode, name in agents:
        user = broker_user(instance, name)
        password = (passwords or {}).get(user)
        configure, write, read, topic_write, topic_read = permissions(instance, mode, name)
        out += [
            # `--`: a password may start with '-' (token_urlsafe makes one in 64), which rabbitmqctl
            # would otherwise take for an option and refuse the command.
            ["add_user", user, *(["--", password] if password is not None else [])],
            ["set_permissions", "-p", vhost, user, configure, write, read],
            ["set_topic_permissions", "-p", vhost, user, exchange_name(instance), topic_write, topic_read],
        ]
    return out
