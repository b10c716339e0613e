"""A central's standby that takes over with a state of its own (issue 25), decided without a broker:
in a pool it says `hello` to its upload agents, upload re-owns what it held at that central (next
epoch, offered again, the first central told to forget), and download takes the new ownership's
fetch of an entry it was pulling, or answers it with its receipt if it had placed it."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fakes import Role

from synkler.agents.download import Down
from synkler.errors import MessageError
from synkler.messages import Fetch, Fetched, Forget, Hello, Offer, Sent

MD5 = "a" * 32
POOL = {"central-a": "synkler@host-a", "central-b": "synkler@host-b"}


def took_over(r: Role) -> list:
    with r.state.transaction():
        r.agent.took_over()
        r.agent.startup()
    return r.sent()


def test_a_central_of_a_pool_that_took_over_says_hello_to_each_of_its_upload_agents(tmp_path: Path):
    r = Role("central", tmp_path, name="central-a", uploads=["upload", "lab-b"])
    said = took_over(r)
    assert [(to, type(m), m.role) for to, m in said] == [
        ("upload", Hello, "central"),
        ("lab-b", Hello, "central"),
    ]


def test_a_central_without_a_pool_that_took_over_says_nothing(tmp_path: Path):
    # No epochs fence the first central without a pool: its entries are not re-owned (a limit).
    assert took_over(Role("central", tmp_path)) == []


def test_a_central_takes_no_hello_from_a_central(tmp_path: Path):
    r = Role("central", tmp_path, name="central-a", uploads=["upload"])
    r.start()
    with pytest.raises(MessageError):
        r.deliver(Hello("1" * 32, "central-b", role="central"))


def test_a_central_that_took_over_ignores_what_is_said_of_the_first_one_s_entries(tmp_path: Path):
    unknown = "7" * 32
    said = [
        Sent(unknown, "upload", attempt=1, md5=MD5, epoch=1),
        Fetched(unknown, "download", stored_as="data.bin", outcome="placed"),
    ]
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    before = Role("central", tmp_path / "before", name="central-a", uploads=["upload"])
    before.start()
    for msg in said:  # a central that did not take over: about an entry it never had, a bad message
        with pytest.raises(MessageError):
            before.deliver(msg)
    r = Role("central", tmp_path / "after", name="central-a", uploads=["upload"])
    took_over(r)
    for msg in said:  # the first central's entries: upload offers them again
        r.deliver(msg)
    assert r.state.all() == [] and r.sent() == []


def pooled_upload(tmp_path: Path) -> Role:
    r = Role("upload", tmp_path, centrals=POOL)
    r.start()
    return r


def test_upload_re_owns_every_entry_it_held_at_a_central_that_took_over(tmp_path: Path):
    r = pooled_upload(tmp_path)
    held = {
        s: r.given(s, name=f"{s}.bin", peer="central-a", md5=MD5)
        for s in ("waiting", "uploading", "pushed", "sent")
    }
    other = r.given("uploading", name="other.bin", peer="central-b", md5=MD5)
    done = r.given("done", name="done.bin", peer="central-a", md5=MD5)
    with r.state.transaction():
        for e in [*held.values(), other, done]:
            r.state.put_epoch(e.id, 1)
    r.deliver(Hello("9" * 32, "central-a", role="central"))
    for e in held.values():
        now = r.entry(e.id)
        assert (now.state, now.peer, r.state.epoch(e.id)) == ("offered", None, 2), e.name
    assert r.entry(other.id).state == "uploading" and r.entry(other.id).peer == "central-b"
    assert r.entry(done.id).state == "done"
    sent = r.sent()
    offers = sorted((m.entry, m.epoch) for _, m in sent if isinstance(m, Offer))
    assert offers == sorted((e.id, 2) for e in held.values())
    forgets = sorted((to, m.entry, m.epoch) for to, m in sent if isinstance(m, Forget))
    assert forgets == sorted(("central-a", e.id, 2) for e in held.values())


@pytest.mark.parametrize(
    "sender, role", [("central-c", "central"), ("central-a", "upload"), ("download", "central")]
)
def test_upload_takes_a_hello_only_from_a_central_of_its_pool(tmp_path: Path, sender: str, role: str):
    r = pooled_upload(tmp_path)
    e = r.given("sent", peer="central-a", md5=MD5)
    with pytest.raises(MessageError):
        r.deliver(Hello("9" * 32, sender, role=role))
    assert r.entry(e.id).state == "sent"


def fetch(entry_id: str, epoch: int, attempt: int = 1) -> Fetch:
    path = f"/srv/a/lab/stored/{entry_id}"
    return Fetch(
        entry_id,
        "central-a",
        name="data.bin",
        kind="file",
        size=4,
        files=1,
        md5=MD5,
        attempt=attempt,
        path=path,
        epoch=epoch,
    )


def pooled_download(tmp_path: Path, state: str, **fields: object) -> tuple[Role, str]:
    r = Role("download", tmp_path, centrals=POOL)
    r.jobs.places = {"central-a": "/srv/a/lab", "central-b": "/srv/b/lab"}
    e = r.given(state, peer="central-a", path=f"/srv/a/lab/stored/{'5' * 32}", entry_id="5" * 32, **fields)
    with r.state.transaction():
        r.state.put_epoch(e.id, 1)
    return r, e.id


@pytest.mark.parametrize("state", [Down.FETCHING, Down.FAILED])
def test_download_pulls_afresh_on_the_fetch_of_a_newer_epoch_from_the_same_central(tmp_path: Path, state):
    r, entry_id = pooled_download(tmp_path, state, tries=3, attempt=2)
    r.deliver(fetch(entry_id, 2, attempt=1))  # the standby's first admission: attempt 1 again
    now = r.entry(entry_id)
    assert (now.state, now.attempt, now.tries, r.state.epoch(entry_id)) == (Down.FETCHING, 1, 0, 2)
    r.deliver(fetch(entry_id, 1, attempt=2))  # the first central's, late: ignored
    assert r.entry(entry_id).attempt == 1 and r.state.epoch(entry_id) == 2


def test_download_that_placed_an_entry_answers_a_newer_epoch_from_the_same_central(tmp_path: Path):
    r, entry_id = pooled_download(tmp_path, Down.DONE, stored_as="data.bin")
    r.deliver(fetch(entry_id, 2))
    assert [(to, type(m)) for to, m in r.sent()] == [("central-a", Fetched)]
    assert r.entry(entry_id).state == Down.DONE  # placed once, its cleanup run once
    r.deliver(fetch(entry_id, 2))  # the same fetch again: nothing more
    assert r.sent() == []
