"""The agent's durable memory: entries and outbox change together or not at all, and survive a restart."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from synkler.errors import StateError, StateUnavailable
from synkler.state import Entry, State

_ids = count(1)


def entry(name: str = "data.csv", state: str = "offered", **fields) -> Entry:
    """A new entry with a unique id."""
    return Entry(id=f"{next(_ids):032x}", name=name, kind="file", md5="d" * 32, state=state, **fields)


class Boom(Exception):
    pass


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "agent.sqlite"


@pytest.fixture
def state(db_path: Path) -> Iterator[State]:
    s = State(db_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def reader(state: State, db_path: Path) -> Iterator[State]:
    """A second, read-only connection: sees only what has been committed."""
    r = State(db_path, readonly=True)
    try:
        yield r
    finally:
        r.close()


# --------------------------------------------------------------------------------------------------
# Entries


def test_a_new_database_and_its_directory_are_created(db_path: Path):
    s = State(db_path)
    try:
        assert db_path.is_file()
        assert s.count() == 0
        assert s.outbox_size() == 0
    finally:
        s.close()


def test_the_database_its_wal_and_shm_and_a_new_directory_are_owner_only_whatever_the_umask(db_path: Path):
    before = os.umask(0o022)
    try:
        s = State(db_path)
        try:
            with s.transaction():
                s.insert(entry())
            modes = {p.name: p.stat().st_mode & 0o777 for p in db_path.parent.iterdir()}
        finally:
            s.close()
    finally:
        os.umask(before)
    assert modes == {"agent.sqlite": 0o600, "agent.sqlite-wal": 0o600, "agent.sqlite-shm": 0o600}
    assert db_path.parent.stat().st_mode & 0o777 == 0o700


def test_a_database_left_open_to_others_by_an_older_version_is_made_owner_only(db_path: Path):
    State(db_path).close()
    db_path.chmod(0o644)
    s = State(db_path)
    try:
        assert db_path.stat().st_mode & 0o777 == 0o600
        assert s.count() == 0
    finally:
        s.close()


def test_a_read_only_state_changes_no_mode(db_path: Path):
    State(db_path).close()
    db_path.chmod(0o644)
    State(db_path, readonly=True).close()
    assert db_path.stat().st_mode & 0o777 == 0o644


def test_an_inserted_entry_reads_back_with_every_field(state: State):
    e = entry(size=10, files=2, peer="upload", attempt=1, path="/srv/x", reason="why", due=5.0)
    state.insert(e)
    got = state.get(e.id)
    assert got == e
    assert got.created > 0
    assert got.updated >= got.created


def test_an_md5_not_known_yet_is_none_and_stored_as_an_empty_string(state: State, db_path: Path):
    e = entry()
    e.md5 = None
    state.insert(e)
    got = state.get(e.id)
    assert got is not None and got.md5 is None
    with pytest.raises(LookupError, match="no md5 yet"):
        got.known_md5()
    state.update(got, md5="e" * 32)
    assert state.get(e.id).known_md5() == "e" * 32
    state.update(got, md5=None)
    with sqlite3.connect(db_path) as raw:  # the column is NOT NULL, as in every earlier version
        assert raw.execute("SELECT md5 FROM entries WHERE id = ?", (e.id,)).fetchone() == ("",)


def test_a_name_that_is_not_utf8_is_kept_byte_exact_and_found_by_name(state: State, db_path: Path):
    name = os.fsdecode(b"caf\xe9.txt")  # how Python lists a Latin-1 name
    e = entry(name=name, stored_as=os.fsdecode(b"caf\xe9 (2).txt"))
    state.insert(e)
    assert state.get(e.id) == e
    assert state.latest_by_name(name) == e and state.by_name(name, "offered") == [e]
    assert state.latest_by_name("caf\u00e9.txt") is None  # the UTF-8 name "café.txt" is another name
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT name FROM entries WHERE id = ?", (e.id,)).fetchone() == (b"caf\xe9.txt",)


def test_insert_keeps_a_given_creation_time(state: State):
    e = state.insert(entry(created=123.0))
    assert state.get(e.id).created == 123.0


def test_getting_an_unknown_id_returns_none(state: State):
    assert state.get("f" * 32) is None


def test_two_entries_with_the_same_id_cannot_both_exist(state: State):
    e = state.insert(entry())
    with pytest.raises(StateError) as info:
        state.insert(Entry(id=e.id, name="other", kind="file", md5="e" * 32, state="offered"))
    assert not isinstance(info.value, StateUnavailable)  # not worth retrying: it will fail again
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)


def test_update_changes_the_database_and_the_object(state: State):
    e = state.insert(entry())
    before = e.updated
    returned = state.update(e, state="admitted", attempt=2, reason="room now")
    assert returned is e
    assert (e.state, e.attempt, e.reason) == ("admitted", 2, "room now")
    assert e.updated >= before
    assert state.get(e.id) == e


@pytest.mark.parametrize("field", ["id", "colour"])
def test_update_refuses_the_id_and_unknown_fields_and_changes_nothing(state: State, field):
    e = state.insert(entry())
    with pytest.raises(KeyError):
        state.update(e, state="admitted", **{field: "x"})
    assert state.get(e.id).state == "offered"


def test_by_state_returns_entries_in_any_of_the_states_oldest_first(state: State):
    old = state.insert(entry("old", "waiting", created=1.0))
    new = state.insert(entry("new", "admitted", created=3.0))
    mid = state.insert(entry("mid", "waiting", created=2.0))
    state.insert(entry("other", "stored", created=0.5))
    assert [e.id for e in state.by_state("waiting", "admitted")] == [old.id, mid.id, new.id]
    assert [e.id for e in state.by_state("waiting")] == [old.id, mid.id]
    assert state.by_state("expired") == []


def test_by_state_with_due_before_leaves_out_entries_due_later(state: State):
    now = state.insert(entry("now", "waiting", due=100.0, created=1.0))
    past = state.insert(entry("past", "waiting", due=0.0, created=2.0))
    state.insert(entry("later", "waiting", due=100.5, created=3.0))
    assert [e.id for e in state.by_state("waiting", due_before=100.0)] == [now.id, past.id]
    assert len(state.by_state("waiting")) == 3


def test_latest_by_name_is_the_most_recently_created_version(state: State):
    state.insert(entry("data.csv", created=1.0))
    newest = state.insert(entry("data.csv", created=3.0))
    state.insert(entry("data.csv", created=2.0))
    state.insert(entry("other.csv", created=4.0))
    assert state.latest_by_name("data.csv").id == newest.id
    assert state.latest_by_name("missing.csv") is None


def test_all_lists_every_entry_oldest_first_and_count_agrees(state: State):
    b = state.insert(entry("b", created=2.0))
    a = state.insert(entry("a", created=1.0))
    assert [e.id for e in state.all()] == [a.id, b.id]
    assert state.count() == 2


# --------------------------------------------------------------------------------------------------
# Outbox


def test_the_outbox_returns_queued_messages_in_order_with_their_destination(state: State):
    state.enqueue("central", b"first")
    state.enqueue("download", b"\x00second")
    state.enqueue("central", b"third")
    rows = state.outbox()
    assert [(dest, body) for _, dest, body in rows] == [
        ("central", b"first"),
        ("download", b"\x00second"),
        ("central", b"third"),
    ]
    seqs = [seq for seq, _, _ in rows]
    assert seqs == sorted(seqs)
    assert state.outbox_size() == 3


def test_the_outbox_limit_returns_the_oldest_messages(state: State):
    for i in range(5):
        state.enqueue("central", str(i).encode())
    assert [body for _, _, body in state.outbox(limit=2)] == [b"0", b"1"]


def test_a_sent_message_leaves_the_outbox_and_the_others_stay(state: State):
    state.enqueue("central", b"a")
    state.enqueue("central", b"b")
    first, second = state.outbox()
    state.sent([first[0]])
    assert state.outbox() == [second]
    state.sent([first[0]])  # a duplicate confirm is harmless
    assert state.outbox_size() == 1


# --------------------------------------------------------------------------------------------------
# Transactions


def test_a_transaction_makes_entry_and_outbox_changes_visible_together(state: State, reader: State):
    existing = state.insert(entry("existing"))
    with state.transaction():
        state.insert(entry("new"))
        state.update(existing, state="admitted")
        state.enqueue("upload", b"admit")
        assert reader.count() == 1
        assert reader.outbox_size() == 0
        assert reader.get(existing.id).state == "offered"
    assert reader.count() == 2
    assert reader.outbox_size() == 1
    assert reader.get(existing.id).state == "admitted"


def test_a_transaction_that_raises_rolls_back_entries_and_outbox_and_reraises(state: State):
    existing = state.insert(entry("existing"))
    state.enqueue("central", b"older message")
    added = entry("new")
    with pytest.raises(Boom):
        with state.transaction():
            state.insert(added)
            state.update(existing, state="admitted")
            state.enqueue("upload", b"admit")
            raise Boom
    assert state.get(added.id) is None
    assert state.get(existing.id).state == "offered"
    assert [body for _, _, body in state.outbox()] == [b"older message"]


def test_the_state_is_usable_again_after_a_rolled_back_transaction(state: State):
    with pytest.raises(Boom):
        with state.transaction():
            state.insert(entry())
            raise Boom
    with state.transaction():
        kept = state.insert(entry())
    assert [e.id for e in state.all()] == [kept.id]


def test_a_nested_transaction_commits_only_with_the_outer_one(state: State, reader: State):
    with state.transaction():
        with state.transaction() as inner:
            assert inner is state
            state.insert(entry("inner"))
            state.enqueue("central", b"inner")
        assert reader.count() == 0
        assert reader.outbox_size() == 0
    assert reader.count() == 1
    assert reader.outbox_size() == 1


def test_an_error_in_the_outer_transaction_rolls_back_what_a_nested_one_did(state: State):
    with pytest.raises(Boom):
        with state.transaction():
            with state.transaction():
                state.insert(entry("inner"))
                state.enqueue("central", b"inner")
            raise Boom
    assert state.count() == 0
    assert state.outbox_size() == 0


def test_an_error_in_a_nested_transaction_rolls_back_the_outer_one_too(state: State):
    with pytest.raises(Boom):
        with state.transaction():
            state.insert(entry("outer"))
            with state.transaction():
                state.insert(entry("inner"))
                raise Boom
    assert state.count() == 0


def test_after_commit_callbacks_run_only_once_the_transaction_has_committed(state: State, reader: State):
    seen: list[int] = []
    with state.transaction():
        state.insert(entry())
        state.after_commit(lambda: seen.append(reader.count()))
        state.after_commit(lambda: seen.append(-1))
        assert seen == []
    # The first callback saw the committed row from another connection; order is kept.
    assert seen == [1, -1]


def test_after_commit_callbacks_are_dropped_on_rollback_and_never_run_later(state: State):
    seen: list[str] = []
    with pytest.raises(Boom):
        with state.transaction():
            state.after_commit(lambda: seen.append("rolled back"))
            raise Boom
    with state.transaction():
        state.after_commit(lambda: seen.append("committed"))
    assert seen == ["committed"]


def test_after_commit_in_a_nested_transaction_waits_for_the_outer_commit(state: State):
    seen: list[str] = []
    with state.transaction():
        with state.transaction():
            state.after_commit(lambda: seen.append("ran"))
        assert seen == []
    assert seen == ["ran"]


def test_after_commit_outside_a_transaction_runs_at_once(state: State):
    seen: list[str] = []
    state.after_commit(lambda: seen.append("ran"))
    assert seen == ["ran"]


def test_before_commit_runs_once_per_transaction_inside_it_and_kept_through_a_savepoint_rollback(
    state: State, reader: State
):
    """What many changes of a transaction ask for is done once, before the commit, with the
    transaction's changes not yet seen by others; what a rolled-back transaction asked for, never."""
    seen: list[int] = []

    def flush() -> None:
        seen.append(reader.count())
        state.insert(entry("written-by-the-flush"))  # still inside the transaction

    with state.transaction():
        state.insert(entry())
        with pytest.raises(Boom), state.savepoint():
            state.before_commit(flush)
            raise Boom
        state.before_commit(flush)  # asked again: still once
        assert seen == []
    assert seen == [0] and reader.count() == 2
    with pytest.raises(Boom), state.transaction():
        state.before_commit(lambda: seen.append(-1))
        raise Boom
    with state.transaction():
        pass
    assert seen == [0]
    state.before_commit(lambda: seen.append(1))  # outside a transaction: at once
    assert seen == [0, 1]


