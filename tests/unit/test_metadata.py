"""An entry's metadata: its rules (synkler.metadata), its sidecars at upload and download, central's
refusal of an entry that lacks what it requires, and the BagIt bag download builds around an entry."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fakes import Role
from support.strategies import json_values, metadata_objects

from synkler import messages, metadata
from synkler.agents import sidecars
from synkler.agents.listing import hash_entry, scan
from synkler.agents.naming import choose_name
from synkler.hops.bagit import make_bag, work_dir
from synkler.hops.checksum import md5_entry
from synkler.messages import Failed, Forget, Offer
from synkler.metadata import MAX_BYTES, MetadataError

# the rules -------------------------------------------------------------------------------------------


@given(metadata_objects())
def test_valid_metadata_survives_its_canonical_text_its_sidecar_text_and_a_message(meta):
    assert metadata.parse(metadata.canonical(meta)) == meta
    assert metadata.parse(metadata.pretty(meta).encode("utf-8")) == meta
    offer = Offer("0" * 32, "upload", name="a", kind="file", size=1, files=1, meta=meta)
    assert messages.decode(messages.encode(offer)) == offer


@given(json_values)
def test_any_json_value_is_judged_never_crashes_and_what_passes_is_canonical(value):
    why = metadata.problem(value)
    if why is None:
        assert isinstance(value, dict)
        assert len(metadata.canonical(value)) <= MAX_BYTES
    else:
        assert isinstance(why, str) and why


@given(st.binary(max_size=200))
def test_any_bytes_as_a_sidecar_are_metadata_or_a_metadata_error(raw):
    try:
        meta = metadata.parse(raw)
    except MetadataError:
        return
    assert metadata.problem(meta) is None


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"[1, 2]", "must be a JSON object"),
        (b'{"a": NaN}', "not a JSON number"),
        (b'{"a": 1, "a": 2}', "appears twice"),
        (b'{"": 1}', "not a non-empty string"),
        (b'{"a\\u0001": 1}', "control characters"),
        (b'{"a": ' + b"[" * 9 + b"]" * 9 + b"}", "nested more than 8"),
        (b'{"a": "' + b"x" * MAX_BYTES + b'"}', "more than"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b"{", "not valid JSON"),
        (b"[" * 100_000, "more than"),
    ],
)
def test_bad_metadata_is_refused_with_the_reason(raw, why):
    with pytest.raises(MetadataError, match=why):
        metadata.parse(raw)


def test_metadata_at_the_size_bound_fits_in_an_offer():
    meta = {"a": "x" * (MAX_BYTES - len('{"a":""}'))}
    assert metadata.problem(meta) is None
    offer = Offer("0" * 32, "upload", name="n" * 255, kind="file", size=1, files=1, meta=meta)
    assert len(messages.encode(offer)) < messages.MAX_BODY


def test_a_malformed_meta_field_is_a_message_error():
    wire = {"v": 4, "type": "offer", "entry": "0" * 32, "from": "upload", "at": 1.0}
    wire.update(name="a", kind="file", size=1, files=1, meta={"a": [[[[[[[[[1]]]]]]]]]})
    with pytest.raises(messages.MessageError, match="'meta'"):
        messages.decode(json.dumps(wire).encode())
    wire["meta"] = "sample_id=S1"
    with pytest.raises(messages.MessageError, match="'meta'"):
        messages.decode(json.dumps(wire).encode())


def test_k_pairs_are_strings_that_may_hold_colons_and_replace_keys_of_m():
    assert metadata.pair("url:http://x:8080/y") == ("url", "http://x:8080/y")
    assert metadata.merged({"a": 1, "b": 2}, [("b", "3")]) == {"a": 1, "b": "3"}
    with pytest.raises(MetadataError):
        metadata.pair("no-colon")
    with pytest.raises(MetadataError):
        metadata.pair(":empty-key")


def test_requirements_name_what_is_missing_and_what_does_not_match():
    required = {"sample_id": re.compile("^S[0-9]+$"), "project": None, "n": re.compile("1")}
    assert metadata.requirement_problems({"sample_id": "S1", "project": 0, "n": "1"}, required) == []
    assert metadata.requirement_problems(None, required) == [
        "sample_id is missing",
        "project is missing",
        "n is missing",
    ]
    lacks = metadata.requirement_problems({"sample_id": "X1", "project": None, "n": 1}, required)
    assert lacks == ['sample_id "X1" does not match ^S[0-9]+$', "n must be a string matching 1"]


def test_sidecar_names():
    assert metadata.sidecar_of("run 1.raw") == "run 1.raw.meta.json"
    assert metadata.is_sidecar("run 1.raw.meta.json") and not metadata.is_sidecar("run.json")
    assert metadata.entry_of("run 1.raw.meta.json") == "run 1.raw"
    assert metadata.entry_metadata(None) == {} and metadata.entry_metadata('{"a":1}') == {"a": 1}


# sidecars on disk ---------------------------------------------------------------------------------------


def test_a_sidecar_is_written_whole_never_over_another_unless_asked(tmp_path: Path):
    sidecars.write(str(tmp_path), "a", {"k": "v"}, replace=False)
    with pytest.raises(FileExistsError):
        sidecars.write(str(tmp_path), "a", {"k": "w"}, replace=False)
    assert sidecars.read(str(tmp_path / "a.meta.json")) == {"k": "v"}
    sidecars.write(str(tmp_path), "a", {"k": "w"}, replace=True)
    assert sidecars.holds(str(tmp_path), "a", {"k": "w"})
    assert sorted(os.listdir(tmp_path)) == ["a.meta.json"]  # no temporary file left


def test_the_scan_folds_a_sidecar_into_its_entry_and_never_lists_it(tmp_path: Path):
    (tmp_path / "a").write_bytes(b"data")
    (tmp_path / "orphan.meta.json").write_text('{"x": 1}')
    cache = sidecars.Sidecars(str(tmp_path))
    before = scan(str(tmp_path), set, cache)
    assert set(before.found) == {"a"} and before.meta == {}
    (tmp_path / "a.meta.json").write_text('{"sample_id": "S1"}')
    after = scan(str(tmp_path), set, cache)
    assert after.meta == {"a": {"sample_id": "S1"}}
    assert after.found["a"].signature != before.found["a"].signature  # a change of the entry
    (tmp_path / "a.meta.json").write_text("{broken")
    assert isinstance(scan(str(tmp_path), set, cache).meta["a"], MetadataError)


def test_a_file_renamed_in_is_listed_with_the_sidecar_written_before_it(tmp_path: Path):
    (tmp_path / "a").write_bytes(b"data")
    (tmp_path / "a.meta.json").write_text('{"k": "v"}')
    listing = scan(str(tmp_path), lambda: {"a"})
    assert listing.whole == {"a"} and listing.meta == {"a": {"k": "v"}}


def test_an_entry_whose_name_is_too_long_for_a_sidecar_has_none_and_is_hashed_and_cleaned_up(tmp_path: Path):
    # 255 bytes: NAME.meta.json cannot exist (ENAMETOOLONG), which means "no sidecar", not an error.
    longest = "é" * 127 + "x"
    (tmp_path / longest).write_bytes(b"data")
    listing = scan(str(tmp_path), lambda: {longest})
    assert listing.whole == {longest} and listing.meta == {}
    hashed = hash_entry(str(tmp_path / longest))
    assert hashed.md5 == md5_entry(tmp_path / longest) and hashed.meta is None
    assert sidecars.remove(str(tmp_path), longest) is False


def test_download_takes_a_name_whose_sidecar_is_free_and_knows_its_own_copy(tmp_path: Path):
    (tmp_path / "a.csv.meta.json").write_text("{}")  # someone else's sidecar, without its data
    (tmp_path / "b.csv").write_bytes(b"x")
    md5 = md5_entry(tmp_path / "b.csv")
    assert choose_name(str(tmp_path), "a.csv", "file", md5, {"k": 1}) == ("a (2).csv", False)
    assert choose_name(str(tmp_path), "a.csv", "file", md5) == ("a.csv", False)  # no metadata: no sidecar
    assert choose_name(str(tmp_path), "b.csv", "file", md5, {"k": 1}) == ("b (2).csv", False)
    sidecars.write(str(tmp_path), "b.csv", {"k": 1}, replace=False)
    assert choose_name(str(tmp_path), "b.csv", "file", md5, {"k": 1}) == ("b.csv", True)


# central and upload ------------------------------------------------------------------------------------


def test_central_refuses_an_offer_that_lacks_required_metadata_and_keeps_it_otherwise(tmp_path: Path):
    r = Role("central", tmp_path, require_metadata={"sample_id": "^S[0-9]+$"})
    r.start()
    bare, good = "1" * 32, "2" * 32
    r.deliver(Offer(bare, "upload", name="a", kind="file", size=1, files=1))
    r.deliver(Offer(good, "upload", name="b", kind="file", size=1, files=1, meta={"sample_id": "S1"}))
    assert r.entry(bare).state == "failed"
    assert r.entry(bare).reason == (
        "metadata check at central: lacks the metadata central requires: sample_id is missing"
    )
    failed = [m for to, m in r.sent() if isinstance(m, Failed)]
    assert [(m.entry, m.hop) for m in failed] == [(bare, "metadata check at central")]
    assert r.entry(good).state == "waiting"
    assert metadata.entry_metadata(r.state.metadata(good)) == {"sample_id": "S1"}


def test_upload_offers_a_refused_entry_again_once_its_sidecar_is_written(tmp_path: Path):
    r = Role("upload", tmp_path, settle_seconds=0)
    (r.file_dir / "data.bin").write_bytes(b"data")
    (r.file_dir / "other.meta.json").write_text("{}")  # a sidecar alone is no entry
    r.start()
    later = time.time()
    for _ in range(2):  # each look later than the last: one the watcher asked for is due too
        later += 10
        r.tick(later)
        r.run(r.job("scan"))
    (first,) = [m for to, m in r.sent() if isinstance(m, Offer)]
    assert first.name == "data.bin" and first.meta is None
    r.run(r.job("hash"))
    r.deliver(Failed(first.entry, "central", hop="metadata check at central", reason="sample_id is missing"))
    assert r.entry(first.entry).state == "failed"
    (r.file_dir / "data.bin.meta.json").write_text('{"sample_id": "S1"}')
    for _ in range(3):
        later += 10
        r.tick(later)
        r.run(r.job("scan"))
    sent = r.sent()
    offers = [m for to, m in sent if isinstance(m, Offer)]
    assert [(o.name, o.meta) for o in offers] == [("data.bin", {"sample_id": "S1"})]
    assert r.entry(first.entry).state == "forgotten"
    assert [m.entry for to, m in sent if isinstance(m, Forget)] == [first.entry]


# BagIt ---------------------------------------------------------------------------------------------------


def test_a_bag_is_built_around_an_entry_and_can_be_finished_after_a_crash(tmp_path: Path):
    bagit = pytest.importorskip("bagit")
    staged = tmp_path / "e1"
    (staged / "sub").mkdir(parents=True)
    (staged / "sub" / "x.dat").write_bytes(os.urandom(1000))
    (staged / "line\nfeed").write_bytes(b"y")
    md5 = md5_entry(staged)
    bag = tmp_path / "e1.bag"
    meta = {"sample_id": "S1", "a:b": "c", "list": [1]}
    # A crash after the entry was moved into the work directory: the next run finishes the bag.
    os.makedirs(work_dir(str(bag)) + "/data")
    os.rename(staged, work_dir(str(bag)) + "/data/run")
    make_bag(str(staged), str(bag), "run", meta, "1" * 32, "synkler test")
    assert not os.path.lexists(work_dir(str(bag)))
    made = bagit.Bag(str(bag))
    made.validate()
    assert made.info["sample_id"] == "S1" and made.info["Payload-Oxum"] == "1001.2"
    assert "a:b" not in made.info and "list" not in made.info
    assert json.loads((bag / "metadata.json").read_text()) == meta
    assert md5_entry(bag / "data" / "run") == md5


# download ------------------------------------------------------------------------------------------------


def test_download_places_the_sidecar_then_the_data(tmp_path: Path):
    r = Role("download", tmp_path)
    r.start()
    e = r.given("placing", name="run.raw", stored_as="run.raw", peer="central")
    with r.state.transaction():
        r.state.put_metadata(e.id, '{"sample_id":"S1"}')
    staged = r.file_dir / f".synkler-{r.cfg.id}" / e.id
    staged.write_bytes(b"data")
    r.tick()
    assert r.entry(e.id).state == "done"
    assert (r.file_dir / "run.raw").read_bytes() == b"data"
    assert json.loads((r.file_dir / "run.raw.meta.json").read_text()) == {"sample_id": "S1"}


def test_download_finishes_a_bag_a_stop_cut_short_after_its_restart(tmp_path: Path):
    bagit = pytest.importorskip("bagit")
    r = Role("download", tmp_path, layout="bagit")
    e = r.given("placing", name="run.raw", stored_as="run.raw", peer="central")
    staging = r.file_dir / f".synkler-{r.cfg.id}"
    (staging / f"{e.id}.bag.tmp" / "data").mkdir(parents=True)
    (staging / f"{e.id}.bag.tmp" / "data" / "run.raw").write_bytes(b"data")
    (staging / "0123").write_bytes(b"junk")  # a leftover that is no entry's: removed
    r.start()
    assert sorted(os.listdir(staging)) == [f"{e.id}.bag.tmp"]
    r.tick()
    r.run(r.job("hash"))
    r.tick()
    assert r.entry(e.id).state == "done" and os.listdir(staging) == []
    bagit.Bag(str(r.file_dir / "run.raw")).validate()
    assert (r.file_dir / "run.raw" / "data" / "run.raw").read_bytes() == b"data"


def test_retry_of_an_entry_refused_for_its_metadata_offers_it_again_and_forgets_it_once(tmp_path: Path):
    r = Role("upload", tmp_path)
    (r.file_dir / "data.bin").write_bytes(b"data")
    r.start()
    e = r.given("failed", peer="central", reason="metadata check at central: lacks …: sample_id is missing")
    with r.state.transaction():
        r.state.put_metadata(e.id, '{"project":"p"}')
    ok, answer = r.request("retry", e.id)
    assert ok, answer
    sent = r.sent()
    assert [m.meta for to, m in sent if isinstance(m, Offer)] == [{"project": "p"}]
    assert [m.entry for to, m in sent if isinstance(m, Forget)] == [e.id]
    assert r.entry(e.id).state == "forgotten"
