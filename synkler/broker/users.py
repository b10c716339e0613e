"""The broker users and permissions of an authenticated relay: one user per agent, least privilege.

`commands` gives the `rabbitmqctl` commands that make them; `synkler broker-setup` prints them.
Each agent's user `<name>@<id>` (see synkler.broker.names.broker_user) may
- configure (declare, delete) only its own queue, its own holder and lock queues (and synkler
  0.5's name of its queue, to empty and delete it); central's user also the
  instance's shared objects (the topic exchange, the presence exchange, the dead-letter exchange
  and queue), which it declares at its first start. So no upload or download login can delete,
  re-declare or re-type what the others rely on (they only check that those exist);
- write: publish to the instance's exchanges, bind its own queues;
- read its own queue and the other agents' presence reports (their holder queues: `status
  --relay`), and bind to the instance's exchanges; not the dead-letter queue (which read would let
  it purge), except central's user, which binds it;
- bind a queue to the instance's topic exchange only with its own name (topic read), so it cannot
  have another agent's messages copied to it;
- publish to that exchange only with the routing keys of the agents it talks to (topic write):
  upload and download only to `central`; central to anyone;
- publish a presence report only under its own name (topic write on the presence exchange), so it
  cannot write another agent's.
RabbitMQ checks the `user_id` of every publish against the login, so with `authenticate: true` an
agent believes a message only when the broker user of the agent it claims to come from sent it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .names import broker_user, exchange_name, presence_exchange


class Permissions(NamedTuple):
    """Regular expressions of one agent's user (rabbitmqctl set_permissions, set_topic_permissions)."""

    configure: str
    write: str
    read: str
    topic_write: str  # on the instance's exchange
    topic_read: str
    presence: str  # topic write and read on the presence exchange


def permissions(instance: str, mode: str, name: str, central: str = "central") -> Permissions:
    """The permissions of one agent's broker user; `central` is the central agent's name, the only
    one upload and download send to."""
    base = re.escape(exchange_name(instance))
    own = re.escape(name)
    # Only central's user may declare (and so delete) the shared objects: the exchanges, the
    # dead-letter queue; '' after the base is the topic exchange itself.
    shared = "|:dead|:presence|" if mode == "central" else ""
    # `:agent:<own>`: synkler 0.5's classic queue, which the agent empties into its quorum queue
    # `:inbox:<own>` and deletes (removed in 0.8). `:lock:<own>`: the exclusive queue that makes the
    # agent the only active one of its name.
    mine = f":inbox:{own}|:agent:{own}|:holder:{own}"
    configure = f"^{base}({mine}|:lock:{own}{shared})$"
    write = f"^{base}(|:dead|:presence|{mine})$"
    dead = "|:dead" if mode == "central" else ""
    # Reading every agent's presence report (holder queue) is what `status --relay` does.
    read = f"^{base}(|:presence{dead}|:inbox:{own}|:agent:{own}|:holder:[^:]+)$"
    topic_write = ".*" if mode == "central" else f"^{re.escape(central)}$"
    return Permissions(configure, write, read, topic_write, f"^{own}$", f"^{own}$")


def commands(
    instance: str,
    uploads: Sequence[str],
    *,
    vhost: str = "/",
    passwords: Mapping[str, str] | None = None,
    central: str = "central",
    download: str | Sequence[str] = "download",
) -> list[list[str]]:
    """rabbitmqctl argument lists (without the program) that make the relay's users.

    `passwords`: user -> password; a user without one gets `add_user` without a password, which
    rabbitmqctl then reads from its standard input.
    """
    downloads = [download] if isinstance(download, str) else list(download)  # several: central's routes
    agents = [("central", central), *(("download", d) for d in downloads), *(("upload", u) for u in uploads)]
    out: list[list[str]] = []
    for mode, name in agents:
        user = broker_user(instance, name)
        password = (passwords or {}).get(user)
        p = permissions(instance, mode, name, central)
        topic = ["set_topic_permissions", "-p", vhost, user]
        out += [
            # `--`: a password may start with '-' (token_urlsafe makes one in 64), which rabbitmqctl
            # would otherwise take for an option and refuse the command.
            ["add_user", user, *(["--", password] if password is not None else [])],
            ["set_permissions", "-p", vhost, user, p.configure, p.write, p.read],
            [*topic, exchange_name(instance), p.topic_write, p.topic_read],
            # Only its own presence report (the holder queue bound with its own name).
            [*topic, presence_exchange(instance), p.presence, p.presence],
        ]
    return out
