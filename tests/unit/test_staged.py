"""Central's check of what upload pushed (synkler.agents.staged.check_pushed): the md5, and more bytes
than offered found before anything is read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from synkler.agents.staged import Checked, Oversize, ToCheck, check_pushed
from synkler.hops import checksum
from synkler.hops.checksum import md5_entry
from synkler.hops.follow import Followed


class Done:
    """A follower whose transfer has ended with what it read."""

    def __init__(self, followed: dict[bytes, Followed]):
        self.followed = followed

    def finish(self) -> dict[bytes, Followed]:
        return self.followed


def item(staged: Path, size: int, expected: str = "", strong: str | None = None) -> ToCheck:
    return ToCheck("e" * 32, staged.name, str(staged), str(staged) + ".stored", expected, size, strong)


def tree(top: Path, files: int, size: int) -> Path:
    top.mkdir()
    for i in range(files):
        (top / f"f{i}").write_bytes(bytes([i]) * size)
    return top


def counting_opens(monkeypatch) -> list[bytes]:
    opened: list[bytes] = []
    real = checksum._open_regular
    monkeypatch.setattr(checksum, "_open_regular", lambda p: opened.append(p) or real(p))
    return opened


def test_a_tree_with_the_offered_bytes_gets_its_md5(tmp_path: Path) -> None:
    top = tree(tmp_path / "t", 3, 100)
    assert check_pushed([item(top, 300)], lambda _id: None) == [Checked(md5_entry(top), False)]


def test_a_tree_with_more_bytes_than_offered_is_oversize_and_none_of_it_is_read(tmp_path: Path, monkeypatch):
    top = tree(tmp_path / "t", 3, 100)
    opened = counting_opens(monkeypatch)
    for strong in (None, "sha256"):  # the md5 alone, or the md5 and a second hash in one read
        [result] = check_pushed([item(top, 299, strong=strong)], lambda _id: None)
        assert isinstance(result, Oversize) and result.size == 300
    assert opened == []


def test_a_file_a_follower_read_is_oversize_all_the_same(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    st = os.lstat(path)
    md5 = hashlib.md5(b"x" * 1000).hexdigest()
    followed = {b"": Followed(md5, st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)}
    opened = counting_opens(monkeypatch)
    [result] = check_pushed([item(path, 999, md5)], lambda _id: Done(followed))
    assert isinstance(result, Oversize) and result.size == 1000 and opened == []
    assert check_pushed([item(path, 1000, md5)], lambda _id: Done(followed)) == [Checked(md5, False)]
    assert opened == []  # what the follower read stood in for reading it


def test_one_entry_that_cannot_be_read_does_not_stop_the_others(tmp_path: Path) -> None:
    top = tree(tmp_path / "t", 2, 10)
    results = check_pushed([item(tmp_path / "gone", 10), item(top, 20)], lambda _id: None)
    assert isinstance(results[0], FileNotFoundError) and results[1] == Checked(md5_entry(top), False)
