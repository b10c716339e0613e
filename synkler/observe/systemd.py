"""systemd watching the agent (Type=notify, WatchdogSec=): the loop's hook that says READY=1 once
the agent works or stands by, feeds the watchdog at every turn of the loop (at most every half
WatchdogSec), keeps `systemctl status` true and says STOPPING=1 at the stop. The datagrams
themselves are synkler.linux.sdnotify's; outside systemd every call is a no-op."""

from __future__ import annotations

from ..linux.sdnotify import Notifier
from .hooks import Hook


class SystemdHook(Hook):
    """Tells systemd how agent `who` (e.g. "central agent 'central' of instance 'lab'") is doing."""

    def __init__(self, notifier: Notifier, who: str):
        self.notify = notifier
        self.who = who
        self.working = False  # started: a reconnect says "working" again

    def on_turn(self, now: float) -> None:
        self.notify.watchdog()  # a standby too is watched while it waits

    def connect_failed(self, why: str) -> None:
        self.notify.status(f"{self.who}: waiting for the broker: {why}")

    def standing_by(self, holder: str) -> None:
        # A standby is a steady state, not a start that hangs: ready, and watched, while it waits.
        self.notify.ready(f"{self.who}: standby, another agent works ({holder})")

    def connected(self) -> None:
        if self.working:
            self.notify.status(f"{self.who}: working")

    def after_start(self) -> None:
        self.working = True
        self.notify.ready(f"{self.who}: working")

    def before_stop(self) -> None:
        self.notify.stopping()

    def after_stop(self) -> None:
        self.notify.close()
