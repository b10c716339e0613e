"""Upload looks at the names inotify tells of, not at the whole of file_dir (issue 24): the whole
directory is listed at start, after lost events and on the clock; in between a look takes the names
events told of and the names settling whose time has come. Real inotify on real files, the fake
runtime of support.fakes; the whole listings and the names of each look counted where they are made
(synkler.agents.listing)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.fakes import Role
from support.transitions import offers

from synkler.agents import listing, upload_scan
from synkler.messages import Withdraw


class Looks:
    """The looks at file_dir the scan jobs make: how many listed it whole, the names of the others."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.whole = 0
        self.some: list[set[str]] = []
        list_all, list_some = listing._list_all, listing._list_some

        def counted_all(*args):
            self.whole += 1
            return list_all(*args)

        def counted_some(file_dir, names, *args):
            self.some.append(set(names))
            return list_some(file_dir, names, *args)

        monkeypatch.setattr(listing, "_list_all", counted_all)
        monkeypatch.setattr(listing, "_list_some", counted_some)


def watching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings) -> Role:
    """An upload agent watching its file_dir, whose listing on the clock does not come during the test."""
    monkeypatch.setattr(upload_scan, "RESCAN_INTERVAL", 600.0)
    r = Role("upload", tmp_path, **settings)
    r.start()
    if not r.agent.watching:
        pytest.skip("no inotify here")
    return r


def told(r: Role) -> None:
    """Wait until the watcher has read every event so far: those of a sentinel made last."""
    told.made = getattr(told, "made", 0) + 1
    sentinel = f".sentinel-{told.made}"
    os.close(os.open(r.file_dir / sentinel, os.O_CREAT | os.O_WRONLY, 0o644))
    deadline = time.monotonic() + 10
    while True:
        with r.agent.watcher._lock:
            if sentinel in r.agent.watcher._names:
                return
        assert time.monotonic() < deadline, "inotify never told of the sentinel"
        time.sleep(0.01)


def when_due(r: Role) -> None:
    """Wait until the agent's next look is due (a condition on the clock, with a deadline)."""
    due = r.agent.next_wakeup()
    assert due is not None and due < time.time() + 10
    while time.time() < due:
        time.sleep(0.01)


def look(r: Role) -> None:
    """The next look, once due (a burst of changes costs one look per MIN_SCAN_GAP at most), started
    by a pass of the loop and handed back as the runtime does."""
    when_due(r)
    r.tick()
    r.run(r.job("scan"))


def test_after_the_first_listing_a_look_takes_only_the_names_inotify_told_of(tmp_path, monkeypatch):
    looks = Looks(monkeypatch)
    (tmp_path / "files").mkdir()
    for i in range(50):
        (tmp_path / "files" / f"old{i}").write_bytes(b"x")
    r = watching(tmp_path, monkeypatch, settle_seconds=1000)  # nothing settles here
    look(r)
    assert looks.whole == 1 and len(r.agent.pending) == 50  # the first look lists file_dir whole
    for name in ("new1", "new2"):
        (r.file_dir / name).write_bytes(b"y")
    told(r)
    look(r)
    assert (looks.whole, looks.some) == (1, [{"new1", "new2"}])
    assert {"new1", "new2"} <= set(r.agent.pending) and len(r.agent.pending) == 52


def test_a_name_settling_is_looked_at_again_when_its_time_has_come(tmp_path, monkeypatch):
    looks = Looks(monkeypatch)
    r = watching(tmp_path, monkeypatch, settle_seconds=0.5)
    (r.file_dir / "run").mkdir()
    (r.file_dir / "run" / "a").write_bytes(b"a")
    (r.file_dir / "quiet").write_bytes(b"q")
    told(r)
    look(r)  # the first look, whole: both settle from now
    assert looks.whole == 1 and set(r.agent.pending) == {"run", "quiet"}
    (r.file_dir / "run" / "b").write_bytes(b"b")  # deep inside: inotify tells nothing of it
    assert r.agent.next_wakeup() == r.agent.pending["run"][1] + 0.5
    look(r)
    assert looks.some == [{"run", "quiet"}]  # their time has come: looked at, not listed whole
    assert [o.name for o in offers(r)] == ["quiet"]  # the directory changed: it settles again
    look(r)
    (offer,) = offers(r)
    assert (offer.name, offer.files, looks.some[-1]) == ("run", 2, {"run"})
    assert looks.whole == 1


def test_a_name_removed_while_it_settles_is_forgotten_without_a_whole_listing(tmp_path, monkeypatch):
    looks = Looks(monkeypatch)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "gone").write_bytes(b"g")
    r = watching(tmp_path, monkeypatch, settle_seconds=1000)
    look(r)
    assert "gone" in r.agent.pending
    (r.file_dir / "gone").unlink()
    told(r)
    look(r)
    assert (looks.whole, looks.some) == (1, [{"gone"}]) and "gone" not in r.agent.pending


