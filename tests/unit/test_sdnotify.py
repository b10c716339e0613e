"""systemd's notification protocol (synkler/linux/sdnotify.py), against a real datagram socket."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from synkler.linux import sdnotify
from synkler.linux.sdnotify import Notifier


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and its $NOTIFY_SOCKET value (a short path: sun_path is ~108 bytes)."""
    directory = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def received(sock: socket.socket) -> list[str]:
    """Every message waiting on the socket, each as its text."""
    out = []
    sock.settimeout(0.2)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except (TimeoutError, socket.timeout):
        return out


def test_a_path_and_an_abstract_name_are_addresses_anything_else_is_not() -> None:
    assert sdnotify.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert (
        sdnotify.socket_address("@/org/freedesktop/systemd1/notify/123")
        == "\0/org/freedesktop/systemd1/notify/123"
    )
    assert sdnotify.socket_address("@") is None
    assert sdnotify.socket_address("relative/path") is None
    assert sdnotify.socket_address("vsock:2:1234") is None


def test_the_watchdog_interval_comes_from_watchdog_usec_for_this_process_only() -> None:
    assert sdnotify.watchdog_seconds({"WATCHDOG_USEC": "4000000"}, 42) == 4.0
    assert sdnotify.watchdog_seconds({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "42"}, 42) == 4.0
    assert sdnotify.watchdog_seconds({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "7"}, 42) is None
    assert sdnotify.watchdog_seconds({"WATCHDOG_USEC": "0"}, 42) is None
    assert sdnotify.watchdog_seconds({"WATCHDOG_USEC": "soon"}, 42) is None
    assert sdnotify.watchdog_seconds({}, 42) is None


def test_reading_the_environment_removes_it_so_children_cannot_speak_for_the_agent() -> None:
    env = {
        "NOTIFY_SOCKET": "@x",
        "WATCHDOG_USEC": "2000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/bin",
    }
    notifier = Notifier.from_environ(env)
    assert notifier.address == "\0x" and notifier.watchdog_sec == 2.0
    assert env == {"PATH": "/bin"}


def test_without_a_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False
    notifier.ready("working")
    notifier.watchdog()
    notifier.stopping()


def test_ready_status_and_stopping_arrive_as_one_datagram_each(listener) -> None:
    sock, path = listener
    notifier = Notifier(path)
    notifier.ready("upload agent 'upload': working")
    notifier.ready("upload agent 'upload': working")  # unchanged: not sent again
    notifier.status("waiting for the broker:\nconnection refused")
    notifier.stopping()
    assert received(sock) == [
        "READY=1\nSTATUS=upload agent 'upload': working",
        "STATUS=waiting for the broker: connection refused",  # a newline would start a field
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_watchdog_pings_go_out_at_most_every_half_interval(listener) -> None:
    sock, path = listener
    notifier = Notifier(path, watchdog=10.0)
    for now in (100.0, 101.0, 104.9, 105.0, 109.0, 110.0):
        notifier.watchdog(now)
    assert received(sock) == ["WATCHDOG=1"] * 3  # at 100, 105 and 110


def test_an_abstract_socket_is_reached(listener) -> None:
    name = f"synkler-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("ok")
        assert received(sock) == ["READY=1\nSTATUS=ok"]
    finally:
        sock.close()


def test_a_socket_nobody_listens_on_is_not_an_error(tmp_path) -> None:
    notifier = Notifier(str(tmp_path / "gone"), watchdog=1.0)
    assert notifier.send("READY=1") is False
    notifier.watchdog()
    notifier.stopping()
