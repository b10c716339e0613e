"""Bundles read and pushed where their files are (synkler.agents.upload_bundles, bundle_reads,
checksum.digest_listed): the md5 is the pushed directory's, the push is one run from file_dir, and a
member changed, replaced or removed before central has verified the bundle withdraws it, so that its
files settle again and go as they are now."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.fakes import Role
from support.transitions import offers, scan

from synkler import bundles
from synkler.agents.base import Cleanup
from synkler.hops import transfer
from synkler.hops.checksum import digest_entry, digest_listed, md5_entry, stat_entry
from synkler.hops.transfer import Result
from synkler.messages import Admit, Delivered, Offer, Sent, Withdraw

OK = Result(True, 0, "")
BUNDLED = {"settle_seconds": 0, "bundle_files": 10, "bundle_min": 5}
STAGING = "/srv/central/lab/staging/upload"


def offered_again(r: Role, first: Offer) -> dict[str, str]:
    """Each name offered after the bundle `first`, alone or in a bundle: name -> its entry id."""
    out: dict[str, str] = {}
    for o in offers(r):
        if o.entry == first.entry:
            continue
        names = [m.name for m in bundles.of(r.state, o.entry)] if o.kind == "bundle" else [o.name]
        for name in names:
            assert name not in out, f"{name} offered twice"
            out[name] = o.entry
    return out


def md5s(r: Role, offered: dict[str, str]) -> dict[str, str | None]:
    """The md5 upload holds for each name offered (a member's, or a single entry's)."""
    out: dict[str, str | None] = {}
    for name, entry_id in offered.items():
        entry = r.entry(entry_id)
        if entry.kind == "bundle":
            (m,) = [m for m in bundles.of(r.state, entry_id) if m.name == name]
            out[name] = m.md5
        else:
            out[name] = entry.md5
    return out


def hash_all(r: Role) -> None:
    for job in [j for j in r.jobs.pending if j.pool == "hash"]:
        r.run(job)


def bundled(tmp_path: Path, n: int = 6, **settings: object) -> tuple[Role, Offer, float]:
    """Upload with `n` small files settled and offered as one bundle, hashed."""
    r = Role("upload", tmp_path, **{**BUNDLED, **settings})
    for i in range(n):
        (r.file_dir / f"f{i:02d}").write_bytes(b"x" * (i + 1))
    r.start()
    now = time.time() + 10
    scan(r, now)
    scan(r, now + 1)
    (offer,) = offers(r)
    hash_all(r)
    return r, offer, now + 1


def admit(r: Role, offer: Offer, attempt: int = 1) -> None:
    r.deliver(Admit(offer.entry, "central", attempt=attempt, dest=STAGING))
    r.tick()


# --------------------------------------------------------------------------------------------------
# the md5 of files read in place


@pytest.mark.parametrize("strong", [None, "sha256"])
def test_a_list_of_files_digests_as_a_directory_holding_copies_of_them(tmp_path: Path, strong: str | None):
    here = tmp_path / "here"
    here.mkdir()
    names = ["b", "a", "#c", "-d", "z z", os.fsdecode(b"caf\xe9"), "a.b", "a-b"]
    for i, name in enumerate(names):
        (here / name).write_bytes(os.urandom(i * 100))
    (here / "not listed").write_bytes(b"left out")
    copy = tmp_path / "synkler-bundle-x"
    copy.mkdir()
    for name in names:
        (copy / name).write_bytes((here / name).read_bytes())
    assert digest_listed(here, names, strong) == digest_entry(copy, strong)


def test_a_list_holding_a_directory_a_symlink_or_a_missing_name_does_not_digest(tmp_path: Path):
    (tmp_path / "f").write_bytes(b"f")
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to("f")
    for bad in ("d", "l", "gone", "d/x", ".."):
        with pytest.raises((OSError, ValueError)):
            digest_listed(tmp_path, ["f", bad])


# --------------------------------------------------------------------------------------------------
# the push


def test_an_admitted_bundle_is_pushed_alone_from_file_dir_into_its_own_directory(tmp_path: Path):
    r, offer, _now = bundled(tmp_path)
    admit(r, offer)
    job = r.job("transfer")
    assert job.work.func is transfer.push_bundle
    _cfg, local, names, remote, bundle, top = job.work.args
    assert (local, remote, bundle) == (str(r.file_dir), STAGING, offer.name)
    assert sorted(names) == [f"f{i:02d}" for i in range(6)]
    assert os.listdir(top) == []  # the agent's empty directory: the bundle's own
    r.finish(job, OK)
    (sent,) = [m for _, m in r.sent() if isinstance(m, Sent)]
    assert sent.md5 == r.entry(offer.entry).md5


def test_the_push_lists_each_path_from_the_root_so_no_name_is_read_as_a_comment(tmp_path: Path):
    listed = transfer._rooted(str(tmp_path), ["#a", ";b", ""]).split(b"\0")
    root = os.fsencode(tmp_path).lstrip(b"/")
    assert listed == [b"./" + root + b"/./#a", b"./" + root + b"/./;b", b"./" + root + b"/./", b""]


@pytest.mark.parametrize("how", ["removed", "replaced", "changed"])
def test_a_member_gone_or_changed_while_pushed_withdraws_the_bundle_and_its_files_go_as_they_are(
    tmp_path: Path, how: str
):
    r, offer, now = bundled(tmp_path)
    admit(r, offer)
    target = r.file_dir / "f02"
    if how == "removed":
        target.unlink()
    elif how == "replaced":
        (r.file_dir / "new").write_bytes(b"other content")
        os.rename(r.file_dir / "new", target)
    else:
        with open(target, "ab") as f:
            f.write(b"more")
    r.finish(r.job("transfer"), Result(False, 24 if how == "changed" else 23, "vanished"))
    assert r.entry(offer.entry).state == "superseded"
    assert [m.entry for _, m in r.sent() if isinstance(m, Withdraw)] == [offer.entry]
    scan(r, now + 1)
    scan(r, now + 2)
    offered = offered_again(r, offer)  # (one renamed in goes at once, alone: it is whole)
    assert sorted(offered) == [f"f{i:02d}" for i in range(6) if how != "removed" or i != 2]
    hash_all(r)
    assert md5s(r, offered) == {name: md5_entry(r.file_dir / name) for name in offered}


def test_a_push_that_fails_with_its_files_unchanged_is_tried_again(tmp_path: Path):
    r, offer, _now = bundled(tmp_path)
    admit(r, offer)
    r.finish(r.job("transfer"), Result(False, 23, "permission denied on central"))
    entry = r.entry(offer.entry)
    assert (entry.state, entry.tries) == ("uploading", 1)
    assert [m for _, m in r.sent() if isinstance(m, Withdraw)] == []


def test_central_asking_again_for_a_bundle_whose_member_changed_since_its_hash_withdraws_it(tmp_path: Path):
    r, offer, now = bundled(tmp_path)
    admit(r, offer)
    r.finish(r.job("transfer"), OK)
    assert r.entry(offer.entry).state == "sent"
    # Replaced after the push: central's md5 of the pushed copy did not match; it asks again.
    (r.file_dir / "new").write_bytes(b"other content")
    os.rename(r.file_dir / "new", r.file_dir / "f04")
    r.deliver(Admit(offer.entry, "central", attempt=2, dest=STAGING))
    assert r.entry(offer.entry).state == "superseded"
    assert "f04" in (r.entry(offer.entry).reason or "")
    assert [j for j in r.jobs.pending if j.pool == "transfer"] == []
    scan(r, now + 1)
    scan(r, now + 2)
    offered = offered_again(r, offer)
    assert sorted(offered) == [f"f{i:02d}" for i in range(6)]
    hash_all(r)
    assert md5s(r, offered)["f04"] == md5_entry(r.file_dir / "f04")


def test_central_asking_again_for_an_unchanged_bundle_gets_it_pushed_again(tmp_path: Path):
    r, offer, _now = bundled(tmp_path)
    admit(r, offer)
    r.finish(r.job("transfer"), OK)
    admit(r, offer, attempt=2)
    assert (r.entry(offer.entry).state, r.entry(offer.entry).attempt) == ("uploading", 2)
    assert r.job("transfer").work.func is transfer.push_bundle


# --------------------------------------------------------------------------------------------------
# after delivery


def test_a_member_replaced_after_the_push_is_not_cleaned_up_the_others_are_once(tmp_path: Path):
    r, offer, now = bundled(tmp_path, cleanup_script="true")
    admit(r, offer)
    r.finish(r.job("transfer"), OK)
    (r.file_dir / "new").write_bytes(b"other content")
    os.rename(r.file_dir / "new", r.file_dir / "f01")  # after central verified what was pushed
    r.deliver(Delivered(offer.entry, "central", stored_as=offer.name))
    r.tick(now + 1)
    r.run(r.job("script"))
    got = {m.name: m.cleanup for m in bundles.of(r.state, offer.entry)}
    assert got.pop("f01") == Cleanup.SKIPPED
    assert set(got.values()) == {Cleanup.DONE}
    assert (r.file_dir / "f01").read_bytes() == b"other content"


# --------------------------------------------------------------------------------------------------
# what an older synkler left


def test_the_hard_links_of_an_older_synklers_bundle_go_at_start_and_its_bundle_goes_on(tmp_path: Path):
    r, offer, now = bundled(tmp_path)
    members = bundles.of(r.state, offer.entry)
    r.close()
    # As synkler 0.9 left it: the bundle's files hard-linked into .synkler-bundles/<bundle>, their
    # fingerprints taken after the links.
    old = tmp_path / "files" / bundles.UPLOAD_DIR / offer.name
    old.mkdir(parents=True)
    for m in members:
        os.link(tmp_path / "files" / m.name, old / m.name)
    ended = tmp_path / "files" / bundles.UPLOAD_DIR / bundles.name_of("9" * 32)
    ended.mkdir()
    again = Role("upload", tmp_path, **BUNDLED)
    with again.state.transaction():
        sigs = [(m.seq, stat_entry(again.file_dir / m.name).signature) for m in members]
        bundles.set_each(again.state, offer.entry, "signature", sigs)
    again.start()
    assert not (again.file_dir / bundles.UPLOAD_DIR).exists()
    assert sorted(os.listdir(again.file_dir)) == sorted(m.name for m in members)
    # Its fingerprints were taken again after the links went: nothing is taken for changed.
    scan(again, now + 1)
    scan(again, now + 2)
    assert offers(again) == []
    admit(again, offer)
    again.finish(again.job("transfer"), OK)
    assert again.entry(offer.entry).state == "sent"
