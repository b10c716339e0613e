"""Three hosts on one machine: network namespaces joined by rate-limited veth links, for `--only links`.

    upload ns  --veth, tbf RATE--  central ns  --veth, tbf RATE--  download ns
    10.201.1.1              10.201.1.2 | 10.201.2.1              10.201.2.2
                              10.201.0.1 (on lo: where central's sshd listens)

Each end of each link has a token bucket (``tc qdisc ... tbf``) at the link's rate, so a hop moves
data at that rate in either direction. These addresses exist only inside the namespaces this module
makes, and go away with them. No delay is added (this kernel has no netem).

RabbitMQ: the shared broker listens on 127.0.0.1 of the root namespace only. Each namespace gets a
small TCP forwarder: a listening socket made inside the namespace on its own 127.0.0.1 at the
broker's port, whose connections this process carries to the broker in the root namespace. The
agents keep their usual configuration (broker at 127.0.0.1).

Needs root, iproute2 (``ip``, ``tc``) and the kernel's tbf qdisc. ``missing()`` says what is missing
here; ``Topology`` is a context manager that removes its namespaces (and with them the links) on
exit, also on an exception or Ctrl-C; namespaces left by a run that was killed outright are removed
by the next run (their names carry the pid of the run that made them).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import TypeVar

CLONE_NEWNET = 0x40000000
CENTRAL_ADDR = "10.201.0.1"
PREFIX = "synkler-bench-"
_libc = ctypes.CDLL(None, use_errno=True)
H = TypeVar("H", bound="Hosts")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)


def _check(argv: list[str]) -> None:
    run = _run(argv)
    if run.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed ({run.returncode}): {run.stderr.strip()}")


def missing() -> str | None:
    """Why the links scenario cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc)"
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            return f"needs iproute2 ({tool} not found): apt-get install iproute2"
    probe = f"{PREFIX}probe-{os.getpid()}"
    try:
        _check(["ip", "netns", "add", probe])
        _check(["ip", "-n", probe, "link", "set", "lo", "up"])
        _check(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "100mbit",
                "burst", "256kb", "latency", "100ms"])  # fmt: skip
    except OSError as e:
        return f"cannot make a rate-limited network namespace here: {e}"
    finally:
        _run(["ip", "netns", "del", probe])
    return None


def remove_stale() -> None:
    """Remove namespaces of earlier runs whose process is gone (a run killed with SIGKILL)."""
    run = _run(["ip", "netns", "list"])
    for line in run.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{re.escape(PREFIX)}(?:probe-)?(\d+)", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _run(["ip", "netns", "del", name])


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the body with this thread in namespace `ns`: sockets it makes and processes it starts
    belong to `ns` (other threads stay where they are)."""
    with open(f"/run/netns/{ns}") as target, open("/proc/thread-self/ns/net") as home:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the root namespace")


class Forwarder:
    """127.0.0.1:`port` inside namespace `ns`, carried to 127.0.0.1:`port` of the root namespace."""

    def __init__(self, ns: str, port: int):
        self.port = port
        with inside(ns):
            self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.2)
        self.stopped = threading.Event()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            self.socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while not self.stopped.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peer[s].sendall(data)
        except OSError:
            pass
        finally:
            a.close()
            b.close()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


class Hosts:
    """Network namespaces (`ns`: name -> namespace) with a broker forwarder in each of `forwarded`:
    made on entering (after removing those of runs killed outright), removed on exit, also when
    making them failed half-way. A subclass makes its links in `_build`, after `_add_namespaces`."""

    def __init__(self, names: list[str], broker_port: int):
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.ns = {name: f"{PREFIX}{tag}-{name}" for name in names}
        self.broker_port = broker_port
        self.forwarders: list[Forwarder] = []
        self.short = f"sb{os.getpid():x}{tag[-2:]}"  # a prefix of interface names: 15 characters at most

    def __enter__(self: H) -> H:
        remove_stale()
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _build(self) -> None:
        raise NotImplementedError

    def _add_namespaces(self) -> None:
        for ns in self.ns.values():
            _check(["ip", "netns", "add", ns])
            _check(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _forward_broker(self, names: list[str]) -> None:
        for name in names:
            self.forwarders.append(Forwarder(self.ns[name], self.broker_port))

    def __exit__(self, *exc: object) -> None:
        for f in self.forwarders:
            f.close()
        self.forwarders = []
        for ns in self.ns.values():
            _run(["ip", "netns", "del", ns])  # its veth ends, and so the links, go with it


def limit(ns: str, ifname: str, rate_mbit: float) -> None:
    """A token bucket at `rate_mbit` on what leaves `ifname` in namespace `ns`."""
    _check(["tc", "-n", ns, "qdisc", "add", "dev", ifname, "root", "tbf",
            "rate", f"{rate_mbit:g}mbit", "burst", "256kb", "latency", "100ms"])  # fmt: skip


class Topology(Hosts):
    """`with Topology(rate_mbit, broker_port) as topo:` topo.ns[role] is each host's namespace."""

    def __init__(self, rate_mbit: float, broker_port: int):
        super().__init__(["upload", "central", "download"], broker_port)
        self.rate_mbit = rate_mbit
        short = self.short
        self.links = [
            ("upload", f"{short}u", "10.201.1.1", "central", f"{short}cu", "10.201.1.2"),
            ("central", f"{short}cd", "10.201.2.1", "download", f"{short}d", "10.201.2.2"),
        ]

    def _build(self) -> None:
        self._add_namespaces()
        _check(["ip", "-n", self.ns["central"], "addr", "add", f"{CENTRAL_ADDR}/32", "dev", "lo"])
        for role_a, if_a, addr_a, role_b, if_b, addr_b in self.links:
            a, b = self.ns[role_a], self.ns[role_b]
            _check(["ip", "link", "add", if_a, "netns", a, "type", "veth", "peer", "name", if_b, "netns", b])
            for ns, ifname, addr in ((a, if_a, addr_a), (b, if_b, addr_b)):
                _check(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", ifname])
                _check(["ip", "-n", ns, "link", "set", ifname, "up"])
                limit(ns, ifname, self.rate_mbit)
        # upload and download reach central's sshd address over their own link.
        _check(["ip", "-n", self.ns["upload"], "route", "add", f"{CENTRAL_ADDR}/32", "via", "10.201.1.2"])
        _check(["ip", "-n", self.ns["download"], "route", "add", f"{CENTRAL_ADDR}/32", "via", "10.201.2.1"])
        self._forward_broker(list(self.ns))