# --------------------------------------------------------------------------------------------------
# Durability and read-only access


def test_entries_and_outbox_survive_close_and_reopen(db_path: Path):
    s = State(db_path)
    with s.transaction():
        e = s.insert(entry("kept.csv", size=99))
        s.enqueue("central", b"offer")
    s.close()
    again = State(db_path)
    try:
        assert again.get(e.id) == e
        assert [(d, b) for _, d, b in again.outbox()] == [("central", b"offer")]
    finally:
        again.close()


def test_the_database_uses_write_ahead_logging(state: State, db_path: Path):
    state.insert(entry())
    probe = sqlite3.connect(db_path)
    try:
        assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        probe.close()


def test_readonly_opens_an_existing_database_and_reads_it(db_path: Path):
    s = State(db_path)
    e = s.insert(entry("a.csv"))
    s.enqueue("central", b"x")
    s.close()
    ro = State(db_path, readonly=True)
    try:
        assert ro.get(e.id) == e
        assert ro.outbox_size() == 1
    finally:
        ro.close()


def test_readonly_cannot_write_entries_or_outbox(db_path: Path):
    s = State(db_path)
    e = s.insert(entry())
    s.close()
    ro = State(db_path, readonly=True)
    try:
        with pytest.raises(StateUnavailable, match="readonly"):
            ro.insert(entry())
        with pytest.raises(StateUnavailable, match="readonly"):
            ro.update(ro.get(e.id), state="admitted")
        with pytest.raises(StateUnavailable, match="readonly"):
            ro.enqueue("central", b"x")
    finally:
        ro.close()
    again = State(db_path)
    try:
        assert again.count() == 1
        assert again.get(e.id).state == "offered"
        assert again.outbox_size() == 0
    finally:
        again.close()


