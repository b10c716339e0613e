"""A transfer that moves nothing for stall_seconds is stopped by the agent (synkler.hops.stall): the
decision with a fake clock, then real processes run as transfers are (synkler.hops.transfer.run)."""

from __future__ import annotations

import os
import sys
import time

from synkler.hops import transfer
from synkler.hops.stall import STALL_BYTES, ProcessTree, Stall
from synkler.linux.process import start_time


def test_a_transfer_that_moves_only_keep_alives_has_stalled_after_the_stall_time():
    watch = Stall(60.0, now=0.0)
    moved = 5_000_000  # what it moved before the link stalled, seen at the first look
    for second in range(1, 61):
        moved += 8  # a keep-alive message a second
        assert not watch.seen(moved, float(second))
    assert watch.seen(moved + 8, 61.0)
    assert watch.idle(62.0) == 61.0


def test_a_transfer_that_keeps_moving_data_never_stalls_even_slowly():
    watch = Stall(60.0, now=0.0)
    moved = 0
    for second in range(1, 600):
        moved += 1000  # 1 kB/s: a slow link, not a stalled one
        assert not watch.seen(moved, float(second)), second


def test_a_transfer_that_never_moves_a_byte_has_stalled_counted_from_its_start():
    watch = Stall(5.0, now=100.0)
    assert not watch.seen(0, 101.0)
    assert not watch.seen(STALL_BYTES - 1, 104.9)  # starting up (ssh reads its keys) moves little
    assert watch.seen(STALL_BYTES - 1, 105.0)
    progress = Stall(5.0, now=100.0)
    assert not progress.seen(STALL_BYTES, 104.0) and not progress.seen(STALL_BYTES, 108.9)
    assert progress.seen(STALL_BYTES, 109.0)


def test_a_command_that_moves_nothing_is_stopped_with_what_it_started_as_a_stalled_link():
    # The shell leaves a child that holds the output pipe open, as rsync's receiver and ssh do.
    script = "sleep 120 & echo started; sleep 120"
    began = time.monotonic()
    result = transfer.run(["sh", "-c", script], stall=1.0)
    took = time.monotonic() - began
    assert result.stalled and result.link_down and not result.ok and result.returncode == transfer.STALLED
    assert "started" in result.output and "stalled: nothing moved for 1 s" in result.summary()
    assert took < 1.0 + 2 * transfer.STOP_GRACE, took


def test_every_process_of_a_stalled_tree_is_stopped():
    proc = __import__("subprocess").Popen(["sh", "-c", "sleep 120 & sleep 120 & wait"])
    try:
        tree = ProcessTree(proc.pid)
        deadline = time.monotonic() + 10
        while len(tree.read) < 3 and time.monotonic() < deadline:  # the shell and its two sleeps
            tree.bytes_read()
            time.sleep(0.05)
        assert len(tree.read) == 3
        tree.stop()
        assert proc.wait(10) is not None
        deadline = time.monotonic() + 10
        while any(start_time(pid) == start for pid, start in tree.read) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(start_time(pid) == start for pid, start in tree.read)
    finally:
        proc.kill()
        proc.wait()


def test_a_command_that_keeps_moving_data_runs_to_its_end():
    # Reads 64 KiB every 0.1 s for 3 s: slow, never stalled for a second.
    reader = (
        "import time\n"
        "with open('/dev/zero', 'rb', buffering=0) as f:\n"
        "    for _ in range(30):\n"
        "        f.read(65536); time.sleep(0.1)\n"
        "print('read it all')\n"
    )
    result = transfer.run([sys.executable, "-c", reader], stall=1.0)
    assert result.ok and not result.stalled and "read it all" in result.output, result


def test_without_a_stall_time_nothing_is_watched():
    result = transfer.run(["sh", "-c", "sleep 1.5; echo done"], stall=0)
    assert result.ok and "done" in result.output
    assert os.path.exists("/proc/self/io")  # what the watch reads, where these tests run


def test_a_watched_command_gets_all_its_input_however_long_it_runs():
    # Input (rsync's list of paths) given once; the looks every second go on without it.
    listing = b"./a\0./b\0" * 10_000
    result = transfer.run(["sh", "-c", "sleep 2.5; wc -c"], input=listing, stall=60.0)
    assert result.ok and result.output.strip() == str(len(listing)), result
