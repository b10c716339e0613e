"""All three roles on one machine, as real subprocesses: for `synkler demo` and the end-to-end tests.

Each role gets its own file_dir, config file, state database, pidfile and log under one work
directory; data crosses through rsync over ssh to a private sshd on loopback, messages through the
local RabbitMQ under a unique instance id.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import yaml

from .. import bundles
from ..agents.download import Down
from ..agents.upload import Up
from ..broker.amqp import Broker, BrokerParams
from ..config import load_config
from ..errors import BrokerError
from ..hops import transfer
from ..state import Entry, State
from .sshd import LocalSshd

ROLES = ("upload", "central", "download")


class LocalRelay:
    def __init__(
        self,
        workdir: Path,
        sshd: LocalSshd,
        instance: str,
        *,
        broker_host: str = "127.0.0.1",
        broker_port: int = 5672,
        settings: dict[str, dict[str, Any]] | None = None,
        verbose: bool = True,
        admin: BrokerParams | None = None,
        extra: dict[str, str] | None = None,
    ):
        """`admin`: how `close` reaches the broker to remove the instance's queues (default: guest
        on broker_host:broker_port; another port where the agents' needs TLS). `extra`: more agents
        beside the three, by key (their work directory, and their `name` unless settings give one)
        -> mode: a relay with several uploads or downloads. Every method that takes a role takes
        such a key too."""
        self.workdir = Path(workdir)
        self.sshd = sshd
        self.instance = instance
        self.broker = BrokerParams(broker_host, broker_port)
        self.admin = admin or self.broker
        self.verbose = verbose
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.modes = {**{role: role for role in ROLES}, **(extra or {})}  # agent key -> its mode
        self.dirs = {key: self.workdir / key / "files" for key in self.modes}
        self.configs = {key: self.workdir / key / "synkler.conf" for key in self.modes}
        for key, mode in self.modes.items():
            self.dirs[key].mkdir(parents=True, exist_ok=True)
            named = {} if key == mode else {"name": key}
            self.write_config(key, {**named, **(settings or {}).get(key, {})})

    def add_agent(self, key: str, mode: str, extra: dict[str, Any]) -> None:
        """One more agent of `mode` (e.g. a second central of a pool), known here as `key`: its own
        file_dir, config, state and log under <workdir>/<key>; started and stopped as the roles are."""
        self.modes[key] = mode
        self.dirs[key] = self.workdir / key / "files"
        self.configs[key] = self.workdir / key / "synkler.conf"
        self.dirs[key].mkdir(parents=True, exist_ok=True)
        self.write_config(key, extra)

    def write_config(self, role: str, extra: dict[str, Any]) -> None:
        base = self.workdir / role
        cfg: dict[str, Any] = {
            "mode": self.modes[role],
            "id": self.instance,
            "file_dir": str(self.dirs[role]),
            "synkler_server": self.broker.host,
            "broker_port": self.broker.port,
            "pidfile": str(base / "synkler.pid"),
            "state_db": str(base / "state.sqlite"),
            "keep_minutes": 30,
        }
        if self.modes[role] != "central":
            cfg["central_host"] = self.sshd.target
            cfg["rsync_opts"] = self.sshd.rsync_opts()
        cfg.update(extra)
        self.configs[role].write_text(yaml.safe_dump(cfg, sort_keys=False))

    def log_path(self, role: str) -> Path:
        return self.workdir / role / "agent.log"

    def command(self, role: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "synkler", "-c", str(self.configs[role]), *args]

    # processes -----------------------------------------------------------------------------------

    def start(self, *roles: str, flags: Sequence[str] | None = None) -> None:
        """Start the agents of `roles` (all three by default) with `flags` (default: --debug if
        verbose, else -v), each logging to its log_path."""
        for role in roles or self.modes:
            if role in self.procs and self.procs[role].poll() is None:
                continue
            log = open(self.log_path(role), "ab")
            if flags is None:
                flags = ["--debug"] if self.verbose else ["-v"]
            self.procs[role] = subprocess.Popen(
                self.command(role, *flags, "run"), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
            log.close()

    def stop(self, *roles: str, timeout: float = 30) -> None:
        """SIGTERM and wait: the orderly stop a user (or systemd) does."""
        for role in roles or self.modes:
            proc = self.procs.pop(role, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self, role: str) -> None:
        """SIGKILL: the crash nothing may survive badly."""
        proc = self.procs.pop(role)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def alive(self, role: str) -> bool:
        proc = self.procs.get(role)
        return proc is not None and proc.poll() is None

    def close(self) -> None:
        self.stop()
        for role, mode in self.modes.items():
            if mode != "central":
                # A SIGKILLed agent leaves its ssh master connections to time out: end them now.
                cfg = load_config(self.configs[role], check_dirs=False)
                for host in dict.fromkeys([cfg.central_host, *cfg.centrals.values()]):
                    transfer.close_shared_connection(dataclasses.replace(cfg, central_host=host))
        # The agents' names as configured (an upload agent may have its own), besides the roles'.
        names = {load_config(self.configs[role], check_dirs=False).name for role in self.modes}
        try:
            broker = Broker(self.admin, self.instance, "admin")
            broker.connect(consume=False)
            broker.delete_instance(sorted(names | set(ROLES)))
            broker.close()
        except BrokerError:
            pass

    def __enter__(self) -> LocalRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # observing -----------------------------------------------------------------------------------

    def entries(self, role: str) -> list[Entry]:
        path = self.workdir / role / "state.sqlite"
        if not path.exists():
            return []
        state = State(path, readonly=True)
        try:
            return state.all()
        except Exception:  # the agent may be creating the schema right now
            return []
        finally:
            state.close()

    def states(self, role: str) -> dict[str, str]:
        return {e.name: e.state for e in self.entries(role)}

    def bundle_files(self, role: str) -> dict[str, list[bundles.Member]]:
        """The files of each bundle (synkler.bundles) at `role`, by the bundle's entry id."""
        path = self.workdir / role / "state.sqlite"
        if not path.exists():
            return {}
        state = State(path, readonly=True)
        try:
            return {e.id: bundles.of(state, e.id) for e in state.all() if e.kind == bundles.KIND}
        except Exception:  # the agent may be creating the schema right now
            return {}
        finally:
            state.close()

    def members(self, role: str) -> set[str]:
        """The names of the files that went in bundles at `role`."""
        return {m.name for found in self.bundle_files(role).values() for m in found}

    def wait_for(
        self, what: str, predicate: Callable[[], bool], timeout: float = 60, interval: float = 0.1
    ) -> None:
        """Poll `predicate` until true or the deadline; on timeout raise with the agents' log tails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for role, proc in list(self.procs.items()):
                if proc.poll() is not None:
                    raise AssertionError(
                        f"{role} agent exited ({proc.returncode}) while waiting for {what}\n"
                        + self.log_tail(role)
                    )
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n" + self.all_logs_tail())

    def log_tail(self, role: str, lines: int = 40) -> str:
        path = self.log_path(role)
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {role} log ---\n" + "\n".join(text.splitlines()[-lines:])

    def all_logs_tail(self) -> str:
        return "\n".join(self.log_tail(role) for role in self.modes)

    def all_done(self, names: set[str] | None = None) -> bool:
        """Every entry (or every named one: an entry, or a file of a bundle) is done at upload and
        download and delivered at central."""
        # The newest version of each name counts; older ones are superseded (withdrawn).
        up = {e.name: e.state for e in self.entries("upload") if e.state != Up.SUPERSEDED}
        down = self.states("download")
        if names is not None and not names <= set(up) | (self.members("upload") if bundled(up) else set()):
            return False
        return (
            bool(up)
            and all(s == Up.DONE for s in up.values())
            and all(s == Down.DONE for s in down.values())
            and (set(down) >= set(up))
        )


def bundled(names: dict[str, str]) -> bool:
    """Do these entries (name -> state) include a bundle (its name: synkler.bundles.name_of)?"""
    return any(n.startswith(bundles.PREFIX) for n in names)