def test_readonly_does_not_create_a_missing_database(tmp_path: Path):
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(StateUnavailable, match="unable to open"):
        State(missing, readonly=True)
    assert not missing.exists()


@pytest.mark.parametrize("dirname", ["run #1", "what?", "100%25"])
def test_readonly_opens_a_database_whose_path_has_uri_special_characters(tmp_path: Path, dirname):
    db_path = tmp_path / dirname / "agent.sqlite"
    s = State(db_path)
    e = s.insert(entry())
    s.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    ro = State(db_path, readonly=True)
    try:
        assert ro.get(e.id) == e
    finally:
        ro.close()
    # A "read-only" open must not have created another database next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --------------------------------------------------------------------------------------------------
# Savepoints: many changes share one commit, a failing one is undone alone


def test_a_failing_savepoint_is_undone_alone_and_drops_its_after_commit_callbacks(state: State):
    ran: list[str] = []
    a, b = entry("a"), entry("b")
    with state.transaction():
        with state.savepoint():
            state.insert(a)
            state.after_commit(lambda: ran.append("a"))
        with pytest.raises(Boom), state.savepoint():
            state.insert(b)
            state.enqueue("central", b"{}")
            state.after_commit(lambda: ran.append("b"))
            raise Boom
        assert ran == []
    assert ran == ["a"]
    assert state.get(a.id) is not None and state.get(b.id) is None
    assert state.outbox_size() == 0


