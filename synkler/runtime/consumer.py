"""The agent's hold on its queue: one exclusive consumer per agent name.

Connecting (with backoff), finding a rival on the queue (before the start: wait as its standby;
after it: the other one took over while the broker was out of reach), a standby's takeover once
the queue has had no consumer for long enough, and a lost connection.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Callable

from ..agents.base import PERSON_REPEAT
from ..backoff import backoff
from ..broker.amqp import Broker, BrokerParams
from ..broker.connect import address_text
from ..broker.names import queue_name
from ..errors import AgentActive, BrokerError
from ..observe.hooks import Hook
from ..text import again

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

STANDBY_RETRY = 5.0  # seconds between a standby's looks at its agent's queue
# A standby takes over only once its queue has had no consumer for this long: longer than the
# longest reconnect pause (30 s), so an agent that restarts, or reconnects after a broker outage,
# finds its queue again and the standby never takes it in between.
STANDBY_GRACE = 40.0
# The words of synkler.broker.amqp (and the broker's own) for a login or vhost the broker refuses
# (a person must fix the user or password).
_LOGIN_REFUSED = re.compile(r"login refused by the broker|access denied by the broker|ACCESS_REFUSED - Login")


class Consumer:
    """Connects an agent to the broker as the only consumer of its queue, and keeps it connected."""

    def __init__(self, cfg: Config, mode: str, hooks: Hook, taken_over: Callable[[], None]):
        self.cfg = cfg
        self.mode = mode
        self.hooks = hooks
        self.taken_over = taken_over  # called when another agent took the queue after the start
        self.params = BrokerParams.from_config(cfg)
        self.broker: Broker | None = None
        self.started = False  # the agent has started: a rival now means it was taken over
        self.failures = 0  # tries to connect that failed in a row
        self.next_connect = 0.0
        self.standby = False  # another agent of this name held the queue when this one started
        self.took_over = False  # it was a standby and took the queue over (its peers are greeted)
        self._standby_told = float("-inf")  # when the last ERROR about a rival agent was logged
        self._free_since: float | None = None  # a standby: since when its queue has had no consumer
        self.login_refused: str | None = None  # the broker refuses this agent's login: why

    def due(self, now: float) -> bool:
        """Is it time to try to connect?"""
        return self.broker is None and now >= self.next_connect

    def connect(self) -> None:
        """Try to connect and consume the queue; on failure, schedule the next try."""
        ends = (*self.cfg.central_names, self.cfg.download_name)
        routed = tuple(self.cfg.destinations) if self.cfg.mode == "central" else ()
        peers = () if self.cfg.authenticate else tuple(dict.fromkeys(ends + routed))
        broker = Broker(self.params, self.cfg.id, self.cfg.name, peers=peers, offers=self._offers())
        try:
            if self.standby and not self.free_long_enough(broker):
                return
            broker.connect()
        except AgentActive as e:
            self.rival(e)
            return
        except BrokerError as e:
            self._failed(e)
            return
        if self.standby:
            log.warning("the other %s agent %r is gone: this one takes over", self.mode, self.cfg.name)
            self.standby = False
            self.took_over = not self.started
        if self.failures:
            log.info("connected to broker %s again", address_text(broker.address))
        else:
            log.info("connected to broker %s", address_text(broker.address))
        self.failures = 0
        self.login_refused = None
        self.broker = broker
        self.hooks.connected()

    def _offers(self) -> tuple[str, ...]:
        """The offers queues this agent declares in a pool of centrals: an upload agent its own,
        a central those of the upload agents it takes offers from (`uploads`)."""
        if self.mode == "upload":
            return (self.cfg.name,) if self.cfg.centrals else ()
        return self.cfg.uploads if self.mode == "central" else ()

    def _failed(self, e: BrokerError) -> None:
        self._free_since = None
        self.login_refused = str(e) if _LOGIN_REFUSED.search(str(e)) else None
        self.failures += 1
        delay = backoff(self.failures, base=0.5, cap=30)
        self.next_connect = time.time() + delay
        level = logging.WARNING if self.failures in (1, 5) or self.failures % 20 == 0 else logging.DEBUG
        log.log(level, "%s; retrying in %.1f s%s", e, delay, again(self.failures))
        self.hooks.connect_failed(str(e))

    def free_long_enough(self, broker: Broker) -> bool:
        """A standby looks at its queue without consuming it: True once it has had no consumer for
        STANDBY_GRACE seconds in a row (then `broker`, connected, takes it over)."""
        broker.connect(consume=False)
        consumers, holder = broker.consumers()
        now = time.time()
        self.next_connect = now + STANDBY_RETRY
        if consumers:
            broker.close()
            self._free_since = None
            self.rival(AgentActive(queue_name(self.cfg.id, self.cfg.name), holder))
            return False
        if self._free_since is None:
            self._free_since = now
            log.info(
                "the other %s agent %r seems gone; taking over unless it is back within %.0f s",
                self.mode,
                self.cfg.name,
                STANDBY_GRACE,
            )
        if now - self._free_since < STANDBY_GRACE:
            broker.close()
            return False
        broker.close()
        return True

    def rival(self, e: AgentActive) -> None:
        """Another agent consumes this agent's queue. Before the start, wait as its standby; after
        it, stop: the other one has taken over while the broker was out of reach."""
        self.next_connect = time.time() + STANDBY_RETRY
        if e.mine:
            # Our own previous connection, which the broker has not yet seen die (a cut link):
            # it goes when its heartbeat times out.
            log.info("the broker still holds this agent's previous connection; waiting for it to go")
            return
        if self.started:
            log.error(
                "%s agent %r of instance %r: %s: it took over while the broker was out of reach; "
                "stopping this one",
                self.mode,
                self.cfg.name,
                self.cfg.id,
                e,
            )
            self.taken_over()
            return
        self.standby = True
        self.hooks.standing_by(str(e.holder or e.queue))
        now = time.time()
        if now - self._standby_told >= PERSON_REPEAT:
            self._standby_told = now
            log.error(
                "%s agent %r of instance %r is already running (%s): this one does nothing and "
                "waits as a standby, taking over only once that one has been gone for %.0f s (said "
                "again every %d minutes)",
                self.mode,
                self.cfg.name,
                self.cfg.id,
                e.holder or f"consumer of {e.queue}",
                STANDBY_GRACE,
                PERSON_REPEAT // 60,
            )

    def lost(self, e: BrokerError) -> None:
        """The connection broke: close it, and reconnect after a pause."""
        log.warning("%s; reconnecting", e)
        self.close()
        self.failures += 1
        self.next_connect = time.time() + backoff(self.failures, base=0.5, cap=30)

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()
        self.broker = None