def test_a_sidecar_written_is_a_change_of_its_entry(tmp_path, monkeypatch):
    looks = Looks(monkeypatch)
    r = watching(tmp_path, monkeypatch, settle_seconds=1000)
    (r.file_dir / "scan.tif").write_bytes(b"t")
    told(r)
    look(r)
    before = r.agent.pending["scan.tif"][0]
    (r.file_dir / "scan.tif.meta.json").write_text('{"sample": "A1"}')
    told(r)
    look(r)
    assert looks.some == [{"scan.tif"}]
    assert r.agent.pending["scan.tif"][0] != before  # its fingerprint holds the sidecar's now


def test_lost_events_make_the_next_look_a_whole_listing(tmp_path, monkeypatch):
    looks = Looks(monkeypatch)
    r = watching(tmp_path, monkeypatch, settle_seconds=1000)
    look(r)
    # As after IN_Q_OVERFLOW (the watcher's own test makes one): no name is known.
    monkeypatch.setattr(r.agent.watcher, "take_changes", lambda: (set(), True))
    (r.file_dir / "missed").write_bytes(b"m")
    r.agent.changed.set()
    look(r)
    assert (looks.whole, looks.some) == (2, []) and "missed" in r.agent.pending


def test_events_lost_again_and_again_cost_a_whole_listing_only_now_and_then(tmp_path, monkeypatch):
    """A flood that overflows inotify's queue after every listing: the names the events that were
    not lost tell of are looked at as they come, and the whole directory is listed again only once
    the last whole listing's time, three times over, has passed (LOST_SHARE of the time at most)."""
    looks = Looks(monkeypatch)
    r = watching(tmp_path, monkeypatch, settle_seconds=1000)
    look(r)
    lost = {"now": True}
    take = r.agent.watcher.take_changes
    # As after IN_Q_OVERFLOW each time: the events of the names "missed…" were lost.
    monkeypatch.setattr(
        r.agent.watcher,
        "take_changes",
        lambda: ({n for n in take()[0] if not n.startswith("missed")}, lost["now"]),
    )
    (r.file_dir / "missed").write_bytes(b"m")
    r.agent.changed.set()
    look(r)  # the first loss: listed whole at once
    assert (looks.whole, looks.some) == (2, []) and "missed" in r.agent.pending
    # As if that listing had taken 10 s: the next one for lost events waits 30 s.
    r.agent.relist_after = time.time() + 30
    (r.file_dir / "told").write_bytes(b"t")
    (r.file_dir / "missed-too").write_bytes(b"m")
    told(r)
    look(r)  # lost again, but too soon: a look at the names told
    assert looks.whole == 2 and "told" in looks.some[-1] and "told" in r.agent.pending
    assert "missed-too" not in r.agent.pending
    lost["now"] = False
    assert r.agent.lost and r.agent.next_wakeup() == pytest.approx(r.agent.relist_after)
    r.tick(r.agent.relist_after)
    r.run(r.job("scan"))
    assert looks.whole == 3 and "missed-too" in r.agent.pending and not r.agent.lost


def test_the_whole_directory_is_listed_again_on_the_clock(tmp_path, monkeypatch):
    looks = Looks(monkeypatch)
    r = watching(tmp_path, monkeypatch, settle_seconds=1000)
    look(r)
    assert r.agent.next_wakeup() == r.agent.next_scan > time.time() + 30  # (MAX_SCAN_GAP)
    r.tick(r.agent.next_scan)
    r.run(r.job("scan"))
    assert (looks.whole, looks.some) == (2, [])


def test_a_directory_that_changed_while_it_was_sent_is_looked_at_again(tmp_path, monkeypatch):
    """Its version is withdrawn; inotify tells nothing of a change deep inside, so upload looks at
    the name again itself, and offers what it holds now."""
    looks = Looks(monkeypatch)
    r = watching(tmp_path, monkeypatch, settle_seconds=0)
    (r.file_dir / "run").mkdir()
    (r.file_dir / "run" / "a").write_bytes(b"a")
    told(r)
    look(r)
    look(r)
    (first,) = offers(r)
    (r.file_dir / "run" / "b").write_bytes(b"b")
    r.run(r.job("hash"))  # it reads two files where one settled: withdrawn
    assert [m.entry for _, m in r.sent() if isinstance(m, Withdraw)] == [first.entry]
    look(r)  # looked at again, though inotify told nothing: it settles
    assert looks.some[-1] == {"run"}
    look(r)  # settled; relayed before: hashed first
    r.run(r.job("hash"))
    (second,) = offers(r)
    assert (second.name, second.files, looks.whole) == ("run", 2, 1)


