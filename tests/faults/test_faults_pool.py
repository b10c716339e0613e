"""A pool of centrals on a three-node RabbitMQ cluster under chaos (issue 25).

The real cluster (tests/support/rabbitnode.py, every agent listing its three nodes), the real sshd
and rsync, upload, download and two centrals (three in the `chaos` variant), each central reached
through a proxy of its own (127.0.0.2, .3, ...: its link can be cut or stalled alone). On a
timeline, while waves of entries of mixed sizes keep coming:

- every 20 s the broker node most agents are on is killed (SIGKILL) and started again 2-8 s later;
- every 30 s a central is killed (SIGKILL), in turn: back after 1-3 s (before upload gives up on
  it), or after `reown_seconds` + 10 s (its entries re-owned by the others; it comes back to
  `forget`s); the last one stays down for good, its link dead too (a power cut);
- every 20 s a central's link is cut (every connection closed, new ones refused) for 3 s, or
  stalled (open, silent) for 13 s, longer than `stall_seconds` (10 here).

The verdict (faultkit.verdict): lost 0, corrupt 0, duplicated 0, each cleanup script exactly once
on the delivered content; every entry settled within the variant's `bound` (200 s; 300 s in
`chaos`) of the last fault's end (a node
or central back, a link restored, the kill of the central that stays down); nothing dead-lettered;
every queue that holds work a quorum queue with its explicit delivery limit. The default variant
runs about 70 s of faults over about 60 entries; SYNKLER_FAULTS=chaos 5 minutes over about 300.
The short, exact proof of the pool's rules is tests/e2e/test_pool.py.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import pytest
from support import faultkit
from support.chaos import NodeKiller, Timeline, connections, link_proxies
from support.faultkit import Profile, build_workload, common_settings, proxied_rsh, settled, verdict
from support.relay_helpers import write_random

from synkler import receipts
from synkler.agents.central import Mid
from synkler.broker.amqp import Broker, BrokerParams
from synkler.devkit.localrelay import LocalRelay
from synkler.hops.checksum import md5_entry

# A cluster of RabbitMQ nodes of its own: one module of its group at a time.
pytestmark = pytest.mark.xdist_group("rabbit-nodes-1")

REOWN = 5  # upload's reown_seconds: a central gone this long has its entries offered again
STALL = 10  # upload's and download's stall_seconds (less makes false stalls on a loaded machine)


@dataclass(frozen=True)
class Chaos:
    name: str
    workload: Profile  # the first entries (a big file, a tree, a few MiB-sized, many small)
    centrals: int
    seconds: int  # how long the faults go on
    wave: int  # new entries every 10 s (half of them 1-3 MiB, the others up to 256 KiB)
    link: int  # bytes a second each way on each connection of a central's link (its proxy)
    bound: float  # every entry settled within this many seconds of the last fault's end


DEFAULT = Chaos("pool", Profile("pool", small=24, medium=2, big_mb=10), 2, 70, 4, 750_000, 200.0)
CHAOS = Chaos("pool-chaos", Profile("pool-chaos", small=100, medium=6, big_mb=40), 3, 300, 6, 750_000, 300.0)


def pool_settings(tmp_path, sshd, cluster, chaos: Chaos, proxies) -> tuple[dict, dict[str, str]]:
    """Each role's settings, and the centrals: agent key -> name (the first is the relay's `central`)."""
    keys = ["central", *(f"central-{chr(ord('a') + i)}" for i in range(1, chaos.centrals))]
    names = {key: f"central-{chr(ord('a') + i)}" for i, key in enumerate(keys)}
    user = sshd.target.split("@")[0]
    rsh = proxied_rsh(sshd, proxies[0].port, "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3")
    settings = common_settings(tmp_path, chaos.workload, [f"--rsh={rsh}"])
    key = receipts.new_key()  # download signs its receipts: a late `delivered` counts on one
    key_file = tmp_path / "download-receipt.key"
    key_file.write_bytes(receipts.private_bytes(key))
    key_file.chmod(0o600)
    pinned = {"download_public_key": receipts.public_text(key)}
    centrals = {names[k]: f"{user}@127.0.0.{i + 2}" for i, k in enumerate(keys)}
    for role in settings:
        settings[role]["broker_hosts"] = cluster.addresses
    # retry_max_seconds at its default (not the suite's 2 s): a blip must cost seconds by itself.
    ends = {"centrals": centrals, "stall_seconds": STALL, "retry_max_seconds": 300}
    settings["upload"].update(ends, reown_seconds=REOWN, **pinned)
    settings["download"].update(ends, receipt_key=str(key_file))
    settings["central"].update(name=names["central"], uploads=["upload"], **pinned)
    return settings, names


def wave(relay: LocalRelay, wl: faultkit.Workload, number: int, n: int, rng) -> None:
    scratch = relay.workdir / "scratch"
    for i in range(n):
        name, tmp = f"wave{number:02d}-{i:03d}.dat", scratch / f"wave{number}-{i}"
        if i % 2 == 1:
            write_random(tmp, rng.randint(1 << 20, 3 << 20))
        else:
            tmp.write_bytes(os.urandom(rng.randint(0, 256 << 10)))
        wl.md5s[name] = md5_entry(tmp)
        wl.kinds[name] = "file"
        os.rename(tmp, relay.dirs["upload"] / name)


class Faults:
    """The faults of the timeline, counted: which hit the relay while it had work."""

    def __init__(self, relay, wl, timeline: Timeline, killer: NodeKiller, proxies, keys: list[str], rng):
        self.relay, self.wl, self.tl, self.killer, self.rng = relay, wl, timeline, killer, rng
        self.links = dict(zip(keys, proxies))  # central's agent key -> the proxy of its link
        self.gone: set[str] = set()  # the central powered off for good
        self.count = {"broker": 0, "central": 0, "cut": 0, "stall": 0}
        self.idle = 0  # faults that came when every entry so far had settled
        self.held = 0  # centrals killed while they held entries

    def _hit(self, kind: str) -> None:
        self.count[kind] += 1
        self.idle += settled(self.relay, self.wl)

    def broker(self) -> None:
        self._hit("broker")
        self.killer.kill(self.rng.uniform(2, 8))

    def holds_some(self, key: str) -> bool:
        busy = (Mid.WAITING, Mid.UPLOADING, Mid.VERIFYING, Mid.DOWNLOADING)
        return any(e.state in busy for e in self.relay.entries(key))

    def central(self, key: str, down: float | None) -> None:
        # A central that holds nothing has nothing to lose: give it up to 5 s to take something.
        deadline = time.monotonic() + 5
        while not self.holds_some(key) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._hit("central")
        self.held += self.holds_some(key)
        self.relay.kill(key)
        if down is None:  # for good, as a power cut: its link goes dead too
            self.gone.add(key)
            self.links[key].sever()
            self.tl.fault_ended()
            return

        def back() -> None:
            self.relay.start(key)
            self.tl.fault_ended()

        self.tl.at(self.tl.now() + down, f"{key} started again", back)

    def link(self, index: int, stall: bool) -> None:
        alive = [key for key in self.links if key not in self.gone]
        key = alive[index % len(alive)]
        proxy = self.links[key]
        self.tl.log[-1] += f" ({key})"
        self._hit("stall" if stall else "cut")
        if stall:
            proxy.stall()
        else:
            proxy.sever()

        def restore() -> None:
            proxy.restore()
            self.tl.fault_ended()

        self.tl.at(self.tl.now() + (STALL + 3 if stall else 3), f"{key}'s link restored", restore)


def plan(tl: Timeline, faults: Faults, chaos: Chaos, keys: list[str]) -> None:
    relay, wl, rng = faults.relay, faults.wl, faults.rng
    for k, t in enumerate(range(1, chaos.seconds, 10)):
        tl.at(t, f"wave {k}", lambda k=k: wave(relay, wl, k, chaos.wave, rng))
    for t in range(5, chaos.seconds, 20):
        tl.at(t, "broker node killed", faults.broker)
    times = list(range(10, chaos.seconds + 1, 30))
    for i, t in enumerate(times):
        last = i == len(times) - 1
        key = keys[-1] if last else keys[i % len(keys)]
        down = None if last else rng.uniform(1, 3) if i % 2 == 0 else REOWN + 10
        tl.at(
            t,
            f"{key} killed" + (" for good" if last else f" for {down:.0f} s"),
            lambda k=key, d=down: faults.central(k, d),
        )
    for i, t in enumerate(range(14, chaos.seconds, 20)):
        index, stall = i % len(keys), i % 2 == 1
        tl.at(t, f"link {'stalled' if stall else 'cut'}", lambda x=index, s=stall: faults.link(x, s))


def check_queues(cluster, instance: str) -> None:
    """Every queue of the instance that holds work is a quorum queue with an explicit delivery limit,
    the agents' and offers queues with the dead-letter exchange too; only the locks are classic."""
    node = next(n for n in cluster.nodes if n.pid() is not None)
    listed = json.loads(node.ctl("list_queues", "name", "type", "arguments", "--formatter", "json"))
    ours = {q["name"]: q for q in listed if q["name"].startswith(f"synkler:{instance}:")}
    kinds = {name.split(":")[2] for name in ours}
    assert {"inbox", "offers", "dead", "lock"} <= kinds, sorted(ours)
    for name, q in ours.items():
        args = {a[0]: a[2] for a in q["arguments"]}
        kind = name.split(":")[2]
        if kind == "lock":
            assert q["type"] == "classic", name
            continue
        assert q["type"] == "quorum" and args.get("x-delivery-limit") == 1000, (name, q)
        if kind in ("inbox", "offers"):
            assert args.get("x-dead-letter-exchange") == f"synkler:{instance}:dead", (name, q)


