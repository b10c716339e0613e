"""Issue 26: the operator's commands at one destination (`retry`, `forget`, `resend` with `--to`),
decided by the agents through the fake runtime: which rows each acts on, with and without `--to`,
and the clear refusals (an unknown destination, one where the entry did not fail, the wrong role)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fakes import Role
from support.transitions import fetch_for

from synkler import destinations as dests
from synkler.agents.base import Cleanup, request_for
from synkler.errors import Refused
from synkler.hops.checksum import md5_entry, stat_entry
from synkler.messages import Admit, Failed, Fetch, Fetched, Offer

RULES = [{"to": ["analysis", "archive"]}]
STORED = "/srv/central/lab/stored/x"


def _row(state: str) -> dests.Row:
    return dests.Row("", state, None, None, 1.0)


ROWS = {"analysis": _row(dests.FAILED), "archive": _row(dests.FETCHED), "group": _row(dests.FAILED)}


@pytest.mark.parametrize(
    ("action", "to", "chosen"),
    [
        ("retry", None, ["analysis", "group"]),  # every destination where it failed, not one that has it
        ("retry", "group", ["group"]),
        ("resend", None, ["analysis", "archive", "group"]),  # every destination it went to
        ("resend", "archive", ["archive"]),
        ("forget", None, ["analysis", "archive", "group"]),
        ("forget", "analysis", ["analysis"]),
    ],
)
def test_an_operators_action_acts_on_the_destination_given_or_on_every_one_it_applies_to(action, to, chosen):
    assert dests.acted_on(action, ROWS, to) == chosen


@pytest.mark.parametrize(
    ("action", "to", "rows", "problem"),
    [
        ("retry", "elsewhere", ROWS, "does not go to 'elsewhere' (it goes to analysis, archive, group)"),
        ("resend", "elsewhere", ROWS, "does not go to 'elsewhere'"),
        ("retry", "archive", ROWS, "it is fetched at archive: only a destination where it failed is retried"),
        ("retry", None, {"archive": _row(dests.FETCHED)}, "it failed at none of its destinations"),
    ],
)
def test_an_unknown_destination_or_one_where_nothing_failed_is_a_clear_error(action, to, rows, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        dests.acted_on(action, rows, to)


def test_a_download_is_one_destination_itself_and_refuses_another_ones():
    assert request_for("central", "central", "retry", "archive") == "retry:archive"
    assert request_for("upload", "lab-a", "resend", "archive") == "resend:archive"
    assert request_for("download", "archive", "retry", "archive") == "retry"  # itself: as without --to
    assert request_for("central", "central", "retry", None) == "retry"
    with pytest.raises(Refused, match="this is download 'archive': 'analysis' is another download"):
        request_for("download", "archive", "retry", "analysis")


# central: retry at the destinations where it failed ---------------------------------------------


def _failed_at(tmp_path: Path, **rows: str) -> tuple[Role, str]:
    r = Role("central", tmp_path, routes=RULES)
    r.start()
    e = r.given("failed", name="run_1.raw", peer="lab-a", md5="a" * 32, attempt=1, path=STORED)
    with r.state.transaction():
        for dest, state in rows.items():
            dests.mark(r.state, e.id, dest, state)
    return r, e.id


def test_central_retries_one_destination_and_leaves_the_other_as_it_is(tmp_path: Path) -> None:
    r, entry_id = _failed_at(tmp_path, analysis=dests.FAILED, archive=dests.FETCHED)
    ok, answer = r.request("retry:analysis", entry_id)
    assert ok and "analysis asked to pull central's verified copy again; archive not touched" in answer
    [(to, fetch)] = r.sent()
    assert to == "analysis" and isinstance(fetch, Fetch)
    assert (fetch.path, fetch.attempt, fetch.md5) == (STORED, 1, "a" * 32) and fetch.again
    rows = dests.rows(r.state, entry_id)
    assert (rows["analysis"].state, rows["archive"].state) == (dests.FETCHING, dests.FETCHED)
    assert r.entry(entry_id).state == "downloading"  # no destination has failed now
    r.deliver(Fetched(entry_id, "analysis", stored_as="run_1.raw", outcome="placed"))
    assert r.entry(entry_id).state == "delivered"


def test_central_retry_without_to_asks_every_failed_destination_and_no_other(tmp_path: Path) -> None:
    r, entry_id = _failed_at(tmp_path, analysis=dests.FAILED, archive=dests.FAILED, group=dests.FETCHED)
    ok, answer = r.request("retry", entry_id)
    assert ok and "analysis, archive asked to pull" in answer and "group not touched" in answer
    assert sorted(to for to, m in r.sent() if isinstance(m, Fetch)) == ["analysis", "archive"]


def test_central_retrying_one_of_two_failed_destinations_keeps_the_entry_failed(tmp_path: Path) -> None:
    r, entry_id = _failed_at(tmp_path, analysis=dests.FAILED, archive=dests.FAILED)
    assert r.request("retry:analysis", entry_id)[0]
    assert r.entry(entry_id).state == "failed"  # archive still needs a person
    r.deliver(Failed(entry_id, "analysis", hop="pull from central", reason="exit 23"))  # fails again
    assert dests.rows(r.state, entry_id)["analysis"].state == dests.FAILED


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        ("retry:group-p1", "does not go to 'group-p1' (it goes to analysis, archive)"),
        ("retry:archive", "it is fetched at archive: only a destination where it failed is retried"),
        ("resend:analysis", "only upload sends an entry again: `synkler resend ENTRY --to analysis` there"),
    ],
)
def test_central_refuses_a_retry_where_it_cannot_and_changes_nothing(tmp_path: Path, action, problem):
    r, entry_id = _failed_at(tmp_path, analysis=dests.FAILED, archive=dests.FETCHED)
    ok, answer = r.request(action, entry_id)
    assert not ok and problem in answer, answer
    assert r.sent() == [] and r.entry(entry_id).state == "failed"
    assert dests.rows(r.state, entry_id)["analysis"].state == dests.FAILED


def test_central_retries_no_destination_of_an_entry_on_its_way(tmp_path: Path) -> None:
    r = Role("central", tmp_path, routes=RULES)
    r.start()
    e = r.given("downloading", name="run_1.raw", peer="lab-a", path=STORED)
    ok, answer = r.request("retry:analysis", e.id)
    assert not ok and "only an entry that failed at a destination is retried there" in answer


# download: central's fetch again ----------------------------------------------------------------


def test_download_pulls_a_failed_entry_again_only_when_central_asks_again(tmp_path: Path) -> None:
    r = Role("download", tmp_path)
    r.start()
    entry_id = "5" * 32
    r.given(
        "failed",
        entry_id=entry_id,
        peer="central",
        attempt=1,
        reason="pull: exit 23",
        path=fetch_for(entry_id).path,
    )
    e = r.entry(entry_id)
    r.deliver(fetch_for(e.id))  # a copy of the first fetch: a failed entry stays failed
    assert r.entry(e.id).state == "failed"
    r.deliver(fetch_for(e.id, again="retried by an operator at central"))
    assert (r.entry(e.id).state, r.entry(e.id).tries, r.entry(e.id).reason) == ("fetching", 0, None)


# upload: resend to one destination, and what it leaves to central --------------------------------


def _delivered(tmp_path: Path, *to: str) -> tuple[Role, str]:
    r = Role("upload", tmp_path)
    path = r.file_dir / "run_1.raw"
    path.write_bytes(b"data")
    e = r.given(
        "done",
        name="run_1.raw",
        peer="central",
        md5=md5_entry(path),
        signature=stat_entry(path).signature,
        cleanup=Cleanup.DONE,
    )
    with r.state.transaction():
        for dest in to:
            dests.mark(r.state, e.id, dest, dests.FETCHED)
    return r, e.id


def test_upload_resends_to_one_destination_only(tmp_path: Path) -> None:
    r, entry_id = _delivered(tmp_path, "analysis", "archive")
    ok, answer = r.request("resend:archive", entry_id)
    assert ok and "sent again to archive as entry" in answer, answer
    [(_, offer)] = r.sent()
    assert isinstance(offer, Offer) and offer.to == ("archive",)


def test_upload_resend_without_to_goes_to_every_destination_it_went_to(tmp_path: Path) -> None:
    r, entry_id = _delivered(tmp_path, "analysis", "archive")
    ok, answer = r.request("resend", entry_id)
    assert ok and "sent again to analysis, archive" in answer, answer
    [(_, offer)] = r.sent()
    assert isinstance(offer, Offer) and offer.to == ("analysis", "archive")


def test_upload_resend_of_a_relay_without_routes_leaves_the_route_to_central(tmp_path: Path) -> None:
    r, entry_id = _delivered(tmp_path)
    assert r.request("resend", entry_id)[0]
    [(_, offer)] = r.sent()
    assert isinstance(offer, Offer) and offer.to == ()


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        ("resend:group", "cannot resend: it does not go to 'group' (it goes to analysis, archive)"),
        (
            "retry:archive",
            "retried at central, which keeps the verified copy: `synkler retry ENTRY --to archive`",
        ),
        ("forget:archive", "central forgets an entry at one destination"),
    ],
)
def test_upload_refuses_a_destination_it_cannot_act_on(tmp_path: Path, action, problem):
    r, entry_id = _delivered(tmp_path, "analysis", "archive")
    ok, answer = r.request(action, entry_id)
    assert not ok and problem in answer, answer
    assert r.sent() == []


# central: an offer sent again to some destinations ----------------------------------------------


def test_central_sends_an_entry_resent_to_one_destination_there_only(tmp_path: Path) -> None:
    r = Role("central", tmp_path, routes=RULES)
    r.start()
    r.deliver(Offer("1" * 32, "lab-a", name="run_1.raw", kind="file", size=4, files=1, to=("archive",)))
    r.tick()
    [(_, admit)] = r.sent()
    assert isinstance(admit, Admit) and admit.to == ("archive",)


def test_central_refuses_an_entry_resent_to_a_download_it_does_not_send_to(tmp_path: Path) -> None:
    r = Role("central", tmp_path, routes=RULES)
    r.start()
    r.deliver(Offer("1" * 32, "lab-a", name="run_1.raw", kind="file", size=4, files=1, to=("gone",)))
    [(to, failed)] = r.sent()
    assert isinstance(failed, Failed) and to == "lab-a"
    assert "sent again to gone, which central does not send to (its destinations: analysis, archive)" in (
        failed.reason
    )
    assert r.state.get("1" * 32) is None  # not recorded, as any refused offer
