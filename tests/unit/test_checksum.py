"""Digests must be identical for identical trees on any host and differ for any relayed change."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest

from synkler.hops import checksum, treewalk
from synkler.hops.checksum import EntryStat, file_stat, md5_entry, stat_entry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "checksums.md"


def build_tree(root: Path, reverse: bool = False) -> Path:
    """Create the same tree in one of two creation orders.

    Directory listing order follows creation order on most filesystems.
    """
    root.mkdir()
    steps = [
        lambda: (root / "b").mkdir(),
        lambda: (root / "b" / "inner.txt").write_bytes(b"inner\n"),
        lambda: (root / "a.txt").write_bytes(b"alpha"),
        lambda: (root / "empty").mkdir(),
        lambda: os.symlink("a.txt", root / "link"),
        lambda: (root / "b" / "zz").write_bytes(b""),
        lambda: (root / "a.b").write_bytes(b"dot"),
    ]
    order = [0, 2, 6, 4, 3, 5, 1] if reverse else range(len(steps))
    for index in order:
        steps[index]()
    return root


def doc_digest(path: Path) -> str:
    """Run the reference snippet from docs/checksums.md, so the documentation can't drift from the code."""
    block = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert block, "docs/checksums.md lost its Python snippet"
    namespace: dict = {}
    exec(compile(block.group(1), str(DOCS), "exec"), namespace)  # noqa: S102 - our own docs, on purpose
    return namespace["synkler_md5"](str(path))


def test_the_same_tree_created_in_different_orders_has_the_same_digest(tmp_path: Path) -> None:
    first = build_tree(tmp_path / "one")
    second = build_tree(tmp_path / "two", reverse=True)
    assert md5_entry(first) == md5_entry(second)