class SidecarLooks:
    """The names whose sidecars the scan asks the file system for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.asked: list[str] = []
        stamp = listing._sidecar_stamp

        def counted(file_dir, name):
            self.asked.append(name)
            return stamp(file_dir, name)

        monkeypatch.setattr(listing, "_sidecar_stamp", counted)


def read_with_its_sidecar(r: Role, name: str, meta: dict) -> bool:
    """Does the agent's fingerprint of `name` hold its sidecar's, and its metadata the sidecar's?"""
    signature = r.agent.pending[name][0]
    seen = r.agent.sidecars.seen.get(name)
    return listing.data_signature(signature) != signature and seen is not None and seen.read == meta


def rename_in(r: Role, name: str, data: bytes) -> None:
    """As `synkler send` puts a file (or its sidecar) in place: written under a dot name, renamed."""
    (r.file_dir / f".{name}.part").write_bytes(data)
    os.rename(r.file_dir / f".{name}.part", r.file_dir / name)


@pytest.mark.parametrize("order", ["sidecar-first", "together", "file-first"])
def test_a_sidecar_written_before_with_or_after_its_file_is_read(tmp_path, monkeypatch, order):
    sidecar_looks = SidecarLooks(monkeypatch)
    r = watching(tmp_path, monkeypatch, settle_seconds=1000)
    look(r)  # the whole listing at start: no sidecar in file_dir
    meta = {"sample": "A1"}
    if order == "sidecar-first":
        (r.file_dir / "scan.tif.meta.json").write_text('{"sample": "A1"}')
        told(r)
        look(r)
    (r.file_dir / "plain.tif").write_bytes(b"p")  # written with it, has no sidecar
    (r.file_dir / "scan.tif").write_bytes(b"t")
    if order == "together":
        (r.file_dir / "scan.tif.meta.json").write_text('{"sample": "A1"}')
    told(r)
    look(r)
    if order == "file-first":
        (r.file_dir / "scan.tif.meta.json").write_text('{"sample": "A1"}')
        told(r)
        look(r)
    assert read_with_its_sidecar(r, "scan.tif", meta)
    assert "plain.tif" in r.agent.pending and "plain.tif" not in sidecar_looks.asked  # none asked for


def test_a_sidecar_there_before_the_agent_started_is_read_when_its_file_comes(tmp_path, monkeypatch):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "scan.tif.meta.json").write_text('{"sample": "B2"}')  # no event tells of it
    r = watching(tmp_path, monkeypatch, settle_seconds=1000)
    look(r)  # the whole listing finds it
    (r.file_dir / "scan.tif").write_bytes(b"t")
    told(r)
    look(r)
    assert read_with_its_sidecar(r, "scan.tif", {"sample": "B2"})


def test_a_sidecar_left_when_its_file_went_is_read_when_the_file_comes_back(tmp_path, monkeypatch):
    r = watching(tmp_path, monkeypatch, settle_seconds=1000)
    look(r)
    (r.file_dir / "scan.tif.meta.json").write_text('{"sample": "C3"}')
    (r.file_dir / "scan.tif").write_bytes(b"t")
    told(r)
    look(r)
    (r.file_dir / "scan.tif").unlink()
    told(r)
    look(r)
    assert "scan.tif" not in r.agent.pending
    (r.file_dir / "scan.tif").write_bytes(b"again")
    told(r)
    look(r)
    assert read_with_its_sidecar(r, "scan.tif", {"sample": "C3"})


def test_a_file_renamed_in_just_after_its_sidecar_is_offered_at_once_with_its_metadata(tmp_path, monkeypatch):
    r = watching(tmp_path, monkeypatch, settle_seconds=1000)
    look(r)
    rename_in(r, "scan.tif.meta.json", b'{"sample": "D4"}')
    rename_in(r, "scan.tif", b"t")
    told(r)
    look(r)
    (offer,) = offers(r)
    assert (offer.name, offer.meta) == ("scan.tif", {"sample": "D4"})


def test_after_lost_events_every_name_looked_at_is_asked_for_its_sidecar(tmp_path, monkeypatch):
    sidecar_looks = SidecarLooks(monkeypatch)
    r = watching(tmp_path, monkeypatch, settle_seconds=1000)
    look(r)
    take = r.agent.watcher.take_sidecars
    monkeypatch.setattr(r.agent.watcher, "take_sidecars", lambda: None)  # as after IN_Q_OVERFLOW
    (r.file_dir / "a").write_bytes(b"a")
    told(r)
    look(r)
    assert sidecar_looks.asked == ["a"]
    monkeypatch.setattr(r.agent.watcher, "take_sidecars", take)
    (r.file_dir / "b").write_bytes(b"b")
    told(r)
    look(r)  # still unknown until a whole listing
    assert sidecar_looks.asked == ["a", "b"]
    changes = r.agent.watcher.take_changes
    monkeypatch.setattr(r.agent.watcher, "take_changes", lambda: (changes()[0], True))
    r.agent.changed.set()
    look(r)  # a whole listing (as the lost events ask for)
    monkeypatch.setattr(r.agent.watcher, "take_changes", changes)
    (r.file_dir / "c").write_bytes(b"c")
    told(r)
    look(r)
    assert "c" not in sidecar_looks.asked
