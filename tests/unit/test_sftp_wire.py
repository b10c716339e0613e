"""The SFTP channel's buffer that keeps packets as they came (synkler.hops.sftpwire.ChunkPipe): it
gives back exactly the bytes fed, in order, across and within packets, and waits as paramiko's own
buffer waits (a timeout, the end of the channel); and the reader of answers on it (Replies)."""

from __future__ import annotations

import io
import os
import socket
import struct
import threading
import time
from types import SimpleNamespace

import pytest
from paramiko.buffered_pipe import PipeTimeout
from paramiko.sftp import CMD_DATA, CMD_HANDLE

from synkler.hops.sftpwire import ChunkPipe, Replies


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


class _Channel:
    """The little of paramiko's Channel that Replies reads from: its buffer, recv, its timeout."""

    def __init__(self, timeout: float):
        self.in_buffer = ChunkPipe()
        self.timeout = timeout

    def gettimeout(self) -> float:
        return self.timeout

    def recv(self, n: int) -> bytes:
        return self.in_buffer.read(n, self.timeout)


def _replies(timeout: float = 5.0):
    chan = _Channel(timeout)
    client = SimpleNamespace(sock=chan, _lock=threading.Lock(), _expecting={})
    replies = Replies(client)
    return replies, chan, client


def test_the_data_of_a_read_goes_whole_into_the_file_and_other_answers_wait_by_number():
    replies, chan, client = _replies()
    client._expecting.update({7: replies, 8: replies})
    data = os.urandom(300_000)
    handle = struct.pack(">IBII", 1 + 4 + 4 + 3, CMD_HANDLE, 8, 3) + b"abc"
    answer = struct.pack(">IBII", 1 + 4 + 4 + len(data), CMD_DATA, 7, len(data)) + data
    wire = handle + answer
    for at in range(0, len(wire), 32768):  # as OpenSSH's sshd sends it: packets of 32 KiB
        chan.in_buffer.feed(wire[at : at + 32768])
    out = io.BytesIO()
    assert replies.stream(7, out) == len(data)
    assert out.getvalue() == data
    assert replies.wait(8, CMD_HANDLE).get_binary() == b"abc"
    assert client._expecting == {}


def test_central_that_falls_silent_is_a_timeout_of_the_link_as_with_paramikos_own_reads():
    replies, chan, client = _replies(timeout=0.1)
    client._expecting[1] = replies
    chan.in_buffer.feed(b"\x00\x00")  # half the length of an answer, then nothing
    with pytest.raises(socket.timeout):
        replies.stream(1, io.BytesIO())
