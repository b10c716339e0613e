"""Hooks: how observers (presence reports, metrics, alerts, systemd's notifications) follow an
agent's main loop without the loop knowing what they do, in the manner of dramatiq's middleware.

An observer subclasses `Hook` and overrides the moments it cares about; the runtime calls every
hook of its list (synkler.runtime.loop) at each moment, in the list's order. All run in the main
loop's thread, which owns the broker connection and the state database. A hook must be quick and
must not raise for a reason of its own: what it cannot do it logs and skips (the relay's work
never waits for an observer).

The moments, in the order of an agent's life:

    at_launch      the run begins, before the broker is asked
    on_turn        each turn of the loop begins: waiting for the broker, or working
    connect_failed a try to connect failed (the agent carries on and tries again)
    standing_by    another agent of this name holds the queue: this one waits as its standby
    waiting        before the start, a turn in which the agent still has no queue of its own
    connected      the agent holds its queue (again)
    after_start    the agent reconciled its state and works
    in_pass        in a pass's transaction, after the agent's tick
    after_pass     a pass ended: committed, acked, the outbox published
    before_stop    the agent begins to stop
    at_stop        a started agent's orderly stop: its jobs ended, the outbox published, still connected
    after_stop     the broker connection is closed; the state database is still open
"""

from __future__ import annotations

from collections.abc import Iterable


class Hook:
    """Base of the loop's observers: every hook does nothing."""

    def at_launch(self, now: float) -> None:
        """The agent's run begins, before the broker is asked for its queue."""

    def on_turn(self, now: float) -> None:
        """A turn of the loop begins, whether the agent waits for the broker or works. Often: cheap."""

    def connect_failed(self, why: str) -> None:
        """A try to connect to the broker failed; the next one follows after a pause."""

    def standing_by(self, holder: str) -> None:
        """Before its start, the agent found its queue held by `holder`: it waits as a standby."""

    def waiting(self, now: float) -> None:
        """Before the start: a turn ended without the agent holding its queue (the broker is out of
        reach or refuses the login, or another agent holds the queue). No transaction is open."""

    def connected(self) -> None:
        """The agent holds its queue: at its start, or again after the connection was lost."""

    def after_start(self) -> None:
        """The agent reconciled its state with the disk and works."""

    def in_pass(self, now: float) -> None:
        """In the transaction of a pass, after the agent's tick: state written here commits with
        the pass (open a savepoint of your own to be undone alone)."""

    def after_pass(self, now: float) -> None:
        """A pass ended: its transaction committed, its deliveries acked, the outbox published."""

    def before_stop(self) -> None:
        """The agent begins to stop (started or not)."""

    def at_stop(self, now: float) -> None:
        """An orderly stop of a started agent: its jobs ended, the outbox published, the broker
        still connected if it was."""

    def after_stop(self) -> None:
        """The broker connection is closed; the state database is still open."""


class Hooks(Hook):
    """Every hook of a list, called in its order."""

    def __init__(self, hooks: Iterable[Hook] = ()):
        self.hooks = list(hooks)

    def at_launch(self, now: float) -> None:
        for hook in self.hooks:
            hook.at_launch(now)

    def on_turn(self, now: float) -> None:
        for hook in self.hooks:
            hook.on_turn(now)

    def connect_failed(self, why: str) -> None:
        for hook in self.hooks:
            hook.connect_failed(why)

    def standing_by(self, holder: str) -> None:
        for hook in self.hooks:
            hook.standing_by(holder)

    def waiting(self, now: float) -> None:
        for hook in self.hooks:
            hook.waiting(now)

    def connected(self) -> None:
        for hook in self.hooks:
            hook.connected()

    def after_start(self) -> None:
        for hook in self.hooks:
            hook.after_start()

    def in_pass(self, now: float) -> None:
        for hook in self.hooks:
            hook.in_pass(now)

    def after_pass(self, now: float) -> None:
        for hook in self.hooks:
            hook.after_pass(now)

    def before_stop(self) -> None:
        for hook in self.hooks:
            hook.before_stop()

    def at_stop(self, now: float) -> None:
        for hook in self.hooks:
            hook.at_stop(now)

    def after_stop(self) -> None:
        for hook in self.hooks:
            hook.after_stop()
