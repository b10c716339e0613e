"""Bundles (issue 24: many small files as one entry) where users run them, on the real relay
(RabbitMQ, sshd, rsync): beside names already taken at download and files with metadata sidecars,
with the operator's commands (status, resend, verify), with a subdirectory per upload, with central's
routes (by upload agent, and by name, which a bundle cannot follow), and with a pool of centrals
one of which is killed for good. Small bundles (`bundle_files: 20`, `bundle_min: 5`) keep it short.

What a user checks: every file at its download(s) once, under its own name (or the next versioned
name beside another's file), with its md5; each cleanup script once per file at each end; central
empty in the end; `synkler verify` checks each file of a bundle where it went.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from support.faultkit import recorder, script_runs
from support.pool import cleanups, pool_relay, start_centrals

from synkler import bundles
from synkler.devkit.localrelay import LocalRelay
from synkler.hops.checksum import md5_entry

BUNDLES = {"bundle_files": 20, "bundle_min": 5, "settle_seconds": 0.3}
STARTS = 120  # seconds for a wait that spans agents' starts on a loaded machine


def put_together(relay: LocalRelay, key: str, files: dict[str, bytes]) -> dict[str, str]:
    """Write the files beside upload `key`'s file_dir, then rename them in one after another (they
    settle together, so bundles form); their md5s."""
    source = relay.workdir / f"source-{key}"
    source.mkdir(exist_ok=True)
    md5s = {}
    for name, data in files.items():
        (source / name).write_bytes(data)
        md5s[name] = md5_entry(source / name)
    for name in files:
        os.rename(source / name, relay.dirs[key] / name)
    return md5s


def some_files(prefix: str, n: int, size: int = 4096) -> dict[str, bytes]:
    return {f"{prefix}{i:02d}.dat": os.urandom(size) for i in range(n)}


def connected(relay: LocalRelay, *keys: str) -> None:
    for key in keys:
        relay.wait_for(
            f"{key} connected",  # (its log exists once it started)
            lambda k=key: (
                relay.log_path(k).exists() and "connected to broker" in relay.log_path(k).read_text()
            ),
            STARTS,
        )


def kinds(relay: LocalRelay, key: str) -> dict[str, int]:
    """Files that crossed `key` (a central) by entry kind: a bundle counts its files."""
    out: dict[str, int] = {}
    for e in relay.entries(key):
        out[e.kind] = out.get(e.kind, 0) + e.files
    return out


def settled(relay: LocalRelay, *keys: str) -> bool:
    """Every entry at these agents done (or withdrawn/forgotten: taken apart, superseded)."""
    rows = [e for key in keys for e in relay.entries(key)]
    return bool(rows) and all(e.state in ("done", "superseded", "forgotten") for e in rows)


def run(relay: LocalRelay, key: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(relay.command(key, *args), capture_output=True, text=True, timeout=120)


def listing(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def test_bundled_files_beside_taken_names_and_sidecars_each_placed_once_and_verified_where_they_went(
    make_relay,
):
    work = make_relay.next_dir()
    relay = make_relay(
        upload={**BUNDLES, "cleanup_script": recorder(work / "cleanup-upload.log")},
        download={"cleanup_script": recorder(work / "cleanup-download.log")},
        central={"keep_minutes": 0.02},
        verbose=False,
    )
    files = some_files("f", 30)
    down = relay.dirs["download"]
    (down / "f03.dat").write_bytes(b"someone else's f03")  # other content: never overwritten
    (down / "f04.dat").write_bytes(files["f04.dat"])  # the same content: there already
    # A file with a metadata sidecar goes on its own, its metadata beside it at download.
    (relay.dirs["upload"] / "m1.dat.meta.json").write_text('{"run": "7"}')
    relay.start()
    connected(relay, "upload", "central", "download")
    md5s = put_together(relay, "upload", {**files, "m1.dat": b"with metadata"})
    relay.wait_for("every file delivered", lambda: relay.all_done(set(md5s)), STARTS)
    relay.wait_for(
        "every cleanup script run",
        lambda: (
            len(script_runs(work / "cleanup-upload.log")) >= 31
            and len(script_runs(work / "cleanup-download.log")) >= 30
        ),
        STARTS,
    )

    crossed = kinds(relay, "central")  # each file once; most in bundles (one the scan saw first may go alone)
    assert sum(crossed.values()) == 31 and crossed["bundle"] >= 20, crossed
    expected = sorted([*md5s, "f03 (2).dat", "m1.dat.meta.json"])
    assert listing(down) == expected
    assert (down / "f03.dat").read_bytes() == b"someone else's f03"
    assert md5_entry(down / "f03 (2).dat") == md5s["f03.dat"]
    assert all(md5_entry(down / n) == md5 for n, md5 in md5s.items() if n != "f03.dat")
    assert json.loads((down / "m1.dat.meta.json").read_text()) == {"run": "7"}
    # Each script once per file, on the delivered content; not at download for f04 (not placed there).
    assert sorted(script_runs(work / "cleanup-upload.log")) == sorted(md5s.items())
    at_down = {("f03 (2).dat" if n == "f03.dat" else n, md5) for n, md5 in md5s.items() if n != "f04.dat"}
    assert sorted(script_runs(work / "cleanup-download.log")) == sorted(at_down)

    # What the operator sees: the bundle as one row, each file of it in --json.
    status = run(relay, "upload", "status", "--all")
    # How the 30 files split into bundles depends on how fast the scan saw them: at least one bundle.
    assert re.search(r"bundle of \d+ files", status.stdout), status.stdout
    shown = [m for row in json.loads(run(relay, "download", "status", "--all", "--json").stdout)
             for m in row.get("members", [])]  # fmt: skip
    by_name = {m["name"]: m for m in shown}
    assert (by_name["f03.dat"]["stored_as"], by_name["f03.dat"]["placed"]) == ("f03 (2).dat", "placed")
    assert (by_name["f04.dat"]["placed"], by_name["f04.dat"]["cleanup"]) == ("present", None)

    # synkler verify at download reads each file of a bundle where it went.
    verified = run(relay, "download", "verify", "--depth", "full")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    (down / "f07.dat").write_bytes(os.urandom(4096))  # changed since: the same size, other bytes
    verified = run(relay, "download", "verify", "--depth", "full")
    assert verified.returncode == 1 and "'f07.dat' has md5" in verified.stdout, verified.stdout
    assert "f03" not in verified.stdout  # its file, under its versioned name, is as delivered
    # At upload: the copies of download's receipt documents it keeps are about what it sent.
    kept = run(relay, "upload", "verify")
    assert kept.returncode == 0 and " ok, 0 with differences" in kept.stdout, kept.stdout + kept.stderr
    (down / "f07.dat").write_bytes(files["f07.dat"])  # as delivered again

    # resend: a file of a bundle is named by its bundle; the bundle's files go again, each alone.
    bundle = next(m for row in json.loads(run(relay, "upload", "status", "--all", "--json").stdout)
                  for m in row.get("members", []) if m["name"] == "f05.dat")  # fmt: skip
    assert bundle
    refused = run(relay, "upload", "resend", "f05.dat")
    assert refused.returncode != 0 and "went in a bundle" in refused.stderr, refused
    entry_id = refused.stderr.split("`synkler resend ")[1].split("`")[0]
    (relay.dirs["upload"] / "f06.dat").unlink()  # gone since: not sent again
    singles = len([e for e in relay.entries("upload") if e.kind == "file"])  # m1.dat, any that went alone
    again = run(relay, "upload", "resend", entry_id)
    assert again.returncode == 0 and "files of it sent again" in again.stdout, again
    sent_again = int(again.stdout.split(": ")[1].split(" files")[0])
    relay.wait_for(
        "the files sent again are there already at download",
        lambda: (
            len([e for e in relay.entries("upload") if e.kind == "file" and e.state == "done"])
            == singles + sent_again
            and settled(relay, "upload", "download")
        ),
        STARTS,
    )
    assert listing(down) == expected  # the same content under the same names: nothing new placed


def test_bundles_from_two_uploads_reach_their_destinations_each_in_its_uploads_directory(make_relay):
    """Routes by upload agent (a bundle's files come from one upload: they route as one): lab-b's to
    both downloads, upload's to download only; download places each in `<file_dir>/<upload>/`."""
    work = make_relay.next_dir()
    up = {
        name: {**BUNDLES, "cleanup_script": recorder(work / f"cleanup-{name}.log")}
        for name in ("upload", "lab-b")
    }
    routes = [{"from": "lab-b", "to": ["download", "archive"]}, {"to": ["download"]}]
    settings = {
        **up,
        "download": {"subdir_per_upload": True, "cleanup_script": recorder(work / "cleanup-download.log")},
        "archive": {"cleanup_script": recorder(work / "cleanup-archive.log")},
        "central": {"routes": routes, "keep_minutes": 0.02},
    }
    relay = make_relay(settings, extra={"lab-b": "upload", "archive": "download"}, verbose=False)
    down, archive = relay.dirs["download"], relay.dirs["archive"]
    (down / "lab-b").mkdir()
    (down / "lab-b" / "x01.dat").write_bytes(b"lab-b's x01 from before")  # never overwritten
    relay.start()
    connected(relay, "upload", "lab-b", "central", "download", "archive")
    md5s = {key: put_together(relay, key, some_files("x", 12)) for key in ("upload", "lab-b")}
    relay.wait_for(
        "every file at its destinations",
        lambda: (
            settled(relay, "upload", "lab-b", "download", "archive")
            and sum(kinds(relay, "central").values()) == 24
        ),
        STARTS,
    )
    relay.wait_for(
        "every cleanup script run",
        lambda: (
            all(len(script_runs(work / f"cleanup-{k}.log")) >= 12 for k in ("upload", "lab-b", "archive"))
            and len(script_runs(work / "cleanup-download.log")) >= 24
        ),
        STARTS,
    )
    assert kinds(relay, "central").get("bundle", 0) >= 16  # most crossed in bundles
    assert listing(down) == ["lab-b", "upload"]
    assert listing(down / "upload") == sorted(md5s["upload"])
    assert listing(down / "lab-b") == sorted([*md5s["lab-b"], "x01 (2).dat"])
    assert (down / "lab-b" / "x01.dat").read_bytes() == b"lab-b's x01 from before"
    for name, md5 in md5s["upload"].items():
        assert md5_entry(down / "upload" / name) == md5, name
    placed = {("x01 (2).dat" if n == "x01.dat" else n): md5 for n, md5 in md5s["lab-b"].items()}
    assert {n: md5_entry(down / "lab-b" / n) for n in placed} == placed
    assert {n: md5_entry(archive / n) for n in listing(archive)} == md5s["lab-b"]  # lab-b's only
    # Each cleanup once per file; download's %f is the file's place in file_dir.
    for key in ("upload", "lab-b"):
        assert sorted(script_runs(work / f"cleanup-{key}.log")) == sorted(md5s[key].items()), key
    assert sorted(script_runs(work / "cleanup-archive.log")) == sorted(md5s["lab-b"].items())
    at_down = [(f"upload/{n}", m) for n, m in md5s["upload"].items()] + [
        (f"lab-b/{n}", m) for n, m in placed.items()
    ]
    assert sorted(script_runs(work / "cleanup-download.log")) == sorted(at_down)
    verified = run(relay, "download", "verify", "--depth", "full")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    relay.wait_for(
        "central empties", lambda: os.listdir(relay.dirs["central"] / relay.instance / "stored") == [], 30
    )


def test_a_central_routing_by_name_has_the_files_of_a_bundle_sent_one_by_one_each_to_its_downloads(
    make_relay,
):
    work = make_relay.next_dir()
    routes = [{"name": "*.all", "to": ["download", "archive"]}, {"to": ["download"]}]
    settings = {
        "upload": {**BUNDLES, "cleanup_script": recorder(work / "cleanup-upload.log")},
        "central": {"routes": routes, "keep_minutes": 0.02},
    }
    relay = make_relay(settings, extra={"archive": "download"}, verbose=False)
    relay.start()
    connected(relay, "upload", "central", "download", "archive")
    files = {
        **{f"a{i:02d}.all": os.urandom(1000) for i in range(8)},
        **{f"b{i:02d}.one": os.urandom(1000) for i in range(8)},
    }
    md5s = put_together(relay, "upload", files)
    relay.wait_for(
        "every file at its destinations",
        lambda: (
            settled(relay, "upload", "download", "archive")
            and len([e for e in relay.entries("upload") if e.kind == "file" and e.state == "done"]) == 16
        ),
        STARTS,
    )
    assert listing(relay.dirs["download"]) == sorted(md5s)
    assert listing(relay.dirs["archive"]) == sorted(n for n in md5s if n.endswith(".all"))
    assert {n: md5_entry(relay.dirs["download"] / n) for n in md5s} == md5s
    assert all(e.kind == "file" for e in relay.entries("central"))  # no bundle was taken
    taken_apart = [e for e in relay.entries("upload") if e.kind == "bundle"]
    assert taken_apart and {e.state for e in taken_apart} == {"forgotten"}
    assert all("routes entries by name" in (e.reason or "") for e in taken_apart)
    said = relay.log_path("upload").read_text()
    assert said.count("does not take bundles") == 1, said  # said once; no bundle tried after it
    relay.wait_for(
        "every cleanup script run", lambda: len(script_runs(work / "cleanup-upload.log")) >= 16, STARTS
    )
    assert sorted(script_runs(work / "cleanup-upload.log")) == sorted(md5s.items())


def test_a_central_killed_for_good_holding_bundles_has_them_reowned_and_each_file_delivered_once(make_relay):
    relay, records = pool_relay(make_relay, more={"upload": BUNDLES})
    start_centrals(relay)
    relay.start("upload")
    connected(relay, "upload")
    md5s = put_together(relay, "upload", some_files("p", 60, size=2000))

    def held() -> dict[str, set[str]]:
        return {
            key: {e.name for e in relay.entries(key) if e.kind == "bundle" and e.state == "downloading"}
            for key in ("central", "central-b")
        }

    relay.wait_for(
        "every file stored at a central, download away",
        lambda: (
            sum(
                kinds(relay, k).get("bundle", 0) + kinds(relay, k).get("file", 0)
                for k in ("central", "central-b")
            )
            == 60
            and all(e.state == "downloading" for k in ("central", "central-b") for e in relay.entries(k))
        ),
        STARTS,
    )
    victim = "central" if held()["central"] else "central-b"
    other = "central-b" if victim == "central" else "central"
    lost = held()[victim]
    assert lost, held()
    relay.kill(victim)  # for good: its bundles are stored there, not delivered
    relay.wait_for(
        f"{victim}'s bundles re-owned by {other}", lambda: lost <= {e.name for e in relay.entries(other)}, 60
    )
    relay.start("download")
    relay.wait_for(
        "every file delivered, every cleanup run",
        lambda: (
            settled(relay, "upload", "download")
            and len(cleanups(records["upload"])) >= 60
            and len(cleanups(records["download"])) >= 60
        ),
        STARTS,
    )
    down = relay.dirs["download"]
    assert listing(down) == sorted(md5s)
    assert {n: md5_entry(down / n) for n in md5s} == md5s
    assert cleanups(records["upload"]) == sorted(md5s)  # each exactly once
    assert cleanups(records["download"]) == sorted(md5s)
    assert not (relay.dirs["upload"] / bundles.UPLOAD_DIR).exists()  # no links, no directory of them
