"""Bounded history: what each role prunes, what it keeps and why, and that a message about an entry
it pruned does nothing, driven through the fake runtime (tests/unit/fakes.py) as test_decisions.py
drives the transitions.

Entries are back-dated in the database, as an agent that has run for weeks would find them; the
ticks run at the real time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support.fakes import Role
from support.transitions import fetch_for

from synkler import messages
from synkler.agents import history
from synkler.agents.history import DAY, PRUNE_AGAIN, PRUNE_INTERVAL, PRUNE_ROWS
from synkler.agents.pools import Pool
from synkler.errors import MessageError
from synkler.hops.checksum import md5_entry, stat_entry
from synkler.messages import (
    Admit,
    Corrupt,
    Delivered,
    Failed,
    Fetched,
    Message,
    Pushing,
    Sent,
    Wait,
    Withdraw,
)
from synkler.state import Entry

MD5 = "a" * 32
KEEP = 7  # keep_history_days in these tests


def role(tmp_path: Path, mode: str, **settings: object) -> Role:
    r = Role(mode, tmp_path, **{"keep_history_days": KEEP, **settings})
    if mode == "central":
        r.start()  # its spool's directories
    return r


def aged(r: Role, entry: Entry, days: float) -> Entry:
    """The entry as if its last change was `days` ago (and its creation a minute before that)."""
    ended = time.time() - days * DAY
    with r.state.transaction():
        r.state._db.execute(
            "UPDATE entries SET updated = ?, created = ? WHERE id = ?", (ended, ended - 60, entry.id)
        )
    return r.entry(entry.id)


def old(r: Role, state: str, days: float = KEEP + 1, **fields: object) -> Entry:
    return aged(r, r.given(state, **fields), days)


def ids(r: Role) -> set[str]:
    return {e.id for e in r.state.all()}


def sent_days_ago(msg: Message, days: float) -> Message:
    """`msg` as it arrives from the wire when it was sent `days` ago (a copy held back, a redelivery)."""
    wire = json.loads(messages.encode(msg))
    wire["at"] = time.time() - days * DAY
    return messages.decode(json.dumps(wire).encode())


# --------------------------------------------------------------------------------------------------
# What each role prunes


def test_central_prunes_expired_and_withdrawn_entries_older_than_keep_history_days(tmp_path: Path):
    r = role(tmp_path, "central")
    gone = [old(r, "expired", name="a"), old(r, "withdrawn", name="b")]
    stay = [
        old(r, "failed", days=400, name="c"),  # a person must look: never pruned by itself
        old(r, "delivered", name="d"),  # its copy is not deleted yet
        old(r, "downloading", name="e"),
        old(r, "expired", days=KEEP - 1, name="f"),  # not old enough
    ]
    r.tick()
    assert ids(r) == {e.id for e in stay}
    assert r.state.pruned_until() == max(e.created for e in gone)
    assert r.sent() == []


def test_download_prunes_done_entries_and_keeps_failed_and_unfinished_ones(tmp_path: Path):
    r = role(tmp_path, "download", cleanup_script="true")
    done = old(r, "done", name="a")
    stay = [
        old(r, "failed", days=400, name="b"),
        old(r, "fetching", name="c"),
        old(r, "placing", name="d"),
        old(r, "delivered", name="e", cleanup="pending"),  # its cleanup script has not run
        old(r, "done", days=1, name="f"),
    ]
    r.tick()
    assert ids(r) == {e.id for e in stay}
    assert r.state.pruned_until() == done.created


def test_upload_keeps_the_latest_version_of_a_name_still_in_file_dir_whatever_its_age(tmp_path: Path):
    r = role(tmp_path, "upload")
    (r.file_dir / "here.csv").write_text("v2")
    v1 = old(r, "done", days=60, name="here.csv")
    v2 = old(r, "done", days=30, name="here.csv")  # delivered, and still in file_dir
    gone = old(r, "done", days=30, name="moved-away.csv")  # its cleanup script took it away
    withdrawn = old(r, "superseded", days=30, name="other.csv")
    newer = r.given("offered", name="other.csv")
    failed = old(r, "failed", days=400, name="broken.csv")
    r.tick()
    assert ids(r) == {v2.id, newer.id, failed.id}
    assert {v1.id, gone.id, withdrawn.id} & ids(r) == set()


def test_upload_keeps_latest_versions_while_a_scan_may_still_list_a_name_gone_since(tmp_path: Path):
    r = role(tmp_path, "upload")
    e = old(r, "done", name="moved-away.csv")
    r.agent.history.next_pass = float("inf")
    r.tick()  # a scan is due: it starts with this pass's commit
    r.agent.history.next_pass = 0  # a pass while the scan runs
    r.tick()
    assert r.jobs.busy(r.job("scan").keys[0]) and ids(r) == {e.id}
    r.run(r.job("scan"))
    r.agent.history.next_pass = 0
    r.tick()
    assert ids(r) == set()


def test_keep_history_days_0_keeps_every_entry(tmp_path: Path):
    r = role(tmp_path, "central", keep_history_days=0)
    e = old(r, "expired", days=4000)
    r.tick()
    assert ids(r) == {e.id}


# --------------------------------------------------------------------------------------------------
# Exactly once at upload: a delivered file still there is not offered again


def scans(r: Role, rounds: int = 4) -> None:
    """What the loop does meanwhile: passes (a pruning pass each), scans of file_dir and md5s."""
    for _ in range(rounds):
        r.agent.history.next_pass = 0
        r.tick(max(time.time(), r.agent.last_scan) + 10)  # a rescan is due
        for job in [j for j in r.jobs.pending if j.pool in ("scan", "hash")]:
            r.run(job)


def test_a_delivered_file_still_in_file_dir_is_not_offered_again_after_its_history_is_pruned(
    tmp_path: Path,
):
    r = role(tmp_path, "upload", settle_seconds=0)
    path = r.file_dir / "report.txt"
    path.write_text("version 2")
    v1 = old(r, "done", days=60, name="report.txt", md5="b" * 32, signature="an older version")
    v2 = old(r, "done", days=30, name="report.txt", md5=md5_entry(path), signature=stat_entry(path).signature)
    r.start()
    scans(r)
    assert ids(r) == {v2.id} and v1.id not in ids(r)
    assert r.sent() == []
    # Touched: same content, another fingerprint. Compared by md5 with the version kept: not sent.
    path.touch()
    scans(r)
    assert r.entry(v2.id).signature == stat_entry(path).signature  # it was looked at, and only noted
    assert ids(r) == {v2.id} and r.sent() == []


def test_a_file_put_back_after_its_history_was_pruned_is_relayed_as_new(tmp_path: Path):
    r = role(tmp_path, "upload", settle_seconds=0)
    e = old(r, "done", days=30, name="back.txt")
    r.tick()
    assert ids(r) == set()
    (r.file_dir / "back.txt").write_text("back again")
    scans(r)
    [(to, offer)] = [(to, m) for to, m in r.sent() if m.TYPE == "offer"]
    assert offer.name == "back.txt" and offer.entry != e.id


# --------------------------------------------------------------------------------------------------
# Small passes that never hold the loop


def test_a_pass_looks_at_a_bounded_number_of_entries_and_the_next_comes_soon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(history, "PRUNE_BUDGET", 60.0)  # the bound in entries, whatever the machine's speed
    r = role(tmp_path, "central")
    count = PRUNE_ROWS * 2 + 10
    with r.state.transaction():
        r.state._db.executemany(
            "INSERT INTO entries (id, name, kind, md5, state, created, updated) VALUES (?, ?, 'file', ?, "
            "'expired', ?, ?)",
            [(f"{i:032x}", f"n{i}", MD5, i, i + 1) for i in range(count)],
        )
    now = time.time()
    r.tick(now)
    assert r.state.count() == count - PRUNE_ROWS
    assert r.agent.history.next_pass == now + PRUNE_AGAIN
    r.tick(now + PRUNE_AGAIN / 2)  # not due yet
    assert r.state.count() == count - PRUNE_ROWS
    r.tick(now + PRUNE_AGAIN)
    r.tick(now + 2 * PRUNE_AGAIN)
    assert r.state.count() == 0
    assert r.agent.history.next_pass == now + 2 * PRUNE_AGAIN + PRUNE_INTERVAL


def test_a_pass_stops_when_its_time_is_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    r = role(tmp_path, "central")
    for i in range(3):
        old(r, "expired", name=f"n{i}")
    monkeypatch.setattr(history, "PRUNE_STEP", 1)
    monkeypatch.setattr(history, "PRUNE_BUDGET", 0.0)  # every step is over the budget
    now = time.time()
    r.tick(now)
    assert r.state.count() == 3  # the budget was used up before the first step
    monkeypatch.setattr(history, "PRUNE_BUDGET", 60.0)
    r.tick(now + PRUNE_AGAIN)
    assert r.state.count() == 0


def test_entries_upload_keeps_do_not_stop_the_walk_from_reaching_the_others(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(history, "PRUNE_BUDGET", 60.0)  # passes bound in entries, whatever the load
    r = role(tmp_path, "upload")
    kept = []
    for i in range(PRUNE_ROWS + 5):  # older than any other, and all still in file_dir
        (r.file_dir / f"here-{i}").write_text("x")
        kept.append(old(r, "done", days=60 + i / 1000, name=f"here-{i}"))
    gone = old(r, "done", days=30, name="gone")
    now = time.time()
    r.tick(now)
    r.run(r.job("scan"))
    # A pass stops after PRUNE_ROWS: give the walk a few passes. Were the kept entries to stop it,
    # every pass would start over on them and never reach "gone".
    for n in range(1, 20):
        r.tick(now + n * PRUNE_AGAIN)
        if gone.id not in ids(r):
            break
    assert ids(r) == {e.id for e in kept} and gone.id not in ids(r)


def test_a_pass_that_fails_is_undone_alone_and_the_tick_goes_on(tmp_path: Path):
    r = role(tmp_path, "central")
    e = old(r, "expired")

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    r.agent.history.state.prune = broken  # type: ignore[method-assign]
    r.given("delivered", name="due", due=1)  # the tick's own work: an expiry is due
    r.tick()
    assert r.job(Pool.REMOVE)  # the expiry started anyway
    assert e.id in ids(r)


# --------------------------------------------------------------------------------------------------
# A message about a pruned entry does nothing


@pytest.mark.parametrize(
    "msg",
    [
        Sent("0" * 32, "upload", attempt=1, md5=MD5),
        Fetched("0" * 32, "download", stored_as="a", outcome="placed"),
        Corrupt("0" * 32, "download", got=MD5),
        Withdraw("0" * 32, "upload", reason="changed"),
        Failed("0" * 32, "download", hop="pull from central", reason="gave up"),
    ],
    ids=lambda m: m.TYPE,
)
def test_central_ignores_a_redelivered_message_about_an_entry_it_pruned(tmp_path: Path, msg: Message):
    r = role(tmp_path, "central")
    e = old(r, "expired", days=KEEP + 5)
    r.tick()
    assert ids(r) == set()
    again = sent_days_ago(type(msg)(e.id, *list(vars(msg).values())[1:]), KEEP + 6)  # type: ignore[arg-type]
    r.deliver(again)  # no MessageError: not dead-lettered
    assert ids(r) == set() and r.sent() == []


@pytest.mark.parametrize(
    "msg",
    [
        Admit("0" * 32, "central", attempt=2, dest="/srv/central/lab/staging/upload"),
        Wait("0" * 32, "central", reason="no room"),
        Delivered("0" * 32, "central", stored_as="a"),
        Failed("0" * 32, "central", hop="admission at central", reason="too big"),
    ],
    ids=lambda m: m.TYPE,
)
def test_upload_ignores_a_redelivered_message_about_an_entry_it_pruned(tmp_path: Path, msg: Message):
    r = role(tmp_path, "upload")
    e = old(r, "done", days=KEEP + 5, name="gone.txt")
    r.tick()
    assert ids(r) == set()
    again = sent_days_ago(type(msg)(e.id, *list(vars(msg).values())[1:]), KEEP + 6)  # type: ignore[arg-type]
    r.deliver(again)
    assert ids(r) == set() and r.sent() == []


def test_a_recent_message_about_an_entry_never_had_is_still_refused(tmp_path: Path):
    r = role(tmp_path, "central")
    with pytest.raises(MessageError, match="unknown entry"):
        r.deliver(sent_days_ago(Sent("1" * 32, "upload", attempt=1, md5=MD5), 0.01))


def test_download_does_not_pull_again_a_fetch_redelivered_after_its_entry_was_pruned(tmp_path: Path):
    r = role(tmp_path, "download")
    delivered = old(r, "done", days=KEEP + 1)
    r.tick()
    assert ids(r) == set()
    # The fetch that started it comes again (held back by a broker for weeks, or published twice).
    r.deliver(sent_days_ago(fetch_for(delivered.id), KEEP + 1.01))
    again = r.entry(delivered.id)
    assert again.state == "failed" and "may be a copy of one delivered before" in (again.reason or "")
    r.tick()
    assert r.jobs.pending == []  # nothing is pulled
    assert r.sent() == []  # central forgot it too: nothing to tell it
    r.deliver(sent_days_ago(fetch_for(delivered.id), KEEP + 1.01))  # and once more: nothing new
    assert r.sent() == [] and r.entry(delivered.id).state == "failed"


def test_download_pulls_an_old_fetch_it_never_had_that_came_after_what_it_pruned(tmp_path: Path):
    # Download was down for longer than keep_history_days: the fetches waiting in its queue are old,
    # but newer than anything it had, and so anything it pruned.
    r = role(tmp_path, "download")
    old(r, "done", days=KEEP + 30)
    r.tick()
    assert ids(r) == set() and r.state.pruned_until() > 0
    waiting = fetch_for("2" * 32)
    r.deliver(sent_days_ago(waiting, KEEP + 20))
    assert r.entry(waiting.entry).state == "fetching"
    r.tick()
    assert r.job("transfer")


def test_download_does_not_pull_early_a_file_whose_entry_it_pruned(tmp_path: Path):
    r = role(tmp_path, "download")
    e = old(r, "done", days=KEEP + 1)
    r.tick()
    r.deliver(
        sent_days_ago(
            Pushing(e.id, "central", size=1 << 30, path="/srv/central/lab/growing/" + e.id), KEEP + 1.01
        )
    )
    assert r.jobs.pending == [] and r.agent.early == {}