def test_the_directory_digest_follows_the_documented_record_format(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    expected = hashlib.md5()
    for kind, rel, payload in sorted(
        [
            (b"f", b"a.b", hashlib.md5(b"dot").hexdigest().encode()),
            (b"f", b"a.txt", hashlib.md5(b"alpha").hexdigest().encode()),
            (b"d", b"b", b""),
            (b"f", b"b/inner.txt", hashlib.md5(b"inner\n").hexdigest().encode()),
            (b"f", b"b/zz", hashlib.md5(b"").hexdigest().encode()),
            (b"d", b"empty", b""),
            (b"l", b"link", b"a.txt"),
        ],
        key=lambda record: record[1],
    ):
        expected.update(kind + b"\0" + rel + b"\0" + payload + b"\0")
    assert md5_entry(tree) == expected.hexdigest()


def test_the_snippet_in_the_docs_reproduces_the_digest(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    (tree / "b" / "deeper").mkdir()
    os.symlink("../../elsewhere", tree / "b" / "deeper" / "dangling")
    assert doc_digest(tree) == md5_entry(tree)
    assert doc_digest(tree / "a.txt") == md5_entry(tree / "a.txt")
    assert doc_digest(tree / "link") == md5_entry(tree / "link")


def test_changing_one_byte_of_a_file_changes_the_digest(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    before = md5_entry(tree)
    (tree / "b" / "inner.txt").write_bytes(b"innEr\n")
    assert md5_entry(tree) != before


def test_renaming_a_file_changes_the_digest(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    before = md5_entry(tree)
    os.rename(tree / "a.txt", tree / "a2.txt")
    os.unlink(tree / "link")
    os.symlink("a.txt", tree / "link")  # keep the link target string identical
    assert md5_entry(tree) != before


def test_moving_a_file_into_a_subdirectory_changes_the_digest(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    before = md5_entry(tree)
    os.rename(tree / "a.b", tree / "empty" / "a.b")
    assert md5_entry(tree) != before


def test_adding_an_empty_directory_changes_the_digest(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    before = md5_entry(tree)
    (tree / "b" / "new-empty").mkdir()
    assert md5_entry(tree) != before


def test_changing_a_symlink_target_changes_the_digest(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    before = md5_entry(tree)
    os.unlink(tree / "link")
    os.symlink("a.b", tree / "link")
    assert md5_entry(tree) != before


def test_permissions_and_mtimes_do_not_change_the_digest(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    before = md5_entry(tree)
    os.chmod(tree / "a.txt", 0o600)
    os.utime(tree / "b" / "inner.txt", ns=(1, 1))
    os.chmod(tree / "empty", 0o700)
    assert md5_entry(tree) == before


def test_a_file_entry_digest_equals_the_plain_md5_of_its_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert md5_entry(path) == hashlib.md5(data).hexdigest()
    assert checksum._md5_file_nofollow(os.fsencode(path), bufsize=4096) == hashlib.md5(data).hexdigest()


def test_an_empty_file_has_the_md5_of_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert md5_entry(path) == "d41d8cd98f00b204e9800998ecf8427e"


def test_a_top_level_symlink_is_hashed_by_its_target_string_without_following_it(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"content")
    os.symlink("real", tmp_path / "link")
    os.symlink("/nonexistent/target", tmp_path / "dangling")
    assert md5_entry(tmp_path / "link") == hashlib.md5(b"real").hexdigest()
    assert md5_entry(tmp_path / "dangling") == hashlib.md5(b"/nonexistent/target").hexdigest()


def test_a_symlink_to_a_directory_inside_a_tree_is_not_descended(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"one")
    tree = tmp_path / "t"
    tree.mkdir()
    os.symlink(str(outside), tree / "to-outside")
    before = md5_entry(tree)
    (outside / "secret").write_bytes(b"two")
    (outside / "more").write_bytes(b"three")
    assert md5_entry(tree) == before


@pytest.mark.parametrize(
    "name",
    [
        "café ünïcode.txt",
        "with space",
        "new\nline",
        "tab\there",
        "日本語",
        b"latin1-\xe9".decode("utf-8", "surrogateescape"),
    ],
)
def test_awkward_names_are_hashed_consistently(tmp_path: Path, name: str) -> None:
    one = tmp_path / "one"
    two = tmp_path / "two"
    for root in (one, two):
        (root / name).mkdir(parents=True)
        (root / name / name).write_bytes(b"x")
        os.symlink(name, root / (name + "-link"))
    assert md5_entry(one) == md5_entry(two)
    assert doc_digest(one) == md5_entry(one)
    (one / name / name).write_bytes(b"y")
    assert md5_entry(one) != md5_entry(two)


def test_a_fifo_inside_a_tree_is_refused_with_its_path(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    os.mkfifo(tree / "pipe")
    with pytest.raises(ValueError, match="pipe"):
        md5_entry(tree)
    with pytest.raises(ValueError, match="pipe"):
        stat_entry(tree)


def test_a_fifo_given_directly_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="pipe"):
        md5_entry(tmp_path / "pipe")


def test_a_missing_entry_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        md5_entry(tmp_path / "nope")


def test_stat_entry_counts_regular_files_and_their_bytes(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    whole = stat_entry(tree)
    assert isinstance(whole, EntryStat)
    assert (whole.kind, whole.size, whole.files) == ("dir", len(b"inner\n") + len(b"alpha") + len(b"dot"), 4)
    single = stat_entry(tree / "a.txt")
    assert (single.kind, single.size, single.files) == ("file", 5, 1)
    link = stat_entry(tree / "link")
    assert (link.kind, link.size, link.files) == ("symlink", len("a.txt"), 0)


def test_stat_entry_signatures_are_the_md5_of_the_same_records_as_ever(tmp_path: Path) -> None:
    """Fingerprints are kept in state databases and compared across versions: their bytes never change."""
    tree = build_tree(tmp_path / "t")

    def record(kind: bytes, rel: bytes, st: os.stat_result) -> bytes:
        return b"%s\0%s\0%d\0%d\0%d\0" % (kind, rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def md5(data: bytes) -> str:
        return hashlib.md5(data).hexdigest()

    one = os.lstat(tree / "a.txt")
    assert stat_entry(tree / "a.txt").signature == md5(record(b"f", b"", one))
    assert file_stat(one) == stat_entry(tree / "a.txt")
    assert stat_entry(tree / "link").signature == md5(record(b"l", b"", os.lstat(tree / "link")))
    below = sorted(
        (os.path.relpath(os.path.join(d, n), tree).encode(), os.path.join(d, n))
        for d, dirs, files in os.walk(tree)
        for n in (*dirs, *files)
    )

    def kind(p: str) -> bytes:
        return b"l" if os.path.islink(p) else b"d" if os.path.isdir(p) else b"f"

    records = [record(b"d", b"", os.lstat(tree))] + [record(kind(p), rel, os.lstat(p)) for rel, p in below]
    assert stat_entry(tree).signature == md5(b"".join(records))


def test_stat_entry_signature_is_stable_for_an_untouched_tree(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    first = stat_entry(tree)
    md5_entry(tree)  # reading contents must not count as a change
    assert stat_entry(tree) == first


def test_stat_entry_signature_changes_when_a_file_grows(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    before = stat_entry(tree)
    with open(tree / "b" / "inner.txt", "ab") as f:
        f.write(b"more")
    after = stat_entry(tree)
    assert after.signature != before.signature
    assert after.size == before.size + 4


def test_stat_entry_signature_changes_when_only_an_mtime_changes(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    before = stat_entry(tree).signature
    st = os.stat(tree / "a.txt")
    os.utime(tree / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert stat_entry(tree).signature != before


def test_stat_entry_signature_changes_when_a_file_appears(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "t")
    before = stat_entry(tree)
    (tree / "empty" / "new").write_bytes(b"")
    after = stat_entry(tree)
    assert after.signature != before.signature
    assert after.files == before.files + 1


def test_stat_entry_signature_changes_when_a_single_file_entry_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    before = stat_entry(path).signature
    time.sleep(0.05)  # beyond the coarsest timestamp tick of common Linux filesystems
    path.write_bytes(b"abd")
    assert stat_entry(path).signature != before


def test_the_digest_does_not_depend_on_directory_listing_order(tmp_path: Path, monkeypatch) -> None:
    tree = build_tree(tmp_path / "t")
    natural = md5_entry(tree)
    real_scandir = os.scandir
    listed = []

    class ReversedListing:
        def __init__(self, path):
            listed.append(path)
            self._entries = list(real_scandir(path))[::-1]

        def __enter__(self):
            return iter(self._entries)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("synkler.hops.checksum.os.scandir", ReversedListing)
    assert md5_entry(tree) == natural
    assert listed, "the walk did not go through os.scandir"


def test_a_hash_under_way_ends_with_interrupted_when_the_agent_stops(tmp_path: Path) -> None:
    from synkler.errors import Interrupted
    from synkler.hops import checksum

    path = tmp_path / "big"
    path.write_bytes(b"x" * 100)
    checksum.STOPPING.set()
    try:
        with pytest.raises(Interrupted):  # not an Exception: a job's per-entry handler lets it through
            try:
                md5_entry(path)
            except Exception:
                pytest.fail("Interrupted was caught as an Exception")
    finally:
        checksum.STOPPING.clear()
    assert md5_entry(path) == hashlib.md5(b"x" * 100).hexdigest()


SIZES = [0, 1, 4095, 4096, checksum.SMALL_FILE - 1, checksum.SMALL_FILE, (3 << 20) + 7]


@pytest.mark.parametrize("size", SIZES)
def test_a_file_of_any_size_on_either_side_of_the_small_file_read_has_its_md5(tmp_path: Path, size) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert md5_entry(tmp_path / "f") == hashlib.md5(data).hexdigest()
    strong = checksum.digest_entry(tmp_path / "f", "sha256").strong
    assert strong == f"sha256:{hashlib.sha256(data).hexdigest()}"


def test_a_small_file_that_grows_while_it_is_read_is_read_to_its_end(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 100)
    real = os.read
    grown = []

    def read_then_grow(fd: int, n: int) -> bytes:
        data = real(fd, n)
        if not grown:
            grown.append(True)
            with open(path, "ab") as f:
                f.write(b"b" * 50)
        return data

    monkeypatch.setattr(checksum.os, "read", read_then_grow)
    assert md5_entry(path) == hashlib.md5(b"a" * 100 + b"b" * 50).hexdigest()


def test_an_entry_over_the_limit_is_refused_before_any_file_is_read(tmp_path: Path, monkeypatch) -> None:
    tree = build_tree(tmp_path / "t")  # 5 + 6 + 0 + 3 bytes of regular files, and a link
    size = stat_entry(tree).size
    opened: list[bytes] = []
    real = checksum._open_regular
    monkeypatch.setattr(checksum, "_open_regular", lambda p: opened.append(p) or real(p))
    with pytest.raises(checksum.TooBig) as too_big:
        md5_entry(tree, limit=size - 1)
    assert too_big.value.size == size and opened == []
    with pytest.raises(checksum.TooBig):
        checksum.digest_entry(tree, "sha256", limit=size - 1)
    with pytest.raises(checksum.TooBig) as too_big:
        md5_entry(tree / "a.txt", limit=4)
    assert too_big.value.size == 5 and opened == []
    assert md5_entry(tree, limit=size) == md5_entry(tree)  # at the limit: read as always
    assert checksum.digest_entry(tree, limit=size).md5 == md5_entry(tree)


def test_a_walk_lists_names_that_are_not_utf8_byte_exact_and_sorted(tmp_path: Path) -> None:
    top = tmp_path / "t"
    top.mkdir()
    for name in (b"b\xff", b"a", b"\xe9t\xe9"):
        (top / os.fsdecode(name)).write_bytes(name)
    assert [rel for rel, *_ in treewalk.walk(os.fsencode(top))] == [b"a", b"b\xff", b"\xe9t\xe9"]
