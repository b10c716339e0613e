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
In a pool of centrals (`pool`: docs/architecture.md, "A pool of centrals") each central has a user
of its own, with central's permissions, and
- an upload agent's user also configures (declares), binds and reads its own offers queue
  `synkler:<id>:offers:<name>` (RabbitMQ asks read of whoever declares a queue with a dead-letter
  target), and publishes to it (routing key `offers:<name>`) and to every
  central of the pool; download's publishes to every central;
- each central's user reads (consumes) the offers queues of the upload agents it takes offers from,
  and may neither declare, bind nor delete them; it publishes only to those upload agents and to
  the downloads (no offer, nothing to another central). Reading a queue includes purging it in
  RabbitMQ: a central could drop offers it consumes, as it could by taking them and doing nothing.
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


def permissions(
    instance: str,
    mode: str,
    name: str,
    central: str | Sequence[str] = "central",
    offers: Sequence[str] = (),
    downloads: Sequence[str] = (),
) -> Permissions:
    """The permissions of one agent's broker user; `central`: the name of the central (or of each
    central of a pool) upload and download send to; `offers`: in a pool, the upload agents whose
    offers queues this agent uses (an upload agent: its own; a central: those it takes offers
    from, and then, with `downloads`, the only agents it sends to)."""
    base = re.escape(exchange_name(instance))
    own = re.escape(name)
    # Only central's user may declare (and so delete) the shared objects: the exchanges, the
    # dead-letter queue; '' after the base is the topic exchange itself.
    shared = "|:dead|:presence|" if mode == "central" else ""
    # `:agent:<own>`: synkler 0.5's classic queue, which the agent empties into its quorum queue
    # `:inbox:<own>` and deletes (removed in 0.8). `:lock:<own>`: the exclusive queue that makes the
    # agent the only active one of its name.
    mine = f":inbox:{own}|:agent:{own}|:holder:{own}"
    # A pool: an upload agent declares, binds and reads its own offers queue (declaring a queue with
    # a dead-letter target takes read on it: RabbitMQ's check); a central only reads (consumes).
    uploads = [re.escape(u) for u in offers]
    feeds = f"|:offers:{own}" if mode == "upload" and offers else ""
    takes = f"|:offers:{_either(uploads)}" if mode == "central" and offers else feeds
    configure = f"^{base}({mine}{feeds}|:lock:{own}{shared})$"
    write = f"^{base}(|:dead|:presence|{mine}{feeds})$"
    dead = "|:dead" if mode == "central" else ""
    # Reading every agent's presence report (holder queue) is what `status --relay` does.
    read = f"^{base}(|:presence{dead}|:inbox:{own}|:agent:{own}|:holder:[^:]+{takes})$"
    keys = _routes(mode, own, central, uploads, downloads)
    topic_read = f"^{_either([own, f'offers:{own}'] if feeds else [own])}$"
    return Permissions(configure, write, read, keys, topic_read, f"^{own}$")


def _routes(
    mode: str, own: str, central: str | Sequence[str], uploads: Sequence[str], downloads: Sequence[str]
) -> str:
    """The routing keys an agent may publish with (`own`, `uploads`: escaped already): upload and
    download to the central(s), an upload agent of a pool also its offers (`offers:<name>`). Central
    alone to any agent; in a pool, to its upload agents and downloads only (no other central, no
    offer)."""
    if mode != "central":
        keys = [re.escape(c) for c in ([central] if isinstance(central, str) else central)]
        return f"^{_either([*keys, f'offers:{own}'] if mode == 'upload' and uploads else keys)}$"
    if not uploads:
        return ".*"
    return f"^{_either([*uploads, *(re.escape(d) for d in downloads)])}$"


def _either(patterns: Sequence[str]) -> str:
    """One of `patterns` (already escaped): itself alone, else a group of alternatives."""
    return patterns[0] if len(patterns) == 1 else f"({'|'.join(patterns)})"


def commands(
    instance: str,
    uploads: Sequence[str],
    *,
    vhost: str = "/",
    passwords: Mapping[str, str] | None = None,
    central: str | Sequence[str] = "central",
    download: str | Sequence[str] = "download",
    pool: bool = False,
) -> list[list[str]]:
    """rabbitmqctl argument lists (without the program) that make the relay's users.

    `central`: central's name, or the names of the centrals of a pool; `pool`: the relay is a pool
    of centrals (`centrals` at upload and download, `uploads` at each central), whose offers queues
    the upload agents' and centrals' users then use. `passwords`: user -> password; a user without
    one gets `add_user` without a password, which rabbitmqctl then reads from its standard input.
    """
    centrals = [central] if isinstance(central, str) else list(central)
    downloads = [download] if isinstance(download, str) else list(download)  # several: central's routes
    agents = [
        *(("central", c, tuple(uploads) if pool else ()) for c in centrals),
        *(("download", d, ()) for d in downloads),
        *(("upload", u, (u,) if pool else ()) for u in uploads),
    ]
    out: list[list[str]] = []
    for mode, name, offers in agents:
        user = broker_user(instance, name)
        password = (passwords or {}).get(user)
        p = permissions(instance, mode, name, centrals, offers, downloads)
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
