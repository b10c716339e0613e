"""Bundles at a download with `layout: bagit` (synkler.agents.download_bundles, synkler.hops.bagit),
driven through the fake runtime of support.fakes with real files: each member placed as the bag it
would have been as an entry of its own, exactly once whenever the agent is killed, and the cleanup
script's check of a bag (synkler.hops.cleanup.Content) reading the data in it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.fakes import Role

from synkler import bundles
from synkler.agents.base import Cleanup
from synkler.errors import Interrupted
from synkler.hops import bagit, cleanup
from synkler.hops.bagit import make_bag, make_member_bags, member_identifier, payload_of, work_dir
from synkler.hops.checksum import STOPPING, digest_entry, md5_entry
from synkler.hops.pull import PullRun, Verified
from synkler.hops.transfer import Result
from synkler.messages import Fetch, Fetched

OK = Result(True, 0, "")
ENTRY = "b" * 32


def bagit_download(tmp_path: Path, files: dict[str, bytes], **settings: object) -> Role:
    """Download with `layout: bagit` and a bundle of `files` pulled and verified, in placing."""
    r = Role("download", tmp_path, layout="bagit", **settings)
    r.start()
    staged = Path(r.agent.staging.of(ENTRY))
    staged.mkdir()
    for name, data in files.items():
        (staged / name).write_bytes(data)
    digest = digest_entry(staged)
    size = sum(map(len, files.values()))
    path = f"/srv/central/lab/stored/{ENTRY}"
    fetch = Fetch(ENTRY, "central", name=bundles.name_of(ENTRY), kind="bundle", size=size,
                  files=len(files), md5=digest.md5, attempt=1, path=path)  # fmt: skip
    r.deliver(fetch)
    r.tick()
    r.finish(r.job("transfer"), PullRun(OK, {ENTRY: Verified("", False, digest)}))
    return r


def a_bag(tmp_path: Path, file_dir: Path, bag: str, name: str, data: bytes) -> None:
    """A bag already in file_dir, as an earlier entry left it."""
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    (tmp_path / "elsewhere" / name).write_bytes(data)
    make_bag(str(tmp_path / "elsewhere" / name), str(file_dir / bag), name, None, "9" * 32, "synkler test")


def place(r: Role) -> None:
    """The passes that place a verified bundle: the bags built by a job, then renamed."""
    r.tick()
    r.run(r.job("hash"))
    r.tick()


def test_each_member_goes_as_its_own_bag_never_over_another_and_one_there_already_counts(tmp_path: Path):
    validator = pytest.importorskip("bagit")
    files = {"a.dat": b"new a", "b.dat": b"new b", "c.dat": b"same c"}
    (tmp_path / "files").mkdir()
    a_bag(tmp_path, tmp_path / "files", "b.dat", "b.dat", b"someone else's b")
    a_bag(tmp_path, tmp_path / "files", "c.dat", "c.dat", b"same c")
    r = bagit_download(tmp_path, files, cleanup_script="true")
    # The names (bags' names, as choose_name picks them for bags) are committed before any bag is built.
    chosen = {m.name: (m.stored_as, m.placed) for m in bundles.of(r.state, ENTRY)}
    assert chosen == {"a.dat": ("a.dat", 0), "b.dat": ("b.dat (2)", 0), "c.dat": ("c.dat", bundles.PRESENT)}
    place(r)
    assert r.entry(ENTRY).state == "delivered"
    for bag, name in (("a.dat", "a.dat"), ("b.dat (2)", "b.dat")):
        made = validator.Bag(str(r.file_dir / bag))
        made.validate()
        assert (r.file_dir / bag / "data" / name).read_bytes() == files[name]
        assert made.info["Payload-Oxum"] == f"{len(files[name])}.1"
        assert made.info["External-Identifier"] == f"{ENTRY}/{name}"
        assert made.entries[f"data/{name}"]["md5"] == md5_entry(r.file_dir / bag / "data" / name)
    assert (r.file_dir / "b.dat" / "data" / "b.dat").read_bytes() == b"someone else's b"
    assert sorted(os.listdir(r.file_dir)) == [f".synkler-{r.cfg.id}", "a.dat", "b.dat", "b.dat (2)", "c.dat"]
    assert os.listdir(r.agent.staging.dir) == []
    (fetched,) = [m for _, m in r.sent() if isinstance(m, Fetched)]
    assert fetched.outcome == "placed"
    # Scripts for the bags placed (each %F the bag, its check reading the data in it); none for c.
    members = bundles.of(r.state, ENTRY)
    assert [(m.name, m.cleanup) for m in members] == [
        ("a.dat", Cleanup.RUNNING), ("b.dat", Cleanup.RUNNING), ("c.dat", None),
    ]  # fmt: skip
    (job,) = [j for j in r.jobs.pending if j.pool == "script"]
    scripts = job.work.args[2]
    assert [(name, path) for _, name, path, _ in scripts] == [
        ("a.dat", str(r.file_dir / "a.dat")), ("b.dat (2)", str(r.file_dir / "b.dat (2)")),
    ]  # fmt: skip
    assert [content.missing_from(path) for _, _, path, content in scripts] == [None, None]


def test_a_member_bag_is_what_the_file_alone_would_have_been_but_for_its_identifier(tmp_path: Path):
    r = bagit_download(tmp_path, {"x.raw": b"x" * 100, "y.raw": b"y"})
    place(r)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "x.raw").write_bytes(b"x" * 100)
    make_bag(str(alone / "x.raw"), str(alone / "bag"), "x.raw", None, "1" * 32, "synkler test")
    member = r.file_dir / "x.raw"
    assert sorted(os.listdir(member)) == sorted(os.listdir(alone / "bag"))
    for tag in ("bagit.txt", "manifest-md5.txt", "manifest-sha256.txt"):
        assert (member / tag).read_bytes() == (alone / "bag" / tag).read_bytes(), tag
    info = (member / "bag-info.txt").read_text().splitlines()
    assert [line for line in info if line.startswith("External-Identifier")] == [
        f"External-Identifier: {ENTRY}/x.raw"
    ]


def test_download_killed_at_any_point_of_placing_bags_places_each_member_exactly_once(tmp_path: Path):
    validator = pytest.importorskip("bagit")
    files = {f"m{i}": f"data {i}".encode() for i in range(6)}
    r = bagit_download(tmp_path, files, cleanup_script="true")
    staged = Path(r.agent.staging.of(ENTRY))
    bags = Path(r.agent.staging.bag(ENTRY))
    seq = {m.name: str(m.seq) for m in bundles.of(r.state, ENTRY)}
    agent = "synkler test"
    # An earlier run killed: m0's bag built and renamed into file_dir, not recorded; m1's built in
    # staging; m2's half-built (its file moved into the work directory); m3's work directory made
    # but its file not moved in yet; m4 and m5 untouched.
    make_member_bags(
        str(staged), str(bags), [(n, seq[n], member_identifier(ENTRY, n)) for n in ("m0", "m1")], agent
    )
    os.rename(bags / seq["m0"], r.file_dir / "m0")
    (bags / work_dir(seq["m2"]) / "data").mkdir(parents=True)
    os.rename(staged / "m2", bags / work_dir(seq["m2"]) / "data" / "m2")
    (bags / work_dir(seq["m3"]) / "data").mkdir(parents=True)
    r.close()
    again = Role("download", tmp_path, layout="bagit", cleanup_script="true")
    again.start()
    place(again)
    assert again.entry(ENTRY).state == "delivered"
    assert sorted(os.listdir(again.file_dir)) == [f".synkler-{again.cfg.id}", *sorted(files)]
    for name, data in files.items():
        validator.Bag(str(again.file_dir / name)).validate()
        assert (again.file_dir / name / "data" / name).read_bytes() == data
    members = bundles.of(again.state, ENTRY)
    assert all(m.placed == bundles.PLACED and m.cleanup == Cleanup.RUNNING for m in members)
    assert os.listdir(again.agent.staging.dir) == []


def test_a_stop_while_the_bags_are_built_leaves_them_to_be_finished_at_the_next_start(
    tmp_path: Path, monkeypatch
):
    files = {f"m{i}": f"data {i}".encode() for i in range(3)}
    r = bagit_download(tmp_path, files)
    r.tick()
    job = r.job("hash")
    built = bagit.make_bag

    def then_stop(*args: object) -> None:
        built(*args)  # type: ignore[arg-type]
        STOPPING.set()  # the agent is told to stop once the first bag is built

    monkeypatch.setattr(bagit, "make_bag", then_stop)
    try:
        with pytest.raises(Interrupted):  # the runtime records nothing of an Interrupted job
            job.work()
    finally:
        STOPPING.clear()
    monkeypatch.undo()
    assert r.entry(ENTRY).state == "placing"
    assert sorted(os.listdir(r.agent.staging.bag(ENTRY))) == ["1"]
    r.close()
    again = Role("download", tmp_path, layout="bagit")
    again.start()
    place(again)
    assert again.entry(ENTRY).state == "done"
    assert sorted(os.listdir(again.file_dir)) == [f".synkler-{again.cfg.id}", *sorted(files)]
    assert all((again.file_dir / n / "data" / n).read_bytes() == d for n, d in files.items())


def test_a_bag_name_taken_after_it_was_chosen_is_chosen_again_and_the_bag_kept(tmp_path: Path):
    r = bagit_download(tmp_path, {"a": b"new a", "b": b"new b"})
    r.tick()
    r.run(r.job("hash"))
    (r.file_dir / "a").mkdir()  # someone took the name meanwhile
    r.tick()
    assert {m.name: m.stored_as for m in bundles.of(r.state, ENTRY)} == {"a": "a (2)", "b": "b"}
    r.tick()
    assert r.entry(ENTRY).state == "done"
    assert os.listdir(r.file_dir / "a") == []
    assert (r.file_dir / "a (2)" / "data" / "a").read_bytes() == b"new a"


def test_a_member_identifier_names_the_bundle_and_the_member_on_one_line():
    assert member_identifier("e" * 32, "run 7.dat") == f"{'e' * 32}/run 7.dat"
    assert member_identifier("e" * 32, "two\nlines\r") == f"{'e' * 32}/two%0Alines%0D"
    assert payload_of("x.dat") == "data/x.dat"


def test_a_cleanup_check_of_a_bag_reads_the_data_in_it(tmp_path: Path):
    (tmp_path / "x").write_bytes(b"delivered")
    md5 = md5_entry(tmp_path / "x")
    bag = tmp_path / "bag"
    make_bag(str(tmp_path / "x"), str(bag), "x", None, "1" * 32, "synkler test")
    content = cleanup.Content("file", md5, None, payload_of("x"))
    assert content.missing_from(str(bag)) is None
    os.utime(bag / "data" / "x")  # touched: the same content
    assert content.missing_from(str(bag)) is None
    (bag / "data" / "x").write_bytes(b"other")
    assert "other content" in (content.missing_from(str(bag)) or "")
    shutil.rmtree(bag)
    bag.write_bytes(b"delivered")  # a file, not a bag, now holds the name
    assert "no longer holds a bag" in (content.missing_from(str(bag)) or "")
    bag.unlink()
    assert content.missing_from(str(bag)) == "the name is gone"


def test_a_single_file_entry_placed_as_a_bag_has_its_cleanup_checked_against_its_data(tmp_path: Path):
    r = Role("download", tmp_path, layout="bagit", cleanup_script="true")
    r.start()
    staged = Path(r.agent.staging.of("e" * 32))
    staged.parent.mkdir(exist_ok=True)
    staged.write_bytes(b"data")
    e = r.given("placing", name="run.raw", stored_as="run.raw", entry_id="e" * 32, peer="central",
                md5=md5_entry(staged), size=4)  # fmt: skip
    r.tick()
    r.run(r.job("hash"))
    r.tick()
    entry = r.entry(e.id)
    assert entry.state == "delivered" and entry.signature
    name, path = r.agent.cleanup_target(entry)
    assert (name, path) == ("run.raw", str(r.file_dir / "run.raw"))  # %F: the bag
    assert r.agent.cleanup_content(entry).missing_from(path) is None  # was: "holds a dir, not the file"


def test_many_member_bags_are_built_at_once_and_a_stop_ends_them_all(tmp_path: Path):
    validator = pytest.importorskip("bagit")
    staged = tmp_path / "staged"
    staged.mkdir()
    for i in range(40):
        (staged / f"f{i:02d}").write_bytes(os.urandom(100 + i))
    members = [(f"f{i:02d}", str(i + 1), member_identifier(ENTRY, f"f{i:02d}")) for i in range(40)]
    STOPPING.set()
    try:
        with pytest.raises(Interrupted):
            make_member_bags(str(staged), str(tmp_path / "bags"), members, "synkler test")
    finally:
        STOPPING.clear()
    assert os.listdir(tmp_path / "bags") == [] and len(os.listdir(staged)) == 40
    make_member_bags(str(staged), str(tmp_path / "bags"), members, "synkler test")
    assert sorted(os.listdir(tmp_path / "bags"), key=int) == [str(i + 1) for i in range(40)]
    assert os.listdir(staged) == []
    for i in range(40):
        made = validator.Bag(str(tmp_path / "bags" / str(i + 1)))
        made.validate()
        assert made.info["Payload-Oxum"] == f"{100 + i}.1"
