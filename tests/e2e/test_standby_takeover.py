"""A standby of upload or download that takes over resumes the first agent's entries (docs/protocol.md,
"A standby that takes over"): end to end on the real broker, sshd and rsync, the first agent
SIGKILLed with entries in flight, the standby on a state directory of its own and the same file_dir.

What a user checks: every entry at download exactly once with the right md5, each cleanup script
run exactly once per entry, central's copies gone after keep_minutes, nothing dead-lettered.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from support.pool import cleanups, pool_relay, recorder, start_centrals, takers
from support.relay_helpers import take_dead_letters, write_random
from support.standby import second_agent, second_entries

from synkler.agents.central import Mid
from synkler.agents.download import Down
from synkler.agents.upload import Up
from synkler.hops.checksum import md5_entry
from synkler.state import Entry

TAKEOVER = 150  # seconds: 40 s of grace, a look every 5 s, a start; generous on a busy machine


@contextmanager
def standby(relay, role: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A second agent of `role` (support/standby.py: its own pidfile and state_db, as on another
    host; the same file_dir, a shared mount), once it waits as a standby."""
    with second_agent(relay, role, "standby") as (proc, log_path):
        relay.wait_for(f"the second {role} to wait", lambda: "waits as a standby" in log_path.read_text(), 60)
        yield proc, log_path


def standby_entries(relay, role: str) -> list[Entry]:
    return second_entries(relay, role, "standby")


def put(relay, name: str, size: int) -> str:
    tmp = relay.workdir / f".{name}.writing"
    write_random(tmp, size)
    md5 = md5_entry(tmp)
    os.rename(tmp, relay.dirs["upload"] / name)
    return md5


def at(relay, role: str, names: set[str], *states: str) -> set[str]:
    return {e.name for e in relay.entries(role) if e.name in names and e.state in states}


def settle_and_check(
    relay,
    md5s: dict[str, str],
    records: dict[str, Path],
    upload_entries,
    centrals=("central",),
    central_entries=None,
) -> None:
    """Every entry delivered once, right md5, each cleanup once, central empty after keep_minutes
    (`central_entries`: a central's entries by its key, relay.entries by default)."""
    central_entries = central_entries or relay.entries
    names = set(md5s)
    relay.wait_for(
        "every entry delivered and each cleanup script run",
        lambda: (
            sorted(set(cleanups(records["upload"]))) == sorted(names)
            and sorted(set(cleanups(records["download"]))) == sorted(names)
        ),
        240,
        interval=1,
    )
    down = relay.dirs["download"]
    assert sorted(p.name for p in down.iterdir() if not p.name.startswith(".")) == sorted(names)
    for name, md5 in md5s.items():
        assert md5_entry(down / name) == md5, name
    relay.wait_for(
        "central's copies removed after keep_minutes",
        lambda: all(e.state == Mid.EXPIRED for c in centrals for e in central_entries(c) if e.name in names),
        120,
        interval=1,
    )
    for c in centrals:
        stored = relay.dirs[c] / relay.instance / "stored"
        assert not stored.exists() or list(stored.iterdir()) == []
    relay.wait_for(
        "upload's entries done",
        lambda: {e.name for e in upload_entries() if e.state == Up.DONE} >= names,
        60,
    )
    # Exactly once: a script run twice would show its name twice.
    assert cleanups(records["upload"]) == sorted(names)
    assert cleanups(records["download"]) == sorted(names)
    assert take_dead_letters(relay.broker, relay.instance) == []


def recording_relay(make_relay, **by_role: dict) -> tuple[object, dict[str, Path]]:
    relay = make_relay(verbose=True)
    records = {side: relay.workdir / f"{side}-cleanups" for side in ("upload", "download")}
    for side in ("upload", "download"):
        relay.write_config(side, {"cleanup_script": recorder(records[side]), **by_role.get(side, {})})
    relay.write_config("central", {"keep_minutes": 0.1, **by_role.get("central", {})})
    return relay, records


