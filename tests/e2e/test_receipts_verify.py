"""Issue 27: a receipt for every delivery, `synkler verify`, and a stronger hash on request, on the
real relay (three agents, RabbitMQ, sshd, rsync).

What a user checks: a receipt document at download and a copy at upload for every delivered entry,
signed by download's key, listing each file with the hashes of the bytes on disk; `synkler verify`
passing on clean data and finding a flipped byte (full only), a missing file and a truncated file at
the depths that can see them; a receipt signed by another key reported at both ends; and with
`checksum: sha256`, a file and a directory relayed with both hashes verified and in the receipts.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.relay_helpers import deliver, place

from synkler import proofs, receipts
from synkler.hops.checksum import md5_entry


def _keyed(make_relay, **extra):
    """A relay whose download signs with its own key, pinned at upload and central."""
    work = make_relay.next_dir()
    work.mkdir(parents=True, exist_ok=True)
    key = receipts.new_key()
    key_file = work / "receipt.key"
    key_file.write_bytes(receipts.private_bytes(key))
    key_file.chmod(0o600)
    pinned = receipts.public_text(key)
    relay = make_relay(
        upload={"download_public_key": pinned, **extra.get("upload", {})},
        central={"download_public_key": pinned},
        download={"receipt_key": str(key_file), **extra.get("download", {})},
    )
    return relay, key


def _docs(relay, role: str) -> dict[str, dict]:
    """The receipt documents a role keeps, by entry name."""
    top = relay.workdir / role
    out = {}
    for path in top.glob("*-receipts/*/*/*.json"):
        kept = json.loads(path.read_text())
        doc = kept.get("receipt") or {}
        out[os.fsdecode(proofs.name_in(doc["name"]))] = {**kept, "_path": path}
    return out


def _verify(relay, role: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(relay.command(role, "verify", *args), capture_output=True, text=True, timeout=120)


def _tree(top: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(data)
    return top


def _relay_tree(relay, name: str, files: dict[str, bytes]) -> str:
    tree = _tree(relay.workdir / name, files)
    md5 = md5_entry(tree)
    os.rename(tree, relay.dirs["upload"] / name)
    return md5


def _wait_for_receipts(relay, names: set[str]) -> None:
    relay.wait_for(
        f"receipts of {sorted(names)} at both ends",
        lambda: names <= set(_docs(relay, "upload")) and names <= set(_docs(relay, "download")),
        30,
    )


def test_every_delivery_has_a_signed_receipt_at_both_ends_that_matches_the_data(make_relay):
    relay, key = _keyed(make_relay)
    relay.start()
    md5s = {"run.raw": place(relay.dirs["upload"], "run.raw", os.urandom(200_000))}
    md5s["run-8"] = _relay_tree(relay, "run-8", {"a.dat": os.urandom(5000), "sub/b.dat": b"b", "c": b""})
    deliver(relay, md5s)
    _wait_for_receipts(relay, set(md5s))
    down, up = _docs(relay, "download"), _docs(relay, "upload")
    for name, md5 in md5s.items():
        doc = down[name]
        assert doc["receipt"]["md5"] == md5 and doc["receipt"]["destination"] == "download"
        assert proofs.signature_problem(doc, key.public_key()) is None
        assert proofs.listing_problem(doc) is None
        # Upload keeps download's document as download signed it, with what it sent.
        assert up[name]["receipt"] == doc["receipt"] and up[name]["signature"] == doc["signature"]
        assert up[name]["upload"]["md5"] == md5
        # The month directory and file name are documented: YYYY/MM/<entry id>.json.
        assert doc["_path"].name == doc["receipt"]["entry"] + ".json"
    listing = {item["path"]: item for item in down["run-8"]["listing"]}
    got = relay.dirs["download"] / "run-8"
    assert set(listing) == {"a.dat", "sub/b.dat", "c"}
    for rel, item in listing.items():
        data = (got / rel).read_bytes()
        assert (item["size"], item["md5"]) == (len(data), hashlib.md5(data).hexdigest())
    assert down["run.raw"]["listing"] == [
        {"path": "", "kind": "file", "size": 200_000, "md5": md5s["run.raw"]}
    ]
    for role in ("download", "upload"):
        run = _verify(relay, role, "--depth", "full")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "2 entries checked" in run.stdout and "2 ok, 0 with differences" in run.stdout
    # Upload also checks that it holds a document for each delivery its history has a receipt of.
    up["run.raw"]["_path"].unlink()
    run = _verify(relay, "upload")
    assert run.returncode == 1 and "run.raw" in run.stdout and "no receipt document is kept" in run.stdout


APPEND = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().replace(chr(10), ' ') + chr(10))"


def test_verify_finds_each_damage_at_the_depths_that_can_see_it(make_relay, tmp_path):
    told = tmp_path / "notices.jsonl"
    command = {"argv": [sys.executable, "-c", APPEND, str(told)]}
    relay, _key = _keyed(make_relay, download={"alerts": {"command": command}})
    relay.start()
    files = {"a.dat": os.urandom(4000), "b.dat": os.urandom(3000), "deep/c.dat": os.urandom(2000)}
    md5s = {name: _relay_tree(relay, name, files) for name in ("clean", "flipped", "missing", "short")}
    deliver(relay, md5s)
    _wait_for_receipts(relay, set(md5s))
    for depth in ("fast", "complete", "full"):
        assert _verify(relay, "download", "--depth", depth).returncode == 0
    down = relay.dirs["download"]
    raw = bytearray((down / "flipped" / "a.dat").read_bytes())
    raw[1234] ^= 0x01
    (down / "flipped" / "a.dat").write_bytes(bytes(raw))
    (down / "missing" / "deep" / "c.dat").unlink()
    with open(down / "short" / "b.dat", "r+b") as f:
        f.truncate(2999)
    expected = {  # depth -> entries it must find
        "fast": {"missing", "short"},
        "complete": {"missing", "short"},
        "full": {"flipped", "missing", "short"},
    }
    for depth, bad in expected.items():
        run = _verify(relay, "download", "--depth", depth)
        assert run.returncode == 1, run.stdout
        failed = {
            line.split(" (entry")[0].removeprefix("FAIL ")
            for line in run.stdout.splitlines()
            if line.startswith("FAIL")
        }
        assert failed == bad, (depth, run.stdout)
        assert "4 entries checked" in run.stdout and f"{len(bad)} with differences" in run.stdout
    run = _verify(relay, "download", "--depth", "full", "flipped")
    assert "'a.dat' has md5" in run.stdout and run.returncode == 1
    assert "'deep/c.dat' is missing" in _verify(relay, "download", "missing").stdout
    assert "'b.dat' has 2999 bytes, not 3000" in _verify(relay, "download", "short").stdout
    assert _verify(relay, "download", "--depth", "full", "clean").returncode == 0
    # From cron: the result as a notice on the alert channels, only when something differs.
    assert _verify(relay, "download", "--depth", "full", "clean", "--notify").returncode == 0
    assert not told.exists()
    assert _verify(relay, "download", "--depth", "full", "--notify").returncode == 1
    (notice,) = json.loads(told.read_text())["notices"]
    assert notice["key"] == "verify" and notice["severity"] == "error"
    assert "3 with differences" in notice["summary"] and len(notice["details"]) == 3


def test_a_receipt_signed_by_another_key_is_reported_at_both_ends(make_relay):
    relay, _key = _keyed(make_relay)
    relay.start()
    md5s = {"honest.raw": place(relay.dirs["upload"], "honest.raw", os.urandom(1000))}
    md5s["forged.raw"] = place(relay.dirs["upload"], "forged.raw", os.urandom(1000))
    deliver(relay, md5s)
    _wait_for_receipts(relay, set(md5s))
    mallory = receipts.new_key()
    for role in ("download", "upload"):
        kept = _docs(relay, role)["forged.raw"]
        path = kept.pop("_path")
        kept["receipt"]["size"] = 999  # a lie, signed by someone else
        kept.update(proofs.seal(kept["receipt"], mallory))
        path.write_text(json.dumps(kept))
        run = _verify(relay, role)
        assert run.returncode == 1, run.stdout
        lines = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
        assert len(lines) == 1 and "forged.raw" in lines[0] and "forged or altered" in lines[0], run.stdout


@pytest.mark.parametrize("alg", ["sha256", "blake2b"])
def test_a_stronger_hash_travels_with_file_and_directory_and_is_in_both_receipts(make_relay, alg):
    relay, _key = _keyed(make_relay, upload={"checksum": alg})
    relay.start()
    data = os.urandom(100_000)
    md5s = {"one.raw": place(relay.dirs["upload"], "one.raw", data)}
    md5s["dir-1"] = _relay_tree(relay, "dir-1", {"x.dat": b"x" * 777, "y/z.dat": os.urandom(9)})
    deliver(relay, md5s)
    _wait_for_receipts(relay, set(md5s))
    down, up = _docs(relay, "download"), _docs(relay, "upload")
    assert down["one.raw"]["receipt"]["checksum"] == f"{alg}:{hashlib.new(alg, data).hexdigest()}"
    for name in md5s:
        checksum = down[name]["receipt"]["checksum"]
        assert checksum.startswith(f"{alg}:") and up[name]["upload"]["checksum"] == checksum
    for item in down["dir-1"]["listing"]:
        data = (relay.dirs["download"] / "dir-1" / item["path"]).read_bytes()
        assert item[alg] == hashlib.new(alg, data).hexdigest()
    # Each hop compared the second hash too: central and download logged no mismatch, and verify
    # reads both again.
    for role in ("central", "download"):
        assert f"{alg} mismatch" not in relay.log_path(role).read_text()
    run = _verify(relay, "download", "--depth", "full")
    assert run.returncode == 0, run.stdout


def test_download_asking_for_a_hash_upload_does_not_send_computes_it_for_its_receipt(make_relay):
    relay, _key = _keyed(make_relay, download={"checksum": "sha256"})
    relay.start()
    data = os.urandom(50_000)
    md5s = {"plain.raw": place(relay.dirs["upload"], "plain.raw", data)}
    deliver(relay, md5s)
    _wait_for_receipts(relay, set(md5s))
    # The stronger of the two settings ends up in the receipt; upload sent none, so none is compared.
    doc = _docs(relay, "download")["plain.raw"]
    assert doc["receipt"]["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert doc["listing"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert _docs(relay, "upload")["plain.raw"]["upload"]["checksum"] == ""
    assert _verify(relay, "download", "--depth", "full").returncode == 0
