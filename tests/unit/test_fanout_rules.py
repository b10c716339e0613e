"""Fan-out (issue 26): central's routes, the per-destination rows at central and upload, and the
config errors of bad rules; without a broker (tests/support/fakes.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support.fakes import Role

from synkler import destinations as dests
from synkler import routes
from synkler.config import parse_config
from synkler.errors import ConfigError, MessageError
from synkler.messages import Admit, Delivered, Failed, Fetch, Fetched, Forget

RULES = [
    {"from": "lab-a", "name": "*.raw", "to": ["analysis", "archive"]},
    {"metadata": {"project": "p1"}, "to": "group-p1"},
    {"name": "*.raw", "to": ["archive"]},
    {"to": ["archive"]},
]
ROUTES = routes.parse(RULES)


@pytest.mark.parametrize(
    ("source", "name", "meta", "to"),
    [
        ("lab-a", "run_1.raw", None, ["analysis", "archive"]),  # two rules: their union
        ("lab-b", "run_1.raw", None, ["archive"]),
        ("lab-b", "notes.txt", {"project": "p1"}, ["group-p1"]),  # not the default as well
        ("lab-a", "run_1.raw", {"project": "p1"}, ["analysis", "archive", "group-p1"]),
        ("lab-b", "notes.txt", {"project": "p2"}, ["archive"]),  # nothing else matched: the default
        ("lab-b", "notes.txt", None, ["archive"]),
    ],
)
def test_every_matching_rule_adds_its_downloads_and_the_default_only_when_none_did(source, name, meta, to):
    assert routes.destinations(ROUTES, source, name, meta) == to


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        ([{"name": "*.raw", "to": ["a"]}], "needs a default rule"),
        ([{"to": ["a"]}, {"to": ["b"]}], "rules 1 and 2 are both default rules"),
        ([{"too": ["a"]}, {"to": ["a"]}], "rule 1: unknown key 'too'"),
        ([{"to": []}], "rule 1: `to` must name one or more download agents"),
        ([{"to": ["../x"]}], "rule 1: `to` holds '../x', which is not an agent name"),
        ([{"name": "", "to": ["a"]}, {"to": ["a"]}], "rule 1: `name` must be a glob"),
        ([{"metadata": {"k": [1]}, "to": ["a"]}, {"to": ["a"]}], "rule 1: `metadata` key 'k'"),
        ("archive", "must be a list of rules"),
    ],
)
def test_a_bad_rule_is_a_config_error_naming_the_file_the_key_and_the_rule(tmp_path: Path, rules, problem):
    data = {"mode": "central", "file_dir": str(tmp_path), "synkler_server": "b", "routes": rules}
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path / "synkler.conf", environ={}, home=tmp_path)
    text = str(info.value)
    assert str(tmp_path / "synkler.conf") in text and "routes" in text and problem in text, text


def test_a_route_to_central_is_refused(tmp_path: Path) -> None:
    data = {
        "mode": "central",
        "file_dir": str(tmp_path),
        "synkler_server": "b",
        "routes": [{"to": "central"}],
    }
    with pytest.raises(ConfigError, match="the central agent"):
        parse_config(data, tmp_path / "synkler.conf", environ={}, home=tmp_path)


def test_download_public_key_maps_names_to_keys_and_a_single_key_is_download_names(tmp_path: Path) -> None:
    from synkler import receipts

    one, two = (receipts.public_text(receipts.new_key()) for _ in range(2))
    base = {"mode": "upload", "file_dir": str(tmp_path), "synkler_server": "b"}
    cfg = parse_config({**base, "download_public_key": one}, tmp_path / "c", environ={}, home=tmp_path)
    assert cfg.download_keys() == {"download": one}
    many = {"analysis": one, "archive": two}
    cfg = parse_config({**base, "download_public_key": many}, tmp_path / "c", environ={}, home=tmp_path)
    assert cfg.download_keys() == many
    with pytest.raises(ConfigError, match=r"download_public_key\.archive"):
        parse_config(
            {**base, "download_public_key": {"archive": "ed25519:nonsense"}},
            tmp_path / "c",
            environ={},
            home=tmp_path,
        )


# central ------------------------------------------------------------------------------------------


def _central(tmp_path: Path) -> Role:
    r = Role("central", tmp_path, routes=RULES)
    r.start()
    return r


def test_central_freezes_the_destinations_at_the_first_admission_and_sends_them(tmp_path: Path) -> None:
    r = _central(tmp_path)
    e = r.given("waiting", name="run_1.raw", peer="lab-a", attempt=0)
    r.tick()
    [(to, admit)] = r.sent()
    assert isinstance(admit, Admit) and (to, admit.to) == ("lab-a", ("analysis", "archive"))
    assert list(dests.rows(r.state, e.id)) == ["analysis", "archive"]
    # The rules change, and the entry is admitted again (its lease lapsed): the same destinations.
    r.agent.cfg = dataclasses.replace(r.agent.cfg, routes=routes.parse([{"to": ["group-p1"]}]))
    with r.state.transaction():
        r.state.update(r.entry(e.id), state="waiting", due=0)
    r.agent.admit_due = True
    r.tick()
    [(_, again)] = r.sent()
    assert isinstance(again, Admit) and again.to == ("analysis", "archive")


def _stored_for(r: Role, *to: str):
    e = r.given("downloading", name="run_1.raw", peer="lab-a", path="/srv/central/lab/stored/x")
    with r.state.transaction():
        dests.route(r.state, e.id, to)
        for d in to:
            dests.mark(r.state, e.id, d, dests.FETCHING)
    return e


def test_central_keeps_its_copy_until_the_last_destination_fetched(tmp_path: Path) -> None:
    r = _central(tmp_path)
    e = _stored_for(r, "analysis", "archive")
    r.deliver(Fetched(e.id, "archive", stored_as="run_1.raw", outcome="placed"))
    assert r.entry(e.id).state == "downloading"
    [(to, told)] = r.sent()
    assert isinstance(told, Delivered) and (to, told.destination) == ("lab-a", "archive")
    r.deliver(Fetched(e.id, "archive", stored_as="run_1.raw", outcome="placed"))  # a copy: nothing
    assert r.sent() == [] and r.entry(e.id).state == "downloading"
    r.deliver(Fetched(e.id, "analysis", stored_as="run_1 (2).raw", outcome="placed"))
    assert r.entry(e.id).state == "delivered"
    assert {d: row.stored_as for d, row in dests.rows(r.state, e.id).items()} == {
        "analysis": "run_1 (2).raw",
        "archive": "run_1.raw",
    }


def test_only_a_destination_of_the_entry_has_a_say_over_it(tmp_path: Path) -> None:
    r = _central(tmp_path)
    e = _stored_for(r, "archive")
    for other in ("analysis", "download"):
        with pytest.raises(MessageError, match="no say"):
            r.deliver(Fetched(e.id, other, stored_as="run_1.raw", outcome="placed"))
    assert r.entry(e.id).state == "downloading"


def test_a_failed_destination_fails_its_row_and_the_others_still_deliver(tmp_path: Path) -> None:
    r = _central(tmp_path)
    e = _stored_for(r, "analysis", "archive")
    r.deliver(Failed(e.id, "analysis", hop="pull from central", reason="exit 23"))
    assert r.entry(e.id).state == "failed"
    [(to, failed)] = r.sent()
    assert isinstance(failed, Failed) and (to, failed.destination) == ("lab-a", "analysis")
    r.deliver(Fetched(e.id, "archive", stored_as="run_1.raw", outcome="placed"))
    assert r.entry(e.id).state == "failed"  # analysis still needs a person
    r.deliver(Fetched(e.id, "analysis", stored_as="run_1.raw", outcome="placed"))  # retried there
    assert r.entry(e.id).state == "delivered"


def test_the_verified_copy_is_fetched_by_every_destination(tmp_path: Path) -> None:
    r = _central(tmp_path)
    e = r.given("verifying", name="run_1.raw", peer="lab-a", md5="a" * 32)
    with r.state.transaction():
        dests.route(r.state, e.id, ["analysis", "archive"])
    stored = tmp_path / "files" / "lab" / "stored" / e.id
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"data")
    r.tick()
    from synkler.agents.staged import Checked

    r.finish(r.job("hash"), [Checked("a" * 32, in_store=True)])
    fetches = sorted(to for to, m in r.sent() if isinstance(m, Fetch))
    assert fetches == ["analysis", "archive"]


# upload -------------------------------------------------------------------------------------------


def test_upload_cleans_up_once_every_destination_has_delivered(tmp_path: Path) -> None:
    r = Role("upload", tmp_path, cleanup_script="true")
    r.start()
    e = r.given("sent", name="run_1.raw", peer="central", md5="a" * 32)
    with r.state.transaction():
        dests.route(r.state, e.id, ["analysis", "archive"])
    r.deliver(Delivered(e.id, "central", stored_as="run_1.raw", destination="archive"))
    assert r.entry(e.id).state == "sent"
    with pytest.raises(MessageError, match="not one of its destinations"):
        r.deliver(Delivered(e.id, "central", stored_as="run_1.raw", destination="group-p1"))
    r.deliver(Delivered(e.id, "central", stored_as="run_1.raw", destination="analysis"))
    assert r.entry(e.id).state == "delivered"


def test_upload_keeps_the_destinations_of_the_first_admission(tmp_path: Path) -> None:
    r = Role("upload", tmp_path)
    r.start()
    e = r.given("offered", name="run_1.raw", peer="central", attempt=0)
    dest = "/srv/central/lab/staging/upload"
    r.deliver(Admit(e.id, "central", attempt=1, dest=dest, to=("analysis", "archive")))
    r.deliver(Admit(e.id, "central", attempt=2, dest=dest, to=("group-p1",)))
    assert list(dests.rows(r.state, e.id)) == ["analysis", "archive"]


def _request(r: Role, entry_id: str, action: str) -> tuple[bool, str]:
    with r.state.transaction():
        seq = r.state.add_request(entry_id, action)
        r.agent.take_requests()
    answered = r.state.get_request(seq)
    assert answered is not None
    return bool(answered.ok), str(answered.answer)


def test_forget_to_one_destination_ends_the_entry_there_and_delivers_it_when_the_others_have_it(
    tmp_path: Path,
) -> None:
    r = _central(tmp_path)
    e = _stored_for(r, "analysis", "archive")
    r.deliver(Fetched(e.id, "archive", stored_as="run_1.raw", outcome="placed"))
    r.sent()
    ok, answer = _request(r, e.id, "forget:group-p1")
    assert not ok and "does not go to 'group-p1'" in answer
    ok, answer = _request(r, e.id, "forget:analysis")
    assert ok and "delivered" in answer, answer
    assert r.entry(e.id).state == "delivered"
    told = {(to, m.destination) for to, m in r.sent() if isinstance(m, Forget)}
    assert told == {("analysis", ""), ("lab-a", "analysis")}


def test_upload_told_of_a_forgotten_destination_cleans_up_once_the_others_have_it(tmp_path: Path) -> None:
    r = Role("upload", tmp_path, cleanup_script="true")
    r.start()
    e = r.given("sent", name="run_1.raw", peer="central", md5="a" * 32)
    with r.state.transaction():
        dests.route(r.state, e.id, ["analysis", "archive"])
    r.deliver(Delivered(e.id, "central", stored_as="run_1.raw", destination="archive"))
    r.deliver(Forget(e.id, "central", reason="forgotten at analysis", destination="analysis"))
    assert r.entry(e.id).state == "delivered"
    assert dests.rows(r.state, e.id)["analysis"].state == dests.FORGOTTEN


def test_only_central_forgets_at_one_destination(tmp_path: Path) -> None:
    r = Role("download", tmp_path)
    r.start()
    e = r.given("fetching", peer="central")
    ok, answer = _request(r, e.id, "forget:archive")
    assert not ok and "only central" in answer
