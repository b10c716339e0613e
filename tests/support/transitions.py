"""The scenarios of tests/unit/test_decisions*.py: each puts an entry in a state (as an earlier run
would have left it), hands the agent a message, a tick or a job's outcome through the fake runtime
(support/fakes.py), and checks the state it went to and what it sent. `transition` registers one
for each move of a role's state table it drives; test_decisions.py runs them all and checks that
they cover the table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from support.fakes import Role
from synkler.hops.transfer import Result
from synkler.messages import Fetch, Message, Offer
from synkler.state import Entry

MD5 = "a" * 32
OTHER = "b" * 32
OK = Result(True, 0, "")
RSYNC_FAILED = Result(False, 23, "rsync: some files could not be transferred")

Scenario = Callable[[Path, str, str], Entry]
SCENARIOS: dict[tuple[str, str, str], Scenario] = {}


def transition(role: str, *pairs: tuple[str, str]) -> Callable[[Scenario], Scenario]:
    """Register a scenario for each (from, to) of `role`; from "" is a new entry."""

    def register(fn: Scenario) -> Scenario:
        for pair in pairs:
            assert (role, *pair) not in SCENARIOS, pair
            SCENARIOS[(role, *pair)] = fn
        return fn

    return register


def role(tmp_path: Path, mode: str, **settings: object) -> Role:
    r = Role(mode, tmp_path, **settings)
    return r


def only(sent: list[tuple[str, Message]], kind: type[Message]) -> tuple[str, Message]:
    found = [(to, m) for to, m in sent if isinstance(m, kind)]
    assert len(found) == 1, sent
    return found[0]


def fetch_for(entry_id: str, attempt: int = 1, **fields: object) -> Fetch:
    """Central's `fetch` of a 4-byte data.bin stored as <entry id>, as download gets it; `fields`
    (md5, again, source …) replace or add to those."""
    given: dict = {"name": "data.bin", "kind": "file", "size": 4, "files": 1, "md5": MD5}
    given.update(attempt=attempt, path=f"/srv/central/lab/stored/{entry_id}", **fields)
    return Fetch(entry_id, "central", **given)


def scan(r: Role, now: float) -> None:
    """One listing of upload's file_dir, handed back as the runtime does."""
    r.agent.changed.set()
    r.tick(now)
    r.run(r.job("scan"))


def offers(r: Role) -> list[Offer]:
    """The offers upload has sent."""
    return [m for _, m in r.sent() if isinstance(m, Offer)]
