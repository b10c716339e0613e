"""A transfer whose connection stalls (open, but nothing moves) is noticed by the agent within
`stall_seconds`, and stopped: not only when rsync's `--timeout` or ssh's keep-alives give up, which
may take many minutes (rsync's two local processes keep each other's timeout alive with keep-alive
messages while the link carries nothing).

What the agent watches is the bytes the transfer's processes read: the program it started and every
process that one starts (rsync, its forked receiver, ssh), summed over their lives, from
/proc/PID/io. Whichever way data goes, some of these processes read every byte of it (a sender its
files, a receiver the pipe from ssh, ssh the socket), so a stalled link stops the count; the
keep-alive messages of a silent link add a few bytes a minute, less than STALL_BYTES. The decision
is `Stall`, pure and fed any count of bytes, so another transport (one that does not run a program)
can use it with bytes it counts itself.
"""

from __future__ import annotations

import os
import signal

from ..linux.process import bytes_read, children, start_time

STALL_BYTES = 16 << 10  # a transfer that moved less than this in stall_seconds has stalled
POLL = 1.0  # seconds between looks at a running transfer


class Stall:
    """Has a transfer stalled? Fed, now and then, the bytes it has moved so far (any count that only
    grows while data moves): stalled once less than STALL_BYTES more were moved over `seconds`."""

    def __init__(self, seconds: float, now: float):
        self.seconds = seconds
        self.since = now  # when the transfer last made progress (or began)
        self.mark = 0  # the bytes moved then

    def seen(self, moved: int, now: float) -> bool:
        """Note a sample; True if the transfer has stalled."""
        if moved < self.mark or moved - self.mark >= STALL_BYTES:
            self.mark, self.since = moved, now
        return now - self.since >= self.seconds

    def idle(self, now: float) -> float:
        """Seconds since the transfer last made progress."""
        return now - self.since


class ProcessTree:
    """A process and the processes it starts, as far as they have been seen: what they read, and a
    signal to every one that still runs. A process is named by its pid and start time, so a pid
    that is reused is never taken for one seen before."""

    def __init__(self, pid: int):
        self.pid = pid
        self.read: dict[tuple[int, int], int] = {}  # (pid, start time) -> bytes it has read

    def bytes_read(self) -> int:
        """The bytes read by the processes of the tree so far (also by those that have ended)."""
        pending = [self.pid]
        while pending:
            pid = pending.pop()
            start, got = start_time(pid), bytes_read(pid)
            if start is not None and got is not None:
                self.read[(pid, start)] = got
            pending.extend(children(pid))
        return sum(self.read.values())

    def signal(self, sig: int) -> None:
        """Send `sig` to every process of the tree seen so far that still runs."""
        self.bytes_read()  # the processes started since the last look too
        for pid, start in self.read:
            if start_time(pid) == start:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass

    def stop(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
