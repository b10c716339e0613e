"""Central tells download `pushing` when the push of a big file begins (its follower linked rsync's
temporary file where download may pull it early), not when it admits the file: download pulls early
what is being pushed, not what waits its turn behind other pushes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from support.fakes import Role

from synkler.hops.follow import EARLY_MIN
from synkler.messages import Admit, Offer, Pushing, Withdraw


def admitted(tmp_path: Path, size: int = EARLY_MIN) -> tuple[Role, str]:
    r = Role("central", tmp_path)
    r.start()
    entry_id = os.urandom(16).hex()
    r.deliver(Offer(entry_id, "upload", name="big.bin", kind="file", size=size, files=1))
    r.tick()
    assert [type(m) for _, m in r.sent()] == [Admit]  # no `pushing` yet
    return r, entry_id


def rsync_begins(r: Role, entry_id: str) -> Path:
    """What upload's rsync does first: its temporary file beside the name, in central's staging."""
    temp = Path(r.agent.spool.staging(r.entry(entry_id))) / ".big.bin.Xq3zP1"
    temp.write_bytes(b"the first bytes")
    return temp


def told_pushing(r: Role, within: float = 10.0) -> list[tuple[str, Pushing]]:
    """The `pushing` messages central sends at its next ticks, once its follower saw the push."""
    deadline = time.monotonic() + within
    while True:
        r.tick()
        found = [(to, m) for to, m in r.sent() if isinstance(m, Pushing)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_central_says_pushing_when_the_push_begins_with_the_file_download_may_read(tmp_path: Path):
    r, entry_id = admitted(tmp_path)
    try:
        temp = rsync_begins(r, entry_id)
        [(to, msg)] = told_pushing(r)
        assert to == "download" and msg.entry == entry_id and msg.size == EARLY_MIN
        assert msg.path == r.agent.spool.growing(entry_id)
        assert os.path.samefile(msg.path, temp)  # the file being written, whatever rsync renames
        assert told_pushing(r, within=0.3) == []  # once per push
    finally:
        r.close()


def test_a_file_below_the_early_pull_size_is_never_announced(tmp_path: Path):
    r, entry_id = admitted(tmp_path, size=EARLY_MIN - 1)
    try:
        rsync_begins(r, entry_id)
        assert told_pushing(r, within=1.0) == []
    finally:
        r.close()


def test_a_push_that_begins_after_its_entry_was_withdrawn_is_not_announced(tmp_path: Path):
    r, entry_id = admitted(tmp_path)
    try:
        r.deliver(Withdraw(entry_id, "upload", reason="changed"))
        rsync_begins(r, entry_id)
        assert told_pushing(r, within=1.0) == []
    finally:
        r.close()
