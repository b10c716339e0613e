"""Which pulls write in place: a batch of small entries does (no temporary file and rename per file),
a batch with an entry followed while it arrives does not (its follower watches rsync's temporary
file). The rsync run is replaced by a function that writes what central holds."""

from __future__ import annotations

import hashlib
import os
from types import SimpleNamespace

import pytest

from synkler.hops import pull, transfer
from synkler.hops.follow import FOLLOW_MIN
from synkler.hops.pull import Mismatch, NotPulled, Staging, Verified
from synkler.hops.transfer import Result
from synkler.state import Entry

SMALL = b"small file\n"


def entry(i: int, size: int, md5: str) -> Entry:
    return Entry(
        id=f"{i:032x}", name=f"f{i}", kind="file", state="fetching", size=size, files=1, md5=md5,
        path="/srv/central/lab/stored/x",
    )  # fmt: skip


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    seen: list[dict[str, object]] = []

    def fake_pull(_cfg: object, _at: str, paths: list[str], local: str, *, inplace: bool = False) -> Result:
        seen.append({"paths": list(paths), "inplace": inplace})
        for p in paths:
            with open(os.path.join(local, p), "wb") as f:
                f.write(SMALL)
        return Result(True, 0, "")

    monkeypatch.setattr(transfer, "pull", fake_pull)
    return seen


def staging_of(tmp_path) -> Staging:
    staging = Staging(SimpleNamespace(file_dir=str(tmp_path), id="lab"))
    os.makedirs(staging.dir)
    return staging


def choose(e: Entry, _md5: str) -> tuple[str, bool]:
    return e.name, False


def test_a_batch_of_small_entries_is_pulled_in_place_and_verified(tmp_path, runs):
    md5 = hashlib.md5(SMALL).hexdigest()
    batch = [entry(i, len(SMALL), md5) for i in range(3)]
    run = pull.pull(SimpleNamespace(), staging_of(tmp_path), batch, None, choose)
    assert runs == [{"paths": [e.id for e in batch], "inplace": True}]
    assert all(isinstance(o, Verified) for o in run.outcomes.values())


def test_a_batch_with_a_followed_entry_keeps_rsyncs_temporary_files(tmp_path, runs):
    md5 = hashlib.md5(SMALL).hexdigest()
    batch = [entry(0, len(SMALL), md5), entry(1, FOLLOW_MIN, "0" * 32)]
    run = pull.pull(SimpleNamespace(), staging_of(tmp_path), batch, None, choose)
    assert [r["inplace"] for r in runs] == [False]
    assert isinstance(run.outcomes[batch[0].id], Verified)
    assert isinstance(run.outcomes[batch[1].id], Mismatch)  # (what the fake wrote is not its content)


def test_a_file_a_cut_off_run_left_half_written_in_place_is_kept_for_the_next_run(tmp_path, monkeypatch):
    data = os.urandom(10_000)
    e = entry(0, len(data), hashlib.md5(data).hexdigest())
    staging = staging_of(tmp_path)

    def cut_off(_cfg: object, _at: str, paths: list[str], local: str, *, inplace: bool = False) -> Result:
        with open(os.path.join(local, paths[0]), "wb") as f:
            f.write(data[:4096])  # what rsync --inplace had written when the link went
        return Result(False, 255, "ssh: connect to host central: Connection refused\n")

    monkeypatch.setattr(transfer, "pull", cut_off)
    run = pull.pull(SimpleNamespace(), staging, [e], None, choose)
    assert isinstance(run.outcomes[e.id], NotPulled)  # not a mismatch: nothing counted, nothing dropped
    with open(staging.of(e.id), "rb") as f:
        assert f.read() == data[:4096]
