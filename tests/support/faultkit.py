"""Helpers for the fault suite: the workload, the cleanup recorders, the final verdict and the tally.

`TALLY` accumulates over the session; conftest.py prints it as the suite's summary line.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from support.relay_helpers import write_random
from synkler.hops.checksum import md5_entry

TALLY = {
    "entries": 0,
    "faults": 0,
    "delivered": 0,
    "failed": 0,
    "lost": 0,
    "corrupt": 0,
    "duplicated": 0,
    "stalled": 0,
}
NOTES: list[str] = []  # one line per scenario that has more to say (the pool chaos), after the tally

# One line per run: the name (as bytes, so that a name that is not UTF-8 is recorded as it is) and
# the md5 of what %F held when the script ran ("-": nothing), to prove that a cleanup script only
# ever acts on the content that was delivered.
RECORD = (
    "import os, sys\n"
    "from synkler.hops.checksum import md5_entry\n"
    "path = sys.argv[3]\n"
    "md5 = md5_entry(path) if os.path.lexists(path) else '-'\n"
    "open(sys.argv[1], 'ab').write(os.fsencode(sys.argv[2]) + b'\\t' + md5.encode() + b'\\n')\n"
)


@dataclass(frozen=True)
class Profile:
    """How hard a scenario pushes: the default fits the project's test budget, `long` does more."""

    name: str
    small: int = 46  # small files (0 B .. 256 KiB)
    medium: int = 3  # 1-4 MiB files
    big_mb: int = 100
    kills_per_role: int = 2
    sever_s: float = 3.0
    stall_s: float = 9.0
    corrupt_times: int = 2
    bwlimit: int = 40000  # KiB/s per rsync run: the big file stays in flight long enough to be hit
    deliver_timeout: float = 150.0


DEFAULT = Profile("default")
LONG = Profile(
    "long",
    small=120,
    medium=6,
    big_mb=300,
    kills_per_role=6,
    sever_s=10.0,
    stall_s=25.0,
    corrupt_times=5,
    deliver_timeout=600.0,
)


def profiles():
    import pytest

    return [pytest.param(DEFAULT, id="default"), pytest.param(LONG, id="long", marks=pytest.mark.long)]


# the workload -------------------------------------------------------------------------------------


@dataclass
class Workload:
    md5s: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        return set(self.md5s)


def build_workload(upload_dir: Path, rng, profile: Profile, *, scratch: Path) -> Workload:
    """Write the entries beside upload's file_dir and rename each in, as a careful writer does.

    Mixed sizes: empty and small files, a few MiB-sized ones, one big file, one directory tree with
    subdirectories, an empty subdirectory and a symlink; some names with spaces and non-ASCII.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    wl = Workload()

    def publish(tmp: Path, name: str, kind: str) -> None:
        wl.md5s[name] = md5_entry(tmp)
        wl.kinds[name] = kind
        os.rename(tmp, upload_dir / name)

    big = scratch / "big.bin"
    write_random(big, profile.big_mb << 20)
    publish(big, f"big-{profile.big_mb}M.bin", "file")

    tree = scratch / "tree"
    for sub in ("a/b/c", "a/d", "e", "empty/inner"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(("a/one.txt", "a/b/two.bin", "a/b/c/three.bin", "a/d/four", "e/five.dat", "top")):
        (tree / rel).write_bytes(os.urandom(rng.randint(0, 300_000) if i else 0))
    os.symlink("a/one.txt", tree / "link-to-one")
    publish(tree, "tree dir", "dir")

    for i in range(profile.medium):
        path = scratch / f"medium{i}"
        write_random(path, rng.randint(1 << 20, 4 << 20))
        publish(path, f"medium-{i}.bin", "file")
    for i in range(profile.small):
        path = scratch / f"small{i}"
        path.write_bytes(os.urandom(0 if i == 0 else rng.randint(1, 256 << 10)))
        name = f"small {i} é.txt" if i % 7 == 3 else f"small-{i:03d}.dat"
        publish(path, name, "file")
    return wl


# settings -----------------------------------------------------------------------------------------


def recorder(log: Path) -> str:
    """A cleanup_script that appends '%f<TAB>md5 of %F' to `log`, run without a shell."""
    return shlex.join([sys.executable, "-c", RECORD, str(log), "%f", "%F"])


def script_runs(log: Path) -> list[tuple[str, str]]:
    """(name, md5 of what the script saw) of each run recorded in `log`."""
    if not log.exists():
        return []
    pairs = (line.rsplit(b"\t", 1) for line in log.read_bytes().splitlines())
    return [(os.fsdecode(name), md5.decode()) for name, md5 in pairs]


def runs(log: Path) -> list[str]:
    return [name for name, _md5 in script_runs(log)]


def proxied_rsh(sshd, port: int, *extra: str) -> str:
    """sshd.ssh_command() aimed at `port` (a proxy), still checking sshd's pinned host key."""
    cmd = sshd.ssh_command()
    cmd[cmd.index("-p") + 1] = str(port)
    cmd += ["-o", f"HostKeyAlias=[{sshd.host}]:{sshd.port}", *extra]
    return shlex.join(cmd)


