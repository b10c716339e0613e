"""Metadata on the real relay (RabbitMQ, sshd, rsync, three agents): attached by `synkler send`
(-m, -k) or by a sidecar an instrument writes, required by central, found beside the data at
download as a sidecar or in a BagIt bag that bagit-python validates (docs/metadata.md)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.relay_helpers import assert_clean, deliver, place

from synkler.hops.checksum import md5_entry

APPEND = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')"
REMOVE = "import os, shutil, sys; p = sys.argv[1]; shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)"


def synkler(relay, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(relay.command(role, *args), capture_output=True, text=True, timeout=60)


def sidecar(path: Path) -> Any:
    return json.loads(path.with_name(path.name + ".meta.json").read_text())


def test_metadata_from_m_k_and_a_sidecar_arrives_beside_the_data(make_relay):
    remove = shlex.join([sys.executable, "-c", REMOVE, "%F"])
    relay = make_relay(upload={"cleanup_script": remove})
    relay.start()
    up, down, work = relay.dirs["upload"], relay.dirs["download"], relay.workdir
    given = {"sample_id": "S12", "settings": {"gain": 2.5, "filters": ["a", "b"]}, "ok": True, "n": None}
    (work / "meta.json").write_text(json.dumps(given))
    (work / "run1.raw").write_bytes(os.urandom(100_000))
    (work / "run2").mkdir()
    (work / "run2" / "a.dat").write_bytes(os.urandom(5000))
    md5s = {"run1.raw": md5_entry(work / "run1.raw"), "run2": md5_entry(work / "run2")}

    sent = synkler(
        relay, "upload", "send", "-m", str(work / "meta.json"), "-k", "operator:ann", str(work / "run1.raw")
    )
    assert sent.returncode == 0, sent.stderr
    sent = synkler(relay, "upload", "send", "-k", "sample_id:S13", "-k", "url:http://x/y", str(work / "run2"))
    assert sent.returncode == 0, sent.stderr
    assert (work / "run1.raw").exists() and (work / "run2").is_dir()  # copied, not moved
    # An instrument's own sidecar, written before the data appears.
    (up / "run3.csv.meta.json").write_text(json.dumps({"sample_id": "S14", "instrument": "μ-scope"}))
    md5s["run3.csv"] = place(up, "run3.csv", b"a,b\n1,2\n")

    deliver(relay, md5s)
    assert sidecar(down / "run1.raw") == {**given, "operator": "ann"}
    assert sidecar(down / "run2") == {"sample_id": "S13", "url": "http://x/y"}
    assert sidecar(down / "run3.csv") == {"sample_id": "S14", "instrument": "μ-scope"}
    # Central keeps each entry's metadata; the sidecars were never entries of their own.
    central = json.loads(synkler(relay, "central", "status", "--json", "--all").stdout)
    assert {r["name"]: r["metadata"]["sample_id"] for r in central} == {
        "run1.raw": "S12",
        "run2": "S13",
        "run3.csv": "S14",
    }
    # The upload cleanup script removed each entry; its sidecar went with it.
    relay.wait_for("upload's file_dir emptied", lambda: sorted(os.listdir(up)) == [])


def test_an_entry_without_required_metadata_is_refused_told_and_relays_once_it_is_added(make_relay):
    notices = Path(make_relay.next_dir()) / "notices.jsonl"
    alerts = {
        "command": {"argv": [sys.executable, "-c", APPEND, str(notices)]},
        "check_seconds": 1,
        "group_seconds": 0,
    }
    relay = make_relay(central={"require_metadata": {"sample_id": "^S[0-9]+$"}, "alerts": alerts})
    relay.start()
    up, down = relay.dirs["upload"], relay.dirs["download"]
    md5 = place(up, "lonely.raw", os.urandom(20_000))

    relay.wait_for("refused at upload", lambda: relay.states("upload") == {"lonely.raw": "failed"})
    status = synkler(relay, "upload", "status")
    assert "sample_id is missing" in status.stdout and "metadata check at central" in status.stdout
    refused = relay.entries("upload")[0]

    def told() -> list[dict[str, Any]]:
        if not notices.exists():
            return []
        return [n for line in notices.read_text().splitlines() for n in json.loads(line)["notices"]]

    relay.wait_for("the alert", lambda: any(n["key"] == f"entry-failed:{refused.id}" for n in told()))
    started = next(n for n in told() if n["key"] == f"entry-failed:{refused.id}")
    assert "sample_id is missing" in started["details"]["reason"] and "synkler send -k" in started["todo"]
    assert not (down / "lonely.raw").exists()

    # A value that does not match the pattern is refused too; one that does relays it.
    sent = synkler(relay, "upload", "send", "-k", "sample_id:X1", "lonely.raw")
    assert sent.returncode == 0, sent.stderr
    relay.wait_for(
        "refused again",
        lambda: any("does not match" in (e.reason or "") for e in relay.entries("upload")),
    )
    sent = synkler(relay, "upload", "send", "-k", "sample_id:S7", str(up / "lonely.raw"))
    assert sent.returncode == 0, sent.stderr
    relay.wait_for("delivered", lambda: "done" in relay.states("download").values())
    assert md5_entry(down / "lonely.raw") == md5
    assert sidecar(down / "lonely.raw") == {"sample_id": "S7"}
    # The refused versions are forgotten everywhere, and their alert cleared.
    relay.wait_for(
        "refused versions forgotten at central",
        lambda: sorted(e.state for e in relay.entries("central")) == ["delivered", "forgotten", "forgotten"],
    )
    relay.wait_for(
        "the alert cleared",
        lambda: (
            [n["state"] for n in told() if n["key"] == f"entry-failed:{refused.id}"] == ["started", "cleared"]
        ),
    )
    assert_clean(relay)


def test_a_bagit_layout_delivers_bags_that_bagit_python_validates(make_relay):
    bagit = pytest.importorskip("bagit")
    relay = make_relay(download={"layout": "bagit"})
    relay.start()
    work, down = relay.workdir, relay.dirs["download"]
    tree = work / "run9"
    (tree / "raw").mkdir(parents=True)
    (tree / "raw" / "a.dat").write_bytes(os.urandom(70_000))
    (tree / "notes 100%.txt").write_text("notes\n")
    os.symlink("raw/a.dat", tree / "latest")
    (work / "plain.bin").write_bytes(os.urandom(3000))
    md5s = {"run9": md5_entry(tree), "plain.bin": md5_entry(work / "plain.bin")}
    meta = {"sample_id": "S9", "nested": {"x": [1, 2]}, "multi": "two\nlines"}
    (work / "m.json").write_text(json.dumps(meta))
    assert synkler(relay, "upload", "send", "-m", str(work / "m.json"), str(tree)).returncode == 0
    assert synkler(relay, "upload", "send", str(work / "plain.bin")).returncode == 0

    relay.wait_for("delivered", lambda: relay.all_done({"run9", "plain.bin"}))
    for name, md5 in md5s.items():
        bag = bagit.Bag(str(down / name))
        bag.validate()  # every manifest and tag manifest, Payload-Oxum, completeness
        assert md5_entry(down / name / "data" / name) == md5
        assert "md5" in bag.algorithms and "sha256" in bag.algorithms
    nine = bagit.Bag(str(down / "run9"))
    assert nine.info["sample_id"] == "S9" and nine.info["External-Identifier"]
    assert "multi" not in nine.info and "nested" not in nine.info  # only in metadata.json
    assert json.loads((down / "run9" / "metadata.json").read_text()) == meta
    assert not (down / "plain.bin" / "metadata.json").exists()
    assert sorted(n for n in os.listdir(down) if not n.startswith(".")) == ["plain.bin", "run9"]
    verified = synkler(relay, "download", "verify", "--depth", "full")  # reads the data in each bag
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert_clean(relay)