def test_an_upload_standby_resumes_the_entries_of_the_first_one_killed_mid_push(make_relay, sshd):
    slow = [*sshd.rsync_opts(), "--bwlimit=1500"]  # KB/s: the big file is mid-push at the kill
    relay, records = recording_relay(make_relay, upload={"rsync_opts": slow, "max_transfers": 1})
    relay.start("central", "upload")
    md5s = {f"early-{i}.dat": put(relay, f"early-{i}.dat", 20_000 + i) for i in range(6)}
    relay.wait_for(
        "the early entries stored at central",
        lambda: len(at(relay, "central", set(md5s), Mid.DOWNLOADING)) == 6,
        90,
    )
    with standby(relay, "upload") as (second, log_path):
        md5s["big.bin"] = put(relay, "big.bin", 40 << 20)  # ~27 s at 1.5 MB/s
        relay.wait_for(
            "big.bin being pushed", lambda: at(relay, "upload", {"big.bin"}, Up.UPLOADING), 60, interval=0.2
        )
        late = {f"late-{i}.dat": put(relay, f"late-{i}.dat", 30_000 + i) for i in range(4)}
        md5s.update(late)
        relay.wait_for(
            "the late entries offered", lambda: len(at(relay, "central", set(late), *Mid)) == 4, 60
        )
        staging = relay.dirs["central"] / relay.instance / "staging"
        relay.wait_for(
            "part of big.bin at central",
            lambda: any(p.is_file() and p.stat().st_size > 0 for p in staging.rglob("*")),
            60,
            interval=0.2,
        )
        before = {e.name: e.state for e in relay.entries("central") if e.name in md5s}
        assert before["big.bin"] == Mid.UPLOADING, before  # mid-push
        assert sum(s == Mid.DOWNLOADING for s in before.values()) >= 6, before  # stored at central
        relay.kill("upload")  # SIGKILL, entries in flight
        relay.start("download")  # the stored ones are delivered while upload is gone
        relay.wait_for("the standby to take over", lambda: "takes over" in log_path.read_text(), TAKEOVER)
        told = log_path.read_text()
        assert "took over with a state of its own" in told
        settle_and_check(relay, md5s, records, lambda: standby_entries(relay, "upload"))
        mine = {e.name: e for e in standby_entries(relay, "upload")}
        # Adopted under the first agent's ids: one entry per name, none offered twice.
        assert sorted(mine) == sorted(md5s)
        firsts = {e.name: e.id for e in relay.entries("upload")}
        assert all(mine[n].id == firsts[n] for n in md5s if n in firsts)
        assert [e.name for e in relay.entries("central")].count("big.bin") == 1
        assert second.poll() is None


def test_a_download_standby_resumes_the_pulls_of_the_first_one_killed_mid_pull(make_relay, sshd):
    slow = [*sshd.rsync_opts(), "--bwlimit=1500"]
    relay, records = recording_relay(make_relay, download={"rsync_opts": slow, "max_transfers": 1})
    relay.start()
    md5s = {f"early-{i}.dat": put(relay, f"early-{i}.dat", 10_000 + i) for i in range(5)}
    relay.wait_for(
        "the early entries delivered and cleaned up",
        lambda: len(cleanups(records["download"])) == 5 and len(cleanups(records["upload"])) == 5,
        120,
    )
    with standby(relay, "download") as (second, log_path):
        md5s["big.bin"] = put(relay, "big.bin", 40 << 20)
        relay.wait_for(
            "big.bin being pulled",
            lambda: (
                at(relay, "download", {"big.bin"}, Down.FETCHING)
                and any(
                    p.is_file() and p.stat().st_size > 0
                    for p in (relay.dirs["download"] / f".synkler-{relay.instance}").rglob("*")
                )
            ),
            120,
            interval=0.2,
        )
        waiting = {f"queued-{i}.dat": put(relay, f"queued-{i}.dat", 20_000 + i) for i in range(4)}
        md5s.update(waiting)
        relay.wait_for(
            "the queued entries fetched at download",
            lambda: len(at(relay, "download", set(waiting), Down.FETCHING)) == 4,
            90,
        )
        assert at(relay, "download", {"big.bin"}, Down.FETCHING)  # still being pulled
        relay.kill("download")  # SIGKILL, mid-pull
        late = {f"late-{i}.dat": put(relay, f"late-{i}.dat", 5_000 + i) for i in range(3)}
        md5s.update(late)  # sent to download's queue while it is gone
        relay.wait_for("the standby to take over", lambda: "takes over" in log_path.read_text(), TAKEOVER)
        settle_and_check(relay, md5s, records, lambda: relay.entries("upload"))
        pulled = {e.name for e in standby_entries(relay, "download") if e.state == Down.DONE}
        assert pulled == set(md5s) - {f"early-{i}.dat" for i in range(5)}
        assert second.poll() is None


def test_in_a_pool_an_upload_standby_greets_every_central_and_resumes_their_entries(make_relay, sshd):
    relay, records = pool_relay(make_relay)
    slow = [*sshd.rsync_opts(), "--bwlimit=1500"]
    for key in ("central", "central-b"):
        cfg = yaml.safe_load(relay.configs[key].read_text())
        relay.write_config(key, {**{k: cfg[k] for k in ("name", "uploads")}, "keep_minutes": 0.1})
    up = yaml.safe_load(relay.configs["upload"].read_text())
    relay.write_config(
        "upload", {k: up[k] for k in ("centrals", "reown_seconds", "cleanup_script")} | {"rsync_opts": slow}
    )
    start_centrals(relay)
    relay.start("upload")
    md5s = {f"early-{i}.dat": put(relay, f"early-{i}.dat", 20_000 + i) for i in range(8)}
    relay.wait_for(
        "the early entries stored at the centrals",
        lambda: (
            len(
                at(relay, "central", set(md5s), Mid.DOWNLOADING)
                | at(relay, "central-b", set(md5s), Mid.DOWNLOADING)
            )
            == 8
        ),
        90,
    )
    held = takers(relay, set(md5s))
    assert held["central"] and held["central-b"], held  # both hold entries of the first agent
    with standby(relay, "upload") as (second, log_path):
        md5s["big.bin"] = put(relay, "big.bin", 30 << 20)
        relay.wait_for(
            "big.bin being pushed", lambda: at(relay, "upload", {"big.bin"}, Up.UPLOADING), 60, interval=0.2
        )
        relay.kill("upload")
        relay.start("download")
        relay.wait_for("the standby to take over", lambda: "takes over" in log_path.read_text(), TAKEOVER)
        settle_and_check(
            relay, md5s, records, lambda: standby_entries(relay, "upload"), ("central", "central-b")
        )
        assert sorted(e.name for e in standby_entries(relay, "upload")) == sorted(md5s)
        told = log_path.read_text()
        assert told.count("announced again") == 2  # both centrals answered
        assert second.poll() is None