def common_settings(relay_dir: Path, profile: Profile, rsync_opts: list[str]) -> dict[str, dict]:
    up_log, down_log = relay_dir / "cleanup-upload.log", relay_dir / "cleanup-download.log"
    fast = {"retry_max_seconds": 2, "max_attempts": 8}
    return {
        "upload": {
            **fast,
            "settle_seconds": 0.3,
            "cleanup_script": recorder(up_log),
            "rsync_opts": [*rsync_opts, f"--bwlimit={profile.bwlimit}"],
        },
        "central": {**fast},
        "download": {
            **fast,
            "cleanup_script": recorder(down_log),
            "rsync_opts": [*rsync_opts, f"--bwlimit={profile.bwlimit}"],
        },
    }


def cleanup_logs(relay) -> tuple[Path, Path]:
    return relay.workdir / "cleanup-upload.log", relay.workdir / "cleanup-download.log"


# observing ----------------------------------------------------------------------------------------


def tree_size(top: Path, named: str = "") -> int:
    """Bytes of the regular files under `top` (only those whose name contains `named`: rsync's
    temporary and partial files keep the name), while the agents create and remove them."""
    total = 0
    for root, _dirs, files in os.walk(top):  # a directory that vanishes meanwhile is skipped
        for name in files:
            if named not in name:
                continue
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def settled(relay, wl: Workload) -> bool:
    """Every workload entry has reached an end state at upload, with download done for the delivered."""
    up = {e.name: e for e in relay.entries("upload") if e.state != "superseded"}
    if not wl.names <= set(up):
        return False
    if any(up[n].state not in ("done", "failed") for n in wl.names):
        return False
    down = relay.entries("download")
    if any(e.state not in ("done", "failed") for e in down):
        return False
    delivered = {n for n in wl.names if up[n].state == "done"}
    stored = {e.stored_as or e.name for e in down if e.state == "done"}
    return len(stored) >= len(delivered)


