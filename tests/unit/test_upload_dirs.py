"""Issue 26, several uploads side by side: with download's `subdir_per_upload`, each entry is placed in
`<file_dir>/<upload agent>/<name>` (its `stored_as` is `<upload agent>/<name>`), and never anywhere
outside file_dir, whatever name the upload agent has. The path decision is pure; the placing runs on
a real disk with a fake runtime."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import sys
import uuid
from pathlib import Path

import pytest
from support import transitions
from support.fakes import Role

from synkler import messages, proofs
from synkler.agents.naming import chooser, stored_in, upload_dir, upload_dir_problem
from synkler.errors import MessageError
from synkler.hops import audit
from synkler.hops.checksum import digest_entry, md5_entry
from synkler.messages import Failed, Fetch, Fetched, stored_problem
from synkler.state import Entry

HOSTILE = ["", ".", "..", "../etc", "a/b", "/etc", "a\0b", "a\nb", ".hidden", "x" * 256]


@pytest.mark.parametrize("source", HOSTILE)
def test_an_upload_name_that_could_leave_file_dir_is_never_a_directory(source: str) -> None:
    assert upload_dir_problem(source) is not None


@pytest.mark.parametrize("source", ["upload", "lab-a", "lab_b.2", "A1"])
def test_an_upload_agent_name_is_its_directory_and_the_entry_goes_inside(source: str) -> None:
    assert upload_dir_problem(source) is None
    assert stored_in(source, "run_001.raw") == f"{source}/run_001.raw"
    assert stored_in("", "run_001.raw") == "run_001.raw"  # subdir_per_upload off: file_dir itself


@pytest.mark.parametrize("stored_as", ["x", "run_001 (2).raw", "lab-a/x", "lab-a/x (2)"])
def test_where_download_says_it_placed_an_entry_may_be_a_name_or_upload_slash_name(stored_as: str) -> None:
    assert stored_problem(stored_as) is None


@pytest.mark.parametrize(
    "stored_as", ["", "/x", "../x", "lab-a/../x", "a/b/c", "lab-a/", "/", ".hidden/x", "lab-a/.x", "a\0/x"]
)
def test_a_stored_as_that_leads_out_of_file_dir_is_refused(stored_as: str) -> None:
    assert stored_problem(stored_as) is not None


def fetch_for(entry_id: str, source: str = "") -> Fetch:
    return transitions.fetch_for(entry_id, md5=hashlib.md5(b"data").hexdigest(), source=source)


def test_a_fetch_names_its_upload_agent_and_a_hostile_one_is_dead_lettered() -> None:
    entry_id = uuid.uuid4().hex
    assert messages.decode(messages.encode(fetch_for(entry_id, "lab-a"))).source == "lab-a"  # type: ignore[attr-defined]
    assert messages.decode(messages.encode(fetch_for(entry_id))).source == ""  # type: ignore[attr-defined]
    body = json.loads(messages.encode(fetch_for(entry_id, "lab-a")))
    for hostile in ("..", "a/b", ".hidden", "a\nb"):
        body["source"] = hostile
        with pytest.raises(MessageError):
            messages.decode(json.dumps(body).encode())
    fetched = Fetched(entry_id, "download", stored_as="lab-a/data.bin", outcome="placed")
    assert messages.decode(messages.encode(fetched)).stored_as == "lab-a/data.bin"  # type: ignore[attr-defined]
    body = json.loads(messages.encode(fetched))
    body["stored_as"] = "../data.bin"
    with pytest.raises(MessageError):
        messages.decode(json.dumps(body).encode())


# the choice of a name, on a real file_dir -------------------------------------------------------------


def entry(name: str = "x", data: bytes = b"data") -> tuple[Entry, str]:
    md5 = hashlib.md5(data).hexdigest()
    return Entry(id=uuid.uuid4().hex, name=name, kind="file", md5=md5, state="fetching"), md5


def test_the_same_name_from_two_uploads_goes_into_two_directories(tmp_path: Path) -> None:
    a, md5 = entry()
    b, _ = entry()
    top, _ = entry()
    (tmp_path / "x").write_bytes(b"someone else's")  # file_dir's own x is no concern of theirs
    choose = chooser(str(tmp_path), "sidecar", {}, {a.id: "lab-a", b.id: "lab-b"})
    assert choose(a, md5) == ("lab-a/x", False)
    assert choose(b, md5) == ("lab-b/x", False)
    assert choose(top, md5) == ("x (2)", False)  # not in `sources`: file_dir itself, as before


def test_within_its_directory_an_upload_entry_is_versioned_or_found_present(tmp_path: Path) -> None:
    (tmp_path / "lab-a").mkdir()
    (tmp_path / "lab-a" / "x").write_bytes(b"an earlier version")
    (tmp_path / "lab-b").mkdir()
    (tmp_path / "lab-b" / "x").write_bytes(b"data")
    a, md5 = entry()
    b, _ = entry()
    choose = chooser(str(tmp_path), "sidecar", {}, {a.id: "lab-a", b.id: "lab-b"})
    assert choose(a, md5) == ("lab-a/x (2)", False)
    assert choose(b, md5) == ("lab-b/x", True)


def test_an_upload_directory_is_made_once_and_never_taken_over_a_file_or_a_symlink(tmp_path: Path) -> None:
    assert upload_dir(str(tmp_path), "lab-a") is None  # not there yet: made at the first placing
    assert not (tmp_path / "lab-a").exists()
    assert upload_dir(str(tmp_path), "lab-a", make=True) is None
    assert (tmp_path / "lab-a").is_dir()
    assert upload_dir(str(tmp_path), "lab-a", make=True) is None  # there already: fine
    (tmp_path / "lab-b").write_bytes(b"a file named like the upload")
    outside = tmp_path.parent / f"outside-{uuid.uuid4().hex}"
    outside.mkdir()
    (tmp_path / "lab-c").symlink_to(outside)
    for source in ("lab-b", "lab-c"):
        why = upload_dir(str(tmp_path), source, make=True)
        assert why is not None and "is not a directory" in why and source in why
    assert upload_dir(str(tmp_path), "..", make=True) is not None
    assert os.listdir(outside) == []
    outside.rmdir()


# the download agent -----------------------------------------------------------------------------------


def download(tmp_path: Path, **settings: object) -> Role:
    r = Role("download", tmp_path, subdir_per_upload=True, **settings)
    r.start()
    return r


def test_download_records_the_upload_agent_of_each_fetch(tmp_path: Path) -> None:
    r = download(tmp_path)
    entry_id = uuid.uuid4().hex
    r.deliver(fetch_for(entry_id, "lab-a"))
    assert r.state.source(entry_id) == "lab-a"
    r.tick()
    assert r.job("transfer").keys  # the pull starts


def test_a_fetch_of_a_fresh_copy_records_its_upload_agent_too(tmp_path: Path) -> None:
    # Failed for want of an upload name (an older central), then fetched again by an upgraded one.
    r = download(tmp_path)
    e = r.given("failed", peer="central", attempt=1, path="/srv/central/lab/stored/x")
    r.deliver(dataclasses.replace(fetch_for(e.id, "lab-a"), attempt=2))
    assert (r.entry(e.id).state, r.state.source(e.id)) == ("fetching", "lab-a")


@pytest.mark.parametrize("source", ["", "..", "a/b"])
def test_download_refuses_to_pull_an_entry_whose_upload_cannot_be_a_directory(
    tmp_path: Path, source: str
) -> None:
    # "": a central that does not say (older than this download); the others never pass the
    # message checks, but a database is not trusted either.
    r = download(tmp_path)
    e = r.given("fetching", peer="central", path="/srv/central/lab/stored/x")
    with r.state.transaction():
        r.state.put_source(e.id, source)
    r.tick()
    assert [j for j in r.jobs.pending if j.pool == "transfer"] == []  # nothing pulled
    entry_now = r.entry(e.id)
    assert entry_now.state == "failed" and "subdir_per_upload" in (entry_now.reason or "")
    [(to, failed)] = r.sent()
    assert to == "central" and isinstance(failed, Failed) and "subdir_per_upload" in failed.reason
    assert os.listdir(r.file_dir) == [".synkler-lab"]


def test_download_refuses_to_pull_into_a_symlink_named_like_the_upload(tmp_path: Path) -> None:
    r = download(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (r.file_dir / "lab-a").symlink_to(outside)
    e = r.given("fetching", peer="central", path="/srv/central/lab/stored/x")
    with r.state.transaction():
        r.state.put_source(e.id, "lab-a")
    r.tick()
    assert r.entry(e.id).state == "failed" and "not a directory" in (r.entry(e.id).reason or "")
    assert os.listdir(outside) == []


RAN = "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n')"


def placing(r: Role, stored_as: str = "lab-a/data.bin", staged: bool = True) -> Entry:
    e = r.given("placing", peer="central", stored_as=stored_as, md5=hashlib.md5(b"data").hexdigest())
    if staged:
        Path(r.agent.staging.of(e.id)).write_bytes(b"data")
    return e


def test_download_places_into_the_upload_directory_and_its_cleanup_script_gets_the_path(
    tmp_path: Path,
) -> None:
    log = tmp_path / "ran"
    r = download(tmp_path, cleanup_script=shlex.join([sys.executable, "-c", RAN, str(log), "%f", "%F"]))
    e = placing(r)
    r.tick()  # the directory is made, the entry renamed into it, its cleanup script due
    placed = r.file_dir / "lab-a" / "data.bin"
    assert placed.read_bytes() == b"data"
    [(to, fetched)] = r.sent()
    assert isinstance(fetched, Fetched) and (to, fetched.stored_as) == ("central", "lab-a/data.bin")
    r.run(r.job("script"))
    assert log.read_text() == f"lab-a/data.bin {placed}\n"  # %f: the path in file_dir; %F: in full
    assert (r.entry(e.id).state, r.entry(e.id).stored_as) == ("done", "lab-a/data.bin")


def test_download_restarted_mid_placement_places_an_upload_entry_once(tmp_path: Path) -> None:
    # Killed after the rename, before its commit: the entry is still `placing`, its staged copy
    # gone, the copy in place. The restart delivers it; nothing is pulled or placed again.
    r = download(tmp_path)
    e = placing(r, staged=False)
    (r.file_dir / "lab-a").mkdir()
    (r.file_dir / "lab-a" / "data.bin").write_bytes(b"data")
    r.tick()
    assert r.entry(e.id).state == "done"
    assert [type(m) for _, m in r.sent()] == [Fetched]
    assert sorted(os.listdir(r.file_dir / "lab-a")) == ["data.bin"]
    assert [j for j in r.jobs.pending if j.pool == "transfer"] == []


def test_download_never_places_through_a_symlink_put_where_the_upload_directory_goes(tmp_path: Path) -> None:
    r = download(tmp_path)
    e = placing(r)
    outside = tmp_path / "outside"
    outside.mkdir()
    (r.file_dir / "lab-a").symlink_to(outside)  # after the name was chosen
    r.tick()
    assert os.listdir(outside) == []
    entry_now = r.entry(e.id)
    assert (entry_now.state, entry_now.tries) == ("fetching", 1)  # pulled (then refused) again
    assert "not a directory" in (entry_now.reason or "")
    assert Path(r.agent.staging.of(e.id)).read_bytes() == b"data"  # nothing lost


def test_an_entry_placed_in_file_dir_itself_is_untouched_by_the_key(tmp_path: Path) -> None:
    # Chosen before subdir_per_upload was set (or without it): placed where it was chosen.
    r = download(tmp_path)
    e = placing(r, stored_as="data.bin")
    r.tick()
    assert md5_entry(r.file_dir / "data.bin") == hashlib.md5(b"data").hexdigest()
    assert r.entry(e.id).state == "done" and not (r.file_dir / "lab-a").exists()


# synkler verify -------------------------------------------------------------------------------------


def document(stored_as: str, copy: Path) -> dict:
    """A receipt document (unsigned) of `copy`, placed as `stored_as`, with its listing."""
    items = proofs.listing(digest_entry(copy, None).files, None)
    e = Entry(id="f" * 32, name="x", kind="file", md5=md5_entry(copy), state="done", size=4, files=1)
    doc = proofs.document(
        instance="lab",
        entry=e,
        checksum="",
        destination="download",
        stored_as=stored_as,
        outcome="placed",
        hops=[],
        items=items,
    )
    return {**proofs.seal(doc, None), "listing": items}


def test_verify_checks_the_copy_in_its_upload_directory_never_a_path_out_of_file_dir(tmp_path: Path) -> None:
    file_dir = tmp_path / "files"
    (file_dir / "lab-a").mkdir(parents=True)
    (file_dir / "lab-a" / "x").write_bytes(b"data")
    verdict = audit.Verdict(tmp_path)
    audit.at_download(document("lab-a/x", file_dir / "lab-a" / "x"), file_dir, "full", verdict)
    assert verdict.problems == []
    (tmp_path / "x").write_bytes(b"data")  # the same content, outside file_dir
    for hostile in ("../x", "lab-a/../../x", "/x"):
        verdict = audit.Verdict(tmp_path)
        audit.at_download(document(hostile, tmp_path / "x"), file_dir, "full", verdict)
        assert len(verdict.problems) == 1 and "is not a place in file_dir" in verdict.problems[0], hostile
