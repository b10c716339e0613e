"""Issue 26, several uploads side by side, on the real relay (RabbitMQ, sshd, rsync; download signs
receipts): with download's `subdir_per_upload: true`, the same name from two uploads lands as
`<file_dir>/<upload>/x` and `<file_dir>/lab-b/x`, each with its own md5, each cleanup script runs once
per entry (download's with %f the path in file_dir), a new version from one upload is a version of
its own entry only, and `synkler status`, `status --relay`, the receipts and `synkler verify` name
the place where each entry is. (Without the key, the second `x` is `x (2)`: tests/e2e/test_fanout.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support.faultkit import recorder, script_runs
from support.relay_helpers import place

from synkler import proofs, receipts
from synkler.hops.checksum import md5_entry

UPLOADS = ("upload", "lab-b")
# x: other content from each upload; same.txt: the same bytes from both; and more of each, for the
# kills of download to land while entries are being placed.
NAMES = ("x", "same.txt", *(f"f{i:02d}.dat" for i in range(12)))
KILLS = 3


def _relay(make_relay):
    work = make_relay.next_dir()
    work.mkdir(parents=True, exist_ok=True)
    key = receipts.new_key()
    key_file = work / "download.key"
    key_file.write_bytes(receipts.private_bytes(key))
    key_file.chmod(0o600)
    pinned = receipts.public_text(key)
    settings: dict[str, dict] = {
        "download": {
            "subdir_per_upload": True,
            "receipt_key": str(key_file),
            "cleanup_script": recorder(work / "cleanup-download.log"),
        },
        "central": {"download_public_key": pinned, "keep_minutes": 0.02},
    }
    for name in UPLOADS:
        settings[name] = {
            "settle_seconds": 0.3,
            "download_public_key": pinned,
            "cleanup_script": recorder(work / f"cleanup-{name}.log"),
        }
    return make_relay(settings, extra={"lab-b": "upload"}, verbose=False), work


def _done(relay, key: str) -> list[str]:
    return sorted(e.name for e in relay.entries(key) if e.state == "done")


def _listing(top: Path) -> dict[str, list[str]]:
    """What a person sees in download's file_dir (its dot-named staging place aside)."""
    return {d: sorted(os.listdir(top / d)) for d in sorted(os.listdir(top)) if not d.startswith(".")}


def _run(relay, key: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(relay.command(key, *args), capture_output=True, text=True, timeout=120)


def _documents(relay, key: str) -> dict[str, str]:
    """stored_as of each receipt document a role keeps, by entry id."""
    docs = {}
    for path in (relay.workdir / key).glob("*-receipts/*/*/*.json"):
        doc = json.loads(path.read_text())["receipt"]
        docs[doc["entry"]] = os.fsdecode(proofs.name_in(doc["stored_as"]))
    return docs


def test_the_same_name_from_two_uploads_lands_in_each_uploads_directory(make_relay):
    relay, work = _relay(make_relay)
    relay.start("central", "download", *UPLOADS)
    md5s = {}
    for up in UPLOADS:
        for name in NAMES:
            data = b"the same bytes from both\n" if name == "same.txt" else f"{name} from {up}\n".encode()
            md5s[up, name] = place(relay.dirs[up], name, data * 2000)
    total = len(md5s)

    def all_done() -> bool:
        at_uploads = all(_done(relay, up) == sorted(NAMES) for up in UPLOADS)
        return at_uploads and len(_done(relay, "download")) == total

    # Killed while entries are on their way (pulled, placed or about to be): the restart places each once.
    placed = 0
    for _ in range(KILLS):
        more = lambda n=placed: len(_done(relay, "download")) > n or all_done()  # noqa: E731
        relay.wait_for("download places more", more, 60)
        if all_done():
            break
        placed = len(_done(relay, "download"))
        relay.kill("download")
        relay.start("download")
    relay.wait_for("every entry done at both uploads and at download", all_done, 180)
    file_dir = relay.dirs["download"]
    assert _listing(file_dir) == {up: sorted(NAMES) for up in UPLOADS}  # nothing directly in file_dir
    for (up, name), md5 in md5s.items():
        assert md5_entry(file_dir / up / name) == md5, (up, name)
    # Each cleanup script once per entry, on what was delivered; download's %f is the path in file_dir.
    runs = script_runs(work / "cleanup-download.log")
    assert sorted(runs) == sorted((f"{up}/{name}", md5) for (up, name), md5 in md5s.items())
    for up in UPLOADS:
        assert sorted(script_runs(work / f"cleanup-{up}.log")) == sorted(
            (name, md5s[up, name]) for name in NAMES
        ), up

    # Where each entry is, as every view names it: the path in download's file_dir.
    at_download = {e.id: e for e in relay.entries("download")}
    assert sorted(e.stored_as or "" for e in at_download.values()) == sorted(
        f"{up}/{name}" for up in UPLOADS for name in NAMES
    )
    shown = _run(relay, "download", "status", "--all")
    for e in at_download.values():
        assert f"as {e.stored_as}" in shown.stdout, shown.stdout
    for up in UPLOADS:  # upload hears where download placed each of its entries
        shown = _run(relay, up, "status", "--all")
        assert all(f"as {up}/{name}" in shown.stdout for name in NAMES), shown.stdout
    view = _run(relay, "lab-b", "status", "--relay", "--all")
    assert "done (as lab-b/x)" in view.stdout and "done (as upload/x)" in view.stdout, view.stdout
    for key in ("download", *UPLOADS):
        want = total if key == "download" else len(NAMES)
        relay.wait_for(f"{key}'s receipt documents", lambda k=key, n=want: len(_documents(relay, k)) == n, 30)
    down_docs = _documents(relay, "download")
    assert down_docs == {i: e.stored_as for i, e in at_download.items()}
    for up in UPLOADS:
        assert sorted(_documents(relay, up).values()) == [f"{up}/{name}" for name in sorted(NAMES)], up
    checked = _run(relay, "download", "verify", "--depth", "full")
    assert checked.returncode == 0 and f"{total} ok, 0 with differences" in checked.stdout, checked.stdout
    aside = work / "lab-b-x-aside"
    os.rename(file_dir / "lab-b" / "x", aside)  # verify looks where the entry was placed
    checked = _run(relay, "download", "verify")
    assert checked.returncode == 1 and f"{file_dir / 'lab-b' / 'x'}" in checked.stdout, checked.stdout
    os.rename(aside, file_dir / "lab-b" / "x")

    # A new version of upload's x is upload's: placed beside upload/x, lab-b's x untouched.
    md5s["upload", "x (2)"] = place(relay.dirs["upload"], "x", b"x from upload, version 2\n" * 100)
    beside = sorted([*NAMES, "x (2)"])
    relay.wait_for("the new version placed", lambda: sorted(os.listdir(file_dir / "upload")) == beside, 60)
    relay.wait_for("download done with it", lambda: len(_done(relay, "download")) == total + 1, 60)
    assert md5_entry(file_dir / "upload" / "x (2)") == md5s["upload", "x (2)"]
    assert md5_entry(file_dir / "upload" / "x") == md5s["upload", "x"]
    assert sorted(os.listdir(file_dir / "lab-b")) == sorted(NAMES)
    assert md5_entry(file_dir / "lab-b" / "x") == md5s["lab-b", "x"]
    cleaned = work / "cleanup-download.log"
    relay.wait_for("its cleanup at download", lambda: len(script_runs(cleaned)) == total + 1, 30)
    assert script_runs(cleaned)[-1] == ("upload/x (2)", md5s["upload", "x (2)"])
