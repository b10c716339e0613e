"""The SFTP channel's buffer that keeps packets as they came (synkler.hops.sftpwire.ChunkPipe): it
gives back exactly the bytes fed, in order, across and within packets, and waits as paramiko's own
buffer waits (a timeout, the end of the channel)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from paramiko.buffered_pipe import PipeTimeout

from synkler.hops.sftpwire import ChunkPipe


def test_reads_of_any_size_give_back_the_fed_bytes_in_order_across_and_within_packets():
    fed = [os.urandom(n) for n in (1, 32768, 5, 262144, 31757, 0, 9)]
    pipe = ChunkPipe()
    for chunk in fed:
        pipe.feed(chunk)
    whole = b"".join(fed)
    assert len(pipe) == len(whole)
    got = []
    for n in (4, 9, 1, 40000, 3, 262144, 100000):
        got.append(pipe.read(n))
        assert len(got[-1]) <= n
    assert b"".join(got) == whole
    assert len(pipe) == 0 and not pipe.read_ready()


def test_empty_hands_over_what_is_held_and_a_closed_pipe_reads_empty_once_drained():
    pipe = ChunkPipe()
    pipe.feed(b"abc")
    pipe.feed(b"def")
    assert pipe.read(2) == b"ab"
    assert pipe.empty() == b"cdef"
    pipe.feed(b"g")
    pipe.close()
    assert pipe.read(10) == b"g"
    assert pipe.read(10) == b""


def test_a_read_waits_for_a_packet_and_times_out_without_one():
    pipe = ChunkPipe()
    with pytest.raises(PipeTimeout):
        pipe.read(10, timeout=0.0)
    started = time.monotonic()
    with pytest.raises(PipeTimeout):
        pipe.read(10, timeout=0.1)
    assert time.monotonic() - started >= 0.1
    threading.Timer(0.05, pipe.feed, [b"late"]).start()
    assert pipe.read(10, timeout=10) == b"late"


def test_wait_for_returns_once_the_whole_answer_is_held_or_the_channel_ends():
    pipe = ChunkPipe()
    feeder = threading.Thread(target=lambda: [pipe.feed(b"x" * 1000) for _ in range(10)])
    feeder.start()
    pipe.wait_for(10000, timeout=10)
    feeder.join()
    assert len(pipe) == 10000
    with pytest.raises(PipeTimeout):
        pipe.wait_for(10001, timeout=0.05)
    threading.Timer(0.05, pipe.close).start()
    pipe.wait_for(20000, timeout=10)  # closed: no more will come
    assert pipe.read(20000) == b"x" * 10000


def test_the_event_of_a_select_says_whether_bytes_are_held():
    pipe = ChunkPipe()
    event = threading.Event()
    pipe.set_event(event)
    assert not event.is_set()
    pipe.feed(b"a")
    assert event.is_set()
    pipe.read(1)
    assert not event.is_set()
    pipe.close()
    assert event.is_set()


def test_wait_for_times_out_on_a_silence_not_on_a_slow_answer_that_keeps_coming():
    pipe = ChunkPipe()
    done = threading.Event()

    def trickle():
        for _ in range(60):  # 3 s in all, longer than the timeout, never silent for long
            if done.wait(0.05):
                return
            pipe.feed(b"x")

    feeder = threading.Thread(target=trickle)
    feeder.start()
    try:
        started = time.monotonic()
        pipe.wait_for(60, timeout=2.0)
        assert time.monotonic() - started > 2.0
    finally:
        done.set()
        feeder.join()
    assert len(pipe) == 60
