"""The fault proxy itself, on a plain echo server: forward, sever, stall, restore."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from support.netproxy import NetProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_both_ways(echo_port):
    with NetProxy(echo_port) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        assert roundtrip(s, b"x" * 300_000) == b"x" * 300_000
        assert proxy.connections == 1
        assert proxy.bytes_forwarded == 600_000


def test_sever_closes_live_connections_and_refuses_new_ones_until_restored(echo_port):
    with NetProxy(echo_port) as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert roundtrip(s, b"hello") == b"hello"
        assert proxy.sever() == 2  # both sides of the one live connection
        with pytest.raises(OSError):  # reset, or EOF then broken pipe
            s.sendall(b"more")
            if s.recv(10) == b"":
                raise ConnectionResetError("closed")
        s.close()
        refused = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        refused.sendall(b"anyone?")
        try:
            assert refused.recv(10) == b""
        except ConnectionResetError:
            pass
        refused.close()
        assert proxy.refused == 1
        proxy.restore()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as again:
            assert roundtrip(again, b"back") == b"back"


def test_stall_holds_bytes_with_the_socket_open_until_restored(echo_port):
    with NetProxy(echo_port) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        assert roundtrip(s, b"before") == b"before"
        proxy.stall()
        s.sendall(b"during")
        s.settimeout(1.0)
        with pytest.raises(socket.timeout):
            s.recv(10)
        assert proxy.live == 2  # nothing was closed
        proxy.restore()
        s.settimeout(5)
        got = b""
        while len(got) < 6:
            got += s.recv(10)
        assert got == b"during"


def test_throttle_slows_the_bytes_down_until_lifted(echo_port):
    import time

    with NetProxy(echo_port) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        proxy.throttle(100_000)  # bytes a second each way
        began = time.monotonic()
        assert roundtrip(s, b"x" * 100_000) == b"x" * 100_000
        slow = time.monotonic() - began
        assert slow >= 0.9, slow  # 100 kB at 100 kB/s, at least a second (both ways overlap)
        proxy.throttle(None)
        began = time.monotonic()
        assert roundtrip(s, b"y" * 1_000_000) == b"y" * 1_000_000
        assert time.monotonic() - began < slow, "still throttled"
