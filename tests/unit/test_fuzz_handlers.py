"""Property-based fuzzing (hypothesis) of each role's handlers, through the runtime's own message path
(synkler.runtime.inbox: decode, authenticate, dispatch, savepoints; tests/support/fakes.py).

Each example gives an agent a state with a few entries (and their files where the role keeps them),
then a run of well-formed and ill-formed messages and batches, about its entries and others, from
every sender, with paths into a decoy tree beside the agent's directories (an `authorized_keys`, a
`stored/<entry id>` of the right shape). After every message:
- it was acked or dead-lettered, never requeued, and no bug was logged;
- every entry is in one of the role's states, and every change of state is one of its transitions;
- nothing outside the agent's file_dir and state database was written, removed or changed;
- every transfer the agent would start reads or writes only at central's own places for the entry.
With `authenticate: true`, a message published by any broker user but its sender's changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fakes import Role
from support.strategies import FIELDS, HEX, json_values, near_wire

from synkler import messages
from synkler.agents import AGENTS
from synkler.broker.names import broker_user
from synkler.hops import early, pull, transfer
from synkler.messages import SCHEMA, SCHEMAS, confined
from synkler.state import Entry

MODES = ("upload", "central", "download")
SENDERS = ["central", "download", "upload", "lab-b", "nobody"]
ID = "lab"
DECOY = b"ssh-ed25519 AAAA keep-me owner@host\n"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


class Bugs(logging.Handler):
    """Catches what the runtime logs when a handler raised something other than MessageError."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "bug" in record.getMessage():
            self.records.append(
                record.getMessage() + (f"\n{record.exc_info[1]!r}" if record.exc_info else "")
            )


@pytest.fixture(scope="module")
def bugs() -> Iterator[Bugs]:
    handler = Bugs()
    logger = logging.getLogger("synkler")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# the world of one example -------------------------------------------------------------------------


def seed(role: Role, mode: str, data: st.DataObject) -> list[Entry]:
    """A few entries in states of the role, each with what the role holds of it on disk."""
    states = [str(s) for s in AGENTS[mode].STATES]
    chosen = data.draw(st.lists(st.sampled_from(states), min_size=1, max_size=4), label="states")
    peer = {"upload": "central", "central": "upload", "download": "central"}[mode]
    entries = []
    for i, state in enumerate(chosen):
        entry_id = uuid.uuid4().hex
        name = f"entry-{i}.dat"
        files = role.file_dir
        path = None
        if mode == "upload":
            (files / name).write_bytes(b"data")
            path = f"/srv/central/{ID}/staging/upload"
        elif mode == "central":
            path = str(files / ID / "stored" / entry_id)
            if state in ("verifying", "downloading", "delivered", "failed"):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Path(path).write_bytes(b"data")
        else:
            path = f"/srv/central/{ID}/stored/{entry_id}"
            staging = files / f".synkler-{ID}"
            staging.mkdir(exist_ok=True)
            if state in ("fetching", "placing"):
                (staging / entry_id).write_bytes(b"data")
            if state in ("delivered", "done"):
                (files / name).write_bytes(b"data")
        entries.append(role.given(state, name=name, entry_id=entry_id, peer=peer, path=path, stored_as=name))
    return entries


def decoys(outside: Path, ids: list[str]) -> None:
    """Places an attacker would like an agent to read or write: an ssh directory, and paths shaped
    like central's own (<...>/<id>/stored|growing|staging/...) that are not central's."""
    (outside / ".ssh").mkdir(parents=True)
    (outside / ".ssh" / "authorized_keys").write_bytes(DECOY)
    for entry_id in ids:
        for kind in ("stored", "growing"):
            (outside / ID / kind).mkdir(parents=True, exist_ok=True)
            (outside / ID / kind / entry_id).write_bytes(DECOY)
    (outside / ID / "staging" / "upload").mkdir(parents=True)


def message_bodies(data: st.DataObject, ids: list[str], outside: Path) -> st.SearchStrategy[bytes]:
    """Messages for an agent: valid ones about its entries (and others) from any sender, with paths
    into the decoys; messages near the schema; any JSON; batches of them."""
    entry = st.sampled_from(ids) | st.text(HEX, min_size=32, max_size=32)

    @st.composite
    def valid(draw: st.DrawFn) -> dict[str, Any]:
        mtype = draw(st.sampled_from(sorted(SCHEMAS)))
        entry_id = draw(entry)
        wire: dict[str, Any] = {
            "v": SCHEMA,
            "type": mtype,
            "entry": entry_id,
            "from": draw(st.sampled_from(SENDERS)),
            "at": 1.0,
        }
        shaped = [f"{outside}/{ID}/{kind}/{entry_id}" for kind in ("stored", "growing")]
        places = st.sampled_from(
            [
                *shaped,
                f"{outside}/{ID}/staging/upload",
                f"{outside}/.ssh",
                f"/srv/central/{ID}/stored/{entry_id}",
                f"/srv/central/{ID}/growing/{entry_id}",
                f"/srv/central/{ID}/staging/upload",
            ]
        )
        for name in SCHEMAS[mtype]:
            if name in ("path", "dest"):
                wire[name] = draw(places | FIELDS[name])
            elif name in ("name", "stored_as"):
                wire[name] = draw(
                    st.sampled_from(["entry-0.dat", "entry-1.dat", "authorized_keys"]) | FIELDS[name]
                )
            elif name == "attempt":
                wire[name] = draw(st.integers(1, 3) | FIELDS[name])
            else:
                wire[name] = draw(FIELDS[name])
        return wire

    one = st.one_of(valid(), valid(), valid(), near_wire(), json_values)
    return st.one_of(
        one.map(lambda w: json.dumps(w).encode()),
        st.lists(one, min_size=1, max_size=4).map(lambda ws: json.dumps(ws).encode()),
        st.binary(max_size=64),
    )


