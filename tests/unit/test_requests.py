"""An operator's requests (synkler retry | forget | resend) and the `forget` message, decided by the
agents through the fake runtime (tests/unit/fakes.py): what each role does, what it refuses and why,
and that a forget ends an entry once at every role without looping. The transitions they make are
in tests/unit/test_decisions_*.py with the others."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fakes import Role

from synkler.agents.base import Cleanup
from synkler.cli.cmd_repair import resolve
from synkler.cli.entries import short_ids
from synkler.errors import MessageError, Refused
from synkler.hops.checksum import md5_entry, stat_entry
from synkler.hops.pull import NotPulled, PullRun
from synkler.hops.transfer import Result
from synkler.messages import Admit, Forget, Message, Offer, Pushing, Sent, Withdraw
from synkler.state import Entry

MD5 = "a" * 32
OK = Result(True, 0, "")


def role(tmp_path: Path, mode: str, **settings: object) -> Role:
    """An agent of `mode` in a directory of its own (several roles may share a test)."""
    (tmp_path / mode).mkdir()
    r = Role(mode, tmp_path / mode, **settings)
    return r


def forgets(sent: list[tuple[str, Message]]) -> list[tuple[str, str]]:
    return [(to, m.entry) for to, m in sent if isinstance(m, Forget)]


def delivered_file(r: Role, name: str = "data.bin", **fields: object) -> Entry:
    """An upload entry whose file is in file_dir, as a scan recorded it."""
    path = r.file_dir / name
    path.write_bytes(b"data")
    return r.given(
        "done", name=name, peer="central", md5=md5_entry(path), signature=stat_entry(path).signature, **fields
    )


# --------------------------------------------------------------------------------------------------
# forget across the roles


def test_a_forget_ends_the_entry_once_at_every_role_and_does_not_loop(tmp_path: Path):
    up, mid, down = role(tmp_path, "upload"), role(tmp_path, "central"), role(tmp_path, "download")
    mid.start()
    down.start()
    entry_id = "3" * 32
    up.given("uploading", entry_id=entry_id, peer="central")
    mid.given("downloading", entry_id=entry_id, peer="upload")
    down.given("fetching", entry_id=entry_id, peer="central", path=f"/srv/central/lab/stored/{entry_id}")
    mailboxes = {"upload": up, "central": mid, "download": down}
    ok, _ = down.request("forget", entry_id)
    assert ok
    # Carry every message to its agent until nobody has anything more to say.
    hops = 0
    pending = [(to, m, "download") for to, m in down.sent()]
    while pending:
        to, msg, _ = pending.pop(0)
        mailboxes[to].deliver(msg)
        pending += [(t, m, to) for t, m in mailboxes[to].sent()]
        hops += 1
    assert hops == 2  # download -> central -> upload, and no echo
    assert {mode: r.entry(entry_id).state for mode, r in mailboxes.items()} == dict.fromkeys(
        mailboxes, "forgotten"
    )
    down.deliver(Forget(entry_id, "central", reason="again"))  # a redelivery is a no-op
    mid.deliver(Forget(entry_id, "upload", reason="again"))
    assert down.sent() == [] and mid.sent() == []


@pytest.mark.parametrize("mode", ["upload", "central", "download"])
def test_a_forget_of_an_entry_an_agent_never_had_is_ignored_not_dead_lettered(tmp_path: Path, mode: str):
    r = role(tmp_path, mode)
    r.deliver(Forget("4" * 32, "central" if mode != "central" else "upload", reason="forgotten"))
    assert r.sent() == []
    assert r.state.get("4" * 32) is None


def test_a_forget_from_an_agent_that_is_not_the_entrys_peer_is_refused(tmp_path: Path):
    r = role(tmp_path, "download")
    e = r.given("fetching", peer="central")
    with pytest.raises(MessageError, match="not its peer"):
        r.deliver(Forget(e.id, "upload", reason="forgotten"))
    assert r.entry(e.id).state == "fetching"


def test_a_forget_of_an_entry_already_delivered_there_is_ignored_and_not_passed_on(tmp_path: Path):
    r = role(tmp_path, "central")
    r.start()
    e = r.given("delivered", peer="upload", due=1e12)
    Path(r.agent.spool.stored(e.id)).write_bytes(b"data")
    r.deliver(Forget(e.id, "upload", reason="forgotten"))
    assert r.entry(e.id).state == "delivered" and r.sent() == []
    assert Path(r.agent.spool.stored(e.id)).exists()


def test_central_forgetting_a_waiting_version_leaves_the_staged_copy_of_the_version_being_uploaded(
    tmp_path: Path,
):
    r = role(tmp_path, "central")
    r.start()
    uploading = r.given("uploading", peer="upload", created=1.0)
    waiting = r.given("waiting", peer="upload", created=2.0)  # a newer version of the same name
    staged = Path(r.agent.spool.staged(uploading))
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"the older version, arriving")
    assert r.request("forget", waiting.id)[0]
    assert staged.exists()


def test_download_forgotten_while_its_pull_runs_drops_what_the_pull_left_when_the_pull_ends(tmp_path: Path):
    r = role(tmp_path, "download")
    r.start()
    e = r.given("fetching", peer="central", path="/srv/central/lab/stored/x")
    r.tick()
    pull = r.job("transfer")
    staged = Path(r.agent.staging.of(e.id))
    staged.write_bytes(b"half")  # rsync is writing
    assert r.request("forget", e.id)[0]
    assert staged.exists()  # not under a running rsync's feet
    r.finish(pull, PullRun(Result(False, 12, "cut"), {e.id: NotPulled("link", "cut")}))
    assert not staged.exists()
    assert r.entry(e.id).state == "forgotten" and forgets(r.sent()) == [("central", e.id)]
    r.tick(1e12)
    assert r.jobs.pending == []


def test_an_early_copy_of_an_entry_central_forgot_before_its_fetch_goes_when_its_pull_ends(tmp_path: Path):
    r = role(tmp_path, "download")
    r.start()
    entry_id = "7" * 32
    r.deliver(Pushing(entry_id, "central", size=1 << 30, path=f"/srv/central/lab/growing/{entry_id}"))
    early = r.job("transfer")
    copy = Path(r.agent.staging.of(entry_id))
    copy.write_bytes(b"the first bytes")
    r.deliver(Forget(entry_id, "central", reason="forgotten by an operator at upload"))
    assert copy.exists()  # not under the early pull's feet
    r.finish(early, None)
    assert not copy.exists() and r.sent() == [] and r.state.get(entry_id) is None


def test_upload_forgotten_while_its_push_runs_sends_nothing_when_the_push_ends(tmp_path: Path):
    r = role(tmp_path, "upload")
    e = r.given("uploading", peer="central", md5=MD5, path="/srv/central/lab/staging/upload")
    r.tick()
    push = r.job("transfer")
    assert r.request("forget", e.id)[0]
    r.sent()
    r.finish(push, OK)
    assert r.entry(e.id).state == "forgotten" and r.sent() == []


def test_a_forgotten_file_at_upload_is_not_offered_again_unless_it_changes(tmp_path: Path):
    r = role(tmp_path, "upload", settle_seconds=0)
    r.start()
    path = r.file_dir / "data.bin"
    path.write_bytes(b"data")
    e = r.given("waiting", peer="central", md5=md5_entry(path), signature=stat_entry(path).signature)
    assert r.request("forget", e.id)[0]
    r.sent()
    for i in range(2):  # (later each time: the watcher may have seen a change since the last scan)
        r.tick(1e12 + 10 * i)
        r.run(r.job("scan"))
    assert r.sent() == [] and len(r.state.all()) == 1
    path.write_bytes(b"new content")
    for i in range(3):
        r.tick(2e12 + 10 * i)
        if [job for job in r.jobs.pending if job.pool == "hash"]:
            r.run(r.job("hash"))  # a name relayed before is hashed first
        r.run(r.job("scan"))
    assert [m.name for _, m in r.sent() if isinstance(m, Offer)] == ["data.bin"]


# --------------------------------------------------------------------------------------------------
# retry and resend


def test_download_retries_a_failed_pull_on_request(tmp_path: Path):
    r = role(tmp_path, "download")
    r.start()
    e = r.given(
        "failed", peer="central", tries=3, reason="pull from central: exit 23", path="/srv/c/stored/x"
    )
    ok, answer = r.request("retry", e.id)
    assert ok and "pulling it again" in answer
    entry = r.entry(e.id)
    assert (entry.state, entry.tries, entry.reason) == ("fetching", 0, None)
    r.tick()
    assert r.job("transfer").keys


def test_upload_resends_a_delivered_file_as_a_new_entry_and_keeps_the_old_one_as_it_was(tmp_path: Path):
    r = role(tmp_path, "upload")
    e = delivered_file(r, cleanup=Cleanup.DONE)
    ok, answer = r.request("resend", e.id)
    assert ok, answer
    [(to, offer)] = r.sent()
    assert isinstance(offer, Offer) and to == "central" and offer.entry != e.id and offer.entry in answer
    assert r.entry(e.id).state == "done"
    r.run(r.job("hash"))
    new = r.entry(offer.entry)
    assert (new.state, new.md5) == ("offered", e.md5)
    r.deliver(Admit(new.id, "central", attempt=1, dest="/srv/central/lab/staging/upload"))
    r.tick()
    r.finish(r.job("transfer"), OK)
    assert [m.md5 for _, m in r.sent() if isinstance(m, Sent)] == [e.md5]


def test_a_resent_file_that_changed_meanwhile_is_withdrawn_and_its_new_content_offered(tmp_path: Path):
    r = role(tmp_path, "upload", settle_seconds=0)
    e = delivered_file(r)
    (r.file_dir / "data.bin").write_bytes(b"changed before the scan saw it")
    assert r.request("resend", e.id)[0]
    r.run(r.job("hash"))  # the md5 of the resent version sees another fingerprint
    resent, withdraw = r.sent()
    assert (type(resent[1]), type(withdraw[1])) == (Offer, Withdraw) and resent[1].entry == withdraw[1].entry
    for _ in range(3):  # the scan sees the change, lets it settle, hashes it (a name sent before) ...
        r.tick(1e12)
        if [job for job in r.jobs.pending if job.pool == "hash"]:
            r.run(r.job("hash"))
        r.run(r.job("scan"))
    [(_, offer)] = r.sent()  # ... and offers what is there now
    assert isinstance(offer, Offer) and offer.size == len(b"changed before the scan saw it")


@pytest.mark.parametrize(
    ("mode", "state", "action", "why"),
    [
        ("upload", "sent", "resend", "only a delivered or forgotten entry can be sent again"),
        ("upload", "done", "retry", "only a failed or waiting entry or cleanup script can be retried"),
        ("upload", "done", "forget", "only an entry on its way or failed can be forgotten"),
        ("upload", "delivered", "forget", "only an entry on its way or failed can be forgotten"),
        ("central", "failed", "retry", "central does not retry: run `synkler retry` on upload"),
        ("central", "delivered", "forget", "it is delivered"),
        ("download", "fetching", "resend", "only a delivered entry's receipt can be sent again"),
        ("central", "delivered", "resend", "only upload sends an entry again"),
        ("download", "delivered", "retry", "only a failed or waiting entry or cleanup script can be retried"),
    ],
)
def test_a_request_that_does_not_apply_is_refused_with_the_reason_and_changes_nothing(
    tmp_path: Path, mode: str, state: str, action: str, why: str
):
    r = role(tmp_path, mode)
    e = r.given(state, peer="central" if mode != "central" else "upload", cleanup=Cleanup.DONE)
    before = r.entry(e.id)
    ok, answer = r.request(action, e.id)
    assert not ok and why in answer, answer
    assert f"cannot {action}" in answer and e.id in answer
    assert r.entry(e.id) == before and r.sent() == []


def test_upload_refuses_to_resend_a_file_that_is_gone_or_an_older_version(tmp_path: Path):
    r = role(tmp_path, "upload")
    old = delivered_file(r, created=1.0)
    new = delivered_file(r, created=2.0)
    ok, answer = r.request("resend", old.id)
    assert not ok and "a newer version of its name has come since" in answer
    (r.file_dir / "data.bin").unlink()
    ok, answer = r.request("resend", new.id)
    assert not ok and "is no longer in" in answer
    assert r.sent() == [] and len(r.state.all()) == 2


def test_a_request_for_an_entry_the_agent_does_not_have_is_refused(tmp_path: Path):
    r = role(tmp_path, "central")
    ok, answer = r.request("forget", "5" * 32)
    assert not ok and "has no entry" in answer


def test_a_cleanup_retry_without_a_cleanup_script_is_refused(tmp_path: Path):
    r = role(tmp_path, "download")
    e = r.given("done", peer="central", cleanup=Cleanup.FAILED)
    ok, answer = r.request("retry", e.id)
    assert not ok and "no cleanup_script" in answer
    assert r.entry(e.id).state == "done"


# --------------------------------------------------------------------------------------------------
# what status shows, and how the commands name an entry


def test_status_offers_each_entry_the_actions_that_apply_to_it(tmp_path: Path):
    from synkler.agents import AGENTS

    up = AGENTS["upload"]

    def entry(state: str, **fields: object) -> Entry:
        return Entry(id="6" * 32, name="x", kind="file", md5=MD5, state=state, **fields)

    assert up.actions(entry("failed"), latest=True) == ["retry", "forget"]
    assert up.actions(entry("failed"), latest=False) == ["forget"]
    assert up.actions(entry("uploading"), latest=True) == ["forget"]
    assert up.actions(entry("done"), latest=True) == ["resend"]
    assert up.actions(entry("done", cleanup="failed"), latest=True) == ["retry", "resend"]
    assert up.actions(entry("forgotten"), latest=True) == ["resend"]
    assert up.actions(entry("done"), latest=True, present=False) == []  # its cleanup script removed it
    assert up.actions(entry("failed"), latest=True, present=False) == ["forget"]
    assert up.actions(entry("superseded"), latest=False) == []
    assert AGENTS["central"].actions(entry("failed"), latest=True) == ["forget"]
    assert AGENTS["central"].actions(entry("stored"), latest=True) == []  # not a state of its
    assert AGENTS["download"].actions(entry("failed"), latest=True) == ["retry", "forget"]
    down = AGENTS["download"]
    assert down.actions(entry("done", cleanup="interrupted"), latest=True) == ["retry", "resend"]
    assert down.actions(entry("done"), latest=True) == ["resend"]  # its receipt, again


def test_short_ids_are_8_digits_or_as_many_as_tell_them_apart():
    ids = ["0123456789" + "0" * 22, "0123456789" + "1" * 22, "f" * 32]
    assert short_ids(ids) == {ids[0]: "01234567890", ids[1]: "01234567891", ids[2]: "f" * 11}
    assert short_ids(["a" * 32]) == {"a" * 32: "a" * 8}


def test_an_entry_is_named_by_its_id_a_start_of_it_or_its_name_where_that_is_unambiguous():
    from synkler.agents import AGENTS

    def entry(i: str, name: str, state: str, created: float) -> Entry:
        return Entry(id=i * 32, name=name, kind="file", md5=MD5, state=state, created=created)

    old, new, other = (
        entry("a", "r.txt", "done", 1),
        entry("b", "r.txt", "done", 2),
        entry("c", "s", "failed", 3),
    )
    entries = [old, new, other]
    up = AGENTS["upload"]
    assert resolve(up, "retry", "c" * 32, entries) is other
    assert resolve(up, "retry", "cccc", entries) is other
    assert resolve(up, "resend", "r.txt", entries) is new  # only the newest version can be sent again
    with pytest.raises(Refused, match="fits 2 entries"):
        resolve(up, "forget", "r.txt", entries)
    with pytest.raises(Refused, match="no entry 'ccc'"):
        resolve(up, "retry", "ccc", entries)  # a start of an id has 4 digits at least
    with pytest.raises(Refused, match="no entry"):
        resolve(up, "retry", "nothing", entries)
