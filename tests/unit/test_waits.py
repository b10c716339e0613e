"""Waits that end before their time (synkler.agents.waits): an entry that waits for a retry goes now
when the agent sees its cause clear (a transfer reached central: the link works), or when an
operator asks (`synkler retry ENTRY` on a waiting entry, `synkler retry --waiting [CAUSE]`). Driven
through the fake runtime (tests/support/fakes.py), as tests/unit/test_decisions.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.fakes import Role

from synkler import text
from synkler.agents import AGENTS, waits
from synkler.agents.base import Cleanup
from synkler.cli import parser
from synkler.cli.parser import build_parser
from synkler.hops.pull import NotPulled, PullRun
from synkler.hops.transfer import Result
from synkler.state import Entry

MD5 = "a" * 32
OK = Result(True, 0, "")
LINK_DOWN = Result(False, 255, "ssh: connect to host central port 22: Connection refused")
RSYNC_FAILED = Result(False, 23, "rsync: some files could not be transferred")
LATER = 280.0  # seconds: a wait far from its end (as a backoff grown to retry_max_seconds leaves)


def upload(tmp_path: Path, **settings: object) -> Role:
    return Role("upload", tmp_path, **settings)


def waiting(r: Role, reason: str, name: str, **fields: object) -> Entry:
    """An entry that waits for a retry of its transfer (as `retry_later` left it)."""
    state = "uploading" if r.cfg.mode == "upload" else "fetching"
    path = "/srv/central/lab/staging/upload" if r.cfg.mode == "upload" else "/srv/central/lab/stored/x"
    values: dict[str, object] = {"peer": "central", "md5": MD5, "path": path, "reason": reason}
    values.update(due=time.time() + LATER, **fields)
    return r.given(state, name=name, **values)


def transfers(r: Role) -> set[str]:
    """The entries of the transfer jobs waiting to run."""
    return {k.of for j in r.jobs.pending if j.pool == "transfer" for k in j.keys}


def push_waits(r: Role) -> dict[str, Entry]:
    return {
        "link": waiting(r, "push to central: link down: exit 255: Connection refused", "a"),
        "person": waiting(r, "push to central: needs a person: exit 255: Permission denied", "b"),
        "disk": waiting(r, "push to central: waiting for disk space: exit 11: No space", "c"),
        "failure": waiting(r, "push to central: exit 23: some files", "d", tries=1),
    }


def test_the_reason_of_a_waiting_entry_says_what_it_waits_for():
    hop = "pull from central"
    assert waits.cause_of(f"{hop}: link down: exit 255", hop) == waits.LINK
    assert waits.cause_of(f"{hop}: needs a person: exit 255: Permission denied", hop) == waits.LINK
    assert waits.cause_of(f"{hop}: waiting for disk space: exit 11", hop) == waits.DISK
    assert waits.cause_of(f"{hop}: exit 23: link down: in a file name", hop) == waits.FAILURE
    assert waits.cause_of("cleanup script: exit 1", hop) == waits.FAILURE
    assert waits.selected(waits.selector("link")) == "link" and waits.selected("0" * 32) is None
    with pytest.raises(ValueError):
        waits.selector("moon")


def test_a_push_that_reaches_central_ends_the_waits_for_the_link_and_only_those(tmp_path: Path):
    r = upload(tmp_path)
    entries = push_waits(r)
    new = r.given("uploading", name="new", peer="central", md5=MD5, path="/srv/central/lab/staging/upload")
    r.tick()
    assert transfers(r) == {new.id}  # the others wait (up to retry_max_seconds)
    r.finish(r.job("transfer"), OK)
    dues = [r.entry(e.id).due for e in entries.values()]
    assert dues == [0, 0, entries["disk"].due, entries["failure"].due]
    r.tick()
    assert transfers(r) == {entries["link"].id, entries["person"].id}  # now, not minutes later


LOCAL = Result(False, 1, "rsync: syntax or usage error")  # before it connected


@pytest.mark.parametrize("result", [LINK_DOWN, LOCAL, None], ids=["link", "local", "error"])
def test_a_push_that_could_not_reach_central_ends_no_wait(tmp_path: Path, result: Result | None):
    r = upload(tmp_path)
    entries = push_waits(r)
    r.given("uploading", name="new", peer="central", md5=MD5, path="/srv/central/lab/staging/upload")
    r.tick()
    r.finish(r.job("transfer"), result, None if result else RuntimeError("the job broke"))
    assert [r.entry(e.id).due for e in entries.values()] == [e.due for e in entries.values()]


def test_a_pull_that_reached_central_ends_the_waits_for_the_link_even_if_it_failed(tmp_path: Path):
    r = Role("download", tmp_path)
    r.start()
    stuck = waiting(r, "pull from central: needs a person: exit 255: Permission denied", "a")
    new = r.given("fetching", name="new", peer="central", md5=MD5, path="/srv/central/lab/stored/y")
    r.tick()
    assert transfers(r) == {new.id}
    outcome = NotPulled("rsync", RSYNC_FAILED.summary())
    r.finish(r.job("transfer"), PullRun(RSYNC_FAILED, {new.id: outcome}))
    assert r.entry(stuck.id).due == 0
    r.tick()
    assert stuck.id in transfers(r)


def test_an_operator_retries_one_waiting_entry_now_and_its_failed_tries_still_count(tmp_path: Path):
    r = upload(tmp_path)
    entries = push_waits(r)
    ok, answer = r.request("retry", entries["failure"].id)
    assert ok and "tried again now" in answer and "exit 23" in answer, answer
    entry = r.entry(entries["failure"].id)
    assert (entry.state, entry.due, entry.tries) == ("uploading", 0, 1)
    r.tick()
    assert transfers(r) == {entry.id}
    ok, answer = r.request("retry", entry.id)  # while its push runs: nothing to do
    assert ok and "already being tried again" in answer


@pytest.mark.parametrize(
    ("cause", "goes"),
    [("link", {"link", "person"}), ("disk", {"disk"}), ("failure", {"failure", "cleanup"}), ("any", None)],
)
def test_an_operator_retries_every_entry_waiting_for_one_cause(tmp_path: Path, cause: str, goes: set | None):
    r = upload(tmp_path, cleanup_script="true")
    entries = push_waits(r)
    due = time.time() + LATER
    entries["cleanup"] = r.given("delivered", name="e", cleanup=Cleanup.PENDING, tries=1, due=due, reason="x")
    entries["moving"] = r.given("uploading", name="f", peer="central", md5=MD5, path="/x")  # due: not waiting
    ok, answer = r.request("retry", waits.selector(cause))
    assert ok, answer
    goes = goes or set(entries) - {"moving"}
    assert {k for k, e in entries.items() if r.entry(e.id).due == 0 and k != "moving"} == goes
    assert text.count(len(goes), "entry") in answer and "tried again now" in answer
    ok, answer = r.request("retry", waits.selector(cause))  # nothing waits for it any more
    assert ok and "no entry at this upload agent waits for" in answer


def test_forget_and_resend_take_one_entry_not_all_those_waiting(tmp_path: Path):
    r = upload(tmp_path)
    ok, answer = r.request("forget", waits.selector("any"))
    assert not ok and "takes one entry" in answer


def test_central_admits_a_waiting_entry_on_request_when_there_is_room(tmp_path: Path):
    r = Role("central", tmp_path)
    r.start()
    room = [0.0]
    r.agent.spool.room = lambda: room[0]  # type: ignore[method-assign]
    r.agent.spool.capacity = lambda: 1 << 40  # type: ignore[method-assign]
    e = r.given("waiting", peer="upload", size=10, attempt=0)
    ok, answer = r.request("retry", e.id)
    assert ok and "still waits: needs 10 bytes" in answer, answer
    room[0] = 1000.0  # an operator freed space
    ok, answer = r.request("retry", waits.selector("disk"))
    assert ok and "1 entry (data.bin) admitted now" in answer, answer
    assert r.entry(e.id).state == "uploading"
    ok, answer = r.request("retry", waits.selector("link"))
    assert ok and "central's entries wait only for room" in answer


def test_status_offers_retry_for_an_entry_that_waits_and_not_for_one_on_its_way():
    def entry(state: str, **fields: object) -> Entry:
        return Entry(id="6" * 32, name="x", kind="file", md5=MD5, state=state, **fields)

    up, down, mid = AGENTS["upload"], AGENTS["download"], AGENTS["central"]
    assert up.actions(entry("uploading", reason="push to central: link down: x"), latest=True) == [
        "retry",
        "forget",
    ]
    assert up.actions(entry("uploading"), latest=True) == ["forget"]
    assert down.actions(entry("fetching", reason="pull from central: exit 23", tries=1), latest=True) == [
        "retry",
        "forget",
    ]
    assert down.actions(entry("delivered", cleanup="pending", tries=1), latest=True) == ["retry", "resend"]
    assert down.actions(entry("delivered", cleanup="pending"), latest=True) == ["resend"]
    assert mid.actions(entry("waiting", reason="needs 10 bytes"), latest=True) == ["retry", "forget"]
    assert up.actions(entry("waiting", reason="needs 10 bytes"), latest=True) == ["forget"]  # central's call
    why = up.refusal("retry", entry("waiting"), latest=True)
    assert why is not None and "`synkler retry` on central" in why


def test_retry_takes_one_entry_or_waiting_entries_not_both_nor_neither(capsys):
    p = build_parser()
    assert p.parse_args(["retry", "--waiting"]).waiting_for == "any"
    assert p.parse_args(["retry", "--waiting", "link"]).waiting_for == "link"
    assert p.parse_args(["retry", "abcd"]).waiting_for is None
    assert (parser.WAIT_CAUSES, parser.ANY_CAUSE) == (waits.CAUSES, waits.ANY)
    from synkler.cli.main import main

    for argv in (["retry"], ["retry", "abcd", "--waiting"], ["retry", "--waiting", "moon"]):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2
    assert "an entry or --waiting" in capsys.readouterr().err


def test_pulls_waiting_for_disk_space_go_once_space_comes_free(tmp_path: Path, monkeypatch):
    from synkler.agents import download_pulls as download

    free = [1000]
    monkeypatch.setattr(download, "free_bytes", lambda _path: free[0])
    r = Role("download", tmp_path)
    r.start()
    e = r.given("fetching", peer="central", md5=MD5, path="/srv/central/lab/stored/x")
    other = waiting(r, "pull from central: exit 23: some files", "b", tries=1)
    r.tick()
    full = Result(False, 11, "rsync: write failed: No space left on device (28)")
    r.finish(r.job("transfer"), PullRun(full, {e.id: NotPulled("space", full.summary())}))
    assert "waiting for disk space" in (r.entry(e.id).reason or "")
    due = r.entry(e.id).due
    free[0] += download.DISK_FREED - 1  # not enough to make a difference
    r.tick()
    assert r.entry(e.id).due == due and transfers(r) == set()
    free[0] += 1
    r.tick(time.time() + download.DISK_LOOK)
    assert r.entry(e.id).due == 0 and r.entry(other.id).due == other.due
    r.tick()
    assert transfers(r) == {e.id}


def test_a_refusal_after_the_link_worked_again_is_said_at_once(tmp_path: Path, caplog):
    r = upload(tmp_path)
    refused = Result(False, 255, "root@central: Permission denied (publickey).")
    for result in (refused, OK, refused):
        r.given("uploading", peer="central", md5=MD5, path="/srv/central/lab/staging/upload")
        r.tick()
        r.finish(r.job("transfer"), result)
    errors = [rec for rec in caplog.records if rec.levelname == "ERROR"]
    assert len(errors) == 2 and all("This needs a person" in e.getMessage() for e in errors)


def test_a_refusal_is_said_as_needing_a_person_not_also_as_a_link_that_is_down(tmp_path: Path, caplog):
    r = upload(tmp_path)
    refused = Result(
        False, 12, "/usr/bin/rrsync error: post-realpath open failed (race detected): . No such file"
    )
    r.given("uploading", peer="central", md5=MD5, path="/srv/central/lab/staging/upload")
    r.tick()
    r.finish(r.job("transfer"), refused)
    said = [(rec.levelname, rec.getMessage()) for rec in caplog.records if rec.levelno >= 30]
    assert [level for level, _ in said] == ["ERROR"], said
    assert "refused by ssh or the key's forced command" in said[0][1]
