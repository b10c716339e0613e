"""Alerts (synkler.observe.alerts): when a condition starts and clears, how notices are grouped and rate
limited, that their state survives a restart, and that a send that fails is tried again."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from support.fakes import FakeJobs

from synkler.config import parse_config
from synkler.errors import ConfigError
from synkler.observe import alerts, channels
from synkler.observe.alerts import Alerts, Condition, changes, due_at, free_at, message
from synkler.observe.report import Report
from synkler.state import Entry, State

BASE = {"mode": "central", "file_dir": "/tmp", "synkler_server": "central.example"}


def cond(key: str) -> Condition:
    return Condition(key=key, severity="error", summary=f"{key} happened", todo="fix it")


def test_a_condition_starts_once_and_clears_once_it_no_longer_holds():
    holding = {"entry-failed:1": cond("entry-failed:1")}
    started, cleared = changes(set(), holding)
    assert [c.key for c in started] == ["entry-failed:1"] and cleared == []
    assert changes({"entry-failed:1"}, holding) == ([], [])  # still holds: nothing to tell
    assert changes({"entry-failed:1"}, {}) == ([], ["entry-failed:1"])


def test_a_condition_that_could_not_be_looked_at_neither_clears_nor_starts():
    told = {"agent-silent:download", "entry-failed:1"}
    started, cleared = changes(told, {}, unknown=["agent-silent:"])
    assert started == [] and cleared == ["entry-failed:1"]


def test_the_rate_limit_allows_max_per_hour_messages_then_waits_for_the_oldest_to_age():
    now = 10_000.0
    assert free_at([], now, 2) == now
    assert free_at([now - 100], now, 2) == now
    assert free_at([now - 100, now - 50], now, 2) == now - 100 + 3600
    assert free_at([now - 4000, now - 50], now, 2) == now  # older than an hour: not counted


def test_notices_wait_group_seconds_so_conditions_starting_together_go_out_together():
    cfg = parse_config({**BASE, "alerts": {"group_seconds": 30, "max_per_hour": 1}}, "/x.conf").alerts
    assert cfg is not None
    assert due_at(100.0, [], 110.0, cfg) == 130.0
    assert due_at(100.0, [50.0], 140.0, cfg) == 50.0 + 3600  # and the rate limit holds them


def test_a_message_lists_the_first_notices_and_counts_the_rest():
    ns = [alerts.notice(cond(f"k{i}"), "started", 1.0, 1.0) for i in range(5)]
    ns.append(alerts.notice(cond("k9"), "cleared", 2.0, 1.0))
    msg = message(ns, {"instance": "lab", "agent": "central"}, 3.0, listed=3)
    assert msg["kind"] == "synkler-notice" and msg["v"] == 1
    assert [n["key"] for n in msg["notices"]] == ["k0", "k1", "k2"] and msg["more"] == 3
    assert msg["text"] == "[synkler lab/central] 5 started, 1 cleared: k0 happened, ..."
    one = message(ns[:1], {"instance": "lab", "agent": "central"}, 3.0)
    assert one["text"] == "[synkler lab/central] started: k0 happened" and one["more"] == 0
    subject, text = channels.email_text({**one, "role": "central", "host": "h"})
    assert subject == one["text"] and "what to do: fix it" in text and "condition: k0" in text


def test_conditions_of_entries_say_which_hop_why_and_what_to_do():
    e = Entry(id="e1", name="run\n1", kind="file", md5="x", state="failed", reason="push to central: boom")
    c = alerts.entry_failed(e)
    assert c.key == "entry-failed:e1" and "(push to central)" in c.summary and "\n" not in c.summary
    assert c.details["reason"] == "push to central: boom" and "synkler retry" in c.todo
    assert alerts.disk_full(5, 100, 90, "central").key == "disk-full:central"  # type: ignore[union-attr]
    assert alerts.disk_full(50, 100, 90, "central") is None
    report = Report("h", at=1000.0, stopped=1000.0)
    assert alerts.silent("download", "download", report, 1000.0 + 30, 0.1, 5.0).key == (  # type: ignore[union-attr]
        "agent-silent:download"
    )
    assert alerts.silent("download", "download", report, 1000.0 + 10, 0.1, 5.0) is None  # < 3 reports
    assert alerts.silent("download", "download", None, 1e9, 0.1, 5.0) is None  # never ran
    login = alerts.broker_login("ProbableAuthenticationError: ...", "upload", "up@lab")
    assert login is not None and login.key == "needs-person:broker" and "up@lab" in login.summary
    assert alerts.broker_login(None, "upload", "up@lab") is None


def test_a_refused_broker_login_is_recognised_in_pikas_words():
    from synkler.runtime.consumer import _LOGIN_REFUSED

    refused = "cannot use broker h:5672: login refused by the broker: 403 ACCESS_REFUSED - Login was ..."
    assert _LOGIN_REFUSED.search(refused)
    assert _LOGIN_REFUSED.search("cannot use broker h:5672: access denied by the broker: 530 NOT_ALLOWED")
    assert not _LOGIN_REFUSED.search("cannot use broker h:5672: Connection refused")


class Runner:
    """What Alerts needs of the runtime: a config, a state database, jobs kept for the test."""

    def __init__(self, path: Path, channels: dict[str, Any]):
        self.cfg = parse_config(
            {**BASE, "file_dir": str(path.parent), "alerts": {**channels, "group_seconds": 0}},
            path.parent / "s.conf",
        )
        self.state = State(path)
        self.jobs = FakeJobs(self.state)
        self.broker = None
        self.login_refused: str | None = None

    def submit(self, pool: str, keys: Any, work: Any, done: Any) -> None:
        self.jobs.submit(pool, keys, work, done)

    def busy(self, key: Any) -> bool:
        return self.jobs.busy(key)

    def run_jobs(self) -> None:
        while self.jobs.pending:
            job = self.jobs.pending.pop(0)
            try:
                outcome, error = job.work(), None
            except Exception as e:
                outcome, error = None, e
            self.jobs.held.difference_update(job.keys)
            with self.state.transaction():
                job.done(outcome, error)


def recorder(out: Path, fail_marker: Path | None = None) -> dict[str, Any]:
    """A command channel appending each message to `out`; it fails while `fail_marker` exists."""
    code = (
        "import os, sys; m = sys.argv[2]\n"
        "if os.path.exists(m): sys.exit('refused by the test')\n"
        "open(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')"
    )
    return {"command": {"argv": [sys.executable, "-c", code, str(out), str(fail_marker or "-")]}}


def received(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def step(runner: Runner, a: Alerts, holding: list[Condition], now: float) -> None:
    with runner.state.transaction():
        a.record({c.key: c for c in holding}, [], now)
        a.send_due(now)
    runner.run_jobs()


def test_a_restart_neither_repeats_nor_loses_a_notice(tmp_path):
    out = tmp_path / "got.jsonl"
    db = tmp_path / "state.sqlite"
    runner = Runner(db, recorder(out))
    a = Alerts(runner, "central")
    step(runner, a, [cond("entry-failed:1")], 100.0)
    assert [(n["key"], n["state"]) for m in received(out) for n in m["notices"]] == [
        ("entry-failed:1", "started")
    ]
    # A notice queued but not sent when the agent stops goes out after the restart.
    with runner.state.transaction():
        a.record(
            {"entry-failed:1": cond("entry-failed:1"), "entry-failed:2": cond("entry-failed:2")}, [], 110.0
        )
    runner.state.close()

    runner = Runner(db, recorder(out))
    a = Alerts(runner, "central")
    step(runner, a, [cond("entry-failed:1"), cond("entry-failed:2")], 120.0)
    got = [(n["key"], n["state"]) for m in received(out) for n in m["notices"]]
    assert got == [("entry-failed:1", "started"), ("entry-failed:2", "started")]  # 1 is not told again
    step(runner, a, [cond("entry-failed:2")], 130.0)
    last = received(out)[-1]["notices"]
    assert [(n["key"], n["state"], n["since"]) for n in last] == [("entry-failed:1", "cleared", 100.0)]
    assert last[0]["summary"] == "entry-failed:1 happened"


def test_conditions_starting_together_go_out_as_one_message_and_the_rate_limit_holds_the_rest(tmp_path):
    out = tmp_path / "got.jsonl"
    runner = Runner(tmp_path / "state.sqlite", recorder(out))
    a = Alerts(runner, "central")
    a.cfg = parse_config(  # at most one message an hour
        {**BASE, "alerts": {**recorder(out), "group_seconds": 0, "max_per_hour": 1}}, "/x.conf"
    ).alerts
    step(runner, a, [cond("a"), cond("b")], 100.0)
    assert len(received(out)) == 1 and [n["key"] for n in received(out)[0]["notices"]] == ["a", "b"]
    for t, holding in ((200.0, [cond("a"), cond("b"), cond("c")]), (300.0, [cond("b"), cond("c")])):
        step(runner, a, holding, t)
    assert len(received(out)) == 1  # held by the rate limit ...
    step(runner, a, [cond("b"), cond("c")], 100.0 + 3601)
    assert len(received(out)) == 2  # ... and sent together once the hour is over
    assert [(n["key"], n["state"]) for n in received(out)[1]["notices"]] == [
        ("c", "started"),
        ("a", "cleared"),
    ]


def test_a_send_that_fails_is_kept_and_tried_again_later_without_raising(tmp_path):
    out, refuse = tmp_path / "got.jsonl", tmp_path / "refuse"
    refuse.touch()
    runner = Runner(tmp_path / "state.sqlite", recorder(out, refuse))
    a = Alerts(runner, "central")
    step(runner, a, [cond("a")], 100.0)
    assert received(out) == [] and a.failures == {"command": 1}
    assert len(runner.state.notices("command", 10)) == 1  # still queued
    retry = a.retry_at["command"]
    refuse.unlink()
    step(runner, a, [cond("a")], retry - 0.5)  # not yet: backing off
    assert received(out) == []
    step(runner, a, [cond("a")], retry + 0.1)
    assert [n["key"] for n in received(out)[0]["notices"]] == ["a"]
    assert runner.state.notices("command", 10) == [] and a.failures == {}


@pytest.mark.parametrize(
    "alerts_value, key, problem",
    [
        ({"email": {"from": "a@b.c", "to": "d@e.f"}}, "alerts.email.host", "is required"),
        ({"webhook": {"url": "ftp://x"}}, "alerts.webhook.url", "http:// or https://"),
        ({"emial": {}}, "alerts.emial", "did you mean 'email'"),
        ({"command": {"argv": []}}, "alerts.command.argv", "must not be empty"),
        ({"silent_minutes": 0}, "alerts.silent_minutes", "must be > 0"),
        (
            {
                "email": {
                    "host": "m",
                    "from": "a@b.c",
                    "to": "d@e.f",
                    "username": "u",
                    "password": "p",
                    "tls": "none",
                }
            },
            "alerts.email.tls",
            "never sent in clear",
        ),
        ([], "alerts", "must be a mapping"),
    ],
)
def test_a_bad_alerts_setting_names_the_file_and_the_nested_key(alerts_value, key, problem):
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "alerts": alerts_value}, "/etc/synkler.conf", check_dirs=False)
    assert e.value.key == key and problem in e.value.problem
    assert str(e.value).startswith(f"/etc/synkler.conf: {key}: ")


def test_the_email_password_is_read_from_its_file_and_counted_among_the_secret_files(tmp_path):
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret\n")
    email = {"host": "m", "from": "a@b.c", "to": ["d@e.f"], "username": "u", "password_file": str(secret)}
    cfg = parse_config({**BASE, "alerts": {"email": email}}, tmp_path / "s.conf", check_dirs=False)
    assert cfg.alerts is not None and cfg.alerts.email is not None
    assert cfg.alerts.email.password == "s3cret" and secret in cfg.secret_files
