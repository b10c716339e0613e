"""Bundles at upload and download (synkler.agents.upload_bundles, download_bundles, members), driven
through the fake runtime of support.fakes with real files: which files go in a bundle, what a
change of a member does, and how download places each member once, whenever it is stopped."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.fakes import Role
from support.transitions import offers, scan

from synkler import bundles
from synkler.agents.base import Cleanup
from synkler.agents.facts import BUNDLE_AT_CENTRAL
from synkler.hops.checksum import digest_entry, md5_entry
from synkler.hops.pull import PullRun, Verified
from synkler.hops.transfer import Result
from synkler.messages import Delivered, Failed, Fetch, Fetched, Forget, Offer, Withdraw

OK = Result(True, 0, "")
BUNDLED = {"settle_seconds": 0, "bundle_files": 10, "bundle_min": 5}


def upload_with(tmp_path: Path, n: int, **settings: object) -> tuple[Role, float]:
    r = Role("upload", tmp_path, **{**BUNDLED, **settings})
    for i in range(n):
        (r.file_dir / f"f{i:02d}").write_bytes(b"x" * (i + 1))
    r.start()
    now = time.time() + 10
    scan(r, now)  # seen
    scan(r, now + 1)  # settled
    return r, now + 1


def hash_all(r: Role) -> None:
    for job in [j for j in r.jobs.pending if j.pool == "hash"]:
        r.run(job)


def test_many_small_files_settled_at_once_go_in_bundles_each_file_once(tmp_path: Path):
    r, now = upload_with(tmp_path, 23)
    offered = offers(r)
    assert [(o.kind, o.files) for o in offered] == [("bundle", 10), ("bundle", 10), ("bundle", 3)]
    members = [m for o in offered for m in bundles.of(r.state, o.entry)]
    assert sorted(m.name for m in members) == [f"f{i:02d}" for i in range(23)]
    # A bundle is a list of the files: nothing linked, copied or made in file_dir.
    assert sorted(os.listdir(r.file_dir)) == [f"f{i:02d}" for i in range(23)]
    hash_all(r)
    assert all(m.md5 == md5_entry(r.file_dir / m.name) for o in offered for m in bundles.of(r.state, o.entry))
    # Its md5 is the one central and download compute of the directory its push makes.
    copy = tmp_path / "copy"
    copy.mkdir()
    for m in bundles.of(r.state, offered[2].entry):
        (copy / m.name).write_bytes((r.file_dir / m.name).read_bytes())
    assert r.entry(offered[2].entry).md5 == digest_entry(copy).md5
    scan(r, now + 1)
    scan(r, now + 2)
    assert offers(r) == []  # on their way in their bundles: none offered again


def test_a_file_that_settles_alone_goes_on_its_own_at_once(tmp_path: Path):
    r, now = upload_with(tmp_path, 4)  # fewer than bundle_min
    assert sorted((o.kind, o.name) for o in offers(r)) == [("file", f"f{i:02d}") for i in range(4)]
    (r.file_dir / "late").write_bytes(b"late")
    scan(r, now + 1)
    scan(r, now + 2)
    assert [(o.kind, o.name) for o in offers(r)] == [("file", "late")]


def test_files_with_metadata_or_above_the_size_limit_go_on_their_own(tmp_path: Path):
    r = Role("upload", tmp_path, **{**BUNDLED, "bundle_file_kib": 1})
    for i in range(6):
        (r.file_dir / f"s{i}").write_bytes(b"small")
    (r.file_dir / "big").write_bytes(b"b" * 2048)
    (r.file_dir / "meta").write_bytes(b"m")
    (r.file_dir / "meta.meta.json").write_text('{"run": "42"}')
    r.start()
    now = time.time() + 10
    scan(r, now)
    scan(r, now + 1)
    got = sorted((o.kind, o.name if o.kind != "bundle" else o.files) for o in offers(r))
    assert got == [("bundle", 6), ("file", "big"), ("file", "meta")]


def test_a_member_changed_before_the_bundle_is_hashed_withdraws_it_and_its_files_settle_again(tmp_path: Path):
    r, now = upload_with(tmp_path, 6)
    (first,) = offers(r)
    with open(r.file_dir / "f00", "ab") as f:  # changed in place: the bundle's link is the same file
        f.write(b"more")
    hash_all(r)
    assert r.entry(first.entry).state == "superseded"
    assert [m.entry for _, m in r.sent() if isinstance(m, Withdraw)] == [first.entry]
    scan(r, now + 1)
    scan(r, now + 2)
    (again,) = offers(r)
    assert (again.kind, again.files) == ("bundle", 6)
    hash_all(r)
    (f00,) = [m for m in bundles.of(r.state, again.entry) if m.name == "f00"]
    assert f00.md5 == md5_entry(r.file_dir / "f00")


def test_a_delivered_bundle_runs_each_members_cleanup_once_and_its_files_are_not_taken_for_changed(
    tmp_path: Path,
):
    r, now = upload_with(tmp_path, 6, cleanup_script="true")
    (offer,) = offers(r)
    hash_all(r)
    bundle = r.entry(offer.entry)
    with r.state.transaction():
        r.state.update(bundle, state="sent", attempt=1)
    r.deliver(Delivered(bundle.id, "central", stored_as=bundle.name))
    assert r.entry(bundle.id).state == "delivered"
    r.tick(now + 1)
    job = r.job("script")
    assert [m.cleanup for m in bundles.of(r.state, bundle.id)] == [Cleanup.RUNNING] * 6
    r.finish(job, [OK] * 6)
    assert [m.cleanup for m in bundles.of(r.state, bundle.id)] == [Cleanup.DONE] * 6
    assert (r.entry(bundle.id).state, r.entry(bundle.id).cleanup) == ("done", Cleanup.DONE)
    # Nothing touched the files: the fingerprints they settled with still hold, and the scan does not
    # take them for changed.
    scan(r, now + 2)
    scan(r, now + 3)
    assert offers(r) == [] and r.jobs.pending == []


# --------------------------------------------------------------------------------------------------
# download


def download_verified(tmp_path: Path, files: dict[str, bytes], **settings: object) -> tuple[Role, str]:
    """Download with a bundle of `files` pulled and verified, in placing."""
    r = Role("download", tmp_path, **settings)
    r.start()
    entry_id = "b" * 32
    staged = Path(r.agent.staging.of(entry_id))
    staged.mkdir()
    for name, data in files.items():
        (staged / name).write_bytes(data)
    digest = digest_entry(staged)
    r.deliver(
        Fetch(
            entry_id,
            "central",
            name=bundles.name_of(entry_id),
            kind="bundle",
            size=sum(map(len, files.values())),
            files=len(files),
            md5=digest.md5,
            attempt=1,
            path=f"/srv/central/lab/stored/{entry_id}",
        )
    )
    r.tick()
    r.finish(r.job("transfer"), PullRun(OK, {entry_id: Verified("", False, digest)}))
    return r, entry_id


def test_download_places_each_member_under_its_own_name_never_over_another(tmp_path: Path):
    files = {"a": b"new a", "b": b"new b", "c": b"same c"}
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "b").write_bytes(b"someone else's b")
    (tmp_path / "files" / "c").write_bytes(b"same c")
    r, entry_id = download_verified(tmp_path, files, cleanup_script="true")
    assert r.entry(entry_id).state == "placing"
    chosen = {m.name: (m.stored_as, m.placed) for m in bundles.of(r.state, entry_id)}
    assert chosen == {"a": ("a", 0), "b": ("b (2)", 0), "c": ("c", bundles.PRESENT)}
    r.tick()
    assert (r.file_dir / "a").read_bytes() == b"new a"
    assert (r.file_dir / "b").read_bytes() == b"someone else's b"
    assert (r.file_dir / "b (2)").read_bytes() == b"new b"
    assert r.entry(entry_id).state == "delivered"
    (fetched,) = [m for _, m in r.sent() if isinstance(m, Fetched)]
    assert fetched.outcome == "placed"
    # Cleanup scripts for the files it placed, not for the one that was there already.
    assert [(m.name, m.cleanup) for m in bundles.of(r.state, entry_id)] == [
        ("a", Cleanup.RUNNING),
        ("b", Cleanup.RUNNING),
        ("c", None),
    ]
    assert not Path(r.agent.staging.of(entry_id)).exists()


@pytest.mark.parametrize("script", [None, "true"])
def test_download_killed_while_it_unpacks_places_each_member_exactly_once(tmp_path: Path, script):
    files = {f"m{i}": f"data {i}".encode() for i in range(5)}
    r, entry_id = download_verified(tmp_path, files, cleanup_script=script)
    staged = Path(r.agent.staging.of(entry_id))
    # Killed after it renamed two members and before it recorded them: the names were committed.
    os.rename(staged / "m0", r.file_dir / "m0")
    os.rename(staged / "m3", r.file_dir / "m3")
    r.close()
    again = Role("download", tmp_path, cleanup_script=script)
    again.start()
    again.tick()
    assert sorted(os.listdir(again.file_dir)) == [f".synkler-{again.cfg.id}", *sorted(files)]
    assert {n: (again.file_dir / n).read_bytes() for n in files} == files
    members = bundles.of(again.state, entry_id)
    assert all(m.placed == bundles.PLACED for m in members)
    if script:  # a cleanup for each, once; those placed in this pass have their fingerprints
        assert again.entry(entry_id).state == "delivered"
        assert [m.cleanup for m in members] == [Cleanup.RUNNING] * 5
        assert [m.signature is not None for m in members] == [False, True, True, False, True]
    else:
        assert again.entry(entry_id).state == "done"


@pytest.mark.parametrize("script", [None, "true"])
def test_download_fetches_a_bundle_again_when_staged_members_vanished_unplaced(tmp_path: Path, script):
    files = {f"m{i}": f"data {i}".encode() for i in range(3)}
    r, entry_id = download_verified(tmp_path, files, cleanup_script=script)
    os.unlink(Path(r.agent.staging.of(entry_id)) / "m1")  # gone, and not into file_dir
    r.tick()
    assert r.entry(entry_id).state == "fetching"
    assert [(m.name, m.placed) for m in bundles.of(r.state, entry_id)] == [
        ("m0", bundles.PLACED),
        ("m1", bundles.NOT_PLACED),
        ("m2", bundles.PLACED),
    ]
    assert sorted(os.listdir(r.file_dir)) == [f".synkler-{r.cfg.id}", "m0", "m2"]


def test_download_does_not_take_a_missing_directory_of_file_dir_for_a_vanished_staged_copy(tmp_path: Path):
    r, entry_id = download_verified(tmp_path, {"a": b"a", "b": b"b"})
    with r.state.transaction():
        bundles.set_each(r.state, entry_id, "stored_as", [(1, "nowhere/a")])
    with pytest.raises(FileNotFoundError):
        r.tick()
    assert sorted(os.listdir(r.agent.staging.of(entry_id))) == ["a", "b"]


def test_download_refuses_a_bundle_that_holds_more_than_top_level_files(tmp_path: Path):
    r = Role("download", tmp_path)
    r.start()
    entry_id = "c" * 32
    staged = Path(r.agent.staging.of(entry_id))
    (staged / "sub").mkdir(parents=True)
    (staged / "sub" / "x").write_bytes(b"x")
    digest = digest_entry(staged)
    fetch = Fetch(
        entry_id, "central", name=bundles.name_of(entry_id), kind="bundle", size=1, files=1,
        md5=digest.md5, attempt=1, path=f"/srv/central/lab/stored/{entry_id}",
    )  # fmt: skip
    r.deliver(fetch)
    r.tick()
    r.finish(r.job("transfer"), PullRun(OK, {entry_id: Verified("", False, digest)}))
    assert r.entry(entry_id).state == "failed"
    assert "not a bundle of top-level files" in (r.entry(entry_id).reason or "")
    assert os.listdir(r.file_dir) == [f".synkler-{r.cfg.id}"]


def test_files_waiting_for_a_later_passs_bundle_are_not_offered_alone_meanwhile(tmp_path: Path, monkeypatch):
    from synkler.agents import upload_bundles

    monkeypatch.setattr(upload_bundles, "BUNDLED_PER_PASS", 10)
    r, now = upload_with(tmp_path, 25, bundle_files=5)
    assert [(o.kind, o.files) for o in offers(r)] == [("bundle", 5)] * 2  # 10 a pass, none alone
    assert r.agent.next_wakeup() == 0.0
    r.tick(now)
    r.tick(now)
    assert [(o.kind, o.files) for o in offers(r)] == [("bundle", 5)] * 3


def test_a_big_file_among_small_ones_held_for_later_bundles_goes_alone_at_once(tmp_path: Path, monkeypatch):
    from synkler.agents import upload_bundles

    monkeypatch.setattr(upload_bundles, "BUNDLED_PER_PASS", 10)
    r = Role("upload", tmp_path, **{**BUNDLED, "bundle_files": 5, "bundle_file_kib": 1})
    for i in range(25):
        (r.file_dir / f"f{i:02d}").write_bytes(b"x")
    (r.file_dir / "big").write_bytes(b"x" * 2048)  # over bundle_file_kib: never in a bundle
    r.start()
    now = time.time() + 10
    scan(r, now)
    scan(r, now + 1)
    offered = offers(r)
    assert sorted((o.kind, o.files) for o in offered) == [("bundle", 5)] * 2 + [("file", 1)]
    bundled = {m.name for o in offered if o.kind == "bundle" for m in bundles.of(r.state, o.entry)}
    assert set(r.agent.bundleable) == {f"f{i:02d}" for i in range(25)} - bundled  # the next passes'
    assert set(r.agent.ripe) == set(r.agent.bundleable)


def test_retry_of_a_failed_bundle_forgets_it_and_sends_its_files_again(tmp_path: Path):
    r, now = upload_with(tmp_path, 6)
    (offer,) = offers(r)
    hash_all(r)
    with r.state.transaction():
        r.state.update(r.entry(offer.entry), state="failed", reason="push to central: no")
    ok, answer = r.request("retry", offer.entry)
    assert ok, answer
    assert r.entry(offer.entry).state == "forgotten"
    r.tick(now + 1)
    (again,) = offers(r)
    assert (again.kind, again.files) == ("bundle", 6) and again.entry != offer.entry


def test_retry_of_a_bundles_cleanup_runs_only_the_members_whose_script_failed(tmp_path: Path):
    r, now = upload_with(tmp_path, 6, cleanup_script="true")
    (offer,) = offers(r)
    hash_all(r)
    with r.state.transaction():
        r.state.update(r.entry(offer.entry), state="sent", attempt=1)
    r.deliver(Delivered(offer.entry, "central", stored_as=offer.name))
    r.tick(now + 1)
    r.finish(r.job("script"), [OK, Result(False, 1, "no"), OK, OK, OK, OK])
    entry = r.entry(offer.entry)
    assert (entry.state, entry.cleanup) == ("done", Cleanup.FAILED)
    assert entry.reason == "cleanup script failed for 1 member of 6"
    ok, answer = r.request("retry", offer.entry)
    assert ok and "for 1 member" in answer, answer
    r.tick(now + 2)
    job = r.job("script")
    assert [m.cleanup for m in bundles.of(r.state, offer.entry)].count(Cleanup.RUNNING) == 1
    r.finish(job, [OK])
    assert (r.entry(offer.entry).state, r.entry(offer.entry).cleanup) == ("done", Cleanup.DONE)


# --------------------------------------------------------------------------------------------------
# where bundles meet routes and subdirectories per upload


def test_a_central_whose_routes_choose_by_name_refuses_a_bundle_without_recording_it(tmp_path: Path):
    routes = [{"name": "*.all", "to": ["download", "archive"]}, {"to": ["download"]}]
    r = Role("central", tmp_path, routes=routes)
    r.start()
    offer = Offer("d" * 32, "upload", name=bundles.name_of("d" * 32), kind="bundle", size=12, files=6)
    r.deliver(offer)
    (failed,) = [m for _, m in r.sent() if isinstance(m, Failed)]
    assert (failed.entry, failed.hop) == (offer.entry, BUNDLE_AT_CENTRAL)
    assert "routes entries by name" in failed.reason and "'*.all'" in failed.reason
    assert r.state.get(offer.entry) is None
    # Routes by upload agent only: a bundle's files come from one upload, so it routes as one.
    (tmp_path / "other").mkdir()
    by_agent = [{"from": "lab-*", "to": ["archive"]}, {"to": ["download"]}]
    other = Role("central", tmp_path / "other", routes=by_agent)
    other.start()
    other.deliver(offer)
    assert [m for _, m in other.sent() if isinstance(m, Failed)] == []
    assert other.state.get(offer.entry) is not None


def test_upload_takes_apart_a_bundle_central_refuses_and_offers_its_files_one_by_one(tmp_path: Path):
    r, now = upload_with(tmp_path, 6)
    (offer,) = offers(r)
    r.deliver(Failed(offer.entry, "central", hop=BUNDLE_AT_CENTRAL, reason="central routes entries by name"))
    assert r.entry(offer.entry).state == "forgotten"
    assert [m for _, m in r.sent() if isinstance(m, Forget)] == []  # central never recorded it
    r.tick(now + 1)
    scan(r, now + 2)
    got = offers(r)
    assert sorted((o.kind, o.name) for o in got) == [("file", f"f{i:02d}") for i in range(6)]
    # Bundles stay off until a restart: more files that settle together go one by one too.
    for i in range(6, 12):
        (r.file_dir / f"f{i:02d}").write_bytes(b"later")
    scan(r, now + 3)
    scan(r, now + 4)
    assert sorted((o.kind, o.name) for o in offers(r)) == [("file", f"f{i:02d}") for i in range(6, 12)]


def test_with_a_subdirectory_per_upload_each_member_goes_into_its_uploads_directory(tmp_path: Path):
    (tmp_path / "files" / "lab-b").mkdir(parents=True)
    (tmp_path / "files" / "lab-b" / "b").write_bytes(b"lab-b's earlier b")
    (tmp_path / "files" / "a").write_bytes(b"a at the top, from before")
    r = Role("download", tmp_path, subdir_per_upload=True, cleanup_script="true")
    r.start()
    entry_id = "e" * 32
    staged = Path(r.agent.staging.of(entry_id))
    staged.mkdir()
    files = {"a": b"new a", "b": b"new b"}
    for name, data in files.items():
        (staged / name).write_bytes(data)
    digest = digest_entry(staged)
    fetch = Fetch(
        entry_id, "central", name=bundles.name_of(entry_id), kind="bundle", size=10, files=2,
        md5=digest.md5, attempt=1, path=f"/srv/central/lab/stored/{entry_id}", source="lab-b",
    )  # fmt: skip
    r.deliver(fetch)
    r.tick()
    r.finish(r.job("transfer"), PullRun(OK, {entry_id: Verified("", False, digest)}))
    r.tick()
    assert r.entry(entry_id).state == "delivered"
    assert {m.name: m.stored_as for m in bundles.of(r.state, entry_id)} == {
        "a": "lab-b/a",
        "b": "lab-b/b (2)",
    }
    assert (r.file_dir / "lab-b" / "a").read_bytes() == b"new a"
    assert (r.file_dir / "lab-b" / "b (2)").read_bytes() == b"new b"
    assert (r.file_dir / "lab-b" / "b").read_bytes() == b"lab-b's earlier b"
    assert (r.file_dir / "a").read_bytes() == b"a at the top, from before"


def test_resend_of_a_delivered_bundle_sends_each_of_its_files_again_as_an_entry_of_its_own(tmp_path: Path):
    r, now = upload_with(tmp_path, 6)
    (offer,) = offers(r)
    hash_all(r)
    with r.state.transaction():
        r.state.update(r.entry(offer.entry), state="sent", attempt=1)
    r.deliver(Delivered(offer.entry, "central", stored_as=offer.name))
    r.tick(now + 1)
    assert r.entry(offer.entry).state == "done"
    (r.file_dir / "f02").unlink()  # gone since: not sent again
    ok, answer = r.request("resend", offer.entry)
    assert ok, answer
    assert "5 files of it sent again" in answer
    again = offers(r)
    assert sorted((o.kind, o.name) for o in again) == [("file", f"f{i:02d}") for i in (0, 1, 3, 4, 5)]
    assert r.entry(offer.entry).state == "done"  # the bundle stays as it was
    hash_all(r)
    assert all(r.entry(o.entry).md5 == md5_entry(r.file_dir / o.name) for o in again)


def test_no_bundles_while_central_runs_a_synkler_that_does_not_know_them(tmp_path: Path, caplog):
    r = Role("upload", tmp_path, **BUNDLED)
    r.jobs.versions["central"] = "0.7.0"
    for i in range(6):
        (r.file_dir / f"f{i:02d}").write_bytes(b"x")
    r.start()
    now = time.time() + 10
    scan(r, now)
    scan(r, now + 1)
    assert sorted((o.kind, o.name) for o in offers(r)) == [("file", f"f{i:02d}") for i in range(6)]
    assert "central runs synkler 0.7.0, which does not know bundles" in caplog.text
    # Upgraded (its next report says so): the next files that settle together go in a bundle.
    r.jobs.versions["central"] = "0.9.0"
    for i in range(6, 12):
        (r.file_dir / f"f{i:02d}").write_bytes(b"y")
    scan(r, now + 2)
    scan(r, now + 3)
    assert [(o.kind, o.files) for o in offers(r)] == [("bundle", 6)]


def test_which_versions_know_bundles():
    assert [bundles.knows_bundles(v) for v in ("0.8.0", "0.9.0rc1", "1.0", "0.7.9", "", "x.y.z")] == [
        True, True, True, False, False, False,
    ]  # fmt: skip


def test_files_wait_for_bundles_a_little_while_central_has_not_said_its_version(tmp_path: Path, monkeypatch):
    from synkler.agents import upload_bundles

    r = Role("upload", tmp_path, **BUNDLED)
    r.jobs.versions["central"] = None  # started with upload: no presence report yet
    for i in range(6):
        (r.file_dir / f"f{i:02d}").write_bytes(b"x")
    r.start()
    now = time.time() + 10
    scan(r, now)
    scan(r, now + 1)
    assert offers(r) == []  # held for a bundle, and looked at again soon, not in a busy loop
    assert time.time() < r.agent.next_wakeup() <= time.time() + 1
    r.jobs.versions["central"] = "0.9.0"
    r.tick(now + 1)
    assert [(o.kind, o.files) for o in offers(r)] == [("bundle", 6)]
    # A central that never says: after VERSION_WAIT the files go one by one.
    monkeypatch.setattr(upload_bundles, "VERSION_WAIT", 0.0)
    (tmp_path / "again").mkdir()
    again = Role("upload", tmp_path / "again", **BUNDLED)
    again.jobs.versions["central"] = None
    for i in range(6):
        (again.file_dir / f"g{i:02d}").write_bytes(b"x")
    again.start()
    scan(again, now)
    scan(again, now + 1)
    assert sorted(o.kind for o in offers(again)) == ["file"] * 6
