"""Small helpers for the end-to-end tests and the fault suite (tests/ is on sys.path through its
conftest.py, so both import this module by name)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pika

from synkler.broker.amqp import BrokerParams
from synkler.broker.names import dead_name
from synkler.hops.checksum import md5_entry

TOOLS = Path(__file__).parent.parent / "tools"  # rsync wrappers that corrupt, cut off or fill disks


def place(upload_dir: Path, name: str, data: bytes) -> str:
    """Write a file next to file_dir and rename it in, as a careful writer does; return its md5."""
    tmp = upload_dir.parent / ("." + name + ".writing")
    tmp.write_bytes(data)
    md5 = md5_entry(tmp)
    os.rename(tmp, upload_dir / name)
    return md5


RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\t' + sys.argv[3] + '\\n')"


def recorder(log: Path) -> str:
    """A cleanup_script that appends '%f<TAB>%F' to `log`, run without a shell."""
    return shlex.join([sys.executable, "-c", RECORD, str(log), "%f", "%F"])


def runs(log: Path) -> list[tuple[str, str]]:
    """What `recorder` wrote: (%f, %F) of each run."""
    if not log.exists():
        return []
    return [tuple(line.split("\t")) for line in log.read_text().splitlines()]


def write_random(path: Path, size: int, chunk: int = 8 << 20) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


def tree_listing(top: Path) -> list[str]:
    """Relative paths under `top`, for "nothing left behind" assertions."""
    return sorted(str(p.relative_to(top)) for p in top.rglob("*"))


def is_clean(relay) -> bool:
    """No staging debris at central or download."""
    # Central keeps one (empty) staging directory per upload agent.
    staging = relay.dirs["central"] / relay.instance / "staging"
    return all((staging / p).is_dir() and "/" not in p for p in tree_listing(staging)) and (
        tree_listing(relay.dirs["download"] / f".synkler-{relay.instance}") == []
    )


def assert_clean(relay) -> None:
    """No staging debris at central or download once everything is delivered."""
    staging = relay.dirs["central"] / relay.instance / "staging"
    assert is_clean(relay), (
        tree_listing(staging),
        tree_listing(relay.dirs["download"] / f".synkler-{relay.instance}"),
    )


def deliver(relay, md5s: dict[str, str], timeout: float = 60) -> None:
    relay.wait_for(f"{sorted(md5s)} delivered", lambda: relay.all_done(set(md5s)), timeout)
    down = relay.dirs["download"]
    for name, md5 in md5s.items():
        assert md5_entry(down / name) == md5, name
    assert_clean(relay)


START_UP = 60  # seconds an agent may take to start on a loaded machine: LocalRelay.wait_for's default


def started(relay, *roles: str, timeout: float = START_UP) -> None:
    """Start the agents of `roles` (all by default) and wait until each has connected to the broker,
    so that a test's own deadlines count from there, not from the start of processes that a loaded
    machine may take many seconds to bring up. A restarted agent waits for a line of its own (the
    lines are counted: its log is appended to)."""
    roles = tuple(r for r in roles or relay.modes if not relay.alive(r))  # start() skips those
    before = {role: _connected_lines(relay, role) for role in roles}
    relay.start(*roles)
    for role in roles:
        relay.wait_for(f"{role} connected", lambda r=role: _connected_lines(relay, r) > before[r], timeout)


def _connected_lines(relay, role: str) -> int:
    path = relay.log_path(role)
    return path.read_text(errors="replace").count("connected to broker") if path.exists() else 0


def every_log_says(relay, text: str) -> bool:
    """Has each of the three agents logged `text` (e.g. "connected to broker")?"""
    return all(text in relay.log_path(role).read_text() for role in ("upload", "central", "download"))


def close_connections_of(rabbitmqctl: str, instance: str) -> int:
    """Close, from the broker side, every connection of one synkler instance (and nobody else's)."""
    listing = subprocess.run(
        [rabbitmqctl, "-q", "list_connections", "pid", "client_properties"],
        check=True,
        capture_output=True,
        text=True,
    )
    closed = 0
    for line in listing.stdout.splitlines()[1:]:
        pid, _, props = line.partition("\t")
        if f'{{"connection_name","synkler {instance} ' in props:
            subprocess.run([rabbitmqctl, "-q", "close_connection", pid, "synkler test"], check=True)
            closed += 1
    return closed


def take_dead_letters(params: BrokerParams, instance: str) -> list[bytes]:
    """Drain the instance's dead-letter queue (plain AMQP, as the test broker speaks it)."""
    assert params.tls is None, "a plain AMQP broker"
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(
            params.host,
            params.port,
            params.vhost,
            pika.PlainCredentials(params.username, params.password),
        )
    )
    try:
        ch = conn.channel()
        bodies: list[bytes] = []
        while True:
            method, _props, body = ch.basic_get(dead_name(instance), auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)
    finally:
        conn.close()
