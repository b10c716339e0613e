"""Every transition of every role's state table, driven without a broker, sshd or rsync.

Each scenario (test_decisions_upload.py, _central.py, _download.py) puts an entry in a state (as an
earlier run would have left it), hands the agent a message, a tick or a job's outcome through the
fake runtime (tests/support/fakes.py), and checks the state it went to and what it sent. The table
of scenarios must cover each transition the code allows (synkler/agents/*.py TRANSITIONS, shown in
docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The scenarios of each role register themselves when their module is imported (pytest imports test
# modules by their base name: tests/unit is on sys.path), so this module sees them all, run alone too.
import test_decisions_central  # noqa: F401
import test_decisions_download  # noqa: F401
import test_decisions_upload  # noqa: F401
from support.transitions import SCENARIOS

from synkler.agents import AGENTS


def every_transition() -> list[tuple[str, str, str]]:
    pairs = []
    for mode, agent in AGENTS.items():
        pairs += [(mode, "", str(state)) for state in agent.NEW]
        for from_, targets in agent.TRANSITIONS.items():
            pairs += [(mode, str(from_), str(to)) for to in sorted(targets)]
    return pairs


def test_every_transition_has_a_scenario_and_every_scenario_a_transition():
    assert sorted(SCENARIOS) == sorted(every_transition())


@pytest.mark.parametrize("mode,from_,to", sorted(SCENARIOS), ids=lambda v: v or "new")
def test_transition(tmp_path: Path, mode: str, from_: str, to: str):
    entry = SCENARIOS[(mode, from_, to)](tmp_path, from_, to)
    assert entry.state == to