def test_a_savepoint_needs_a_transaction(state: State):
    with pytest.raises(RuntimeError), state.savepoint():
        pass


def test_sent_forgets_several_outbox_rows_at_once(state: State):
    with state.transaction():
        for n in range(3):
            state.enqueue("central", b"%d" % n)
    seqs = [seq for seq, _, _ in state.outbox()]
    state.sent(seqs[:2])
    assert [body for _, _, body in state.outbox()] == [b"2"]


# --------------------------------------------------------------------------------------------------
# History


def ended_at(state: State, when: float, name: str = "data.csv", status: str = "done", **fields) -> Entry:
    """An entry that finished at `when` (created a minute before)."""
    e = entry(name, status, created=when - 60, **fields)
    with state.transaction():
        state.insert(e)
        state._db.execute("UPDATE entries SET updated = ? WHERE id = ?", (when, e.id))
    return e


def walk(state: State, status: str, before: float, step: int) -> list[str]:
    """Every id `ended` gives, step by step from the start, as pruning walks them."""
    after, seen = (0.0, 0), []
    while rows := state.ended(status, before, after, step):
        seen += [r.id for r in rows]
        after = (rows[-1].updated, rows[-1].rowid)
    return seen


def test_ended_walks_one_states_entries_oldest_first_from_where_it_stopped(state: State):
    old = [ended_at(state, 100 + i // 3) for i in range(7)]  # several share the same time
    ended_at(state, 100, status="failed")
    ended_at(state, 500)  # not old enough
    assert walk(state, "done", 200, 2) == [e.id for e in old]
    assert walk(state, "done", 200, 100) == [e.id for e in old]


def test_ended_gives_a_name_that_is_not_utf8_as_python_names_it(state: State):
    name = os.fsdecode(b"caf\xe9.txt")
    ended_at(state, 100, name=name)
    [row] = state.ended("done", 200, (0.0, 0), 10)
    assert row.name == name
    assert state.latest_by_name(row.name) is not None


def test_prune_forgets_the_entries_and_remembers_the_latest_creation_time(state: State, db_path: Path):
    a, b, c = ended_at(state, 100), ended_at(state, 300), ended_at(state, 200)
    assert state.pruned_until() == 0
    rows = {r.id: r for r in state.ended("done", 1000, (0.0, 0), 10)}
    with state.transaction():
        state.prune([rows[b.id], rows[c.id]])
    assert [e.id for e in state.all()] == [a.id]
    assert state.pruned_until() == b.created
    with state.transaction():
        state.prune([rows[a.id]])  # an older one: the mark never goes back
    state.close()
    again = State(db_path)
    try:
        assert again.count() == 0 and again.pruned_until() == b.created
    finally:
        again.close()


def test_the_walk_and_the_newest_entries_use_an_index_and_no_sort(state: State):
    plans = {
        "walk": (
            "SELECT rowid FROM entries INDEXED BY entries_end WHERE state = ? AND updated < ? "
            "AND (updated, rowid) > (?, ?) ORDER BY updated, rowid LIMIT ?",
            ("done", 1.0, 0.0, 0, 10),
        ),
        "newest": ("SELECT * FROM entries WHERE state = ? ORDER BY updated DESC LIMIT ?", ("done", 5)),
        "cleanups": ("SELECT * FROM entries WHERE cleanup IN ('failed', 'interrupted')", ()),
    }
    for what, (sql, args) in plans.items():
        plan = " ".join(row[3] for row in state._db.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert "INDEX entries_" in plan and "TEMP B-TREE" not in plan, (what, plan)


def test_counts_the_latest_ended_and_cleanups_needing_a_person_are_what_status_shows(state: State):
    done = [ended_at(state, 100 + i) for i in range(5)]
    expired = ended_at(state, 103.5, status="expired")
    failed_cleanup = ended_at(state, 50, cleanup="failed")
    ended_at(state, 51, cleanup="skipped")
    with state.transaction():
        state.insert(entry(state="offered"))
    assert state.counts() == {"done": 7, "expired": 1, "offered": 1}
    newest = state.listed(["done", "expired"], latest=True, limit=3)
    assert [e.id for e in newest] == [done[4].id, expired.id, done[3].id]
    assert [e.id for e in state.cleanups_needing_a_person()] == [failed_cleanup.id]


def test_counts_follow_every_change_of_state(state: State):
    a, b = entry(state="offered"), entry(state="offered")
    with state.transaction():
        state.insert(a)
        state.insert(b)
        state.update(a, state="done")
        state.update(a, reason="a change that is not of state")
    assert state.counts() == {"offered": 1, "done": 1}
    rows = state.ended("done", float("inf"), (0.0, 0), 10)
    with state.transaction():
        state.prune(rows)
        state.update(b, state="done")
    assert state.counts() == {"done": 1}


def test_a_database_made_before_counts_were_kept_is_counted_once_when_opened(db_path: Path):
    s = State(db_path)
    with s.transaction():
        for status in ("done", "done", "failed"):
            s.insert(entry(state=status))
    for trigger in ("insert", "delete", "update"):
        s._db.execute(f"DROP TRIGGER entries_count_{trigger}")
    s._db.execute("DROP TABLE state_counts")
    s.close()
    reader = State(db_path, readonly=True)  # `status` before the agent of this version ran: counted
    try:
        assert reader.counts() == {"done": 2, "failed": 1}
    finally:
        reader.close()
    for _ in range(2):  # opened again and again: filled once
        s = State(db_path)
        try:
            assert s.counts() == {"done": 2, "failed": 1}
        finally:
            s.close()


def test_the_oldest_entries_of_several_states_are_merged_oldest_first_each_read_down_an_index(state: State):
    made = {"offered": [3, 7, 11], "waiting": [1, 9], "sent": [5, 2, 13]}
    with state.transaction():
        for status, times in made.items():
            for t in times:
                state.insert(entry(name=f"{status}-{t}", state=status, created=float(t)))
    oldest = state.listed(["offered", "waiting", "sent"], limit=4)
    assert [e.created for e in oldest] == [1.0, 2.0, 3.0, 5.0]
    assert [e.created for e in state.listed(["offered", "sent"], limit=10)] == [
        2.0,
        3.0,
        5.0,
        7.0,
        11.0,
        13.0,
    ]
    sql = "SELECT * FROM entries WHERE state = ? ORDER BY created LIMIT ?"
    plan = " ".join(row[3] for row in state._db.execute("EXPLAIN QUERY PLAN " + sql, ("offered", 4)))
    assert "INDEX entries_age" in plan and "TEMP B-TREE" not in plan, plan


def test_latest_by_names_gives_each_names_latest_version_as_latest_by_name_does(state: State):
    odd = os.fsdecode(b"caf\xe9.bin")  # not UTF-8: held as its bytes
    names = [f"n{i}" for i in range(1200)] + [odd, "only-old", "never"]
    with state.transaction():
        for i, name in enumerate(names[:-1]):
            state.insert(entry(name=name, state="done", created=float(i)))
            if i % 3 == 0:
                state.insert(entry(name=name, state="offered", created=float(i) + 5000))
    found = state.latest_by_names(names)
    assert set(found) == set(names[:-1])  # "never" has no version
    for name in names[:-1]:
        assert found[name].id == state.latest_by_name(name).id, name


def test_a_commit_not_flushed_on_its_own_is_committed_and_later_commits_are_flushed_again(
    state: State, db_path: Path
):
    # Issue 24: forgetting confirmed outbox rows need not cost an fsync (a power cut sends them again).
    with state.transaction():
        state.enqueue("central", b"offer")
    [(seq, _, _)] = state.outbox()
    with state.transaction(durable=False):
        state.sent([seq])
    probe = sqlite3.connect(db_path)
    try:
        assert probe.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    finally:
        probe.close()
    assert state._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    with pytest.raises(Boom), state.transaction(durable=False):
        raise Boom
    assert state._db.execute("PRAGMA synchronous").fetchone()[0] == 2