def test_in_a_pool_a_central_standby_takes_over_and_every_entry_of_the_first_one_arrives_once(
    make_relay, sshd
):
    """The central is SIGKILLed with entries at every step (offered, admitted and being pushed, stored,
    being pulled); its standby (a state of its own, the same file_dir) takes over and says `hello`,
    upload re-owns what it held there (reown_seconds is far off: only the hello does it), and the
    first central, started again later, waits as a standby and acts on nothing."""
    # KB/s: pushes at 3 MB/s, pulls at 0.8 MB/s, so that a big file is mid-push and another mid-pull
    push, pull = ([*sshd.rsync_opts(), f"--bwlimit={kbs}"] for kbs in (3000, 800))
    relay, records = recording_relay(make_relay)
    centrals = {"central": relay.sshd.target}
    relay.write_config("central", {"name": "central", "uploads": ["upload"], "keep_minutes": 0.1})
    ends = {"centrals": centrals, "max_transfers": 1}
    relay.write_config(
        "upload",
        {**ends, "rsync_opts": push, "reown_seconds": 3600, "cleanup_script": recorder(records["upload"])},
    )
    relay.write_config(
        "download", {**ends, "rsync_opts": pull, "cleanup_script": recorder(records["download"])}
    )
    relay.start("central", "upload")
    md5s = {"pulled.bin": put(relay, "pulled.bin", 24 << 20)}  # pulled in ~30 s
    relay.wait_for("pulled.bin stored", lambda: at(relay, "central", {"pulled.bin"}, Mid.DOWNLOADING), 90)
    relay.start("download")
    relay.wait_for(
        "pulled.bin being pulled",
        lambda: any(
            p.is_file() and p.stat().st_size > 0
            for p in (relay.dirs["download"] / f".synkler-{relay.instance}").rglob("*")
        ),
        60,
        interval=0.2,
    )
    with standby(relay, "central") as (second, log_path):
        stored = {f"stored-{i}.dat": put(relay, f"stored-{i}.dat", 20_000 + i) for i in range(4)}
        md5s.update(stored)
        relay.wait_for(
            "the small entries stored",
            lambda: len(at(relay, "central", set(stored), Mid.DOWNLOADING)) == 4,
            60,
        )
        md5s["pushed.bin"] = put(relay, "pushed.bin", 30 << 20)
        relay.wait_for(
            "pushed.bin being pushed",
            lambda: (
                at(relay, "central", {"pushed.bin"}, Mid.UPLOADING)
                and any(
                    p.is_file() and p.stat().st_size > 0
                    for p in (relay.dirs["central"] / relay.instance / "staging").rglob("*")
                )
            ),
            120,
            interval=0.2,
        )
        assert at(relay, "download", {"pulled.bin"}, Down.FETCHING)  # still being pulled
        relay.kill("central")  # SIGKILL, entries in flight
        first = {e.id: (e.state, e.updated) for e in relay.entries("central")}
        offered = {f"offered-{i}.dat": put(relay, f"offered-{i}.dat", 5_000 + i) for i in range(3)}
        md5s.update(offered)  # into the offers queue while no central takes offers
        relay.wait_for("the standby to take over", lambda: "takes over" in log_path.read_text(), TAKEOVER)
        settle_and_check(
            relay,
            md5s,
            records,
            lambda: relay.entries("upload"),
            central_entries=lambda c: standby_entries(relay, c),
        )
        assert "asking upload to offer again" in log_path.read_text()
        upload_log = relay.log_path("upload").read_text(errors="replace")
        assert "central central took over with a state of its own" in upload_log
        # Each name once at download and at the standby (the first central's entries, offered again).
        assert sorted(e.name for e in standby_entries(relay, "central")) == sorted(md5s)
        # The first central, started again, waits as a standby: it acts on nothing.
        relay.start("central")
        first_log = relay.log_path("central")
        relay.wait_for(
            "the first central to wait as a standby",
            lambda: first_log.read_text(errors="replace").count("waits as a standby") >= 1,
            60,
        )
        assert {e.id: (e.state, e.updated) for e in relay.entries("central")} == first
        stored_dir = relay.dirs["central"] / relay.instance / "stored"
        assert not stored_dir.exists() or list(stored_dir.iterdir()) == []
        assert cleanups(records["upload"]) == sorted(md5s)
        assert cleanups(records["download"]) == sorted(md5s)
        assert take_dead_letters(relay.broker, relay.instance) == []
        assert second.poll() is None
