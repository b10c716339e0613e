"""Where download places an entry: never over something else, beside it under a documented versioned name.

The versioned name puts " (n)" before the last extension of a file ("data (2).csv") and after the
whole name of a directory ("run.v1 (2)"). Only the *last* dot counts, so "archive.tar.gz" becomes
"archive.tar (2).gz", not "archive (2).tar.gz".
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synkler.agents.naming import MAX_VERSIONS, choose_name, versioned_name
from synkler.hops.checksum import md5_entry

# --------------------------------------------------------------------------------------------------
# versioned_name


@pytest.mark.parametrize(
    "name, kind, expected",
    [
        ("data.csv", "file", "data (2).csv"),
        ("noext", "file", "noext (2)"),
        ("run.v1", "dir", "run.v1 (2)"),
        ("run42", "dir", "run42 (2)"),
        ("archive.tar.gz", "file", "archive.tar (2).gz"),
        ("my data.final.csv", "file", "my data.final (2).csv"),
        ("link.txt", "symlink", "link (2).txt"),
        ("Grüße.txt", "file", "Grüße (2).txt"),
    ],
)
def test_the_second_version_of_a_name(name, kind, expected):
    assert versioned_name(name, kind, 2) == expected


def test_the_first_version_is_the_name_itself():
    assert versioned_name("data.csv", "file", 1) == "data.csv"
    assert versioned_name("run.v1", "dir", 1) == "run.v1"


def test_later_versions_count_up():
    assert [versioned_name("data.csv", "file", n) for n in (3, 10, 1000)] == [
        "data (3).csv",
        "data (10).csv",
        "data (1000).csv",
    ]


def test_a_versioned_name_never_starts_with_a_dot_or_gains_a_slash():
    for name, kind in [("data.csv", "file"), ("noext", "file"), ("run.v1", "dir")]:
        for n in range(2, 20):
            versioned = versioned_name(name, kind, n)
            assert not versioned.startswith(".")
            assert "/" not in versioned


# --------------------------------------------------------------------------------------------------
# choose_name


@pytest.fixture
def file_dir(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    """Where the verified copy sits before it is placed (its digest is what choose_name gets)."""
    path = tmp_path / "staging"
    path.mkdir()
    return path


def digest_of_file(staged: Path, content: bytes) -> str:
    path = staged / "incoming"
    path.write_bytes(content)
    return md5_entry(path)


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return root


def test_a_free_name_is_used_as_it_is(file_dir: Path, staged: Path):
    md5 = digest_of_file(staged, b"new")
    assert choose_name(str(file_dir), "data.csv", "file", md5) == ("data.csv", False)


def test_an_identical_entry_under_the_name_is_reported_as_present(file_dir: Path, staged: Path):
    (file_dir / "data.csv").write_bytes(b"same")
    md5 = digest_of_file(staged, b"same")
    assert choose_name(str(file_dir), "data.csv", "file", md5) == ("data.csv", True)


def test_a_different_entry_under_the_name_gets_the_next_version_beside_it(file_dir: Path, staged: Path):
    (file_dir / "data.csv").write_bytes(b"old")
    md5 = digest_of_file(staged, b"new")
    assert choose_name(str(file_dir), "data.csv", "file", md5) == ("data (2).csv", False)
    assert (file_dir / "data.csv").read_bytes() == b"old"  # choosing touches nothing


def test_versions_that_hold_other_content_are_skipped(file_dir: Path, staged: Path):
    (file_dir / "data.csv").write_bytes(b"v1")
    (file_dir / "data (2).csv").write_bytes(b"v2")
    (file_dir / "data (3).csv").write_bytes(b"v3")
    md5 = digest_of_file(staged, b"v4")
    assert choose_name(str(file_dir), "data.csv", "file", md5) == ("data (4).csv", False)


def test_an_identical_earlier_version_is_found_present(file_dir: Path, staged: Path):
    (file_dir / "data.csv").write_bytes(b"v1")
    (file_dir / "data (2).csv").write_bytes(b"v2")
    md5 = digest_of_file(staged, b"v2")
    assert choose_name(str(file_dir), "data.csv", "file", md5) == ("data (2).csv", True)


def test_a_gap_in_the_versions_is_filled_first(file_dir: Path, staged: Path):
    (file_dir / "data.csv").write_bytes(b"v1")
    (file_dir / "data (3).csv").write_bytes(b"v3")
    md5 = digest_of_file(staged, b"v3")
    # The first free name wins, even though an identical copy exists further up.
    assert choose_name(str(file_dir), "data.csv", "file", md5) == ("data (2).csv", False)


def test_a_directory_with_the_same_digest_is_present(file_dir: Path, staged: Path):
    content = {"a.txt": b"alpha", "sub/b.bin": b"\x00\x01"}
    make_tree(file_dir / "run.v1", content)
    md5 = md5_entry(make_tree(staged / "run.v1", content))
    assert choose_name(str(file_dir), "run.v1", "dir", md5) == ("run.v1", True)


def test_a_directory_with_other_content_gets_a_versioned_name(file_dir: Path, staged: Path):
    make_tree(file_dir / "run.v1", {"a.txt": b"alpha"})
    md5 = md5_entry(make_tree(staged / "run.v1", {"a.txt": b"beta"}))
    assert choose_name(str(file_dir), "run.v1", "dir", md5) == ("run.v1 (2)", False)


def test_a_file_with_other_content_than_a_directory_gets_a_versioned_name(file_dir: Path, staged: Path):
    (file_dir / "run.v1").write_bytes(b"not a tree")
    md5 = md5_entry(make_tree(staged / "run.v1", {"a.txt": b"alpha"}))
    assert choose_name(str(file_dir), "run.v1", "dir", md5) == ("run.v1 (2)", False)


def test_an_empty_file_is_not_taken_for_an_arriving_empty_directory(file_dir: Path, staged: Path):
    (file_dir / "run.v1").write_bytes(b"")
    md5 = md5_entry(make_tree(staged / "run.v1", {}))
    assert md5 == md5_entry(file_dir / "run.v1")  # the digests collide by design
    assert choose_name(str(file_dir), "run.v1", "dir", md5) == ("run.v1 (2)", False)


def test_a_file_holding_a_symlinks_target_text_is_not_taken_for_that_symlink(file_dir: Path, staged: Path):
    (file_dir / "latest").write_bytes(b"data.csv")
    (staged / "latest").symlink_to("data.csv")
    md5 = md5_entry(staged / "latest")
    assert choose_name(str(file_dir), "latest", "symlink", md5) == ("latest (2)", False)


def test_a_dangling_symlink_occupies_its_name(file_dir: Path, staged: Path):
    (file_dir / "data.csv").symlink_to(file_dir / "nowhere")
    md5 = digest_of_file(staged, b"new")
    assert choose_name(str(file_dir), "data.csv", "file", md5) == ("data (2).csv", False)


def test_an_unreadable_entry_is_treated_as_other_content(file_dir: Path, staged: Path):
    fifo = file_dir / "data.csv"
    os.mkfifo(fifo)  # md5_entry refuses special files
    md5 = digest_of_file(staged, b"new")
    assert choose_name(str(file_dir), "data.csv", "file", md5) == ("data (2).csv", False)


def test_running_out_of_versions_is_an_error_not_an_overwrite(file_dir: Path, staged: Path):
    for n in range(1, MAX_VERSIONS + 1):
        (file_dir / versioned_name("x", "file", n)).write_bytes(b"other")
    md5 = digest_of_file(staged, b"new")
    with pytest.raises(RuntimeError, match="already exist"):
        choose_name(str(file_dir), "x", "file", md5)
