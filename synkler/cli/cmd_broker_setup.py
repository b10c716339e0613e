"""`synkler broker-setup`: the rabbitmqctl commands that make the relay's broker users, one per agent,
with new random passwords (synkler.broker.users decides the permissions)."""

from __future__ import annotations

import argparse
import secrets
import shlex

from ..broker.names import broker_user
from ..broker.users import commands
from ..config import Config
from ..errors import ExitStatus


def cmd_broker_setup(cfg: Config, args: argparse.Namespace) -> int:
    uploads = args.upload or [cfg.name if cfg.mode == "upload" else "upload"]
    # Central with routes: a user for each download they name.
    downloads = cfg.destinations if cfg.mode == "central" and cfg.routes else [cfg.download_name]
    names = [cfg.central_name, *downloads, *uploads]
    passwords = {broker_user(cfg.id, n): secrets.token_urlsafe(24) for n in names}
    print(f"# broker users of synkler instance {cfg.id!r} on vhost {cfg.broker_vhost!r}")
    print("# This holds new passwords: keep it private, run it on the broker's host, then delete it.")
    print("# On a RabbitMQ cluster, run it on one node: users and permissions are the cluster's.")
    made = commands(
        cfg.id,
        uploads,
        vhost=cfg.broker_vhost,
        passwords=passwords,
        central=cfg.central_name,
        download=downloads,
    )
    for argv in made:
        print(shlex.join(["rabbitmqctl", *argv]))
    print("#\n# Then, in each agent's synkler.conf (or broker_password_file):")
    for user, password in passwords.items():
        name = user.split("@")[0]
        print(f"#   {name}: authenticate: true, broker_username: {user}, broker_password: {password}")
    print("# Start central first: only its user may declare the instance's exchanges and dead-letter queue.")
    return ExitStatus.OK
