"""A pool of two centrals on the real broker, sshd and rsync (docs/architecture.md, "A pool of
centrals"): offers are shared between them; a central killed for good has its entries re-owned by
the other and delivered once, each cleanup script run once; brought back, it touches none of them.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from support.pool import cleanups, pool_relay, put, start_centrals, takers
from support.relay_helpers import started

from synkler.agents.central import Mid
from synkler.agents.download import Down
from synkler.agents.upload import Up
from synkler.hops.checksum import md5_entry


def test_two_centrals_share_the_offers_and_one_killed_for_good_loses_its_entries_to_the_other(make_relay):
    relay, records = pool_relay(make_relay)
    start_centrals(relay)
    first = put(relay, [f"first-{i}.dat" for i in range(8)])
    relay.start("upload", "download")
    relay.wait_for("the first entries delivered", lambda: relay.all_done(set(first)), 60)
    held = takers(relay, set(first))
    assert held["central"] and held["central-b"], held  # both took offers
    assert held["central"] | held["central-b"] == set(first) and not held["central"] & held["central-b"]

    # The second lot: download is stopped, so whatever central-a takes stays stored there.
    relay.stop("download")
    second = put(relay, [f"second-{i}.dat" for i in range(8)])
    relay.wait_for(
        "the second lot verified at the centrals",
        lambda: (
            sum(len(v) for v in takers(relay, set(second)).values()) == len(second)
            and all(
                e.state == Mid.DOWNLOADING
                for key in ("central", "central-b")
                for e in relay.entries(key)
                if e.name in second
            )
        ),
    )
    lost = takers(relay, set(second))["central"]
    assert lost, "central-a took none of the second lot"
    relay.kill("central")  # for good, mid-run: its entries are stored there, not delivered
    relay.wait_for(
        "central-a's entries re-owned by central-b",
        lambda: lost <= takers(relay, lost)["central-b"],
        30,
    )
    relay.start("download")
    relay.wait_for("every entry delivered", lambda: relay.all_done(set(first) | set(second)), 60)
    relay.wait_for(
        "every cleanup script run",
        lambda: len(cleanups(records["upload"])) >= 16 and len(cleanups(records["download"])) >= 16,
    )
    down = relay.dirs["download"]
    for name, md5 in {**first, **second}.items():
        assert md5_entry(down / name) == md5, name
    assert sorted(p.name for p in down.iterdir() if not p.name.startswith(".")) == sorted({**first, **second})
    expected = sorted({**first, **second})
    assert cleanups(records["upload"]) == expected  # each exactly once
    assert cleanups(records["download"]) == expected

    # Brought back, central-a drops what was re-owned and touches nothing else.
    started(relay, "central")
    relay.wait_for(
        "central-a dropped what was re-owned",
        lambda: all(e.state == Mid.FORGOTTEN for e in relay.entries("central") if e.name in lost),
        30,
    )
    stored = relay.dirs["central"] / relay.instance / "stored"
    ids = {e.id for e in relay.entries("central") if e.name in lost}
    assert not ids & {p.name for p in stored.iterdir()} if stored.exists() else True
    relay.wait_for(
        "upload and download still done",
        lambda: (
            all(e.state == Up.DONE for e in relay.entries("upload") if e.name in lost)
            and all(e.state == Down.DONE for e in relay.entries("download") if e.name in lost)
        ),
    )
    assert cleanups(records["upload"]) == expected
    assert cleanups(records["download"]) == expected
    assert "re-owned by upload at epoch 2" in relay.log_path("central").read_text(errors="replace")


def test_a_drained_central_takes_no_offers_and_the_relay_view_says_so(make_relay):
    relay, _records = pool_relay(make_relay)
    start_centrals(relay)
    drained = subprocess.run(
        relay.command("central-b", "drain", "central-b"), capture_output=True, text=True, timeout=60
    )
    assert drained.returncode == 0, drained.stderr
    assert "central-b is draining" in drained.stdout
    wrong = subprocess.run(
        relay.command("central-b", "drain", "central-a"), capture_output=True, text=True, timeout=60
    )
    assert wrong.returncode != 0 and "not of central 'central-a'" in wrong.stderr
    md5s = put(relay, [f"lot-{i}.dat" for i in range(6)])
    relay.start("upload", "download")
    relay.wait_for("the entries delivered", lambda: relay.all_done(set(md5s)), 60)
    assert takers(relay, set(md5s)) == {"central": set(md5s), "central-b": set()}

    def view() -> str:
        return subprocess.run(
            relay.command("central-b", "status", "--relay"), capture_output=True, text=True, timeout=60
        ).stdout

    # Its presence report says so within one report interval (5 s).
    relay.wait_for(
        "the relay view showing central-b draining",
        lambda: any("central-b" in line and "draining" in line for line in view().splitlines()),
        30,
        interval=1,
    )
    undone = subprocess.run(
        relay.command("central-b", "drain", "central-b", "--undo"), capture_output=True, text=True, timeout=60
    )
    assert undone.returncode == 0 and "takes offers again" in undone.stdout, undone.stderr


def test_the_relay_view_of_a_pool_shows_both_centrals_and_each_entry_at_the_central_that_took_it(make_relay):
    relay, _records = pool_relay(make_relay)
    start_centrals(relay)
    relay.start("upload")  # no download: what each central takes stays stored there
    md5s = put(relay, [f"held-{i}.dat" for i in range(8)])
    relay.wait_for(
        "every entry stored at a central",
        lambda: (
            sum(len(v) for v in takers(relay, set(md5s)).values()) == len(md5s)
            and all(e.state == Mid.DOWNLOADING for k in ("central", "central-b") for e in relay.entries(k))
        ),
        60,
    )
    held = takers(relay, set(md5s))
    expected = {name: key for key, names in held.items() for name in names}
    central_name = {"central": "central-a", "central-b": "central-b"}

    def view() -> dict:
        done = subprocess.run(
            relay.command("upload", "status", "--relay", "--json"), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def shown_right() -> bool:
        v = view()
        where = {e["name"]: e["roles"].get("central", {}).get("agent") for e in v["entries"]}
        return where == {name: central_name[key] for name, key in expected.items()}

    # Reports come every 5 s (sooner when counts change): wait for the ones that list every entry.
    relay.wait_for("the view listing each entry at its central", shown_right, 30, interval=1)
    centrals = {a["name"]: a for a in view()["agents"] if a["role"] == "central"}
    assert set(centrals) == {"central-a", "central-b"}
    for name, key in central_name.items():
        a = centrals[key]
        assert a["status"] == "running" and isinstance(a["room"], int) and a["room"] > 0
        assert a["counts"].get(Mid.DOWNLOADING.value, 0) == len(held[name])


def test_entries_a_full_central_holds_waiting_are_offered_again_and_delivered_through_the_other(make_relay):
    # central-a's reserve is more than its disk has free: whatever it takes waits for room there.
    usage = shutil.disk_usage(make_relay.next_dir().parent)
    reserve = min(99.0, 100 * usage.free / usage.total + 5)
    more = {"central": {"free_percent": reserve}, "upload": {"reoffer_minutes": 0.1}}
    relay, records = pool_relay(make_relay, more=more)
    relay.start("central")  # central-a alone takes the offers
    relay.start("upload", "download")
    md5s = put(relay, [f"wait-{i}.dat" for i in range(3)])

    def held_waiting() -> bool:
        # central-a takes one, which waits for room there; then it has no room (the others stay on
        # offer, for a central with room).
        states = {e.name: (e.state, e.peer) for e in relay.entries("upload") if e.name in md5s}
        return len(states) == 3 and (Up.WAITING, "central-a") in states.values()

    relay.wait_for("an entry held waiting for room by central-a", held_waiting, 60)

    def central_a_room() -> int | None:
        done = subprocess.run(
            relay.command("central", "status", "--relay", "--json"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        rows = [a for a in json.loads(done.stdout or "{}").get("agents", []) if a["name"] == "central-a"]
        return rows[0].get("room") if rows else None

    relay.wait_for("central-a reporting no room", lambda: central_a_room() == 0, 30, interval=1)
    # Usually one; on a busy machine central-a may take a second offer in the same pass, before its
    # first verdict says it has no room. Every other entry stays on offer.
    held = {e.name for e in relay.entries("upload") if e.state == Up.WAITING}
    assert held and {e.state for e in relay.entries("upload") if e.name not in held} <= {Up.OFFERED}
    relay.start("central-b")  # reports room: after reoffer_minutes (6 s) the entries go there
    relay.wait_for("every entry delivered", lambda: relay.all_done(set(md5s)), 90)
    relay.wait_for(
        "every cleanup script run", lambda: all(len(cleanups(r)) >= 3 for r in records.values()), 30
    )
    down = relay.dirs["download"]
    for name, md5 in md5s.items():
        assert md5_entry(down / name) == md5, name
    assert cleanups(records["upload"]) == sorted(md5s) and cleanups(records["download"]) == sorted(md5s)
    delivered_by = {e.name for e in relay.entries("central-b") if e.state == Mid.DELIVERED}
    assert delivered_by == set(md5s)
    relay.wait_for(
        "central-a dropped them",
        lambda: all(e.state == Mid.FORGOTTEN for e in relay.entries("central") if e.name in md5s),
        30,
    )
    assert "held waiting for room by central-a" in relay.log_path("upload").read_text(errors="replace")
