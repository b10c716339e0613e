"""Each role's facts are declared once, beside its states: nothing else spells a state name."""

from __future__ import annotations

import ast
from pathlib import Path

import synkler
from synkler.agents import AGENTS, FACTS, facts

PACKAGE = Path(synkler.__file__).parent
ROLE_MODULES = {PACKAGE / "agents" / f"{role}.py" for role in AGENTS}
STATE_NAMES = {str(s) for agent in AGENTS.values() for s in agent.STATES}


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _another_meaning(node: ast.Constant, parents: dict[ast.AST, ast.AST]) -> bool:
    """A string equal to a state name that means something else: a member of a Status enum (the
    cleanup column's states share words with the entries'), a message type, a JSON field's key, or
    a value compared with an entry's cleanup."""
    parent = parents.get(node)
    if isinstance(parent, ast.Subscript) or (isinstance(parent, ast.Dict) and node in parent.keys):
        return True
    if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute) and parent.func.attr == "get":
        return True  # d.get("done"): a key
    while parent is not None:
        targets = [parent.target] if isinstance(parent, ast.AnnAssign) else getattr(parent, "targets", [])
        if isinstance(parent, (ast.Assign, ast.AnnAssign)) and any(
            isinstance(t, ast.Name) and t.id in ("TYPE", "__slots__") for t in targets
        ):
            return True
        if isinstance(parent, ast.ClassDef):
            # A role's states (Status), or the states of an entry at one destination (Dest).
            return parent.name == "Dest" or any(
                isinstance(b, ast.Name) and b.id == "Status" for b in parent.bases
            )
        if isinstance(parent, ast.Compare):
            left = parent.left
            return (isinstance(left, ast.Attribute) and left.attr == "cleanup") or (
                isinstance(left, ast.Subscript) and ast.literal_eval(left.slice) == "cleanup"
            )
        parent = parents.get(parent)
    return False


def state_names_outside_their_roles(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if path in ROLE_MODULES:
            continue
        tree = ast.parse(path.read_text(), str(path))
        parents = _parents(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and node.value in STATE_NAMES
                and not _another_meaning(node, parents)
            ):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}")
    return found


def test_no_module_but_its_role_spells_a_state_name():
    assert state_names_outside_their_roles(PACKAGE) == []


def test_no_module_but_the_facts_spells_a_hop_name():
    hops = {facts.PUSH_TO_CENTRAL, facts.PULL_FROM_CENTRAL, facts.UPLOAD_TO_CENTRAL, facts.STORE_AT_CENTRAL}
    hops.add(facts.ADMISSION_AT_CENTRAL)
    hops.add(facts.METADATA_AT_CENTRAL)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != PACKAGE / "agents" / "facts.py":
            tree = ast.parse(path.read_text(), str(path))
            spelled = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in hops]
            found += [f"{path}:{n.lineno}" for n in spelled]
    assert found == []


def test_the_scan_finds_a_state_spelled_by_an_observer(tmp_path: Path):
    (tmp_path / "observer.py").write_text(
        'FINISHED = ("done", "superseded")\n'
        'def f(e): return e.cleanup in ("failed",) or e.state == "failed"\n'
        'row = {"done": 1}["done"]\n'
    )
    assert state_names_outside_their_roles(tmp_path) == [
        "observer.py:1: 'done'",
        "observer.py:1: 'superseded'",
        "observer.py:2: 'failed'",
    ]


def test_every_fact_names_states_of_its_own_role():
    for role, known in FACTS.items():
        states = set(known.states)
        assert known.states == tuple(str(s) for s in AGENTS[role].STATES)
        assert known.finished | known.hashing | known.transferring | known.given_up <= states
        assert known.failed in states and known.failed not in known.finished
        assert known.receiving is None or known.receiving in states
        for hop in known.hops:
            assert hop.start | hop.during | hop.end <= states, hop


def test_forgotten_and_every_final_state_count_as_finished_everywhere():
    for role, agent in AGENTS.items():
        final = {str(s) for s, to in agent.TRANSITIONS.items() if not to}
        assert str(agent.FORGOTTEN) in FACTS[role].finished
        assert final <= FACTS[role].finished, role
