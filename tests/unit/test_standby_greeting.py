"""A standby of upload or download that takes over greets the centrals and resumes the first
agent's entries, decided without a broker (synkler.agents.greeting, .adoption, .central_hello)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support.fakes import Role
from support.transitions import fetch_for

from synkler import destinations as dests
from synkler import messages
from synkler.agents.adoption import NOT_KNOWN, PARKED
from synkler.agents.base import Cleanup
from synkler.agents.central import Mid
from synkler.agents.download import Down
from synkler.agents.greeting import GREETING
from synkler.agents.upload import Up, Upload
from synkler.broker.names import broker_user
from synkler.messages import (
    ADMITTED,
    ARRIVED,
    GIVEN_UP,
    RELAYED,
    UNADMITTED,
    Admit,
    Delivered,
    Fetch,
    Greeted,
    Hello,
    Open,
    Wait,
)

MD5 = "a" * 32
TOKEN = "7" * 32


@pytest.mark.parametrize(
    ("held", "parked", "script", "present", "state", "cleanup"),
    [
        (UNADMITTED, False, True, True, Up.WAITING, None),
        (ADMITTED, False, True, True, Up.OFFERED, None),  # the admit sent again follows
        (ARRIVED, False, True, True, Up.SENT, None),  # central's delivered comes here
        (GIVEN_UP, False, True, True, Up.FAILED, None),
        (RELAYED, True, True, True, Up.SENT, None),  # its delivered, never taken, is taken now
        (RELAYED, False, False, True, Up.DONE, None),  # no script: nothing left to do
        (RELAYED, False, True, False, Up.DONE, Cleanup.SKIPPED),  # the name is gone
        (RELAYED, False, True, True, Up.DONE, Cleanup.INTERRUPTED),  # it may have run: not again
    ],
)
def test_an_upload_standby_adopts_each_entry_where_central_says_it_is(
    held: str, parked: bool, script: bool, present: bool, state: str, cleanup: str | None
):
    decided = Upload.adoption(held, parked=parked, script=script, present=present, reason="x: y")
    assert (decided.state, decided.cleanup) == (state, cleanup)


def central(tmp_path: Path, **settings: object) -> Role:
    r = Role("central", tmp_path, **settings)
    r.start()
    return r


def test_central_fetches_again_for_a_download_standby_what_it_waits_for_and_then_says_greeted(tmp_path):
    r = central(tmp_path)
    pulling = r.given(Mid.DOWNLOADING, "pulling.bin", peer="upload", path="/srv/x/stored/p")
    done = r.given(Mid.DELIVERED, "done.bin", peer="upload", path="/srv/x/stored/d")
    with r.state.transaction():
        dests.route(r.state, pulling.id, ["download"])
        dests.mark(r.state, pulling.id, "download", dests.FETCHING)
        dests.route(r.state, done.id, ["download"])
        dests.mark(r.state, done.id, "download", dests.FETCHED, stored_as="done.bin")
    r.deliver(Hello(TOKEN, "download", role="download"))
    sent = r.sent()
    assert [(to, type(m).__name__, m.entry) for to, m in sent] == [
        ("download", "Fetch", pulling.id),
        ("download", "Greeted", TOKEN),
    ]
    fetch = sent[0][1]
    assert isinstance(fetch, Fetch) and (fetch.md5, fetch.attempt, fetch.name) == (MD5, 1, "pulling.bin")
    assert isinstance(sent[1][1], Greeted) and sent[1][1].entries == 1


def test_central_announces_to_an_upload_standby_every_entry_of_that_upload_and_admits_again(tmp_path):
    r = central(tmp_path)
    waiting = r.given(Mid.WAITING, "w.bin", peer="upload", md5=None, attempt=0)
    pushing = r.given(Mid.UPLOADING, "u.bin", peer="upload", md5=None)
    stored = r.given(Mid.DOWNLOADING, "s.bin", peer="upload")
    delivered = r.given(Mid.EXPIRED, "d.bin", peer="upload")
    failed = r.given(Mid.FAILED, "f.bin", peer="upload", reason="push to central: bad md5")
    r.given(Mid.DOWNLOADING, "other.bin", peer="lab-b")  # another upload agent's
    r.given(Mid.WITHDRAWN, "gone.bin", peer="upload")  # ended: nothing to adopt
    r.deliver(Hello(TOKEN, "upload", role="upload"))
    sent = r.sent()
    assert {to for to, _ in sent} == {"upload"}
    opened = {m.entry: m for _, m in sent if isinstance(m, Open)}
    assert {e: m.held for e, m in opened.items()} == {
        waiting.id: UNADMITTED,
        pushing.id: ADMITTED,
        stored.id: ARRIVED,
        delivered.id: RELAYED,
        failed.id: GIVEN_UP,
    }
    assert (opened[waiting.id].md5, opened[stored.id].md5) == ("", MD5)
    assert opened[failed.id].reason == "push to central: bad md5"
    admits = [m for _, m in sent if isinstance(m, Admit)]
    assert [(a.entry, a.attempt) for a in admits] == [(pushing.id, 1)]
    # the admit follows its entry's `open`, and `greeted` comes last
    kinds = [(type(m).__name__, m.entry) for _, m in sent]
    assert kinds.index(("Admit", pushing.id)) > kinds.index(("Open", pushing.id))
    assert kinds[-1] == ("Greeted", TOKEN) and sent[-1][1].entries == 5  # type: ignore[attr-defined]


def test_a_hello_from_an_agent_that_is_not_a_peer_of_that_role_is_dead_lettered(tmp_path):
    r = central(tmp_path)
    assert r.apply(messages.encode(Hello(TOKEN, "lab-x", role="download")))[0] == "dead"
    assert r.apply(messages.encode(Hello(TOKEN, "download", role="upload")))[0] == "dead"
    assert r.apply(b'{"v":4,"type":"hello","entry":"' + TOKEN.encode() + b'","from":"u","at":1}')[0] == "dead"
    assert r.sent() == []


def standby(tmp_path: Path, mode: str, **settings: object) -> Role:
    """An agent that has just taken over from another of its name (the runtime calls took_over)."""
    r = Role(mode, tmp_path, **settings)
    with r.state.transaction():
        r.agent.took_over()
    r.start()
    return r


def opened(entry_id: str, held: str, name: str = "data.bin", **fields: object) -> Open:
    return Open(entry_id, "central", name=name, kind="file", size=4, files=1, held=held, **fields)  # type: ignore[arg-type]


def test_an_upload_standby_says_hello_and_offers_nothing_until_central_has_answered(tmp_path):
    r = standby(tmp_path, "upload", settle_seconds=0)
    hellos = r.sent()
    assert [(to, type(m).__name__) for to, m in hellos] == [("central", "Hello")]
    (r.file_dir / "new.bin").write_bytes(b"new!")
    r.tick()
    assert not [j for j in r.jobs.pending if j.pool == "scan"]  # file_dir waits for the answer
    r.deliver(Greeted(hellos[0][1].entry, "central", entries=0))
    assert r.state.flag(GREETING) is None
    r.tick()
    assert [j for j in r.jobs.pending if j.pool == "scan"]  # now it looks


def test_a_restarted_standby_greets_again_until_it_is_answered(tmp_path):
    r = standby(tmp_path, "download")
    token = r.sent()[0][1].entry
    r.agent.shutdown()
    again = Role("download", tmp_path)  # the same state database, a new process
    again.start()
    assert [(to, m.entry) for to, m in again.sent()] == [("central", token)]
    again.deliver(Greeted("8" * 32, "central", entries=0))  # another greeting's answer: not this one
    assert again.state.flag(GREETING) is not None
    again.deliver(Greeted(token, "central", entries=0))
    assert again.state.flag(GREETING) is None


def test_an_upload_standby_takes_the_delivered_the_first_agent_never_took_and_cleans_up_once(tmp_path):
    r = standby(tmp_path, "upload", cleanup_script="true")
    token = r.sent()[0][1].entry
    (r.file_dir / "data.bin").write_bytes(b"data")
    queued, earlier = "1" * 32, "2" * 32
    # Still queued when the first agent died: it never took this delivered, so no script ran.
    r.deliver(Delivered(queued, "central", stored_as="data.bin"))
    r.deliver(Admit("3" * 32, "central", attempt=1, dest="/srv/central/lab/staging/upload"))
    r.deliver(Wait("3" * 32, "central", reason="no room"))
    assert r.state.flag(PARKED + queued) is not None and r.state.get("3" * 32) is None
    r.deliver(opened(queued, RELAYED, md5=MD5))
    r.deliver(opened(earlier, RELAYED, name="earlier.bin", md5=MD5))
    assert r.state.flag(PARKED + queued) is None
    assert (r.entry(queued).state, r.entry(queued).cleanup) == (Up.DELIVERED, Cleanup.PENDING)
    # Delivered before: the first agent took it and may have run the script; its name is gone.
    assert (r.entry(earlier).state, r.entry(earlier).cleanup) == (Up.DONE, Cleanup.SKIPPED)
    r.deliver(Greeted(token, "central", entries=2))
    assert r.sent() == []  # nothing dead-lettered, nothing answered


def test_an_upload_standby_never_runs_again_a_cleanup_the_first_agent_may_have_run(tmp_path):
    r = standby(tmp_path, "upload", cleanup_script="true")
    (r.file_dir / "data.bin").write_bytes(b"data")
    r.deliver(opened("1" * 32, RELAYED, md5=MD5))
    entry = r.entry("1" * 32)
    assert (entry.state, entry.cleanup, entry.reason) == (Up.DONE, Cleanup.INTERRUPTED, NOT_KNOWN)
    r.tick()
    assert not [j for j in r.jobs.pending if j.pool == "script"]


def test_an_upload_standby_resumes_a_push_under_the_first_agents_id(tmp_path):
    r = standby(tmp_path, "upload")
    r.sent()
    (r.file_dir / "data.bin").write_bytes(b"data")
    r.deliver(opened("1" * 32, ADMITTED))
    r.run(r.job("hash"))  # what the name holds has the offered shape: its md5 is the entry's
    entry = r.entry("1" * 32)
    assert entry.state == Up.OFFERED and entry.md5 and entry.signature
    r.deliver(Admit("1" * 32, "central", attempt=1, dest="/srv/central/lab/staging/upload"))
    assert r.entry("1" * 32).state == Up.UPLOADING
    # A second answer (a restart) changes nothing
    r.deliver(opened("1" * 32, ADMITTED))
    assert r.entry("1" * 32).state == Up.UPLOADING


def test_an_adopted_entry_whose_name_holds_something_else_is_withdrawn_and_offered_anew(tmp_path):
    r = standby(tmp_path, "upload")
    r.sent()
    (r.file_dir / "data.bin").write_bytes(b"longer data")  # 11 bytes, not the 4 offered
    r.deliver(opened("1" * 32, UNADMITTED))
    r.run(r.job("hash"))
    assert r.entry("1" * 32).state == Up.SUPERSEDED
    assert [(type(m).__name__, m.entry) for _, m in r.sent()] == [("Withdraw", "1" * 32)]


def test_a_download_standby_pulls_what_central_fetches_again(tmp_path):
    r = standby(tmp_path, "download")
    token = r.sent()[0][1].entry
    fetch = fetch_for("1" * 32)
    r.deliver(fetch)
    r.deliver(Greeted(token, "central", entries=1))
    assert r.entry("1" * 32).state == Down.FETCHING
    assert r.state.flag(GREETING) is None


def test_a_pool_standby_stops_waiting_for_a_central_gone_for_reown_seconds(tmp_path):
    pool = {"central-a": "synkler@host-a", "central-b": "synkler@host-b"}
    r = standby(tmp_path, "upload", centrals=pool)
    assert sorted(to for to, _ in r.sent()) == ["central-a", "central-b"]
    greeting = r.state.flag(GREETING)
    assert greeting is not None
    r.jobs.consumer_counts["central-b"] = 0
    now = time.time()
    r.deliver(Greeted(json.loads(greeting)["token"], "central-a", entries=0))
    r.tick(now)
    assert r.state.flag(GREETING) is not None
    r.tick(now + 41)
    assert r.state.flag(GREETING) is None


def test_with_authenticate_a_hello_another_broker_user_published_is_dead_lettered(tmp_path):
    r = central(tmp_path, authenticate=True, broker_username=broker_user("lab", "central"))
    pulling = r.given(Mid.DOWNLOADING, "pulling.bin", peer="upload", path="/srv/x/stored/p")
    with r.state.transaction():
        dests.route(r.state, pulling.id, ["download"])
        dests.mark(r.state, pulling.id, "download", dests.FETCHING)
    body = messages.encode(Hello(TOKEN, "download", role="download"))
    assert r.apply(body, broker_user("lab", "upload"))[0] == "dead"  # upload's login, download's name
    assert r.sent() == []
    assert r.apply(body, broker_user("lab", "download"))[0] == "ack"
    assert [type(m).__name__ for _, m in r.sent()] == ["Fetch", "Greeted"]


def test_an_open_that_no_greeting_asked_for_is_dead_lettered_and_adopts_nothing(tmp_path):
    r = Role("upload", tmp_path)
    r.start()
    body = messages.encode(opened("1" * 32, ARRIVED, md5=MD5))
    assert r.apply(body)[0] == "dead"
    assert r.state.get("1" * 32) is None


def test_a_pool_central_answering_after_the_greeting_gave_up_on_it_is_still_heard(tmp_path):
    pool = {"central-a": "synkler@host-a", "central-b": "synkler@host-b"}
    r = standby(tmp_path, "upload", centrals=pool)
    token = json.loads(r.state.flag(GREETING) or "{}")["token"]
    r.sent()
    r.jobs.consumer_counts["central-b"] = 0
    r.deliver(Greeted(token, "central-a", entries=0))
    now = time.time()
    r.tick(now)
    r.tick(now + 41)  # central-b gone: not waited for
    assert r.state.flag(GREETING) is None
    (r.file_dir / "taken.bin").write_bytes(b"data")
    r.given(Up.OFFERED, "taken.bin", peer=None)  # the standby offered it itself meanwhile
    late = Open(
        "1" * 32, "central-b", name="taken.bin", kind="file", size=4, files=1, held=ARRIVED, md5=MD5, epoch=1
    )
    r.deliver(late)
    assert r.state.get("1" * 32) is None
    forget = [m for to, m in r.sent() if to == "central-b"]
    assert [(type(m).__name__, m.epoch) for m in forget] == [("Forget", 2)]  # type: ignore[attr-defined]
    fresh = Open(
        "2" * 32, "central-b", name="other.bin", kind="file", size=4, files=1, held=ARRIVED, md5=MD5, epoch=1
    )
    r.deliver(fresh)
    assert r.entry("2" * 32).state == Up.SENT
    r.deliver(Greeted(token, "central-b", entries=2))
    assert (
        r.apply(
            messages.encode(Open("3" * 32, "central-b", name="x", kind="file", size=1, files=1, held=ARRIVED))
        )[0]
        == "dead"
    )
