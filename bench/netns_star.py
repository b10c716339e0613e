"""Hosts of a pool of centrals on one machine, for `--only centrals`: a network namespace per host,
each joined to a switch (a bridge in a namespace of its own) by one veth link.

    upload ns 10.203.0.1    --veth, not limited (or EDGE)--+
    download ns 10.203.0.2  --veth, not limited (or EDGE)--+-- switch ns: bridge
    central-1 ns 10.203.0.11  --veth, tbf RATE--------------+
    central-2 ns 10.203.0.12  --veth, tbf RATE--------------+   ...

Each central's link has a token bucket (``tc qdisc ... tbf``) at RATE on both of its ends: what
central receives (upload's pushes) and what it sends (download's pulls) each cross at RATE, as on a
full-duplex network port of that speed. upload's and download's links are not limited unless EDGE is
given: they carry the sum of every central's traffic, and must not be what limits it. Each central's
sshd listens on its host's address; all of them on one port, so that one ssh command line (port,
key, known hosts) reaches every central.

The broker is reached as in netns.py (a forwarder in each host's namespace at 127.0.0.1). Needs what
netns.py needs, and the kernel's bridge. The namespaces, and with them the links and the bridge, are
removed on exit, also on an exception or Ctrl-C; those of a run killed outright by the next run.
"""

from __future__ import annotations

import os

from netns import PREFIX, Hosts, _check, _run, limit

SUBNET = "10.203.0"
ADDRS = {"upload": f"{SUBNET}.1", "download": f"{SUBNET}.2"}


def central_addr(i: int) -> str:
    """The address of central number `i` (1, 2, ...)."""
    return f"{SUBNET}.{10 + i}"


def missing_bridge() -> str | None:
    """Why a bridge cannot be made in a network namespace here, or None."""
    probe = f"{PREFIX}probe-{os.getpid()}"
    try:
        _check(["ip", "netns", "add", probe])
        _check(["ip", "-n", probe, "link", "add", "br0", "type", "bridge"])
    except OSError as e:
        return f"cannot make a bridge in a network namespace here: {e}"
    finally:
        _run(["ip", "netns", "del", probe])
    return None


class Star(Hosts):
    """`with Star(centrals, rate_mbit, broker_port) as star:` star.ns[host] is each host's namespace
    (upload, download, central-1 …), star.addr[host] its address."""

    def __init__(self, centrals: int, rate_mbit: float, broker_port: int, edge_mbit: float | None = None):
        self.hosts = ["upload", "download", *(f"central-{i}" for i in range(1, centrals + 1))]
        super().__init__([*self.hosts, "switch"], broker_port)
        self.addr = {**ADDRS, **{f"central-{i}": central_addr(i) for i in range(1, centrals + 1)}}
        self.rate = {host: rate_mbit if host.startswith("central") else edge_mbit for host in self.hosts}
        # each host's link: its end in the host's namespace, and its end on the switch
        self.near = {host: f"{self.short}h{i}" for i, host in enumerate(self.hosts)}
        self.far = {host: f"{self.short}s{i}" for i, host in enumerate(self.hosts)}

    def _build(self) -> None:
        switch = self.ns["switch"]
        self._add_namespaces()
        _check(["ip", "-n", switch, "link", "add", "br0", "type", "bridge"])
        _check(["ip", "-n", switch, "link", "set", "br0", "up"])
        for host in self.hosts:
            ns, near, far = self.ns[host], self.near[host], self.far[host]
            _check(["ip", "link", "add", near, "netns", ns, "type", "veth",
                    "peer", "name", far, "netns", switch])  # fmt: skip
            _check(["ip", "-n", ns, "addr", "add", f"{self.addr[host]}/24", "dev", near])
            _check(["ip", "-n", ns, "link", "set", near, "up"])
            _check(["ip", "-n", switch, "link", "set", far, "master", "br0", "up"])
            rate = self.rate[host]
            if rate:
                limit(ns, near, rate)
                limit(switch, far, rate)
        self._forward_broker(self.hosts)
