"""A small TCP proxy on loopback that a test can sever, stall and restore.

`NetProxy(target_port)` listens on a free 127.0.0.1 port and forwards every connection to
127.0.0.1:<target_port>, one thread per direction. A test then cuts the path the way a network does:

- `sever()`: close every live connection at once, and close each new one as soon as it is accepted,
  until `restore()`;
- `stall()`: keep every socket open but stop moving bytes (new connections are accepted and then
  stall too), until `restore()`: a link that hangs without closing;
- `throttle(rate)`: move at most `rate` bytes a second each way on each connection (a slow link, so
  that transfers are still under way when a fault comes), until `throttle(None)`.

`bytes_forwarded` and `connections` say whether a fault really hit live traffic. `listen` puts the
proxy on another loopback address (127.0.0.2, ...) and port: one proxy per central of a pool, each
reached under its own address with the same ssh options.
"""

from __future__ import annotations

import select
import socket
import threading


class NetProxy:
    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", *, listen: tuple[str, int] = ("127.0.0.1", 0)
    ):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(listen)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._flowing = threading.Event()  # clear while stalled
        self._flowing.set()
        self._severed = False
        self._rate: int | None = None
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self.bytes_forwarded = 0
        self.connections = 0  # accepted and forwarded
        self.refused = 0  # accepted while severed, closed at once
        self.severed_live = 0  # live connections closed by sever()
        self._accepter = threading.Thread(target=self._accept_loop, name="netproxy-accept", daemon=True)
        self._accepter.start()

    # faults ---------------------------------------------------------------------------------------

    def sever(self) -> int:
        """Close every live connection and refuse new ones; return how many were closed."""
        with self._lock:
            self._severed = True
            live, self._live = list(self._live), set()
            self.severed_live += len(live)
        self._flowing.set()  # a stalled pump must wake up to notice its socket is gone
        for sock in live:
            _close(sock)
        return len(live)

    def stall(self) -> None:
        """Stop forwarding bytes; sockets stay open."""
        self._flowing.clear()

    def throttle(self, rate: int | None) -> None:
        """At most `rate` bytes a second each way per connection from now on (None: as fast as it goes)."""
        self._rate = rate

    def restore(self) -> None:
        with self._lock:
            self._severed = False
        self._flowing.set()

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._live)

    # lifecycle ------------------------------------------------------------------------------------

    def close(self) -> None:
        self._stopped.set()
        self.sever()
        _close(self._listener)
        for thread in [self._accepter, *self._threads]:
            thread.join(5)

    def __enter__(self) -> NetProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals ------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                severed = self._severed
            if severed:
                self.refused += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                if self._severed:  # severed while we were connecting
                    self.refused += 1
                    _close(client)
                    _close(upstream)
                    continue
                self._live.update((client, upstream))
                self.connections += 1
            ends = [0]  # directions finished, shared by the two pumps of this connection
            for src, dst in ((client, upstream), (upstream, client)):
                t = threading.Thread(
                    target=self._pump, args=(src, dst, ends), name="netproxy-pump", daemon=True
                )
                t.start()
                self._threads.append(t)
            self._threads = [t for t in self._threads if t.is_alive()]

    def _pump(self, src: socket.socket, dst: socket.socket, ends: list[int]) -> None:
        clean = False
        try:
            while not self._stopped.is_set():
                self._flowing.wait()
                if src.fileno() < 0 or dst.fileno() < 0:
                    return
                ready, _, _ = select.select([src], [], [], 0.2)
                if not ready:
                    continue
                self._flowing.wait()  # a stall that began while we waited holds the bytes back
                rate = self._rate
                data = src.recv(65536 if rate is None else max(512, rate // 20))
                if not data:  # half-close: pass it on, the other direction may go on
                    dst.shutdown(socket.SHUT_WR)
                    clean = True
                    return
                with self._lock:  # counted first, so the count never lags what the peer received
                    self.bytes_forwarded += len(data)
                dst.sendall(data)
                if rate is not None:
                    self._stopped.wait(len(data) / rate)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                ends[0] += 1
                finished = not clean or ends[0] == 2
                if finished:
                    self._live.discard(src)
                    self._live.discard(dst)
            if finished:
                _close(src)
                _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
