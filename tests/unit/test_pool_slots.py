"""The transfer slots of upload and download in a pool of centrals: each central with entries due
gets a run before any gets a second, whatever the age of the others' entries (synkler.agents.slots,
through the agents' passes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fakes import Job, Role

from synkler import bundles
from synkler.agents.download import Down
from synkler.agents.slots import BATCH_BYTES

POOL = {"central-a": "synkler@host-a", "central-b": "synkler@host-b", "central-c": "synkler@host-c"}
STATE = {"upload": "uploading", "download": Down.FETCHING}


def end(
    mode: str, tmp_path: Path, owners: list[str], kind: str = "file", **settings: object
) -> tuple[Role, dict[str, str]]:
    """Upload or download of a pool with one big entry (of `kind`) due for transfer per item of
    `owners` (the central that owns it), oldest first: the agent, and each entry's central by its id."""
    r = Role(mode, tmp_path, centrals=POOL, max_transfers=4, **settings)
    r.start()
    peers = {}
    for i, owner in enumerate(owners):
        e = r.given(
            STATE[mode],
            name=f"{bundles.PREFIX}{i}" if kind == bundles.KIND else f"f{i}",
            kind=kind,
            peer=owner,
            size=BATCH_BYTES,
            created=1000.0 + i,
            path=f"/srv/{owner}/lab/{'staging/upload' if mode == 'upload' else 'stored'}",
        )
        if kind == bundles.KIND and mode == "upload":  # a bundle with no files known is withdrawn
            with r.state.transaction():
                bundles.add(r.state, e.id, [(f"f{i}", BATCH_BYTES, "0" * 32)])
        peers[e.id] = owner
    return r, peers


def transfers(r: Role) -> list[Job]:
    return [j for j in r.jobs.pending if j.pool == "transfer"]


def centrals_of(jobs: list[Job], peers: dict[str, str]) -> list[str]:
    return sorted(peers[key.of] for job in jobs for key in job.keys)


@pytest.mark.parametrize("kind", ["file", bundles.KIND])
@pytest.mark.parametrize("transport", ["rsync", "sftp"])
@pytest.mark.parametrize("mode", ["upload", "download"])
def test_each_central_with_work_gets_a_slot_before_the_oldest_entries_get_more(
    mode: str, transport: str, kind: str, tmp_path: Path
):
    """Over rsync or SFTP, files or bundles: the same slots, shared the same way."""
    owners = ["central-a"] * 6 + ["central-b"] * 2 + ["central-c"]
    r, peers = end(mode, tmp_path, owners, kind=kind, transport=transport)
    r.tick()
    first = transfers(r)
    assert centrals_of(first, peers) == ["central-a", "central-a", "central-b", "central-c"]
    # c's run ends: its slot goes to b, which runs one, not to a's older entries (a runs two)
    r.finish(next(j for j in first if peers[j.keys[0].of] == "central-c"))
    r.tick()
    assert centrals_of([j for j in transfers(r) if j not in first], peers) == ["central-b"]


@pytest.mark.parametrize("mode", ["upload", "download"])
def test_one_central_takes_every_slot_oldest_first(mode: str, tmp_path: Path):
    r, peers = end(mode, tmp_path, ["central-a"] * 6)
    r.tick()
    names = sorted(r.entry(key.of).name for job in transfers(r) for key in job.keys)
    assert names == ["f0", "f1", "f2", "f3"] and len(transfers(r)) == 4
