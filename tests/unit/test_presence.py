"""Presence reports: what an agent tells the relay about itself, bounded, and never at its expense."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from support.fakes import central_runtime

from synkler.errors import BrokerError, PublishRefused
from synkler.observe import presence, progress, relayview
from synkler.state import Entry

NOW = 1_800_000_000.0


class FakeBroker:
    connected = True

    def __init__(self, error: BaseException | None = None):
        self.error = error
        self.reports: list[dict] = []

    def publish_presence(self, report: dict) -> None:  # as Broker.publish_presence: the JSON object
        if self.error is not None:
            raise self.error
        self.reports.append(json.loads(json.dumps(report)))  # as it goes on the wire

    def close(self) -> None:
        pass


@pytest.fixture
def rt(tmp_path):
    with central_runtime(tmp_path, free_percent=10) as r:
        r.broker = FakeBroker()  # type: ignore[assignment]
        yield r


def wire(rt, now: float) -> dict:
    """The report as it goes on the wire."""
    return json.loads(json.dumps(rt.presence.report(now).encode()))


def add(rt, n: int, state: str, *, start: float = 0.0, **fields) -> list[Entry]:
    out = []
    fields = {"kind": "file", **fields}
    with rt.state.transaction():
        for i in range(n):
            e = Entry(
                id=f"{len(out) + int(start):08d}".rjust(32, "a"),
                name=f"{state}-{i}",
                md5=None,
                state=state,
                peer="upload",
                created=NOW + start + i,
                **fields,
            )
            out.append(rt.state.insert(e))
    return out


def test_a_report_says_who_the_agent_is_and_its_figures(rt):
    add(rt, 2, "waiting", reason="needs 5 bytes")
    add(rt, 3, "delivered", start=100)
    r = wire(rt, NOW)
    assert (r["kind"], r["v"], r["role"], r["agent"], r["id"]) == (
        "synkler-presence",
        1,
        "central",
        "central",
        rt.cfg.id,
    )
    assert r["host"] and r["pid"] == os.getpid() and r["since"] and r["at"] == NOW and r["stopped"] is None
    assert r["counts"] == {"waiting": 2, "delivered": 3} and r["unfinished"] == 2 and r["oldest"] == NOW
    assert [e["name"] for e in r["entries"]] == ["waiting-0", "waiting-1"] and r["left_out"] == 0
    assert r["entries"][0]["reason"] == "needs 5 bytes" and len(r["finished"]) == 3
    assert r["peers"] == ["upload"] and r["outbox"] == 0 and r["transfers"] == 0
    assert r["disk"]["reserve"] == r["disk"]["total"] // 10


def test_a_report_lists_at_most_so_many_entries_and_counts_the_others(rt, monkeypatch):
    monkeypatch.setattr(presence, "LISTED", 10)
    add(rt, 25, "waiting")
    r = wire(rt, NOW)
    assert len(r["entries"]) == 10 and r["left_out"] == 15 and r["unfinished"] == 25
    assert r["entries"][0]["name"] == "waiting-0"  # the oldest first


def test_a_report_too_big_lists_fewer_entries():
    row = presence.Listed("", "é" * 255, 1, "waiting", 1, 0, 0.0, "", NOW, NOW)
    rows = tuple(dataclasses.replace(row, id=str(i)) for i in range(200))
    report = presence.fit(presence.Report("h", entries=rows, finished=rows, left_out=3), max_bytes=64 * 1024)
    assert len(json.dumps(report.encode())) <= 64 * 1024
    assert report.finished == () and 0 < len(report.entries) < 200
    assert report.left_out == 3 + 200 - len(report.entries)


WIRE_KEYS = (
    "kind v id role agent host pid version since at every stopped counts unfinished oldest outbox transfers "
    "hashes disk peers destinations place entries left_out finished draining room"
).split()
ROW_KEYS = "id name size state attempt tries due reason created updated".split()


def test_the_report_on_the_wire_keeps_its_fields_and_order_and_reads_back_the_same(rt):
    (e,) = add(rt, 1, "uploading", size=10 << 20)
    add(rt, 1, "delivered", start=100, cleanup="failed")
    staging = os.path.join(rt.cfg.file_dir, rt.cfg.id, "staging", "upload")
    os.makedirs(staging)
    with open(os.path.join(staging, f".{e.name}.Ab12Cd"), "wb") as f:
        f.write(b"x" * (2 << 20))
    report = rt.presence.report(NOW)
    body = json.dumps(report.encode())
    d = json.loads(body)
    assert list(d) == WIRE_KEYS and list(d["disk"]) == ["free", "total", "reserve"]
    assert list(d["entries"][0]) == [*ROW_KEYS, "progress"]
    assert list(d["finished"][0]) == [*ROW_KEYS, "cleanup"]
    assert presence.Report.decode(body.encode()) == report


def test_a_holder_record_of_an_older_agent_reads_as_a_report_heard_at_its_start():
    holder = {"host": "h", "pid": 7, "since": NOW - 5, "token": "t"}
    report = presence.Report.decode(json.dumps(holder).encode())
    assert report == presence.Report("h", pid=7, since=NOW - 5, at=NOW - 5)


def test_a_report_is_published_every_interval_and_once_more_at_a_stop(rt):
    broker = rt.broker
    rt.presence.tick(NOW)
    rt.presence.tick(NOW + 1)
    rt.presence.tick(NOW + presence.INTERVAL)
    rt.presence.stopped(NOW + 6)
    assert [r["at"] for r in broker.reports] == [NOW, NOW + presence.INTERVAL, NOW + 6]
    assert broker.reports[-1]["stopped"] == NOW + 6


def test_a_change_of_the_counts_is_reported_within_a_second_and_at_most_twice_a_second(rt):
    broker = rt.broker
    rt.presence.tick(NOW)
    rt.presence.tick(NOW + 0.6)  # nothing changed: the next report is the interval's
    assert [r["at"] for r in broker.reports] == [NOW]
    add(rt, 1, "delivered")
    rt.presence.tick(NOW + 0.7)
    assert [r["at"] for r in broker.reports] == [NOW, NOW + 0.7]
    assert broker.reports[-1]["counts"] == {"delivered": 1}
    # Thousands of entries moving, a pass every 0.1 s: a report every PROMPT at most.
    for i in range(1, 20):
        add(rt, 1, "delivered", start=i)
        rt.presence.tick(NOW + 0.7 + i / 10)
    times = [r["at"] for r in broker.reports[1:]]
    assert all(b - a >= presence.PROMPT - 1e-6 for a, b in zip(times, times[1:]))
    assert len(times) == 4 and broker.reports[-1]["counts"] == {"delivered": 16}
    rt.presence.tick(NOW + 2.7)  # the last changes too, PROMPT after the last report
    assert broker.reports[-1]["counts"] == {"delivered": 20}


@pytest.mark.parametrize(
    "error", [BrokerError("lost broker connection"), PublishRefused("NOT_FOUND"), RuntimeError("a bug")]
)
def test_a_report_that_cannot_be_published_never_stops_the_agent(rt, error, caplog):
    rt.broker = FakeBroker(error)
    rt.presence.tick(NOW)
    rt.presence.tick(NOW + presence.INTERVAL)  # tried again at the next interval
    bugs = [r for r in caplog.records if "bug while building the presence report" in r.getMessage()]
    assert len(bugs) == (1 if isinstance(error, RuntimeError) else 0)  # said once, not every 5 s


def test_no_report_without_a_connection(rt):
    rt.broker = None
    rt.presence.tick(NOW)  # nothing to do, nothing raised


def test_bytes_arriving_at_central_show_as_push_progress_and_a_long_one_is_logged(rt, caplog):
    caplog.set_level("INFO", logger="synkler")
    (e,) = add(rt, 1, "uploading", size=10 << 20)
    staging = os.path.join(rt.cfg.file_dir, rt.cfg.id, "staging", "upload")
    os.makedirs(staging)
    temp = os.path.join(staging, f".{e.name}.Ab12Cd")
    with open(temp, "wb") as f:
        f.write(b"x" * (2 << 20))
    first = wire(rt, NOW)["entries"][0]["progress"]
    assert (first["what"], first["done"], first["total"], first["rate"]) == ("push", 2 << 20, 10 << 20, None)
    with open(temp, "ab") as f:
        f.write(b"x" * (3 << 20))
    later = wire(rt, NOW + 5)["entries"][0]["progress"]
    assert later["done"] == 5 << 20 and later["rate"] == (3 << 20) / 5 and later["eta"] == 8.3
    assert "uploading-0: arriving from upload: 5.24 MB of 10.5 MB, 629 kB/s, 8 s left" in caplog.text


def test_a_directory_arriving_at_central_is_walked_now_and_then_and_its_figures_stand_between(rt):
    (e,) = add(rt, 1, "uploading", size=10 << 20, kind="dir")
    tree = os.path.join(rt.cfg.file_dir, rt.cfg.id, "staging", "upload", e.name)
    os.makedirs(tree)
    with open(os.path.join(tree, "a"), "wb") as f:
        f.write(b"x" * (2 << 20))
    first = wire(rt, NOW)["entries"][0]["progress"]
    assert (first["what"], first["done"], first["total"]) == ("push", 2 << 20, 10 << 20)
    with open(os.path.join(tree, "b"), "wb") as f:
        f.write(b"x" * (3 << 20))
    assert wire(rt, NOW + 1)["entries"][0]["progress"] == first  # not walked again yet
    later = wire(rt, NOW + progress.WALK_EVERY)["entries"][0]["progress"]
    assert later["done"] == 5 << 20 and later["rate"] == (3 << 20) / progress.WALK_EVERY


def test_small_entries_get_no_progress_figures(rt):
    add(rt, 1, "uploading", size=1000)
    assert "progress" not in wire(rt, NOW)["entries"][0]


def test_forgotten_entries_are_reported_finished_and_the_relay_view_shows_none_in_flight(rt):
    add(rt, 2, "forgotten")
    add(rt, 1, "delivered", start=100)
    r = wire(rt, NOW)
    assert r["entries"] == [] and r["unfinished"] == 0 and r["oldest"] is None
    assert sorted(e["name"] for e in r["finished"]) == ["delivered-0", "forgotten-0", "forgotten-1"]
    seen = presence.Report.decode(json.dumps(r).encode())
    view = relayview.assemble("lab", [("central", "central")], {"central": seen}, {"central": (0, 1)}, 0, NOW)
    assert view["verdict"] == "all flowing, nothing in flight"
    assert all(e["finished"] for e in view["entries"]) and view["finished_listed"] == 3


def test_a_report_with_a_big_backlog_counts_it_and_lists_the_oldest_of_every_state(rt):
    # 3,000 on their way in three states, the oldest of all in the state added last.
    add(rt, 1000, "waiting", start=2000)
    add(rt, 1000, "verifying", start=1000)
    downloading = add(rt, 1000, "downloading")
    r = wire(rt, NOW + 5000)
    assert r["counts"] == {"waiting": 1000, "verifying": 1000, "downloading": 1000}
    assert r["unfinished"] == 3000 and r["left_out"] == 3000 - len(r["entries"])
    assert r["oldest"] == round(downloading[0].created, 3)
    created = [e["created"] for e in r["entries"]]
    assert created == sorted(created) and r["entries"][0]["name"] == "downloading-0"
