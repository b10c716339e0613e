"""docs/architecture.md shows each role's states and where each can go next; the code's transition
tables are the same, so neither can drift from the other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from synkler.agents import AGENTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def documented(role: str) -> tuple[dict[str, set[str]], set[str]]:
    """(state -> the states in bold in its "goes to" column, the states a new entry starts in)."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"### {role.capitalize()} states\n", 1)[1].split("\n### ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[a-z]+`", cells[0]):
            table[cells[0].strip("`")] = set(re.findall(r"\*\*`([a-z]+)`\*\*", cells[2]))
    starts = set(re.findall(r"A new entry starts in `([a-z]+)`", section))
    return table, starts


@pytest.mark.parametrize("role", sorted(AGENTS))
def test_the_documented_states_and_transitions_are_the_codes(role):
    agent = AGENTS[role]
    table, starts = documented(role)
    assert set(table) == {s.value for s in agent.STATES}
    assert starts == {s.value for s in agent.NEW}
    code = {state.value: {to.value for to in targets} for state, targets in agent.TRANSITIONS.items()}
    assert table == code


@pytest.mark.parametrize("role", sorted(AGENTS))
def test_every_state_has_a_row_in_the_transition_table(role):
    agent = AGENTS[role]
    assert set(agent.TRANSITIONS) == set(agent.STATES)