def flow_for(relay, wl: Workload, seconds: float) -> bool:
    """Let the relay run for `seconds` (no agent may exit); True as soon as the workload settled."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for role, proc in relay.procs.items():
            assert proc.poll() is None, f"{role} exited on its own ({proc.returncode})\n" + relay.log_tail(
                role
            )
        if settled(relay, wl):
            return True
        time.sleep(0.1)
    return False


def delivered_count(relay) -> int:
    return sum(1 for e in relay.entries("upload") if e.state == "done")


def wait_settled(relay, wl: Workload, timeout: float) -> None:
    """Wait for every entry to settle; those that have not by the deadline are counted as stalled."""
    try:
        relay.wait_for(f"{len(wl.names)} entries settled", lambda: settled(relay, wl), timeout, interval=0.5)
    except AssertionError:
        up = {e.name: e.state for e in relay.entries("upload") if e.state != "superseded"}
        stalled = sorted(n for n in wl.names if up.get(n) not in ("done", "failed"))
        TALLY["entries"] += len(wl.names)
        TALLY["stalled"] += max(1, len(stalled))
        print(f"\n{relay.instance}: stalled={len(stalled)}: {stalled[:20]}")
        raise


def rabbitmqctl_run(rabbitmqctl: str, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [rabbitmqctl, "-q", *args], check=True, capture_output=True, text=True, timeout=timeout
    )
    return done.stdout


# the verdict --------------------------------------------------------------------------------------


Replaced = dict[str, tuple[str, str]]  # name -> md5s of its first and second versions (verdict)


@dataclass
class Outcome:
    """What became of a workload's entries: names by fate, with a line about each one that is not
    simply delivered, and the versions of the replaced names at download (stored name -> md5)."""

    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)


def verdict(
    relay, wl: Workload, *, faults: int, replaced: dict[str, tuple[str, str]] | None = None
) -> list[str]:
    """Tally the outcome, then assert everything the suite promises about it.

    Every entry is at download exactly once with the right md5 (no "name (2).ext"), or `failed` with
    its data untouched at upload and a reason. Each cleanup script ran exactly once per delivered
    entry, on the delivered content. No staging or partial debris. Every agent is alive (those
    killed were restarted).

    `replaced`: names (not in `wl`) whose first version had a second renamed over it before it was
    delivered: both versions arrive, under the name and as "name (2)", and upload's cleanup script
    runs once for the second version and never on content that was not delivered.
    Returns the names of the failed entries.
    """
    replaced = replaced or {}
    up = {e.name: e for e in relay.entries("upload") if e.state != "superseded"}
    out = Outcome()
    _sort_entries(relay, wl, up, out)
    _find_versions_and_extras(relay, wl, replaced, out)
    _tally(relay, wl, faults, out)
    assert not out.lost and not out.corrupt and not out.duplicated, "\n".join(out.problems)
    for name in out.failed:
        print(f"  failed: {name}: {up[name].reason}")
    _check_cleanup_runs(relay, wl, replaced, out)
    _check_no_debris(relay)
    # Nobody died on their own: wait_for raised already if one had; check once more explicitly.
    assert all(relay.alive(r) for r in ("upload", "central", "download")), {
        r: relay.alive(r) for r in ("upload", "central", "download")
    }
    return out.failed


def _sort_entries(relay, wl: Workload, up: dict, out: Outcome) -> None:
    """Each name of the workload: delivered, failed (its data in place, a reason), lost or corrupt."""
    down_dir = relay.dirs["download"]
    for name in sorted(wl.names):
        entry = up.get(name)
        at_down = down_dir / name
        if entry is not None and entry.state == "done":
            if not os.path.lexists(at_down) or md5_entry(at_down) != wl.md5s[name]:
                out.corrupt.append(name)
                out.problems.append(f"{name}: done at upload but missing or wrong md5 at download")
            else:
                out.delivered.append(name)
        elif entry is not None and entry.state == "failed":
            src = relay.dirs["upload"] / name
            if os.path.lexists(src) and md5_entry(src) == wl.md5s[name] and entry.reason:
                out.failed.append(name)
                out.problems.append(f"{name}: failed ({entry.reason})")  # allowed, but reported below
            else:
                out.lost.append(name)
                out.problems.append(f"{name}: failed without its data in place or without a reason")
        elif os.path.lexists(at_down) and md5_entry(at_down) == wl.md5s[name]:
            out.delivered.append(name)  # arrived, but upload has not recorded it: flagged below
            out.problems.append(f"{name}: at download but {entry.state if entry else 'unknown'} at upload")
        else:
            out.lost.append(name)
            out.problems.append(
                f"{name}: {entry.state if entry else 'never recorded'} at upload, not at download"
            )


def _find_versions_and_extras(relay, wl: Workload, replaced: Replaced, out: Outcome) -> None:
    """Both versions of each replaced name at download; anything else there is a duplicate."""
    down_dir = relay.dirs["download"]
    for name, (v1, v2) in replaced.items():
        stored = [e.stored_as or e.name for e in relay.entries("download") if e.name == name]
        got = sorted(md5_entry(down_dir / s) for s in stored if os.path.lexists(down_dir / s))
        if got != sorted([v1, v2]):
            out.lost.append(name)
            out.problems.append(f"{name}: versions at download {got}, not {sorted([v1, v2])}")
        out.versions.update((s, md5_entry(down_dir / s)) for s in stored if os.path.lexists(down_dir / s))
    staging_name = f".synkler-{relay.instance}"
    present = sorted(p for p in os.listdir(down_dir) if p != staging_name)
    extra = sorted(set(present) - wl.names - set(out.versions))
    if extra:
        out.duplicated.extend(extra)
        out.problems.append(f"unexpected entries at download (duplicates?): {extra}")


def _tally(relay, wl: Workload, faults: int, out: Outcome) -> None:
    """Add the scenario to the suite's TALLY, and say its line."""
    TALLY["entries"] += len(wl.names)
    TALLY["faults"] += faults
    TALLY["delivered"] += len(out.delivered)
    TALLY["failed"] += len(out.failed)
    TALLY["lost"] += len(out.lost)
    TALLY["corrupt"] += len(out.corrupt)
    TALLY["duplicated"] += len(out.duplicated)
    print(
        f"\n{relay.instance}: entries={len(wl.names)} faults={faults} delivered={len(out.delivered)} "
        f"failed={len(out.failed)} lost={len(out.lost)} corrupt={len(out.corrupt)} "
        f"duplicated={len(out.duplicated)}"
    )