def report(
    cluster, relay: LocalRelay, wl, chaos: Chaos, faults: Faults, keys: list[str], took: float
) -> None:
    """Nothing dead-lettered; the scenario's line (after the suite's summary); and proof that the
    faults mattered: every central took entries, some were re-owned, few faults found nothing to do."""
    admin = Broker(BrokerParams("127.0.0.1", cluster.nodes[0].port), relay.instance, "admin")
    admin.connect(consume=False, declare=False)
    try:
        assert admin.dead_count() == 0, "a message was dead-lettered"
    finally:
        admin.close()
    reowned = relay.log_path("upload").read_text(errors="replace").count(" was gone")
    took_some = {key: sum(1 for e in relay.entries(key) if e.name in wl.names) for key in keys}
    n, total = faults.count, sum(faults.count.values())
    line = (
        f"pool chaos ({chaos.name}): {len(wl.names)} entries, {chaos.centrals} centrals, "
        f"{n['broker']} broker nodes killed, {n['central']} centrals killed ({faults.held} "
        f"holding entries, one for good; {reowned} entries re-owned), {n['cut']} links cut, "
        f"{n['stall']} stalled ({faults.idle} faults with nothing in flight); all settled "
        f"{took:.0f} s after the last fault (bound {chaos.bound:.0f} s); taken by the centrals: "
        f"{took_some}"
    )
    print(line)
    faultkit.NOTES.append(line)
    assert all(took_some.values()), f"a central took no entry: {took_some}"
    assert reowned >= 1, "no central was ever taken for gone"
    assert faults.idle <= total // 4, f"{faults.idle} of {total} faults came with nothing in flight"


