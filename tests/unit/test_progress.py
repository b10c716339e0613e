"""Progress of long work: rate and time left from samples, -v lines, bytes seen arriving, md5 counts."""

from __future__ import annotations

import os

from synkler.hops import checksum
from synkler.observe.progress import (
    EVERY,
    LONG,
    WALK_EVERY,
    Arrivals,
    Meter,
    Progress,
    arrived,
    duration_text,
    rate_and_eta,
    size_text,
)


def test_rate_and_eta_need_two_samples_apart_in_time():
    assert rate_and_eta([], 100) == (None, None)
    assert rate_and_eta([(10.0, 0)], 100) == (None, None)
    assert rate_and_eta([(10.0, 0), (10.0, 50)], 100) == (None, None)


def test_rate_is_taken_over_the_samples_and_eta_is_what_is_left_at_that_rate():
    rate, eta = rate_and_eta([(0.0, 0), (5.0, 50_000_000), (10.0, 120_000_000)], 300_000_000)
    assert rate == 12_000_000 and eta == 15.0


def test_no_progress_means_no_eta_unless_nothing_is_left():
    assert rate_and_eta([(0.0, 10), (5.0, 10)], 100) == (0.0, None)
    assert rate_and_eta([(0.0, 100), (5.0, 100)], 100) == (0.0, 0.0)


def test_the_meter_keeps_a_window_of_samples_and_starts_again_when_bytes_go_back():
    m = Meter(window=30)
    for t in range(0, 100, 5):
        p = m.sample("e1", "push", t * 1000, 1_000_000, float(t))
    assert p.rate == 1000.0 and p.started == 0.0
    p = m.sample("e1", "push", 0, 1_000_000, 100.0)  # a new attempt started from zero
    assert p.rate is None and p.done == 0


def test_a_progress_line_is_due_after_a_few_seconds_and_then_every_fifteen():
    m = Meter()
    m.sample("e1", "pull", 1, 10, 0.0)
    assert not m.line_due("e1", "pull", LONG - 1)
    assert m.line_due("e1", "pull", LONG)
    assert not m.line_due("e1", "pull", LONG + EVERY - 1)
    assert m.line_due("e1", "pull", LONG + EVERY)


def test_the_meter_forgets_what_was_not_sampled_in_a_round():
    m = Meter()
    m.sample("e1", "pull", 1, 10, 0.0)
    m.end_round()
    m.end_round()  # e1 was not sampled in this round: gone, and it starts again when seen again
    assert m.sample("e1", "pull", 5, 10, 50.0).started == 50.0


def test_progress_reads_as_a_person_expects():
    p = Progress("push", 120_000_000, 300_000_000, 12_000_000.0, 15.0, 0.0)
    assert p.text() == "120 MB of 300 MB, 12 MB/s, 15 s left"
    assert Progress("md5", 0, 2048, None, None, 0.0).text() == "0 B of 2.05 kB"
    assert [size_text(n) for n in (0, 999, 1500, 41_943_040, 1.2e9)] == [
        "0 B",
        "999 B",
        "1.5 kB",
        "41.9 MB",
        "1.2 GB",
    ]
    assert [duration_text(s) for s in (5, 150, 7500, 200_000)] == ["5 s", "2 min", "2 h 5 min", "2 d 7 h"]


def test_arrived_counts_rsyncs_temporary_file_its_partial_file_and_a_growing_directory(tmp_path):
    (tmp_path / ".big.bin.AbC123").write_bytes(b"x" * 700)
    (tmp_path / ".big.bin.tooshortorlong").write_bytes(b"x" * 5)  # not rsync's name for it
    (tmp_path / ".synkler-partial").mkdir()
    (tmp_path / ".synkler-partial" / "big.bin").write_bytes(b"x" * 300)
    assert arrived(str(tmp_path), "big.bin", {}) == 1000
    tree = tmp_path / "run"
    (tree / "sub").mkdir(parents=True)
    (tree / "a").write_bytes(b"a" * 10)
    (tree / "sub" / ".b.XyZ987").write_bytes(b"b" * 20)  # a file of it still being written
    os.symlink("a", tree / "link")
    assert arrived(str(tmp_path), "run", {}) == 30
    assert arrived(str(tmp_path), "missing", {}) == 0


