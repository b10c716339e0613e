"""Signed delivery receipts (synkler.receipts) and the decisions that rest on them: download signs what
it placed, central believes a `fetched` and upload a `delivered` only with a receipt that download's
pinned key signed for that very entry and content, and central keeps its copy if the receipt it
kept no longer verifies. Also the sender rules that hold with or without keys: no message acts on an
entry in a state where its sender could not have a say."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest
from support.fakes import FakeJobs, Role

from synkler import messages, receipts
from synkler.agents import AGENTS
from synkler.agents.base import Cleanup
from synkler.agents.pools import Pool
from synkler.cli.main import main
from synkler.config import parse_config
from synkler.errors import ConfigError, MessageError
from synkler.messages import Delivered, Failed, Fetched
from synkler.receipts import Receipt, ReceiptError
from synkler.state import State

MD5 = hashlib.md5(b"data").hexdigest()
ODD_NAME = os.fsdecode(b"caf\xe9 #1.raw")  # not UTF-8: a name is bytes


def a_receipt(**changes: object) -> Receipt:
    fields: dict[str, object] = dict(
        instance="lab",
        entry="e" * 32,
        name="data.bin",
        kind="file",
        size=4,
        files=1,
        md5=MD5,
        destination="download",
        placed_at=1_700_000_000.25,
        stored_as="data.bin",
        outcome="placed",
    )
    fields.update(changes)
    return Receipt(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def key() -> receipts.Ed25519PrivateKey:
    return receipts.new_key()


# the receipt itself --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["data.bin", ODD_NAME, "-x; rm -rf ~", "naïve ✓"])
def test_a_signed_receipt_verifies_and_gives_back_exactly_what_was_signed(key, name: str):
    receipt = a_receipt(name=name, stored_as=name)
    token = receipts.sign(receipt, key)
    assert messages._receipt(token) is None and len(token) < receipts.MAX_TOKEN
    assert receipts.verify(token, key.public_key()) == receipt


def test_a_name_that_is_not_utf8_travels_as_its_bytes_and_a_utf8_one_as_text(key):
    doc = json.loads(receipts.payload(a_receipt(name=ODD_NAME, stored_as="naïve")))
    assert doc["name"] == {"bytes": base64.b64encode(b"caf\xe9 #1.raw").decode()}
    assert doc["stored_as"] == "naïve" and doc["v"] == receipts.VERSION


def _tampered(token: str, **changes: object) -> str:
    """The token with its payload changed and the signature kept."""
    head, sig = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    doc.update(changes)
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return f"{base64.urlsafe_b64encode(body).rstrip(b'=').decode()}.{sig}"


@pytest.mark.parametrize(
    "field,value",
    [("entry", "f" * 32), ("md5", "0" * 32), ("size", 5), ("name", "other.bin"), ("instance", "x")],
)
def test_a_receipt_with_any_field_changed_after_signing_is_refused(key, field: str, value: object):
    token = _tampered(receipts.sign(a_receipt(), key), **{field: value})
    with pytest.raises(ReceiptError, match="pinned key"):
        receipts.verify(token, key.public_key())


def test_a_receipt_signed_by_another_key_is_refused(key):
    token = receipts.sign(a_receipt(), receipts.new_key())
    with pytest.raises(ReceiptError, match="pinned key"):
        receipts.verify(token, key.public_key())


@pytest.mark.parametrize(
    "token",
    ["", "x", "a.b.c", "....", "!!.!!", "e30.AAAA", "a" * 5000 + ".b"],
)
def test_garbage_is_refused_as_a_receipt_not_a_crash(key, token: str):
    with pytest.raises(ReceiptError):
        receipts.verify(token, key.public_key())


def test_a_good_receipt_about_another_entry_or_content_does_not_pass_the_check(key):
    token = receipts.sign(a_receipt(), key)
    assert receipts.check(token, key.public_key(), a_receipt(placed_at=0.0)) == a_receipt()
    for other in (a_receipt(entry="f" * 32), a_receipt(md5="0" * 32), a_receipt(destination="dl2")):
        with pytest.raises(ReceiptError, match="receipt: "):
            receipts.check(token, key.public_key(), other)


def test_public_keys_are_read_only_in_the_form_keygen_prints(key):
    text = receipts.public_text(key)
    assert text.startswith("ed25519:")
    assert receipts.public_text(receipts.load_public_key(text)) == text
    for bad in ("", text[len("ed25519:") :], "ed25519:AAAA", "ed25519:not base64!", "ssh-ed25519 AAAA"):
        with pytest.raises(ValueError):
            receipts.load_public_key(bad)


def test_keygen_writes_a_private_key_0600_once_and_prints_the_lines_to_pin(tmp_path, capsys):
    path = tmp_path / "receipt.key"
    assert main(["keygen", str(path)]) == 0
    out = capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    public = receipts.public_text(receipts.load_private_key(path))
    assert f"download_public_key: {public}" in out and f"receipt_key: {path}" in out
    before = path.read_bytes()
    assert main(["keygen", str(path)]) == 2  # never over a key in use
    assert path.read_bytes() == before
    capsys.readouterr()
    assert main(["keygen", "--public", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"download_public_key: {public}"


def test_a_message_without_a_receipt_has_no_receipt_field_on_the_wire():
    plain = messages.encode(Fetched("e" * 32, "download", stored_as="a", outcome="placed"))
    assert b"receipt" not in plain  # a 0.4 agent understands it
    assert messages.decode(plain) == Fetched("e" * 32, "download", stored_as="a", outcome="placed")
    with pytest.raises(MessageError, match="receipt"):
        messages.decode(plain.replace(b'"outcome"', b'"receipt":"not a receipt","outcome"'))


# the roles -------------------------------------------------------------------------------------------


@pytest.fixture
def keyfile(tmp_path: Path, key) -> Path:
    path = tmp_path / "receipt.key"
    path.write_bytes(receipts.private_bytes(key))
    path.chmod(0o600)
    return path


def pinned(key) -> dict[str, str]:
    return {"download_public_key": receipts.public_text(key)}


def downloading(tmp_path: Path, key, state: str = "downloading", **fields: object) -> tuple[Role, object]:
    r = Role("central", tmp_path, keep_minutes=0, **pinned(key))
    r.start()
    e = r.given(state, peer="upload", md5=MD5, path="/srv/central/lab/stored/x", **fields)
    return r, e


def fetched(e, token: str = "", sender: str = "download") -> Fetched:
    return Fetched(e.id, sender, stored_as="data.bin", outcome="placed", receipt=token)


def receipt_for(e, **changes: object) -> Receipt:
    return a_receipt(entry=e.id, **changes)


def test_download_signs_a_receipt_for_what_it_placed_keeps_it_and_sends_it(tmp_path: Path, keyfile, key):
    r = Role("download", tmp_path, receipt_key=str(keyfile))
    r.start()
    e = r.given("placing", peer="central", stored_as="data.bin", md5=MD5)
    Path(r.agent.staging.of(e.id)).write_bytes(b"data")
    r.tick()
    [(to, msg)] = r.sent()
    assert to == "central" and isinstance(msg, Fetched) and msg.receipt
    got = receipts.check(msg.receipt, key.public_key(), receipt_for(e, placed_at=0.0))
    assert got.placed_at == pytest.approx(time.time(), abs=60)
    assert r.state.receipts(e.id) == {"download": msg.receipt}


@pytest.mark.parametrize("why", ["none", "forged", "replayed from another entry", "other content"])
def test_central_believes_no_fetched_without_downloads_receipt_for_this_entry(tmp_path: Path, key, why: str):
    r, e = downloading(tmp_path, key)
    token = {
        "none": "",
        "forged": receipts.sign(receipt_for(e), receipts.new_key()),
        "replayed from another entry": receipts.sign(a_receipt(entry="f" * 32), key),
        "other content": receipts.sign(receipt_for(e, md5="0" * 32), key),
    }[why]
    with pytest.raises(ReceiptError):
        r.deliver(fetched(e, token))
    assert r.entry(e.id).state == "downloading" and r.sent() == []
    assert r.state.receipts(e.id) == {}


def test_central_delivers_on_a_good_receipt_keeps_it_and_passes_it_on(tmp_path: Path, key):
    r, e = downloading(tmp_path, key)
    token = receipts.sign(receipt_for(e), key)
    r.deliver(fetched(e, token))
    assert r.entry(e.id).state == "delivered"
    [(to, msg)] = r.sent()
    assert (to, msg) == ("upload", Delivered(e.id, "central", stored_as="data.bin", receipt=token))
    assert r.state.receipts(e.id) == {"download": token}


def test_central_keeps_its_copy_when_the_receipt_it_kept_no_longer_verifies(tmp_path: Path, key):
    r, e = downloading(tmp_path, key, state="delivered", stored_as="data.bin", due=time.time() - 1)
    stored = Path(r.agent.spool.stored(e.id))
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"data")
    with r.state.transaction():  # say, the key was changed since, or the row was
        r.state.put_receipt(e.id, "download", receipts.sign(receipt_for(e), receipts.new_key()))
    r.tick()
    assert not r.jobs.pending and stored.exists()
    assert r.entry(e.id).state == "delivered" and "central copy kept" in (r.entry(e.id).reason or "")
    with r.state.transaction():  # the right one: the copy goes
        r.state.put_receipt(e.id, "download", receipts.sign(receipt_for(e), key))
    r.tick(time.time() + 3601)
    r.run(r.job(Pool.REMOVE))
    assert r.entry(e.id).state == "expired" and not stored.exists()


def upload_sent(tmp_path: Path, key, state: str = "sent", **fields: object) -> tuple[Role, object]:
    r = Role("upload", tmp_path, cleanup_script="true", **pinned(key))
    r.start()
    e = r.given(state, peer="central", md5=MD5, **fields)
    return r, e


@pytest.mark.parametrize("why", ["none", "forged", "replayed from another entry", "other content"])
def test_upload_runs_no_cleanup_script_without_downloads_receipt_for_this_entry(
    tmp_path: Path, key, why: str
):
    r, e = upload_sent(tmp_path, key)
    token = {
        "none": "",
        "forged": receipts.sign(receipt_for(e), receipts.new_key()),
        "replayed from another entry": receipts.sign(a_receipt(entry="f" * 32), key),
        "other content": receipts.sign(receipt_for(e, size=5), key),
    }[why]
    with pytest.raises(ReceiptError):
        r.deliver(Delivered(e.id, "central", stored_as="data.bin", receipt=token))
    r.tick()
    assert r.entry(e.id).state == "sent" and not [j for j in r.jobs.pending if j.pool == "script"]


def test_upload_runs_its_cleanup_script_on_a_good_receipt_and_keeps_it(tmp_path: Path, key):
    r, e = upload_sent(tmp_path, key)
    token = receipts.sign(receipt_for(e, stored_as="data (2).bin"), key)
    r.deliver(Delivered(e.id, "central", stored_as="data (2).bin", receipt=token))
    assert (r.entry(e.id).state, r.entry(e.id).cleanup) == ("delivered", Cleanup.PENDING)
    assert r.state.receipts(e.id) == {"download": token}
    r.tick()
    assert r.job("script")


# who has a say, with or without keys --------------------------------------------------------------


@pytest.mark.parametrize("state", ["waiting", "uploading", "verifying"])
def test_central_refuses_a_fetched_for_an_entry_it_never_asked_download_to_fetch(tmp_path: Path, state: str):
    r = Role("central", tmp_path)
    r.start()
    e = r.given(state, peer="upload", md5=MD5)
    with pytest.raises(MessageError, match="never asked download to fetch it"):
        r.deliver(fetched(e))
    assert r.entry(e.id).state == state and r.sent() == []


def test_central_refuses_a_fetched_for_an_entry_that_failed_before_it_was_stored(tmp_path: Path):
    r = Role("central", tmp_path)
    r.start()
    e = r.given("failed", peer="upload", reason="needs 10 bytes, more than central can ever hold")
    with pytest.raises(MessageError, match="never asked download to fetch it"):
        r.deliver(fetched(e))
    assert r.entry(e.id).state == "failed" and r.sent() == []


def test_a_stored_copy_that_went_bad_takes_downloads_say_away(tmp_path: Path):
    r = Role("central", tmp_path)
    r.start()
    e = r.given("downloading", peer="upload", md5=MD5, path="/srv/central/lab/stored/x")
    stored = Path(r.agent.spool.stored(e.id))
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"went bad")
    r.deliver(messages.Corrupt(e.id, "download", got="0" * 32))
    r.run(r.job("hash"))
    assert r.entry(e.id).state == "waiting" and r.entry(e.id).path is None
    with pytest.raises(MessageError, match="never asked"):
        r.deliver(fetched(e))


@pytest.mark.parametrize(
    "sender,state",
    [
        ("download", "waiting"),
        ("download", "uploading"),
        ("download", "verifying"),
        ("upload", "downloading"),
    ],
)
def test_central_takes_a_failure_only_from_the_agent_that_has_a_say_now(
    tmp_path: Path, sender: str, state: str
):
    r = Role("central", tmp_path)
    r.start()
    e = r.given(state, peer="upload", md5=MD5)
    with pytest.raises(MessageError, match="has no say over it now"):
        r.deliver(Failed(e.id, sender, hop="pull from central", reason="no"))
    assert r.entry(e.id).state == state and r.sent() == []


@pytest.mark.parametrize(
    "state,reason",
    [
        ("offered", None),
        ("waiting", "no room"),
        ("failed", "admission at central: needs 10 bytes"),
        ("failed", "upload to central: md5 mismatch"),
        ("failed", "push to central: exit 23"),
    ],
)
def test_upload_refuses_a_delivered_for_an_entry_central_never_held(tmp_path: Path, state: str, reason):
    r = Role("upload", tmp_path, cleanup_script="true")
    r.start()
    e = r.given(state, peer="central", md5=MD5, reason=reason)
    with pytest.raises(MessageError, match="central never held a verified copy"):
        r.deliver(Delivered(e.id, "central", stored_as="data.bin"))
    r.tick()
    assert r.entry(e.id).state == state and not [j for j in r.jobs.pending if j.pool == "script"]


def test_without_keys_every_role_warns_once_at_start_that_deliveries_are_not_proven(tmp_path: Path, caplog):
    for mode in ("upload", "central", "download"):
        (tmp_path / mode).mkdir()
        Role(mode, tmp_path / mode).start()
    warned = [r.getMessage() for r in caplog.records if "not proven" in r.getMessage()]
    assert len(warned) == 3, warned


def test_status_json_shows_each_entrys_receipts(tmp_path: Path, key, capsys):
    r, e = upload_sent(tmp_path, key)
    token = receipts.sign(receipt_for(e), key)
    r.deliver(Delivered(e.id, "central", stored_as="data.bin", receipt=token))
    conf = tmp_path / "upload.conf"
    conf.write_text(
        json.dumps(
            {
                "mode": "upload",
                "id": "lab",
                "file_dir": str(r.file_dir),
                "synkler_server": "central.example",
                "state_db": str(r.cfg.state_db),
            }
        )
    )
    capsys.readouterr()
    assert main(["status", "--json", "-c", str(conf)]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["receipts"] == {"download": token}
    assert receipts.verify(row["receipts"]["download"], key.public_key()).entry == e.id


def test_a_receipt_of_a_dataclass_has_every_documented_field():
    documented = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    for f in dataclasses.fields(Receipt):
        assert f"`{f.name}`" in documented, f.name


def test_check_says_whether_deliveries_are_proven_at_each_role(tmp_path: Path, keyfile, key):
    from synkler.cli import checks

    def line(mode: str, **settings: object) -> tuple[str, str]:
        data = {"mode": mode, "file_dir": str(tmp_path), "synkler_server": "central.example", **settings}
        return checks.receipts_line(parse_config(data, tmp_path / "synkler.conf", environ={}, home=tmp_path))

    assert line("upload")[0] == checks.WARN and "not proven" in line("central")[1]
    assert line("central", **pinned(key))[0] == checks.OK
    assert line("download")[0] == checks.WARN
    assert line("download", receipt_key=str(keyfile)) == (
        checks.OK,
        f"delivery receipts signed with {keyfile} ({receipts.public_text(key)})",
    )
    keyfile.write_text("not a key")
    assert line("download", receipt_key=str(keyfile))[0] == checks.FAIL
    cfg = parse_config(
        {"mode": "download", "file_dir": str(tmp_path), "synkler_server": "c", "receipt_key": str(keyfile)},
        tmp_path / "synkler.conf",
        environ={},
        home=tmp_path,
    )
    state = State(tmp_path / "download.sqlite")
    try:
        with pytest.raises(ConfigError, match="receipt_key"):  # and the agent does not start
            AGENTS["download"](cfg, state, FakeJobs(state))
    finally:
        state.close()


# the set-up-order trap: `synkler resend` on download ----------------------------------------------


def test_resend_on_download_signs_a_delivered_entrys_receipt_with_the_key_it_has_now(
    tmp_path: Path, keyfile, key
):
    r = Role("download", tmp_path, receipt_key=str(keyfile))
    r.start()
    e = r.given("done", entry_id="e" * 32, peer="central", stored_as="data.bin", md5=MD5)  # before any key
    ok, answer = r.request("resend", e.id)
    assert ok and "sent to central again" in answer
    [(to, msg)] = r.sent()
    assert to == "central" and isinstance(msg, Fetched) and msg.outcome == "placed"
    receipts.check(msg.receipt, key.public_key(), receipt_for(e, placed_at=0.0))
    assert r.state.receipts(e.id) == {"download": msg.receipt} and r.entry(e.id).state == "done"
    # Signed with another key before (a key replaced since): the time it was placed is kept.
    old = receipts.sign(receipt_for(e, outcome="present"), receipts.new_key())
    with r.state.transaction():
        r.state.put_receipt(e.id, "download", old)
    assert r.request("resend", e.id)[0]
    [(_, again)] = r.sent()
    got = receipts.verify(again.receipt, key.public_key())
    assert (got.placed_at, got.outcome, again.outcome) == (1_700_000_000.25, "present", "present")


def test_resend_on_download_is_refused_for_an_entry_not_delivered_or_without_a_receipt_key(
    tmp_path: Path, keyfile
):
    (tmp_path / "keyed").mkdir()
    (tmp_path / "bare").mkdir()
    r = Role("download", tmp_path / "keyed", receipt_key=str(keyfile))
    r.start()
    e = r.given("fetching", peer="central", md5=MD5)
    ok, answer = r.request("resend", e.id)
    assert not ok and "only a delivered entry's receipt can be sent again" in answer
    bare = Role("download", tmp_path / "bare")
    bare.start()
    e = bare.given("done", peer="central", stored_as="data.bin", md5=MD5)
    ok, answer = bare.request("resend", e.id)
    assert not ok and "no receipt_key" in answer
    assert r.sent() == [] and bare.sent() == []


@pytest.mark.parametrize("state", ["delivered", "expired"])
def test_central_passes_a_receipt_that_comes_again_for_a_delivered_entry_on_to_upload(
    tmp_path: Path, key, state: str
):
    r, e = downloading(tmp_path, key, state=state, stored_as="data.bin")
    with pytest.raises(ReceiptError):  # not download's
        r.deliver(fetched(e, receipts.sign(receipt_for(e), receipts.new_key())))
    elsewhere = receipts.sign(receipt_for(e, stored_as="other.bin"), key)
    with pytest.raises(MessageError):  # not where it was delivered
        r.deliver(Fetched(e.id, "download", stored_as="other.bin", outcome="placed", receipt=elsewhere))
    assert r.sent() == [] and r.state.receipts(e.id) == {}
    token = receipts.sign(receipt_for(e), key)
    r.deliver(fetched(e, token))
    assert r.sent() == [("upload", Delivered(e.id, "central", stored_as="data.bin", receipt=token))]
    assert r.state.receipts(e.id) == {"download": token} and r.entry(e.id).state == state
    r.deliver(fetched(e))  # a copy of the first `fetched`, without a receipt: nothing, as before
    assert r.sent() == []


# the receipt document (`proof`) that travels beside the receipt ------------------------------------


def a_document(e, key, **changes: object) -> dict:
    from synkler import proofs

    doc = proofs.document(
        instance="lab",
        entry=e,
        checksum="",
        destination="download",
        stored_as="data.bin",
        outcome="placed",
        hops=[{"role": "download", "agent": "download", "at": 1.0}],
        items=[],
    )
    doc.update(changes)
    return proofs.seal(doc, key)


@pytest.mark.parametrize("why", ["another key", "unsigned", "another entry", "other content"])
def test_upload_runs_no_cleanup_script_on_a_good_receipt_beside_a_forged_receipt_document(
    tmp_path: Path, key, why: str
):
    r, e = upload_sent(tmp_path, key)
    proof = {
        "another key": a_document(e, receipts.new_key()),
        "unsigned": a_document(e, None),
        "another entry": a_document(e, key, entry="f" * 32),
        "other content": a_document(e, key, md5="0" * 32),
    }[why]
    token = receipts.sign(receipt_for(e), key)
    with pytest.raises(ReceiptError):
        r.deliver(Delivered(e.id, "central", stored_as="data.bin", receipt=token, proof=proof))
    r.tick()
    assert r.entry(e.id).state == "sent" and not [j for j in r.jobs.pending if j.pool == "script"]
    assert not list(r.agent.cfg.receipt_dir.rglob("*.json"))


def test_a_receipt_document_naming_a_path_out_of_place_is_kept_only_as_upload_names_it(tmp_path: Path, key):
    # Download's own word (signed), passed on by central: upload keeps it under its own entry id,
    # never under a name or path the document says.
    r, e = upload_sent(tmp_path, key)
    proof = a_document(e, key, stored_as="../../../.ssh/authorized_keys", name="../x")
    r.deliver(
        Delivered(
            e.id, "central", stored_as="data.bin", receipt=receipts.sign(receipt_for(e), key), proof=proof
        )
    )
    top = r.agent.cfg.receipt_dir
    assert [p.relative_to(top).parts[2] for p in top.rglob("*.json")] == [f"{e.id}.json"]
    assert not (tmp_path / ".ssh").exists()
