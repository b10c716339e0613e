"""Issue 26: upload keeps one receipt document per destination (never one in place of another), and
`synkler verify` checks each with its destination's pinned key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.fakes import Role

from synkler import destinations as dests
from synkler import receipts
from synkler.cli.cmd_verify import key_for
from synkler.hops import audit, receiptfiles
from synkler.messages import Delivered

ID = "a" * 32


def test_a_document_is_named_by_its_entry_and_with_routes_by_its_destination(tmp_path: Path) -> None:
    march = time.mktime((2026, 3, 15, 12, 0, 0, 0, 0, -1))
    assert receiptfiles.path_for(tmp_path, ID, march).name == f"{ID}.json"
    assert receiptfiles.path_for(tmp_path, ID, march, "archive").name == f"{ID}.archive.json"
    assert receiptfiles.named(f"{ID}.group.p1") == (ID, "group.p1")  # a name may hold a dot
    assert receiptfiles.named(ID) == (ID, "")


def test_the_documents_of_every_destination_are_found_by_the_entry_id(tmp_path: Path) -> None:
    now = time.time()
    receiptfiles.write(tmp_path, ID, now, {"to": ""})
    for dest in ("archive", "analysis"):
        receiptfiles.write_many(tmp_path, {receiptfiles.path_for(tmp_path, ID, now, dest): {"to": dest}})
    receiptfiles.write(tmp_path, "b" * 32, now, {"other": True})
    found = receiptfiles.find(tmp_path, ID)
    assert sorted(p.name for p in found) == sorted(
        [f"{ID}.json", f"{ID}.analysis.json", f"{ID}.archive.json"]
    )


def test_upload_keeps_one_document_per_destination_each_naming_it(tmp_path: Path) -> None:
    r = Role("upload", tmp_path)
    r.start()
    e = r.given("sent", name="run_1.raw", peer="central", md5="a" * 32)
    with r.state.transaction():
        dests.route(r.state, e.id, ["analysis", "archive"])
    for dest in ("archive", "analysis"):
        r.deliver(Delivered(e.id, "central", stored_as="run_1.raw", destination=dest))
    found = receiptfiles.find(r.agent.cfg.receipt_dir, e.id)
    assert sorted(p.name for p in found) == [f"{e.id}.analysis.json", f"{e.id}.archive.json"]
    for path in found:
        assert receiptfiles.read(path)["upload"]["destination"] == receiptfiles.named(path.stem)[1]
        kept, verdict = audit.load(path)
        assert kept is not None and verdict.destination == receiptfiles.named(path.stem)[1]


def test_upload_without_routes_keeps_its_one_document_under_the_entry_id(tmp_path: Path) -> None:
    r = Role("upload", tmp_path)
    r.start()
    e = r.given("sent", name="run_1.raw", peer="central", md5="a" * 32)
    r.deliver(Delivered(e.id, "central", stored_as="run_1.raw"))  # no destination: download_name
    [path] = receiptfiles.find(r.agent.cfg.receipt_dir, e.id)
    assert path.name == f"{e.id}.json"


@pytest.fixture(scope="module")
def two_keys():
    return {d: receipts.public_of(receipts.new_key()) for d in ("analysis", "archive")}


def test_verify_checks_a_document_with_its_destinations_key(two_keys) -> None:
    verdict = audit.Verdict(Path(f"{ID}.archive.json"), entry=ID, destination="archive")
    assert key_for(two_keys, verdict) == (two_keys["archive"], None)
    one = {"download": two_keys["archive"]}  # one key pinned: it checks every document, as before
    assert key_for(one, verdict) == (two_keys["archive"], None)
    assert key_for({}, verdict) == (None, None)  # nothing pinned: nothing to check the signature with
    lost = audit.Verdict(Path(f"{ID}.group.json"), entry=ID, destination="group")
    key, why = key_for(two_keys, lost)
    assert key is None and why == "download_public_key pins no key for group: its signature cannot be checked"