def _check_cleanup_runs(relay, wl: Workload, replaced: Replaced, out: Outcome) -> None:
    """Cleanup scripts: exactly once per delivered entry, on its content; never for a failed one."""
    up_log, down_log = cleanup_logs(relay)
    relay.wait_for(
        "cleanup scripts recorded",
        lambda: (
            all(e.cleanup not in ("pending", "running") for e in relay.entries("upload"))
            and all(e.cleanup not in ("pending", "running") for e in relay.entries("download"))
        ),
        30,
    )
    up_runs = [(n, md5) for n, md5 in script_runs(up_log) if n not in replaced]
    assert sorted(n for n, _ in up_runs) == sorted(out.delivered), "upload cleanup runs != delivered entries"
    assert all(md5 == wl.md5s[n] for n, md5 in up_runs), "an upload cleanup script saw other content"
    for name, (v1, v2) in replaced.items():
        seen = [md5 for n, md5 in script_runs(up_log) if n == name]
        # The second version's once; the first one's only if it was delivered before the second
        # came, and then on its own content.
        assert seen.count(v2) == 1 and seen.count(v1) <= 1 and set(seen) <= {v1, v2}, (name, seen, v1, v2)
    down_runs = [(n, md5) for n, md5 in script_runs(down_log) if n not in out.versions]
    placed = sorted(
        e.stored_as or e.name
        for e in relay.entries("download")
        if e.state == "done" and e.name not in replaced
    )
    assert sorted(n for n, _ in down_runs) == placed == sorted(out.delivered), (
        "download cleanup runs != delivered entries"
    )
    assert all(md5 == wl.md5s[n] for n, md5 in down_runs), "a download cleanup script saw other content"
    assert sorted((n, m) for n, m in script_runs(down_log) if n in out.versions) == sorted(
        out.versions.items()
    ), "download cleanup runs of the replaced names' versions"
    ours = [e for e in relay.entries("download") if e.name not in replaced]
    assert len(ours) == len(placed) + sum(1 for e in ours if e.state == "failed")


def _check_no_debris(relay) -> None:
    """Central's staging and growing/ empty once every entry is settled, download's staging empty,
    no partial dirs."""
    staging = relay.dirs["central"] / relay.instance / "staging"
    relay.wait_for(
        "central staging empty",
        lambda: (
            all(not any(d.iterdir()) for d in staging.iterdir() if d.is_dir()) if staging.exists() else True
        ),
        70,  # central sweeps a killed rsync's leftovers after a minute
        interval=0.5,
    )
    # Links for download's early pulls go when their push has been checked (or at central's restart).
    growing = relay.dirs["central"] / relay.instance / "growing"
    relay.wait_for("central growing/ empty", lambda: not growing.exists() or not any(growing.iterdir()), 10)
    # Download removes the emptied per-entry directories by a job after the commit: soon, not at once.
    down_staging = relay.dirs["download"] / f".synkler-{relay.instance}"
    relay.wait_for("download staging empty", lambda: not any(down_staging.iterdir()), 10)
    partials = [
        str(p) for role in ("central", "download") for p in relay.dirs[role].rglob(".synkler-partial")
    ]
    assert partials == [], partials


def wait_until(what: str, predicate, timeout: float, interval: float = 0.1) -> None:
    """For waits that involve no relay (the broker coming back)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
