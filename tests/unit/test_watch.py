"""DirWatcher: which files it vouches for as renamed in whole (real inotify on a real directory)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from synkler.agents.watch import DirWatcher
from synkler.linux.inotify import max_queued_events


@pytest.fixture
def watched(tmp_path: Path):
    d = tmp_path / "files"
    d.mkdir()
    w = DirWatcher(str(d), lambda: None)
    if not w.start():
        pytest.skip("no inotify here")
    yield d, w
    w.stop()


def renamed_after(d: Path, w: DirWatcher) -> set[str]:
    """Rename a sentinel in last and wait until the watcher has read its event (and so all before it)."""
    (d.parent / ".sentinel").write_bytes(b"")
    os.rename(d.parent / ".sentinel", d / "sentinel")
    deadline = time.monotonic() + 10
    while True:
        with w._lock:
            if "sentinel" in w._renamed:
                break
        assert time.monotonic() < deadline, "the watcher never saw the sentinel"
        time.sleep(0.01)
    return w.take_renamed() - {"sentinel"}


def rename_in(d: Path, name: str, data: bytes = b"data") -> Path:
    tmp = d / f".{name}.part"
    tmp.write_bytes(data)
    os.rename(tmp, d / name)
    return d / name


def test_a_file_renamed_in_is_vouched_for_once(watched):
    d, w = watched
    rename_in(d, "a.raw")
    (d.parent / "b.raw").write_bytes(b"from outside")
    os.rename(d.parent / "b.raw", d / "b.raw")
    assert renamed_after(d, w) == {"a.raw", "b.raw"}
    assert w.take_renamed() == set()


def test_a_file_written_where_it_stands_is_not_vouched_for(watched):
    d, w = watched
    (d / "in-place.raw").write_bytes(b"data")
    assert renamed_after(d, w) == set()


@pytest.mark.parametrize(
    "after",
    [
        pytest.param(lambda p: p.open("ab").close(), id="opened-for-writing-and-closed"),
        pytest.param(lambda p: p.chmod(0o600), id="chmod"),
        pytest.param(lambda p: os.rename(p, p.parent.parent / "moved-away"), id="moved-out"),
        pytest.param(lambda p: p.unlink(), id="removed"),
        pytest.param(lambda p: (p.unlink(), p.write_bytes(b"new")), id="replaced"),
    ],
)
def test_anything_done_to_a_renamed_file_afterwards_withdraws_it(watched, after):
    d, w = watched
    after(rename_in(d, "x.raw"))
    assert renamed_after(d, w) == set()


def test_a_directory_renamed_in_is_not_vouched_for(watched):
    d, w = watched
    (d / ".run").mkdir()
    (d / ".run" / "f").write_bytes(b"x")
    os.rename(d / ".run", d / "run")
    assert renamed_after(d, w) == set()


def flood(d: Path, w: DirWatcher, prefix: str, n: int = 20_000) -> None:
    """More events than inotify's queue holds (16,384 by default; two a file) while the watcher
    thread is held (it waits for its lock after reading what was queued): the kernel drops events."""
    before = w.overflows
    with w._lock:
        for i in range(n):
            os.close(os.open(d / f"{prefix}-{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    deadline = time.monotonic() + 30  # until the thread has read the queue up to the overflow
    while w.overflows == before:
        assert time.monotonic() < deadline, "no overflow"
        time.sleep(0.01)


def test_lost_events_void_the_renamed_files_and_are_logged_once_for_many_overflows(watched, caplog):
    d, w = watched
    limit = max_queued_events()
    if limit is None or limit > 30_000:
        pytest.skip(f"fs.inotify.max_queued_events is {limit}: this flood would not overflow it")
    rename_in(d, "whole.raw")
    flood(d, w, "first")
    assert renamed_after(d, w) == set()  # whole.raw's rename may be among the events lost
    assert w.overflows == 1
    rename_in(d, "second.raw")
    flood(d, w, "second")
    assert renamed_after(d, w) == set()
    assert w.overflows == 2
    said = [r for r in caplog.records if "faster than inotify" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert f"{limit:,} events overflowed" in said[0].getMessage()


def test_the_names_events_told_of_are_handed_out_once_and_lost_events_ask_for_a_whole_listing(watched):
    d, w = watched
    (d / "written").write_bytes(b"x")
    rename_in(d, "renamed")
    (d / "written").unlink()
    renamed_after(d, w)
    names, whole = w.take_changes()
    assert {"written", "renamed", "sentinel"} <= names and not whole
    assert w.take_changes() == (set(), False)
    limit = max_queued_events()
    if limit is None or limit > 30_000:
        pytest.skip(f"fs.inotify.max_queued_events is {limit}: this flood would not overflow it")
    flood(d, w, "lost")
    names, whole = w.take_changes()
    assert whole  # some of the flood's names are not among `names`: only a whole listing finds them
    assert w.take_changes()[1] is False


def test_the_sidecars_events_told_of_are_handed_out_once_by_entry_and_lost_events_make_them_unknown(watched):
    d, w = watched
    (d / "scan.tif.meta.json").write_text("{}")
    rename_in(d, "plate.raw.meta.json")
    (d / "plain.raw").write_bytes(b"x")  # no sidecar: not among them
    renamed_after(d, w)
    assert w.take_sidecars() == {"scan.tif", "plate.raw"}
    assert w.take_sidecars() == set()
    (d / "scan.tif.meta.json").unlink()  # removed: told of too (the scan finds it gone)
    renamed_after(d, w)
    assert w.take_sidecars() == {"scan.tif"}
    limit = max_queued_events()
    if limit is None or limit > 30_000:
        pytest.skip(f"fs.inotify.max_queued_events is {limit}: this flood would not overflow it")
    flood(d, w, "lost")
    assert w.take_sidecars() is None  # a sidecar's event may be among those lost: any may be there
    assert w.take_sidecars() == set()
