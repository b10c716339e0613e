"""The receiving side of an SFTP session, without paramiko's copies (synkler.hops.sftp opens the
channel with `ChunkPipe`; synkler.hops.sftpcopy reads its answers with `Replies`).

Why: a pull spends its time in copies, not in the network. paramiko keeps a channel's incoming
bytes in one array and, at every read from it, copies what is read out and moves everything
behind it to the front; its SFTP client then grows each answer by `+=` and copies it twice more
before the data is handed over. With many reads in flight (what a fast pull needs: OpenSSH's
client keeps 64 in flight) those moves cost in proportion to what waits, so a deeper pipeline
was slower, not faster. Here the channel's bytes stay in the packets they came in (a queue of
them, an offset into the first), an answer is read in pieces of those packets, and the data of a
read goes from them straight into the file it is for.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections import deque
from typing import Any, BinaryIO

import paramiko
from paramiko.buffered_pipe import PipeTimeout
from paramiko.sftp import CMD_DATA, CMD_STATUS, SFTPError

log = logging.getLogger(__name__)

# An SFTP packet longer than this is garbage (paramiko's own check: a length with its high byte set).
MAX_PACKET = 1 << 24


class ChunkPipe:
    """paramiko's BufferedPipe (a channel's `in_buffer`), as a queue of the packets fed to it:
    a read takes what it asks for without moving what stays behind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._event: threading.Event | None = None
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of the first chunk already read
        self._size = 0  # bytes held
        self._closed = False
        self._want = 0  # bytes a reader waits for (`wait_for`): fed packets wake it only then

    def set_event(self, event: threading.Event) -> None:
        with self._lock:
            self._event = event
            if self._closed or self._size:
                event.set()
            else:
                event.clear()

    def feed(self, data: bytes) -> None:
        with self._lock:
            if self._event is not None:
                self._event.set()
            if data:
                self._chunks.append(bytes(data))
                self._size += len(data)
            if self._size >= self._want:
                self._cv.notify_all()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        """Up to `nbytes` of what is held, waiting up to `timeout` seconds (PipeTimeout) for
        something; b"" once closed and empty."""
        with self._lock:
            if not self._size:
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._size and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise PipeTimeout()
                    self._cv.wait(left)
                if not self._size:
                    return b""
            out = self._take(nbytes)
            if not self._size and self._event is not None and not self._closed:
                self._event.clear()
            return out

    def wait_for(self, nbytes: int, timeout: float | None = None) -> None:
        """Wait until `nbytes` are held (or the pipe is closed): one wake-up for a whole answer,
        not one per packet. PipeTimeout after `timeout` seconds in which nothing came (as a
        read's timeout: a slow link that keeps sending is not a stalled one)."""
        with self._lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            seen = self._size
            try:
                while self._size < nbytes and not self._closed:
                    if self._size > seen and timeout is not None:
                        seen, deadline = self._size, time.monotonic() + timeout
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise PipeTimeout()
                    self._want = nbytes
                    self._cv.wait(left)
            finally:
                self._want = 0

    def _take(self, nbytes: int) -> bytes:
        pieces = []
        want = nbytes
        while want > 0 and self._chunks:
            first = self._chunks[0]
            left = len(first) - self._offset
            if left > want:
                pieces.append(first[self._offset : self._offset + want])
                self._offset += want
                want = 0
            else:
                pieces.append(first[self._offset :] if self._offset else first)
                self._chunks.popleft()
                self._offset = 0
                want -= left
        out = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self._size -= len(out)
        return out

    def empty(self) -> bytes:
        with self._lock:
            out = self._take(self._size) if self._size else b""
            if self._event is not None and not self._closed:
                self._event.clear()
            return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cv.notify_all()
            if self._event is not None:
                self._event.set()

    def __len__(self) -> int:
        with self._lock:
            return self._size


def open_sftp(
    transport: paramiko.Transport, window_size: int, max_packet_size: int
) -> paramiko.SFTPClient | None:
    """paramiko's SFTPClient.from_transport, with a ChunkPipe as the channel's buffer."""
    chan = transport.open_session(window_size=window_size, max_packet_size=max_packet_size)
    if chan is None:
        return None
    chan.in_buffer = ChunkPipe()  # before any byte of the session arrives
    chan.invoke_subsystem("sftp")
    return paramiko.SFTPClient(chan)


class Replies:
    """Requests sent without waiting, and their answers by request number, read from the channel
    here rather than through paramiko's `_read_response` (which copies each answer three times);
    the data of a read can go straight into a file (`stream`)."""

    def __init__(self, client: paramiko.SFTPClient):
        self.client = client
        self.chan = client.sock
        self.pipe = getattr(self.chan, "in_buffer", None)
        self.got: dict[int, tuple[int, Any]] = {}

    def _async_response(self, t: int, msg: Any, num: int) -> None:  # paramiko's hook, as its files have
        self.got[num] = (t, msg)

    def send(self, t: int, *args: Any) -> int:
        return int(self.client._async_request(self, t, *args))

    def wait(self, num: int, expect: int) -> Any:
        """The answer to request `num`: its message; an error status raised as paramiko raises it."""
        while num not in self.got:
            self._read_one()
        t, msg = self.got.pop(num)
        if t == CMD_STATUS:
            self.client._convert_status(msg)  # raises unless the status is OK
            if expect == CMD_STATUS:
                return msg
        if t != expect:
            raise SFTPError(f"central answered {t} to a request that expects {expect}")
        return msg

    def stream(self, num: int, out: BinaryIO) -> int:
        """Write the data answering read request `num` to `out`; its length. EOFError at the end
        of the file, an error status raised as paramiko raises it."""
        while num not in self.got:
            n = self._read_one(num, out)
            if n is not None:
                return n
        data = self.wait(num, CMD_DATA).get_string()
        out.write(data)
        return len(data)

    # reading ------------------------------------------------------------------------------------

    def _exactly(self, n: int) -> bytes:
        if isinstance(self.pipe, ChunkPipe):
            try:
                self.pipe.wait_for(n, self.chan.gettimeout())
            except PipeTimeout:
                raise socket.timeout() from None  # as the channel's recv raises it
        pieces = []
        while n > 0:
            piece = self.chan.recv(n)
            if not piece:
                raise paramiko.SSHException("Server connection dropped: the channel closed")
            pieces.append(piece)
            n -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _read_one(self, streamed: int | None = None, out: BinaryIO | None = None) -> int | None:
        """Read one answer: kept in `got` by its number, or, when it is the data of read request
        `streamed`, written to `out` as it arrives (then its length is returned)."""
        size = struct.unpack(">I", self._exactly(4))[0]
        if size >= MAX_PACKET or size < 5:
            raise SFTPError("Garbage packet received")
        head = self._exactly(min(size, 9))
        t, num = head[0], struct.unpack(">I", head[1:5])[0]
        with self.client._lock:
            owner = self.client._expecting.pop(num, None)
        if t == CMD_DATA and num == streamed and owner is self and len(head) == 9:
            assert out is not None
            n = struct.unpack(">I", head[5:9])[0]
            if n != size - 9:
                raise SFTPError(f"central sent a data packet of {size} bytes holding {n}")
            out.write(self._exactly(n))
            return n
        msg = paramiko.Message(head[1:] + self._exactly(size - len(head)))
        msg.get_int()  # the request number, read above
        if owner is None:
            log.debug("an answer to no request in flight (#%d): dropped", num)
        elif owner is self:
            self.got[num] = (t, msg)
        elif owner is not type(None):  # paramiko's own (a file's prefetch), as _read_response does
            owner._async_response(t, msg, num)
        return None
