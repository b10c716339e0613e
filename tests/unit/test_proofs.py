"""Issue 27, the pure parts: the second hash read with md5 in one pass, the verdict of a hop on it,
receipt documents (signed, listed, compared at three depths) and where they are kept."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from synkler import messages, proofs, receipts
from synkler.errors import MessageError
from synkler.hops import checksum, receiptfiles
from synkler.hops.checksum import FileDigest, digest_entry, hop_mismatch, list_entry, md5_entry
from synkler.state import Entry, State


def tree(top: Path) -> Path:
    (top / "sub").mkdir(parents=True)
    (top / "a.dat").write_bytes(b"alpha" * 1000)
    (top / "sub" / "b.dat").write_bytes(b"")
    (top / "z").write_bytes(os.urandom(3000))
    os.symlink("a.dat", top / "link")
    return top


# the second hash -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["sha256", "blake2b"])
def test_a_file_gets_its_md5_and_second_hash_from_one_read(tmp_path: Path, monkeypatch, alg) -> None:
    data = os.urandom(5 << 20)
    (tmp_path / "f").write_bytes(data)
    opened: list[bytes] = []
    real = checksum._open_regular
    monkeypatch.setattr(checksum, "_open_regular", lambda p: opened.append(p) or real(p))
    got = digest_entry(tmp_path / "f", alg)
    assert opened == [os.fsencode(tmp_path / "f")]
    assert got.md5 == hashlib.md5(data).hexdigest() == md5_entry(tmp_path / "f")
    assert got.strong == f"{alg}:{hashlib.new(alg, data).hexdigest()}"
    assert got.files == [FileDigest(b"", "file", len(data), got.md5, hashlib.new(alg, data).hexdigest())]


def test_a_directory_reads_each_file_once_and_lists_each_file(tmp_path: Path, monkeypatch) -> None:
    top = tree(tmp_path / "t")
    opened: list[bytes] = []
    real = checksum._open_regular
    monkeypatch.setattr(checksum, "_open_regular", lambda p: opened.append(p) or real(p))
    got = digest_entry(top, "sha256")
    assert sorted(opened) == sorted(os.fsencode(top / p) for p in ("a.dat", "sub/b.dat", "z"))
    opened.clear()
    assert got.md5 == md5_entry(top)  # the md5 is the one every hop compares, whatever else is read
    assert [(f.path, f.kind, f.size) for f in got.files] == [
        (b"a.dat", "file", 5000),
        (b"link", "link", 5),
        (b"sub/b.dat", "file", 0),
        (b"z", "file", 3000),
    ]
    for f in got.files:
        if f.kind == "file":
            data = (top / os.fsdecode(f.path)).read_bytes()
            assert (f.md5, f.strong) == (hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest())
    assert [(f.path, f.size) for f in list_entry(top)] == [(f.path, f.size) for f in got.files]


def test_the_second_hash_of_a_directory_follows_the_documented_tree_format(tmp_path: Path) -> None:
    top = tree(tmp_path / "t")
    stream = hashlib.sha256()
    for rel, kind, payload in [
        (b"a.dat", b"f", hashlib.sha256(b"alpha" * 1000).hexdigest().encode()),
        (b"link", b"l", b"a.dat"),
        (b"sub", b"d", b""),
        (b"sub/b.dat", b"f", hashlib.sha256(b"").hexdigest().encode()),
        (b"z", b"f", hashlib.sha256((top / "z").read_bytes()).hexdigest().encode()),
    ]:
        stream.update(kind + b"\0" + rel + b"\0" + payload + b"\0")
    assert digest_entry(top, "sha256").strong == "sha256:" + stream.hexdigest()


def test_any_change_to_a_file_changes_the_second_hash_of_its_directory(tmp_path: Path) -> None:
    top = tree(tmp_path / "t")
    before = digest_entry(top, "blake2b").strong
    with open(top / "z", "r+b") as f:
        f.write(b"\0")
    assert digest_entry(top, "blake2b").strong != before


def test_a_second_hash_mismatch_at_a_hop_fails_the_copy_like_an_md5_mismatch() -> None:
    md5, sha = "a" * 32, "sha256:" + "b" * 64
    assert hop_mismatch("central", md5, "", md5, None) is None
    assert hop_mismatch("central", md5, sha, md5, sha) is None
    assert (
        hop_mismatch("central", md5, sha, "c" * 32, sha)
        == f"md5 mismatch at central: expected {md5}, got {'c' * 32}"
    )
    wrong = hop_mismatch("download", md5, sha, md5, "sha256:" + "d" * 64)
    assert wrong is not None and wrong.startswith("sha256 mismatch at download")
    assert hop_mismatch("download", md5, sha, md5, None) is not None  # a copy hashed without it is no match
    assert (
        hop_mismatch("download", md5, "sha256:", md5, sha) is None
    )  # download's own: computed, not compared


def test_messages_carry_the_second_hash_and_refuse_a_malformed_one() -> None:
    sha = "sha256:" + "0" * 64
    sent = messages.Sent("e" * 32, "upload", attempt=1, md5="a" * 32, checksum=sha)
    assert messages.decode(messages.encode(sent)) == sent
    plain = messages.Sent("e" * 32, "upload", attempt=1, md5="a" * 32)
    assert b"checksum" not in messages.encode(plain)  # optional: left out when empty, SCHEMA stays 4
    for bad in ("sha256:" + "0" * 63, "md4:" + "0" * 32, "sha256:" + "A" * 64, 7):
        with pytest.raises(MessageError):
            messages.decode(messages.encode(sent).replace(sha.encode(), json_text(bad)))


def json_text(value: object) -> bytes:
    import json

    return json.dumps(value).encode()[1:-1] if isinstance(value, str) else json.dumps(value).encode()


# receipt documents -----------------------------------------------------------------------------


def entry(name: str = "run-1") -> Entry:
    return Entry(id="f" * 32, name=name, kind="dir", md5="a" * 32, state="done", size=8000, files=3)


def sealed_doc(tmp_path: Path, key: receipts.PrivateKey | None, name: str = "run-1") -> dict:
    top = tree(tmp_path / name)
    found = digest_entry(top, "sha256")
    items = proofs.listing(found.files, "sha256")
    doc = proofs.document(
        instance="lab",
        entry=entry(name),
        checksum=found.strong or "",
        destination="download",
        stored_as=name,
        outcome="placed",
        hops=[{"role": "download", "agent": "download", "at": time.time()}],
        items=items,
    )
    return {**proofs.seal(doc, key), "listing": items}


def test_a_document_signed_by_download_verifies_and_one_signed_by_another_key_does_not(
    tmp_path: Path,
) -> None:
    key, other = receipts.new_key(), receipts.new_key()
    kept = sealed_doc(tmp_path, key)
    assert proofs.problem(kept) is None and proofs.listing_problem(kept) is None
    assert proofs.signature_problem(kept, key.public_key()) is None
    assert "forged" in (proofs.signature_problem(kept, other.public_key()) or "")
    kept["receipt"]["size"] += 1  # altered after it was signed
    assert "forged or altered" in (proofs.signature_problem(kept, key.public_key()) or "")
    assert proofs.signature_problem(sealed_doc(tmp_path, None, "x"), key.public_key()) == "not signed"


def test_a_listing_changed_after_signing_is_told(tmp_path: Path) -> None:
    kept = sealed_doc(tmp_path, receipts.new_key())
    kept["listing"][0]["md5"] = "0" * 32
    assert "listing_sha256" in (proofs.listing_problem(kept) or "")


def test_names_that_are_not_utf8_survive_a_document(tmp_path: Path) -> None:
    raw = b"caf\xe9"
    assert proofs.name_in(proofs.name_out(raw)) == raw
    assert proofs.name_in(proofs.name_out(b"ok")) == b"ok"
    with pytest.raises(proofs.ProofError):
        proofs.name_in({"bytes": "%%"})


def test_differences_are_told_at_the_depths_that_can_see_them(tmp_path: Path) -> None:
    kept = sealed_doc(tmp_path, None)
    items = kept["listing"]
    found = digest_entry(tmp_path / "run-1", "sha256").files
    for depth in proofs.DEPTHS:
        assert proofs.differences(items, found, depth, "sha256") == []
    flipped = [f if f.path != b"z" else FileDigest(f.path, f.kind, f.size, "0" * 32, "1" * 64) for f in found]
    assert proofs.differences(items, flipped, "complete", "sha256") == []
    assert proofs.differences(items, flipped, "full", "sha256") == [
        f"'z' has md5 {'0' * 32}, not {found[-1].md5}"
    ]
    strong_only = [
        f if f.path != b"z" else FileDigest(f.path, f.kind, f.size, f.md5, "1" * 64) for f in found
    ]
    assert proofs.differences(items, strong_only, "full", "sha256")[0].startswith("'z' has sha256 ")
    missing = [f for f in found if f.path != b"z"]
    assert proofs.differences(items, missing, "fast", None) == ["3 files, not 4", "5005 bytes, not 8005"]
    assert "'z' is missing" in proofs.differences(items, missing, "complete", None)
    extra = [*found, FileDigest(b"new", "file", 0, "")]
    assert proofs.differences(items, extra, "complete", None) == [
        "5 files, not 4",
        "'new' is not in the receipt",
    ]
    short = [f if f.path != b"a.dat" else FileDigest(f.path, f.kind, 4999, "") for f in found]
    assert "'a.dat' has 4999 bytes, not 5000" in proofs.differences(items, short, "complete", None)
    with pytest.raises(ValueError):
        proofs.differences(items, found, "deep", None)


def test_a_document_too_big_for_a_message_is_refused_on_the_wire(tmp_path: Path) -> None:
    kept = sealed_doc(tmp_path, None)
    wire = {"receipt": kept["receipt"], "signature": kept["signature"]}
    assert proofs.wire_problem(wire) is None and proofs.wire_problem("") is None
    wire["receipt"] = {**wire["receipt"], "metadata": {"note": "x" * proofs.MAX_PROOF}}
    assert "at most" in (proofs.wire_problem(wire) or "")
    assert proofs.wire_problem({"receipt": {}, "signature": ""}) is not None


# where they are kept -----------------------------------------------------------------------------


def test_documents_are_kept_by_month_and_found_by_entry_id(tmp_path: Path) -> None:
    march = time.mktime((2026, 3, 15, 12, 0, 0, 0, 0, -1))
    path = receiptfiles.write(tmp_path / "r", "a" * 32, march, {"x": 1})
    assert path == tmp_path / "r" / "2026" / "03" / ("a" * 32 + ".json")
    assert path.stat().st_mode & 0o777 == 0o600
    receiptfiles.write(tmp_path / "r", "b" * 32, march + 40 * 86400, {"x": 2})
    assert [p.stem for p in receiptfiles.every(tmp_path / "r")] == ["a" * 32, "b" * 32]
    assert receiptfiles.find(tmp_path / "r", "b" * 32)[0].parent.name == "04"
    assert receiptfiles.read(path) == {"x": 1}


def test_the_documents_of_a_transaction_are_written_together_just_before_it_commits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch of documents (more than write_whole writes one by one) appears whole, before the
    commit of the transaction that decided them; one that cannot be written is logged and the
    others are kept; a transaction rolled back writes none of those it queued."""
    state = State(tmp_path / "state.db")
    top = tmp_path / "r"
    batch = receiptfiles.Batch(top, state.before_commit)
    now = time.time()
    (top / time.strftime("%Y/%m", time.gmtime(now))).mkdir(parents=True)
    (top / time.strftime("%Y/%m", time.gmtime(now)) / ("f" * 32 + ".json")).mkdir()  # taken by a dir
    ids = [c * 32 for c in "abcdef"]

    def kept() -> list[str]:
        return [p.stem for p in receiptfiles.every(top) if p.is_file()]

    on_disk_at_commit: list[list[str]] = []
    with state.transaction():
        for entry_id in ids:
            batch.keep(entry_id, f"entry {entry_id[0]}", now, {"id": entry_id})
        assert kept() == []  # not yet: with the others, at the commit
        state.after_commit(lambda: on_disk_at_commit.append(kept()))
    assert on_disk_at_commit == [ids[:-1]]
    assert all(receiptfiles.read(receiptfiles.find(top, i)[0]) == {"id": i} for i in ids[:-1])
    assert "entry f: cannot write its receipt document" in caplog.text
    assert not [p for p in top.rglob(".*.tmp")]
    with pytest.raises(RuntimeError), state.transaction():
        batch.keep("9" * 32, "entry 9", now, {"id": "9"})
        raise RuntimeError("rolled back")
    with state.transaction():
        pass
    assert receiptfiles.find(top, "9" * 32) == []
    state.close()


def test_retention_removes_only_documents_older_than_the_setting(tmp_path: Path) -> None:
    now = time.time()
    old = receiptfiles.write(tmp_path, "a" * 32, now - 100 * 86400, {})
    os.utime(old, (now - 100 * 86400, now - 100 * 86400))
    new = receiptfiles.write(tmp_path, "b" * 32, now, {})
    assert receiptfiles.prune(tmp_path, 0, now) == 0  # 0: kept for ever
    assert receiptfiles.prune(tmp_path, 30, now) == 1
    assert not old.exists() and new.exists() and not old.parent.exists()


def test_a_path_that_differs_is_shown_as_every_name_is_its_bytes_as_xnn_not_as_python_writes_them():
    from synkler import proofs

    assert proofs._shown(b"r\xe9sum\xe9\n.dat") == "'r\\xe9sum\\xe9\\n.dat'"
    assert proofs._shown(b"") == "the entry"