def snapshot(top: Path, skip: Path) -> dict[str, bytes | None]:
    """Every path under `top` but those under `skip`: file bytes, link targets, None for a directory."""
    out: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(top):
        if Path(root) == skip or skip in Path(root).parents:
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                out[path] = os.readlink(path).encode()
            elif os.path.isfile(path):
                out[path] = Path(path).read_bytes()
            else:
                out[path] = None
    return out


def remote_paths(role: Role) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """(what, a path at central a pending transfer would use, the tail it must have)."""
    for job in role.jobs.pending:
        work = job.work
        fn, args = getattr(work, "func", None), getattr(work, "args", ())
        if fn is transfer.push:
            yield "push", args[3], (ID, "staging", role.cfg.name)
        elif fn is pull.pull:
            for e in args[2]:
                yield "pull", e.path or "", (ID, "stored", e.id)
        elif fn is early.pull_early:
            yield "early pull", args[2], (ID, "growing", args[1])


def check(role: Role, mode: str, before: dict[str, str], outcome: str, bugs: Bugs) -> dict[str, str]:
    assert outcome in ("ack", "dead"), outcome
    assert bugs.records == [], bugs.records
    agent = AGENTS[mode]
    states = {str(s) for s in agent.STATES}
    after = {e.id: e.state for e in role.state.all()}
    for entry_id, state in after.items():
        assert state in states, state
        was = before.get(entry_id)
        if was is None:
            assert state in {str(s) for s in agent.NEW}, f"a new entry in {state}"
        elif was != state:
            assert state in {str(s) for s in agent.TRANSITIONS[agent.STATES(was)]}, f"{was} -> {state}"
    assert set(before) <= set(after), "an entry vanished from the state"
    for what, path, tail in remote_paths(role):
        assert confined(path, *tail), f"a {what} at {path!r}"
    return after


# the properties ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@given(data=st.data())
def test_no_message_breaks_a_handler_leaves_the_transition_table_or_touches_anything_outside(
    mode, data, sandbox, bugs
):
    root = sandbox / uuid.uuid4().hex
    agent_dir, outside = root / "agent", root / "outside"
    agent_dir.mkdir(parents=True)
    cleanup = data.draw(st.booleans(), label="cleanup script")
    role = Role(mode, agent_dir, **({"cleanup_script": "true %F"} if cleanup else {}))
    try:
        entries = seed(role, mode, data)
        ids = [e.id for e in entries]
        decoys(outside, ids)
        role.start()
        outside_before = snapshot(root, role.file_dir)
        before = {e.id: e.state for e in role.state.all()}
        for body in data.draw(st.lists(message_bodies(data, ids, outside), min_size=1, max_size=8)):
            outcome, _dead = role.apply(body)
            before = check(role, mode, before, outcome, bugs)
            if data.draw(st.booleans(), label="tick"):
                role.tick()
                before = check(role, mode, before, "ack", bugs)
        # Only the agent's file_dir and its state database (and its journal files) may change.
        now = snapshot(root, role.file_dir)
        changed = {
            p for p in set(now) | set(outside_before) if now.get(p, b"?") != outside_before.get(p, b"?")
        }
        assert {p for p in changed if not Path(p).name.startswith(f"{mode}.sqlite")} == set()
        assert (outside / ".ssh" / "authorized_keys").read_bytes() == DECOY
    finally:
        role.close()


@pytest.mark.parametrize("mode", MODES)
@given(data=st.data())
def test_with_authentication_a_message_from_any_broker_user_but_its_senders_changes_nothing(
    mode, data, sandbox, bugs
):
    root = sandbox / uuid.uuid4().hex
    name = {"upload": "lab-a"}.get(mode, mode)
    settings = {"authenticate": True, "name": name, "broker_username": broker_user(ID, name)}
    root.mkdir()
    role = Role(mode, root, **settings)
    try:
        entries = seed(role, mode, data)
        ids = [e.id for e in entries]
        decoys(root / "outside", ids)
        role.start()
        before = {e.id: (e.state, e.updated) for e in role.state.all()}
        users = st.sampled_from([None, "mallory", "guest", *(broker_user(ID, s) for s in SENDERS)])
        for body in data.draw(st.lists(message_bodies(data, ids, root / "outside"), min_size=1, max_size=6)):
            user = data.draw(users, label="user")
            try:
                items = messages.decode_many(body)
            except messages.MessageError:
                items = []
            genuine = [
                m for _, m in items if isinstance(m, messages.Message) and broker_user(ID, m.sender) == user
            ]
            outcome, _dead = role.apply(body, user)
            assert outcome in ("ack", "dead") and bugs.records == []
            if not genuine:
                assert {e.id: (e.state, e.updated) for e in role.state.all()} == before
                assert role.state.outbox(10) == []
            before = {e.id: (e.state, e.updated) for e in role.state.all()}
            role.sent()  # what a genuine message caused
    finally:
        role.close()
