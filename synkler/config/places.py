"""Where the agent of a configuration keeps its state database, seen from any shell.

An agent's default state directory depends on its environment (systemd's $STATE_DIRECTORY, then
$XDG_STATE_HOME, then ~/.local/state), so `synkler status` run from a root shell would look in
another place than the agent run by the unit. The commands that read or write the agent's database
look in every place the agent may have used, and say where they looked when none holds it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .keys import Config, state_dirs


@dataclass(frozen=True)
class StatePlace:
    """The configuration with state_db (and pidfile) where the agent keeps them, the places looked
    in, and the other databases of this agent found on the way (an operator should know of those)."""

    cfg: Config
    looked: tuple[Path, ...]
    others: tuple[Path, ...]

    @property
    def found(self) -> bool:
        return self.cfg.state_db.exists()

    def missing(self) -> str:
        """Why there is nothing to show: where the agent of this configuration would keep it."""
        where = " nor ".join(str(p) for p in self.looked)
        hint = "" if "state_db" in self.cfg.given else " (state_db in the configuration fixes its place)"
        return (
            f"no state database of the {self.cfg.mode} agent of {self.cfg.path} at {where}: has the agent "
            f"run with this configuration?{hint}"
        )


def find_state(cfg: Config, environ: Mapping[str, str] | None = None, home: Path | None = None) -> StatePlace:
    """Where the agent of `cfg` keeps its state: state_db when the configuration sets it; else the
    first default place that holds the database, the one of this environment first."""
    if "state_db" in cfg.given:
        return StatePlace(cfg, (cfg.state_db,), ())
    environ = os.environ if environ is None else environ
    dirs = state_dirs(environ, Path.home() if home is None else home)
    looked = tuple(d / cfg.state_db.name for d in dirs)
    existing = [p for p in looked if p.exists()]
    if not existing:
        return StatePlace(cfg, looked, ())
    db = existing[0]
    # The pidfile sits beside the database when both are defaults: the agent that made one made both.
    pidfile = cfg.pidfile if "pidfile" in cfg.given else db.with_name(cfg.pidfile.name)
    return StatePlace(replace(cfg, state_db=db, pidfile=pidfile), looked, tuple(existing[1:]))
