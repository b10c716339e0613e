"""systemd's notification protocol (sd_notify(3)), without libsystemd: one datagram per message.

A service of `Type=notify` gets `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace)
and, with `WatchdogSec=`, `$WATCHDOG_USEC` (and `$WATCHDOG_PID`). It sends newline-separated
`KEY=value` fields: `READY=1` once it is up, `WATCHDOG=1` at least every WatchdogSec, `STATUS=…` for
`systemctl status`, `STOPPING=1` when it begins to stop. Outside systemd nothing is set and every
call is a no-op, so the runtime calls them unconditionally.

A failed send is never an error of the agent: systemd may be restarting, and the agent's work does
not depend on being watched.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("synkler")

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


def socket_address(value: str) -> str | None:
    """The address to send to for a `$NOTIFY_SOCKET` value, or None if it is not a unix socket.

    `@name` is Linux's abstract namespace: a leading NUL byte on the wire.
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. systemd 253's vsock:… addresses, which an agent on a host never gets


def watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """WatchdogSec in seconds if the watchdog is on for process `pid`, else None."""
    usec = environ.get(ENV_WATCHDOG_USEC, "")
    owner = environ.get(ENV_WATCHDOG_PID, "")
    if owner and owner != str(pid):
        return None  # meant for another process (we were started by the watched one)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Notifier:
    """Sends the notifications of one service process; a no-op when no socket was given."""

    def __init__(self, address: str | None, watchdog: float | None = None):
        self.address = address
        self.watchdog_sec = watchdog if address is not None else None
        self._sock: socket.socket | None = None
        self._last_ping = float("-inf")
        self._ready = False
        self._status: str | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read the notification variables and remove them from the environment, as sd_notify's
        `unset_environment` does: rsync, ssh and cleanup scripts must not speak for the agent."""
        environ = os.environ if environ is None else environ
        raw = environ.pop(ENV_SOCKET, "")
        address = socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("ignoring $%s=%r: not a unix socket path or @name", ENV_SOCKET, raw)
        watchdog = watchdog_seconds(environ, os.getpid())
        environ.pop(ENV_WATCHDOG_USEC, None)
        environ.pop(ENV_WATCHDOG_PID, None)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one message of `KEY=value` fields; True if it went out."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode("utf-8", "replace"), self.address)
        except OSError as e:
            log.debug("cannot notify systemd (%s): %s", self.address.replace("\0", "@"), e)
            return False
        return True

    def ready(self, status: str) -> None:
        """READY=1 with a STATUS line (sent again only when the status changes)."""
        if not self._ready or status != self._status:
            self._ready = True
            self._status = status
            self.send("READY=1", "STATUS=" + _one_line(status))

    def status(self, status: str) -> None:
        """A STATUS line for `systemctl status`, when it changed."""
        if status != self._status:
            self._status = status
            self.send("STATUS=" + _one_line(status))

    def watchdog(self, now: float | None = None) -> None:
        """WATCHDOG=1, at most every half WatchdogSec: call it as often as the loop turns."""
        if self.watchdog_sec is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= self.watchdog_sec / 2:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self._status = status
        self.send("STOPPING=1", "STATUS=" + _one_line(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    """A newline would start another field of the message."""
    return " ".join(text.split())