def profiles():
    return [pytest.param(DEFAULT, id="default"), pytest.param(CHAOS, id="chaos", marks=pytest.mark.chaos)]


@pytest.mark.parametrize("chaos", profiles())
def test_a_pool_on_a_cluster_loses_nothing_while_nodes_centrals_and_links_fail(
    cluster, sshd, tmp_path, instance_id, rng, chaos
):
    cluster.heal()
    proxies = link_proxies(sshd.port, chaos.centrals)
    for proxy in proxies:  # a link of its own per central, slow enough to keep entries at each
        proxy.throttle(chaos.link)
    try:
        settings, names = pool_settings(tmp_path, sshd, cluster, chaos, proxies)
        keys = list(names)
        relay = LocalRelay(
            tmp_path, sshd, instance_id, broker_port=cluster.nodes[0].port, settings=settings, verbose=False
        )
        with relay:
            for key in keys[1:]:
                relay.add_agent(key, "central", {**settings["central"], "name": names[key]})
            wl = build_workload(relay.dirs["upload"], rng, chaos.workload, scratch=tmp_path / "scratch")
            relay.start()
            relay.wait_for("every agent connected", lambda: len(connections(relay)) == len(relay.modes), 90)
            tl = Timeline(relay)
            killer = NodeKiller(cluster, tl)
            faults = Faults(relay, wl, tl, killer, proxies, keys, rng)
            plan(tl, faults, chaos, keys)
            try:
                tl.run()
                killer.wait_up()
            finally:
                print("\n".join(["", "timeline:", *tl.log]))
            left = tl.last_fault + chaos.bound - time.monotonic()
            faultkit.wait_settled(relay, wl, max(1.0, left))
            took = time.monotonic() - tl.last_fault
            total = sum(faults.count.values())
            verdict(relay, wl, faults=total)
            check_queues(cluster, relay.instance)
            report(cluster, relay, wl, chaos, faults, keys, took)
            assert sum(p.severed_live for p in proxies) > 0, "no cut hit a live connection"
    finally:
        for proxy in proxies:
            proxy.close()
