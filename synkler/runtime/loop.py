"""The agent runtime: one main loop that owns the broker connection and the state database.

The loop alternates between
- running the AMQP connection for a short while (heartbeats flow, deliveries are collected),
- handling each delivery in a state transaction, then acking it (ack after commit: .inbox),
- handing results of finished background jobs (rsync, md5, cleanup scripts) to the agent (.jobs),
- the agent's `tick` (timers, scans, starting jobs),
- publishing the outbox with publisher confirms (.outbox).

Nothing is done before the broker says this agent is the only consumer of its queue (.consumer).
Observers (presence reports, metrics, alerts, systemd) follow the loop through one list of hooks
(synkler.observe.hooks); the loop calls them and never knows what they do.

Background jobs run on worker threads and never touch the broker or the database: they return a
value, which the main loop passes to the job's callback inside a transaction. Whatever a job was
doing when the agent died is found again from the durable state at the next start.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .. import places
from ..agents.agent import Agent
from ..agents.base import PERSON_REPEAT, Done, Key
from ..agents.pools import Pool
from ..broker.amqp import Broker, Delivery
from ..broker.names import exchange_name
from ..errors import BrokerError, ExitStatus, StateUnavailable
from ..hops import checksum, transfer
from ..linux.sdnotify import Notifier
from ..observe.alerts import Alerts, AlertsHook
from ..observe.hooks import Hook, Hooks
from ..observe.metrics import MetricsHook, metrics_for
from ..observe.presence import Presence, PresenceHook
from ..observe.relayview import pool_room
from ..observe.report import Report
from ..observe.systemd import SystemdHook
from ..private import exposed_secrets
from ..state import State
from .consumer import Consumer
from .inbox import Inbox, Outcome
from .jobs import Workers
from .outbox import Outbox

if TYPE_CHECKING:
    from ..config import Config

T = TypeVar("T")

log = logging.getLogger("synkler")

TICK = 0.5  # longest the loop sleeps when nothing happens; events wake it at once
VERSION_READ = 60.0  # seconds a central's version (its presence report) is believed before it is read again


class Runtime:
    """Wires an Agent to the broker, the state database, worker threads, signals and observers."""

    def __init__(self, cfg: Config, agent_class: type[Agent]):
        self.cfg = cfg
        self.state = State(cfg.state_db)
        self._stop = threading.Event()
        checksum.STOPPING.clear()
        self._wake = threading.Event()
        self.workers = Workers(self.state, cfg.max_transfers, self.wake)
        self.agent = agent_class(cfg, self.state, self)
        self.exit_status = ExitStatus.OK
        self._started = False  # startup has run: the agent holds its queue and works
        # What SIGHUP does: reopen the log file when the agent writes one (set by the CLI), else stop.
        self.on_hangup: Callable[[], None] | None = None
        self._secrets_looked = float("-inf")  # when files holding the password were last looked at
        states = [str(s) for s in agent_class.STATES]
        self.presence = Presence(self, agent_class.mode, states)  # reports to the relay view
        self.metrics = metrics_for(cfg, agent_class.mode, states)
        if self.metrics is not None:
            self.agent.observer = self.metrics
        self.alerts = Alerts(self, agent_class.mode)
        self.hooks = Hooks(self._observers())
        self.consumer = Consumer(cfg, agent_class.mode, self.hooks, self._taken_over)
        self.inbox = Inbox(cfg, self.state, self.agent)
        self.outbox = Outbox(self.state, expected={*cfg.central_names, cfg.download_name} - {cfg.name})
        # each central's directory of the instance, as it announced it, and when its presence
        # report was last read for it
        self._central_place: dict[str, str] = {}
        self._place_read: dict[str, float] = {}
        self._central_version: dict[str, tuple[float, str | None]] = {}  # central -> (read at, version)

    def _observers(self) -> list[Hook]:
        """The loop's observers, in the order they are called."""
        hooks: list[Hook] = [PresenceHook(self.presence)]  # after the outbox: holds no message back
        if self.metrics is not None:
            hooks.append(MetricsHook(self.metrics, self.presence.figures))
        hooks.append(AlertsHook(self.alerts))
        # systemd's Type=notify and watchdog (else no-ops); read now, before any child process.
        hooks.append(SystemdHook(Notifier.from_environ(), self._who()))
        return hooks

    # what agents (Jobs) and observers see --------------------------------------------------------

    def submit(self, pool: Pool, keys: Sequence[Key], work: Callable[[], T], done: Done[T]) -> None:
        """Run `work` on a worker of `pool` once the current transaction commits (synkler.runtime.jobs)."""
        self.workers.submit(pool, keys, work, done)

    def busy(self, key: Key) -> bool:
        return self.workers.busy(key)

    def central_place(self, fresh: bool = False, central: str | None = None) -> str | None:
        """A central's directory of this instance as it announces it (its presence report's
        `place`), read once and kept; `fresh` reads it again (at most once a second, so a flood of
        forged paths costs no flood of reads). None while it has never reported. `central`: which
        one, in a pool (default: central_name)."""
        central = central or self.cfg.central_name
        now = time.monotonic()
        known = self._central_place.get(central)
        if (known is None or fresh) and now - self._place_read.get(central, -1e9) >= 1.0 and self.broker:
            self._place_read[central] = now
            found = places.announced(self.broker.peek_presence(central), self.cfg.id)
            if found:
                self._central_place[central] = found
        return self._central_place.get(central)

    def consumers(self, agent: str) -> int | None:
        """How many consume an agent's queue now (None: not known, not connected or no queue)."""
        broker = self.broker
        if broker is None:
            return None
        info = broker.queue_info(agent)
        return None if info is None else info[1]

    def offers_ready(self, upload: str) -> int | None:
        """Offers waiting in an upload agent's offers queue (None: not known, or no queue)."""
        broker = self.broker
        if broker is None:
            return None
        info = broker.offers_info(upload)
        return None if info is None else info[0]

    def central_version(self, central: str) -> str | None:
        now = time.monotonic()
        known = self._central_version.get(central)
        # Not reported yet (a central starting with upload): looked for again within a second.
        again = VERSION_READ if known is not None and known[1] is not None else 1.0
        if (known is None or now - known[0] >= again) and self.broker:
            report = Report.decode(self.broker.peek_presence(central))
            self._central_version[central] = (now, report.version if report is not None else None)
        found = self._central_version.get(central)
        return found[1] if found else None

    def room(self, central: str) -> tuple[int, float] | None:
        """A central of a pool: the room its presence report says it has now (None: none said)."""
        broker = self.broker
        if broker is None:
            return None
        return pool_room(Report.decode(broker.peek_presence(central)), time.time())

    @property
    def transfers(self) -> int:
        """rsync runs going on."""
        return self.workers.transfers

    @property
    def broker(self) -> Broker | None:
        return self.consumer.broker

    @broker.setter
    def broker(self, broker: Broker | None) -> None:
        self.consumer.broker = broker

    @property
    def login_refused(self) -> str | None:
        """Why the broker refuses this agent's login (None: it does not)."""
        return self.consumer.login_refused

    def wake(self) -> None:
        self._wake.set()
        broker = self.broker
        if broker is not None:
            broker.wake()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, *_args: Any) -> None:
        self._stop.set()
        checksum.STOPPING.set()  # an md5 under way ends now; it is done again at the next start
        self.wake()

    def _taken_over(self) -> None:
        """Another agent took this one's queue while the broker was out of reach: stop."""
        self.exit_status = ExitStatus.FAILURE
        self.stop()

    # main loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        hangup = self.on_hangup
        signal.signal(signal.SIGHUP, self.stop if hangup is None else lambda *_: hangup())
        log.info(
            "%s agent %r of instance %r starting (state %s)",
            self.agent.mode,
            self.cfg.name,
            self.cfg.id,
            self.cfg.state_db,
        )
        self._tell_secrets(time.time())
        self.hooks.at_launch(time.time())
        if not self.cfg.authenticate:
            log.warning(
                "messages are not authenticated (authenticate: false): anyone who can publish to "
                "exchange %s on the broker can make this agent act; see docs/security.md",
                exchange_name(self.cfg.id),
            )
        try:
            if not self._wait_for_queue():
                return
            with self.state.transaction():
                if self.consumer.took_over:
                    self.agent.took_over()  # before startup: it says hello to the centrals
                self.agent.startup()
            self._started = self.consumer.started = True
            self.hooks.after_start()
            while not self._stop.is_set():
                self.hooks.on_turn(time.time())
                self._step()
        finally:
            self._finish()

    def _wait_for_queue(self) -> bool:
        """Connect; False if the agent was stopped first.

        Nothing is done before the broker says this agent is the only one of its name: a second
        one (another state_db, the same file_dir) would take the first's files for leftovers.
        """
        while self.broker is None and not self._stop.is_set():
            self.hooks.on_turn(time.time())
            if self.consumer.due(time.time()):
                self.consumer.connect()
            if self.broker is None:
                self._record_jobs_before_start()
                self.hooks.waiting(time.time())
                self._stop.wait(max(0.0, min(self.consumer.next_connect - time.time(), TICK)))
        return not self._stop.is_set()

    def _record_jobs_before_start(self) -> None:
        """Before the start only notices are sent (synkler.observe.alerts): record those that went out."""
        if not self.workers.finished():
            return
        try:
            with self.state.transaction():
                self.workers.record()
        except (StateUnavailable, OSError) as e:
            log.debug("jobs not recorded: %s", e)  # unrecorded, they are sent again at the next start

    def _who(self) -> str:
        return f"{self.agent.mode} agent {self.cfg.name!r} of instance {self.cfg.id!r}"

    def _finish(self) -> None:
        self.hooks.before_stop()
        if self._started:
            log.info("stopping: ending transfers, waiting for running jobs")
            self.agent.shutdown()
        transfer.terminate_all()
        self.workers.shutdown()
        if not self._started:
            self._record_jobs_before_start()
        else:
            with self.state.transaction():
                self.workers.record()
            try:
                self._flush_outbox()
            except BrokerError:
                pass  # the outbox is durable: sent at the next start
            self.hooks.at_stop(time.time())
        self.consumer.close()
        self.hooks.after_stop()
        self.state.close()
        self.agent.stopped()
        log.info("stopped")

    def _tell_secrets(self, now: float) -> None:
        """A password others can read needs a person: ERROR at start and every PERSON_REPEAT while
        it lasts (reported, not refused: see synkler.private)."""
        if now - self._secrets_looked < PERSON_REPEAT:
            return
        self._secrets_looked = now
        for problem in exposed_secrets(self.cfg.secret_files):
            log.error("%s (said again every %d minutes while it lasts)", problem, PERSON_REPEAT // 60)

    def _step(self) -> None:
        now = time.time()
        self._tell_secrets(now)
        if self.consumer.due(now):
            self.consumer.connect()
        deliveries: list[Delivery] = []
        try:
            timeout = self._sleep_for(now)
            if self.broker is not None:
                deliveries = self.broker.poll(timeout)
            else:
                self._wake.wait(max(0.0, min(timeout, self.consumer.next_connect - now)))
            self._wake.clear()
            self._work(deliveries)
            if self.broker is not None and self.cfg.uploads and self.agent.mode == "central":
                self.broker.take_offers(self.agent.offer_room())  # a pool: offers while it has room
            self._flush_outbox()
            self.hooks.after_pass(time.time())
        except BrokerError as e:
            self.consumer.lost(e)

    def _work(self, deliveries: list[Delivery]) -> None:
        """One pass, one transaction, one commit: the deliveries, the finished jobs, the tick.

        Each delivery, job result and the tick has a savepoint of its own, so one that fails is
        undone alone. Acks, rejects and dead letters go out only after the commit: a crash before
        it means redelivery, and every handler takes a redelivered message as a no-op.
        """
        outcomes: list[tuple[int, Outcome, list[bytes]]] = []
        pause = False
        self.inbox.tell_quiet()
        try:
            with self.state.transaction():
                for d in deliveries:
                    outcomes.append((d.tag, *self.inbox.apply(d.body, d.user)))
                self.workers.record()
                self.agent.take_requests()  # an operator's retry, forget or resend (each in a savepoint)
                try:
                    with self.state.savepoint():
                        self.agent.tick(time.time())
                except Exception:
                    # A full disk or a vanished directory must not kill the agent: log, pause, retry.
                    log.exception("error in the agent's periodic work; retrying in a second")
                    self.agent.look_again()
                    pause = True
                self.hooks.in_pass(time.time())
        except (StateUnavailable, OSError) as e:  # the commit itself failed
            log.error("cannot record the agent's state (%s); messages stay queued", e)
            outcomes = [(d.tag, "requeue", []) for d in deliveries]
            self.agent.look_again()
        broker = self.broker
        for tag, outcome, dead in outcomes:
            assert broker is not None  # deliveries come only through a connection
            for body in dead:
                broker.dead_letter(body)
            if outcome == "ack":
                broker.ack(tag)
            else:
                broker.reject(tag, requeue=outcome == "requeue")
        if pause or any(outcome == "requeue" for _, outcome, _ in outcomes):
            self._stop.wait(1.0)

    def _sleep_for(self, now: float) -> float:
        """How long the loop may wait for events: up to TICK, less if a timer of the agent is due."""
        if self._wake.is_set():
            return 0.0
        wakeup = self.agent.next_wakeup()
        return TICK if wakeup is None else max(0.0, min(TICK, wakeup - now))

    def _flush_outbox(self) -> None:
        """Publish the outbox (synkler.runtime.outbox), if connected."""
        if self.broker is not None:
            self.outbox.flush(self.broker)
