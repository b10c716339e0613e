"""Download's early copy of a file pulled while upload pushes it: what its running md5 covers."""

from __future__ import annotations

import hashlib
import os

from synkler.agents.pull import Early


def test_the_digest_covers_what_was_appended_up_to_the_limit(tmp_path):
    local = tmp_path / "copy"
    early = Early(str(local))
    assert early.hash_more(299) and early.hashed == 0  # nothing pulled yet
    data = os.urandom(300)
    local.write_bytes(data[:100])
    assert early.hash_more(299) and early.hashed == 100
    with open(local, "ab") as f:
        f.write(data[100:])
    assert early.hash_more(299) and early.hashed == 299  # the last byte is left for the fetch's run
    assert early.hash_more(300) and early.hashed == 300
    assert early.digest.hexdigest() == hashlib.md5(data).hexdigest()


def test_a_copy_replaced_or_removed_is_not_the_same_copy(tmp_path):
    local = tmp_path / "copy"
    local.write_bytes(b"a" * 50)
    early = Early(str(local))
    assert early.hash_more(99) and early.hashed == 50
    other = tmp_path / "other"
    other.write_bytes(b"a" * 60)
    os.replace(other, local)  # another file (inode) in its place, longer than what was hashed
    assert not early.hash_more(99)
    os.unlink(local)
    assert not early.hash_more(99)  # it was there before: gone is not "nothing pulled yet"


def test_a_copy_cut_shorter_than_what_was_hashed_is_not_the_same_copy(tmp_path):
    local = tmp_path / "copy"
    local.write_bytes(b"a" * 50)
    early = Early(str(local))
    assert early.hash_more(99) and early.hashed == 50
    os.truncate(local, 10)
    assert not early.hash_more(99)
