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
    uploads = args.upload or list(cfg.uploads) or [cfg.name if cfg.mode == "upload" else "upload"]
    # A pool of centrals: upload's and download's `centrals` name them all; a central knows itself.
    centrals = args.central or list(cfg.centrals) or [cfg.central_name]
    pool = bool(cfg.centrals or cfg.uploads or len(centrals) > 1)
    # Central with routes: a user for each download they name.
    downloads = cfg.destinations if cfg.mode == "central" and cfg.routes else [cfg.download_name]
    names = [*centrals, *downloads, *uploads]
    passwords = {broker_user(cfg.id, n): secrets.token_urlsafe(24) for n in names}
    print(f"# broker users of synkler instance {cfg.id!r} on vhost {cfg.broker_vhost!r}")
    print("# This holds new passwords: keep it private, run it on the broker's host, then delete it.")
    print("# On a RabbitMQ cluster, run it on one node: users and permissions are the cluster's.")
    if pool:
        print(f"# A pool of centrals: {', '.join(centrals)}; upload agents: {', '.join(uploads)}.")
        if cfg.mode == "central" and not args.central:
            print("# Another central of the pool? Name every one with --central (or use upload's config).")
    made = commands(
        cfg.id,
        uploads,
        vhost=cfg.broker_vhost,
        passwords=passwords,
        central=centrals,
        download=downloads,
        pool=pool,
    )
    for argv in made:
        print(shlex.join(["rabbitmqctl", *argv]))
    print("#\n# Then, in each agent's synkler.conf (or broker_password_file):")
    for user, password in passwords.items():
        name = user.split("@")[0]
        print(f"#   {name}: authenticate: true, broker_username: {user}, broker_password: {password}")
    print("# Start a central first: only a central's user may declare the instance's exchanges and")
    print("# dead-letter queue.")
    if pool:
        print("# A central takes an upload agent's offers once that agent has run: only its user")
        print("# declares its offers queue.")
    return ExitStatus.OK