def test_a_file_arriving_is_looked_at_every_round_and_a_directory_walked_again_only_after_a_while(tmp_path):
    arrivals = Arrivals()
    (tmp_path / ".big.bin.AbC123").write_bytes(b"x" * 700)
    tree = tmp_path / "run"
    tree.mkdir()
    (tree / "a").write_bytes(b"a" * 10)
    arrivals.new_round()
    assert arrivals.look(str(tmp_path), "big.bin", 0.0) == 700
    assert arrivals.look(str(tmp_path), "run", 0.0) == 10
    (tmp_path / ".big.bin.AbC123").write_bytes(b"x" * 900)
    (tree / "b").write_bytes(b"b" * 20)
    arrivals.new_round()
    assert arrivals.look(str(tmp_path), "big.bin", 1.0) == 900  # a file: every round
    assert arrivals.look(str(tmp_path), "run", 1.0) is None  # walked a moment ago: its figure stands
    arrivals.new_round()
    assert arrivals.look(str(tmp_path), "run", WALK_EVERY) == 30
    assert arrivals.look(str(tmp_path), "missing", WALK_EVERY) == 0


def test_a_round_walks_directories_only_while_its_budget_lasts_and_the_others_get_their_turn_next(tmp_path):
    arrivals = Arrivals(every=10.0, budget=5)
    for d in ("one", "two", "three"):
        (tmp_path / d).mkdir()
        for i in range(3):
            (tmp_path / d / str(i)).write_bytes(b"z" * 100)
    staging = str(tmp_path)
    seen = []
    for now in (0.0, 1.0, 2.0, 3.0):
        arrivals.new_round()
        seen.append([arrivals.look(staging, d, now) for d in ("one", "two", "three")])
    # 3 files a walk, 5 a round: two walks, then none; those walked wait 10 s for the next
    assert seen == [[300, 300, None], [None, None, 300], [None, None, None], [None, None, None]]


def test_the_meter_gives_the_last_figures_again_without_a_new_sample():
    m = Meter()
    assert m.last("e1", "push", 100) is None
    m.sample("e1", "push", 10, 100, 0.0)
    m.sample("e1", "push", 30, 100, 2.0)
    m.end_round()
    p = m.last("e1", "push", 100)
    assert p is not None and (p.done, p.rate, p.eta, p.started) == (30, 10.0, 7.0, 0.0)
    m.end_round()  # kept in the last round: still known
    assert m.last("e1", "push", 100) is not None


def test_an_md5_under_way_counts_the_bytes_it_has_read(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"z" * 10_000)
    seen = []
    real = checksum._md5_file_nofollow

    def spy(p, bufsize=4 << 20):
        result = real(p, bufsize=1000)
        seen.extend((h.path, h.done, h.total) for h in checksum.running())
        return result

    monkeypatch.setattr(checksum, "_md5_file_nofollow", spy)
    checksum.md5_entry(path)
    assert seen == [(os.fsencode(path), 10_000, 10_000)]
    assert checksum.running() == []  # ended: no longer listed


def test_the_md5_of_a_directory_knows_its_total_before_reading(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"a" * 100)
    (tmp_path / "d" / "b").write_bytes(b"b" * 50)
    totals = []
    real = checksum._file_nofollow

    def spy(p, strong, bufsize=4 << 20):
        totals.append([h.total for h in checksum.running()])
        return real(p, strong, bufsize)

    monkeypatch.setattr(checksum, "_file_nofollow", spy)
    checksum.md5_entry(tmp_path / "d")
    assert totals == [[150], [150]]
