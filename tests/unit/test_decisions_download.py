"""Download's transitions (registered for test_decisions.py, which runs them) and its other decisions,
driven without a broker, sshd or rsync."""

from __future__ import annotations

from pathlib import Path

from support.fakes import Role
from support.transitions import OK, OTHER, RSYNC_FAILED, fetch_for, only, role, transition

from synkler.agents.base import Cleanup
from synkler.hops.pull import Mismatch, NotPulled, PullRun, Verified
from synkler.messages import (
    Corrupt,
    Failed,
    Fetched,
    Forget,
)
from synkler.state import Entry


@transition("download", ("", "fetching"))
def download_records_a_fetch(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "download")
    r.deliver(fetch_for("2" * 32))
    r.tick()
    assert r.job("transfer").keys  # the pull starts
    return r.entry("2" * 32)


@transition("download", ("failed", "fetching"))
def download_fetches_again_when_central_got_the_entry_again(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "download")
    e = r.given("failed", peer="central", attempt=1, path="/srv/central/lab/stored/x")
    r.deliver(fetch_for(e.id, attempt=2))
    assert r.entry(e.id).attempt == 2
    return r.entry(e.id)


def pulled(tmp_path: Path, outcome: object, **settings: object) -> tuple[Role, Entry]:
    r = role(tmp_path, "download", **settings)
    r.start()
    e = r.given("fetching", peer="central", path="/srv/central/lab/stored/x")
    r.tick()
    job = r.job("transfer")
    result = RSYNC_FAILED if isinstance(outcome, NotPulled) else OK
    r.finish(job, PullRun(result, {e.id: outcome}))  # type: ignore[dict-item]
    return r, e


@transition("download", ("fetching", "placing"))
def download_chooses_a_name_for_a_verified_copy(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = pulled(tmp_path, Verified("data (2).bin", False))
    assert r.entry(e.id).stored_as == "data (2).bin"
    return r.entry(e.id)


@transition("download", ("fetching", "done"))
def download_is_done_when_the_same_content_is_there(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = pulled(tmp_path, Verified("data.bin", True))
    to, fetched = only(r.sent(), Fetched)
    assert (to, fetched.outcome, fetched.stored_as) == ("central", "present", "data.bin")
    return r.entry(e.id)


@transition("download", ("fetching", "failed"))
def download_gives_up_after_max_attempts(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = pulled(tmp_path, NotPulled("rsync", "exit 23"), max_attempts=1)
    to, failed = only(r.sent(), Failed)
    assert (to, failed.hop) == ("central", "pull from central")
    return r.entry(e.id)


def test_download_reports_a_mismatch_to_central_and_tries_again(tmp_path: Path):
    r, e = pulled(tmp_path, Mismatch(OTHER))
    assert only(r.sent(), Corrupt)[1].got == OTHER
    entry = r.entry(e.id)
    assert (entry.state, entry.tries) == ("fetching", 1)


def placing(tmp_path: Path, staged: bool, **settings: object) -> tuple[Role, Entry]:
    r = role(tmp_path, "download", **settings)
    r.start()
    e = r.given("placing", peer="central", stored_as="data.bin")
    if staged:
        Path(r.agent.staging.of(e.id)).write_bytes(b"data")
    r.tick()
    return r, e


@transition("download", ("placing", "delivered"))
def download_places_and_then_runs_its_cleanup_script(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = placing(tmp_path, True, cleanup_script="true")
    assert (r.file_dir / "data.bin").read_bytes() == b"data"
    assert only(r.sent(), Fetched)[1].outcome == "placed"
    assert r.entry(e.id).cleanup == Cleanup.RUNNING and r.job("script").keys  # started in the same pass
    return r.entry(e.id)


@transition("download", ("placing", "done"))
def download_places_without_a_cleanup_script(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = placing(tmp_path, True)
    assert (r.file_dir / "data.bin").read_bytes() == b"data"
    return r.entry(e.id)


@transition("download", ("placing", "fetching"))
def download_fetches_again_when_its_staged_copy_vanished(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e = placing(tmp_path, False)
    assert r.sent() == []
    return r.entry(e.id)


def test_download_never_places_over_an_entry_put_there_meanwhile(tmp_path: Path):
    r = role(tmp_path, "download")
    r.start()
    e = r.given("placing", peer="central", stored_as="data.bin")
    Path(r.agent.staging.of(e.id)).write_bytes(b"data")
    (r.file_dir / "data.bin").write_bytes(b"someone else's")
    r.tick()
    assert r.entry(e.id).state == "fetching"
    assert (r.file_dir / "data.bin").read_bytes() == b"someone else's"


@transition("download", ("delivered", "done"))
def download_is_done_when_the_cleanup_script_ran(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "download", cleanup_script="true")
    e = r.given("delivered", peer="central", stored_as="data.bin", cleanup=Cleanup.PENDING)
    r.tick()
    r.finish(r.job("script"), OK)
    return r.entry(e.id)


def download_holding(tmp_path: Path, state: str, **settings: object) -> tuple[Role, Entry, Path]:
    """Download with an entry in `state` and what a pull left of it in staging."""
    r = role(tmp_path, "download", **settings)
    r.start()
    e = r.given(state, peer="central", stored_as="data.bin", path="/srv/central/lab/stored/x")
    staged = Path(r.agent.staging.of(e.id))
    staged.write_bytes(b"da")
    return r, e, staged


@transition("download", ("fetching", "forgotten"))
def download_forgets_what_central_forgot(tmp_path: Path, _from: str, _to: str) -> Entry:
    r, e, staged = download_holding(tmp_path, "fetching")
    r.deliver(Forget(e.id, "central", reason="forgotten by an operator at upload"))
    assert r.sent() == [] and not staged.exists()
    r.deliver(fetch_for(e.id, attempt=5))  # late: ignored
    r.tick()
    assert [job for job in r.jobs.pending if job.pool == "transfer"] == []
    return r.entry(e.id)


@transition("download", *((s, "forgotten") for s in ("placing", "failed")))
def download_forgets_on_request_and_tells_central(tmp_path: Path, from_: str, _to: str) -> Entry:
    r, e, staged = download_holding(tmp_path, from_)
    ok, answer = r.request("forget", e.id)
    assert ok, answer
    to, forget = only(r.sent(), Forget)
    assert (to, forget.reason) == ("central", "forgotten by an operator at download")
    assert not staged.exists() and not (r.file_dir / "data.bin").exists()
    r.tick()  # nothing is placed
    assert not (r.file_dir / "data.bin").exists()
    return r.entry(e.id)


@transition("download", ("done", "delivered"))
def download_runs_a_failed_cleanup_script_again_on_request(tmp_path: Path, _from: str, _to: str) -> Entry:
    r = role(tmp_path, "download", cleanup_script="true")
    e = r.given("done", peer="central", stored_as="data.bin", cleanup=Cleanup.INTERRUPTED)
    ok, answer = r.request("retry", e.id)
    assert ok, answer
    entry = r.entry(e.id)
    r.tick()
    assert r.entry(e.id).cleanup == Cleanup.RUNNING and r.job("script").keys
    return entry
