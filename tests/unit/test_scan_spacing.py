"""Upload's listings of file_dir on the clock cost at most a share of the time (issue 24): a big
directory is listed less often, a small one as before. Driven through the fake runtime."""

from __future__ import annotations

import time
from pathlib import Path

from support.fakes import Role

from synkler.agents.listing import Listing
from synkler.agents.upload_scan import MAX_SCAN_GAP, RESCAN_INTERVAL, SCAN_INTERVAL, SCAN_SHARE


def scanned_after(tmp_path: Path, took: float) -> tuple[float, bool]:
    """When upload lists file_dir next, seconds from now, after a listing that took `took` seconds."""
    r = Role("upload", tmp_path)
    r.start()
    r.agent.scan_started = time.monotonic() - took
    with r.state.transaction():
        r.agent._scanned(Listing({}, set()), None)
    return r.agent.next_scan - time.time(), r.agent.watching


def test_a_quick_listing_is_made_again_at_the_usual_interval(tmp_path: Path):
    gap, watching = scanned_after(tmp_path, 0.001)
    assert abs(gap - (RESCAN_INTERVAL if watching else SCAN_INTERVAL)) < 0.5


def test_a_slow_listing_is_made_less_often_but_at_least_every_minute_or_ten_with_inotify(tmp_path: Path):
    gap, watching = scanned_after(tmp_path, 0.05)
    interval = RESCAN_INTERVAL if watching else SCAN_INTERVAL
    assert abs(gap - max(interval, 0.05 / SCAN_SHARE[watching])) < 0.5
    (tmp_path / "slow").mkdir()
    gap, watching = scanned_after(tmp_path / "slow", 30.0)
    assert abs(gap - MAX_SCAN_GAP[watching]) < 0.5
