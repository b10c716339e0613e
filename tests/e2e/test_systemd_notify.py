"""systemd's notification protocol spoken by a real agent process: the test plays systemd, binding
the datagram socket that `$NOTIFY_SOCKET` names, as the `Type=notify` unit with `WatchdogSec=` has
it: READY=1 once the agent works (or waits as a standby), WATCHDOG=1 from its main loop, STOPPING=1
on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

TIMEOUT = 60


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: every datagram, in order, with its arrival time."""

    def __init__(self, abstract: bool):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: str | None = None
        if abstract:
            name = f"synkler-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:  # a short path: sun_path holds ~108 bytes, pytest's tmp_path may not fit
            self._dir = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
            path = os.path.join(self._dir, "notify")
            self.sock.bind(path)
            self.env_value = path
        self.messages: list[tuple[float, dict[str, str]]] = []

    def env(self, watchdog_sec: float = 1.0) -> dict[str, str]:
        env = dict(os.environ, NOTIFY_SOCKET=self.env_value, WATCHDOG_USEC=str(int(watchdog_sec * 1e6)))
        env.pop("WATCHDOG_PID", None)
        return env

    def wait_for(self, what: str, predicate, timeout: float = 30) -> dict[str, str]:
        """Receive until a message satisfies `predicate`; return it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout} s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append((time.monotonic(), fields))
            if predicate(fields):
                return fields

    def close(self) -> None:
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def systemd(request) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(abstract=request.param == "abstract")
    yield fake
    fake.close()


@contextmanager
def agent(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_agent_says_ready_then_pings_the_watchdog_and_says_stopping_on_sigterm(
    make_relay, systemd
) -> None:
    relay = make_relay()
    with agent(relay.command("central", "-v", "run"), systemd.env(1.0), relay.log_path("central")) as proc:
        ready = systemd.wait_for("READY=1", lambda m: m.get("READY") == "1")
        assert ready["STATUS"] == f"central agent 'central' of instance '{relay.instance}': working"
        ready_at = systemd.messages[-1][0]
        systemd.wait_for("a first WATCHDOG=1", lambda m: m.get("WATCHDOG") == "1", 5)
        systemd.wait_for("a second WATCHDOG=1", lambda m: m.get("WATCHDOG") == "1", 5)
        pings = [t for t, m in systemd.messages if m.get("WATCHDOG") == "1" and t > ready_at]
        assert len(pings) >= 2 and all(b - a >= 0.45 for a, b in zip(pings, pings[1:]))  # ≤ 1 per 0.5 s

        proc.send_signal(signal.SIGTERM)
        stopping = systemd.wait_for("STOPPING=1", lambda m: m.get("STOPPING") == "1", 10)
        assert stopping["STATUS"] == "stopping"
        assert proc.wait(TIMEOUT) == 0


def test_a_standby_is_ready_saying_so_keeps_pinging_and_says_working_once_it_takes_over(make_relay) -> None:
    relay = make_relay()
    relay.start("central")
    relay.wait_for(
        "central to connect", lambda: "connected to broker" in relay.log_path("central").read_text()
    )
    base = relay.workdir / "central-2"
    base.mkdir()
    cfg = yaml.safe_load(relay.configs["central"].read_text())
    cfg.update(pidfile=str(base / "synkler.pid"), state_db=str(base / "state.sqlite"))
    conf = base / "synkler.conf"
    conf.write_text(yaml.safe_dump(cfg))
    systemd = FakeSystemd(abstract=True)
    try:
        command = [sys.executable, "-m", "synkler", "-c", str(conf), "-v", "run"]
        with agent(command, systemd.env(1.0), base / "agent.log") as standby:
            ready = systemd.wait_for("READY=1", lambda m: m.get("READY") == "1")
            assert "standby, another agent works" in ready["STATUS"]
            ready_at = systemd.messages[-1][0]
            # Waiting is not a hang: the watchdog keeps being fed (WatchdogSec=1 here).
            for n in range(4):
                systemd.wait_for(f"WATCHDOG=1 #{n + 1} as a standby", lambda m: m.get("WATCHDOG") == "1", 5)
            assert standby.poll() is None
            assert all(m.get("READY") != "1" or t == ready_at for t, m in systemd.messages)  # said once

            relay.stop("central")  # the standby takes over once the queue had no consumer for 40 s
            working = systemd.wait_for(
                "the standby taking over", lambda m: "working" in m.get("STATUS", ""), 90
            )
            assert working["READY"] == "1"
            standby.send_signal(signal.SIGTERM)
            systemd.wait_for("STOPPING=1", lambda m: m.get("STOPPING") == "1", 10)
            assert standby.wait(TIMEOUT) == 0
    finally:
        systemd.close()
