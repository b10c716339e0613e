"""The agent runtime: one main loop that owns the broker connection and the state database.

The loop alternates between
- running the AMQP connection for a short while (heartbeats flow, deliveries are collected),
- handling each delivery in a state transaction, then acking it (ack after commit),
- handing results of finished background jobs (rsync, md5, cleanup scripts) to the agent,
- the agent's `tick` (timers, scans, starting jobs),
- publishing the outbox with publisher confirms.

Background jobs run on worker threads and never touch the broker or the database: they return a
value, which the main loop passes to the job's callback inside a transaction. Whatever a job was
doing when the agent died is found again from the durable state at the next start.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import re
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from .. import messages
from ..agents.agent import Agent
from ..agents.base import PERSON_REPEAT, Done, Key
from ..observe.alerts import Alerts
from ..backoff import backoff
from ..broker.amqp import PEERS, Broker, BrokerParams, Delivery, broker_user, exchange_name, queue_name
from ..errors import (
    AgentActive,
    BrokerError,
    ExitStatus,
    Interrupted,
    MessageError,
    PublishRefused,
    StateUnavailable,
)
from ..hops import checksum, transfer
from ..linux.sdnotify import Notifier
from ..observe.metrics import metrics_for
from ..observe.presence import Presence
from ..private import exposed_secrets
from ..state import State

if TYPE_CHECKING:
    from ..config import Config

T = TypeVar("T")

log = logging.getLogger("synkler")

TICK = 0.5  # longest the loop sleeps when nothing happens; events wake it at once
DEAD_LOG_BURST = 10  # dead letters logged one by one per DEAD_LOG_WINDOW; the rest are counted
DEAD_LOG_WINDOW = 60.0
STANDBY_RETRY = 5.0  # seconds between a standby's looks at its agent's queue
# A standby takes over only once its queue has had no consumer for this long: longer than the
# longest reconnect pause (30 s), so an agent that restarts, or reconnects after a broker outage,
# finds its queue again and the standby never takes it in between.
STANDBY_GRACE = 40.0


class Runtime:
    """Wires an Agent to the broker, the state database, worker threads and signals."""

    def __init__(self, cfg: Config, agent_class: type[Agent]):
        self.cfg = cfg
        self.state = State(cfg.state_db)
        self.agent = agent_class(cfg, self.state, self)
        self.broker: Broker | None = None
        self._params = BrokerParams.from_config(cfg)
        self._stop = threading.Event()
        checksum.STOPPING.clear()
        self._wake = threading.Event()
        # finished jobs: (pool, keys, done, outcome, error)
        self._done: queue.Queue[tuple[str, tuple[Key, ...], Done[Any], Any, BaseException | None]] = (
            queue.Queue()
        )
        self._pools = {
            "transfer": ThreadPoolExecutor(cfg.max_transfers, thread_name_prefix="transfer"),
            "hash": ThreadPoolExecutor(2, thread_name_prefix="hash"),
            # Its own thread, so noticing new entries never waits behind the md5 of a big one.
            "scan": ThreadPoolExecutor(1, thread_name_prefix="scan"),
            "script": ThreadPoolExecutor(1, thread_name_prefix="script"),
            # Notices (synkler.observe.alerts): a send that hangs never holds up the relay, nor its stop.
            "alert": ThreadPoolExecutor(1, thread_name_prefix="alert"),
        }
        self._busy: set[Key] = set()  # what running jobs hold
        self.transfers = 0  # rsync runs going on
        self._connect_failures = 0
        self._next_connect = 0.0
        self.exit_status = ExitStatus.OK
        self._started = False  # startup has run: the agent holds its queue and works
        self._standby_told = float("-inf")  # when the last ERROR about a rival agent was logged
        self._standby = False  # another agent of this name held the queue when this one started
        self._free_since: float | None = None  # a standby: since when its queue has had no consumer
        self._dead_window = 0.0  # when the current window of dead-letter log lines began
        self._dead_logged = 0  # dead letters logged one by one in it
        self._dead_quiet = 0  # and those only counted
        # destination -> (refusals in a row, no publish to it before, last ERROR logged)
        self._held: dict[str, tuple[int, float, float]] = {}
        self.presence = Presence(
            self, agent_class.mode, [str(s) for s in agent_class.STATES]
        )  # reports to the relay view, every few seconds
        self.metrics = metrics_for(cfg, agent_class.mode, [str(s) for s in agent_class.STATES])
        if self.metrics is not None:
            self.agent.observer = self.metrics
        self.notify = Notifier.from_environ()  # systemd's Type=notify and watchdog; else no-ops
        # What SIGHUP does: reopen the log file when the agent writes one (set by the CLI), else stop.
        self.on_hangup: Callable[[], None] | None = None
        self._secrets_looked = float("-inf")  # when files holding the password were last looked at
        self.alerts = Alerts(self, agent_class.mode)
        self.login_refused: str | None = None  # the broker refuses this agent's login: why
        self._alerts_complained = float("-inf")

    # jobs ----------------------------------------------------------------------------------------

    def submit(self, pool: str, keys: Sequence[Key], work: Callable[[], T], done: Done[T]) -> None:
        """Run `work` on a worker thread; `done(outcome, error)` then runs in the main loop, in a
        transaction. `keys` are busy until `done` has run.

        The job starts only once the state change that led here is committed (State.after_commit);
        a rolled-back change starts nothing and leaves nothing busy.
        """
        self.state.after_commit(functools.partial(self._start, pool, tuple(keys), work, done))

    def busy(self, key: Key) -> bool:
        return key in self._busy

    def _start(self, pool: str, keys: tuple[Key, ...], work: Callable[[], T], done: Done[T]) -> None:
        self._busy.update(keys)
        if pool == "transfer":
            self.transfers += 1
        self._pools[pool].submit(self._run_job, pool, keys, work, done)

    def _run_job(self, pool: str, keys: tuple[Key, ...], work: Callable[[], T], done: Done[T]) -> None:
        """On a worker thread: run the job and hand its outcome to the main loop."""
        try:
            outcome, error = work(), None
        except BaseException as e:  # handed to the main loop, which decides
            outcome, error = None, e
        self._done.put((pool, keys, done, outcome, error))
        self.wake()

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
        self._tick_metrics()
        if not self.cfg.authenticate:
            log.warning(
                "messages are not authenticated (authenticate: false): anyone who can publish to "
                "exchange %s on the broker can make this agent act; see docs/security.md",
                exchange_name(self.cfg.id),
            )
        try:
            # Nothing is done before the broker says this agent is the only one of its name: a
            # second one (another state_db, the same file_dir) would take the first's files for
            # leftovers.
            while self.broker is None and not self._stop.is_set():
                self.notify.watchdog()  # a standby is ready (see _rival) and watched while it waits
                if time.time() >= self._next_connect:
                    self._connect()
                if self.broker is None:
                    self._alert_waiting()
                    self._stop.wait(max(0.0, min(self._next_connect - time.time(), TICK)))
            if self._stop.is_set():
                return
            with self.state.transaction():
                self.agent.startup()
            self._started = True
            self.notify.ready(f"{self._who()}: working")
            while not self._stop.is_set():
                self.notify.watchdog()
                self._step()
        finally:
            self._finish()

    def _who(self) -> str:
        return f"{self.agent.mode} agent {self.cfg.name!r} of instance {self.cfg.id!r}"

    def _finish(self) -> None:
        self.notify.stopping()
        if self._started:
            log.info("stopping: ending transfers, waiting for running jobs")
            self.agent.shutdown()
        transfer.terminate_all()
        for name, pool in self._pools.items():
            # A notice being sent is not waited for: unsent, it stays queued for the next start.
            pool.shutdown(wait=name != "alert", cancel_futures=True)
        if not self._started and self.alerts.enabled:
            # Before startup only notices are sent: record the ones that went out.
            try:
                with self.state.transaction():
                    self._drain_done()
            except (StateUnavailable, OSError):
                pass  # unrecorded, they are sent again at the next start
        if self._started:
            with self.state.transaction():
                self._drain_done()
            try:
                self._flush_outbox()
            except BrokerError:
                pass  # the outbox is durable: sent at the next start
            self.presence.stopped(time.time())
        if self.broker:
            self.broker.close()
        if self.metrics is not None:
            self.metrics.close(self.presence.figures())
        self.state.close()
        self.agent.stopped()
        self.notify.close()
        log.info("stopped")

    def _tick_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.tick(time.time(), self.presence.figures)

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
        if self.broker is None and now >= self._next_connect:
            self._connect()
        deliveries: list[Delivery] = []
        try:
            timeout = self._sleep_for(now)
            if self.broker is not None:
                deliveries = self.broker.poll(timeout)
            else:
                self._wake.wait(max(0.0, min(timeout, self._next_connect - now)))
            self._wake.clear()
            self._work(deliveries)
            self._flush_outbox()
            self.presence.tick(time.time())  # after the outbox: it never holds a message back
            self._tick_metrics()
        except BrokerError as e:
            self._lost(e)

    def _work(self, deliveries: list[Delivery]) -> None:
        """One pass, one transaction, one commit: the deliveries, the finished jobs, the tick.

        Each delivery, job result and the tick has a savepoint of its own, so one that fails is
        undone alone. Acks, rejects and dead letters go out only after the commit: a crash before
        it means redelivery, and every handler takes a redelivered message as a no-op.
        """
        outcomes: list[tuple[int, str, list[bytes]]] = []
        pause = False
        if self._dead_quiet:
            self._end_dead_window(time.monotonic())
        try:
            with self.state.transaction():
                for d in deliveries:
                    outcomes.append((d.tag, *self._apply(d.body, d.user)))
                self._drain_done()
                self.agent.take_requests()  # an operator's retry, forget or resend (each in a savepoint)
                try:
                    with self.state.savepoint():
                        self.agent.tick(time.time())
                except Exception:
                    # A full disk or a vanished directory must not kill the agent: log, pause, retry.
                    log.exception("error in the agent's periodic work; retrying in a second")
                    self.agent.look_again()
                    pause = True
                self._alert(time.time())
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

    def _alert(self, now: float) -> None:
        """Look at the conditions alerts tell about and send due notices; a failure here costs
        only this look (said every PERSON_REPEAT seconds), never the relay's work."""
        if not self.alerts.enabled:
            return
        try:
            with self.state.savepoint():
                self.alerts.tick(now)
        except Exception:
            if now - self._alerts_complained >= PERSON_REPEAT:
                self._alerts_complained = now
                log.exception(
                    "error while looking at the conditions for alerts (said again every 10 minutes)"
                )

    def _alert_waiting(self) -> None:
        """Before the first connection: a broker that refuses the login is told too."""
        if not self.alerts.enabled:
            return
        try:
            with self.state.transaction():
                self._drain_done()  # before startup, only notices are sent
                self._alert(time.time())
        except (StateUnavailable, OSError) as e:
            log.debug("alerts not looked at: %s", e)

    def _sleep_for(self, now: float) -> float:
        """How long the loop may wait for events: up to TICK, less if a timer of the agent is due."""
        if self._wake.is_set():
            return 0.0
        wakeup = self.agent.next_wakeup()
        return TICK if wakeup is None else max(0.0, min(TICK, wakeup - now))

    def _connect(self) -> None:
        broker = Broker(
            self._params, self.cfg.id, self.cfg.name, peers=() if self.cfg.authenticate else PEERS
        )
        try:
            if self._standby and not self._free_long_enough(broker):
                return
            broker.connect()
        except AgentActive as e:
            self._rival(e)
            return
        except BrokerError as e:
            self._free_since = None
            self.login_refused = str(e) if _LOGIN_REFUSED.search(str(e)) else None
            self._connect_failures += 1
            delay = backoff(self._connect_failures, base=0.5, cap=30)
            self._next_connect = time.time() + delay
            level = (
                logging.WARNING
                if self._connect_failures in (1, 5) or self._connect_failures % 20 == 0
                else logging.DEBUG
            )
            log.log(level, "%s; retrying in %.1f s (attempt %d)", e, delay, self._connect_failures)
            self.notify.status(f"{self._who()}: waiting for the broker: {e}")
            return
        if self._standby:
            log.warning("the other %s agent %r is gone: this one takes over", self.agent.mode, self.cfg.name)
            self._standby = False
        if self._connect_failures:
            log.info("connected to broker %s:%s again", self._params.host, self._params.port)
        else:
            log.info("connected to broker %s:%s", self._params.host, self._params.port)
        self._connect_failures = 0
        self.login_refused = None
        self.broker = broker
        if self._started:
            self.notify.status(f"{self._who()}: working")

    def _free_long_enough(self, broker: Broker) -> bool:
        """A standby looks at its queue without consuming it: True once it has had no consumer for
        STANDBY_GRACE seconds in a row (then `broker`, connected, takes it over)."""
        broker.connect(consume=False)
        consumers, holder = broker.consumers()
        now = time.time()
        self._next_connect = now + STANDBY_RETRY
        if consumers:
            broker.close()
            self._free_since = None
            self._rival(AgentActive(queue_name(self.cfg.id, self.cfg.name), holder))
            return False
        if self._free_since is None:
            self._free_since = now
            log.info(
                "the other %s agent %r seems gone; taking over unless it is back within %.0f s",
                self.agent.mode,
                self.cfg.name,
                STANDBY_GRACE,
            )
        if now - self._free_since < STANDBY_GRACE:
            broker.close()
            return False
        broker.close()
        return True

    def _rival(self, e: AgentActive) -> None:
        """Another agent consumes this agent's queue. Before startup, wait as its standby; after
        it, stop: the other one has taken over while the broker was out of reach."""
        self._next_connect = time.time() + STANDBY_RETRY
        if e.mine:
            # Our own previous connection, which the broker has not yet seen die (a cut link):
            # it goes when its heartbeat times out.
            log.info("the broker still holds this agent's previous connection; waiting for it to go")
            return
        if self._started:
            log.error(
                "%s agent %r of instance %r: %s: it took over while the broker was out of reach; "
                "stopping this one",
                self.agent.mode,
                self.cfg.name,
                self.cfg.id,
                e,
            )
            self.exit_status = ExitStatus.FAILURE
            self.stop()
            return
        self._standby = True
        # A standby is a steady state, not a start that hangs: ready, and watched, while it waits.
        self.notify.ready(f"{self._who()}: standby, another agent works ({e.holder or e.queue})")
        now = time.time()
        if now - self._standby_told >= PERSON_REPEAT:
            self._standby_told = now
            log.error(
                "%s agent %r of instance %r is already running (%s): this one does nothing and "
                "waits as a standby, taking over only once that one has been gone for %.0f s (said "
                "again every %d minutes)",
                self.agent.mode,
                self.cfg.name,
                self.cfg.id,
                e.holder or f"consumer of {e.queue}",
                STANDBY_GRACE,
                PERSON_REPEAT // 60,
            )

    def _lost(self, e: BrokerError) -> None:
        log.warning("%s; reconnecting", e)
        if self.broker is not None:
            self.broker.close()
        self.broker = None
        self._connect_failures += 1
        self._next_connect = time.time() + backoff(self._connect_failures, base=0.5, cap=30)

    def _apply(self, body: bytes, user: str | None = None) -> tuple[str, list[bytes]]:
        """Handle one AMQP body published by broker user `user`: ("ack" | "dead" | "requeue",
        elements of a batch to dead-letter)."""
        try:
            items = messages.decode_many(body)
        except MessageError as e:
            self._dead_log("dead-lettering a message: %s: %r", e, body[:200])
            return "dead", []
        dead: list[bytes] = []
        try:
            with self.state.savepoint():
                for element, item in items:
                    if isinstance(item, MessageError):
                        self._dead_log("dead-lettering a message of a batch: %s", item)
                        dead.append(_reencode(element))
                        continue
                    try:
                        self._authenticate(item, user)
                        self.agent.observer.heard_from(item.sender, time.time())
                        with self.state.savepoint():
                            self.agent.on_message(item)
                    except MessageError as e:
                        self._dead_log("dead-lettering a message: %s: %r", e, str(element)[:200])
                        dead.append(_reencode(element))
        except (StateUnavailable, OSError) as e:
            # Disk full, database locked, a directory we cannot write: the message is fine, we are not.
            # Let it come back later (handlers are idempotent) instead of dead-lettering a valid request.
            log.error("cannot act on a message now (%s); it stays queued", e)
            return "requeue", []
        except Exception:
            log.exception("bug while handling a message; dead-lettering it: %r", body[:200])
            return "dead", []
        if len(items) == 1 and dead:
            return "dead", []  # a single message is dead-lettered as it came
        return "ack", dead

    def _authenticate(self, msg: messages.Message, user: str | None) -> None:
        """With `authenticate`, a message counts only if the broker user that published it is the
        one of the agent it claims to come from (`<name>@<id>`): the broker vouches for the user
        (user_id), the agent's own checks then tie the agent to the entry."""
        if not self.cfg.authenticate:
            return
        expected = broker_user(self.cfg.id, msg.sender)
        if user != expected:
            raise MessageError(
                f"{msg.TYPE} claims to come from {msg.sender!r}, but broker user {user!r} published "
                f"it, not {expected!r}"
            )

    def _dead_log(self, fmt: str, *args: object) -> None:
        """Log a dead letter, at most DEAD_LOG_BURST a minute: a flood of bad messages is counted,
        not written out line by line."""
        self._end_dead_window(time.monotonic())
        if self._dead_logged < DEAD_LOG_BURST:
            self._dead_logged += 1
            log.warning(fmt, *args)
        else:
            self._dead_quiet += 1

    def _end_dead_window(self, now: float) -> None:
        if now - self._dead_window < DEAD_LOG_WINDOW:
            return
        if self._dead_quiet:
            log.warning(
                "%d more messages were dead-lettered in the last %.0f s (not logged one by one)",
                self._dead_quiet,
                now - self._dead_window,
            )
        self._dead_window, self._dead_logged, self._dead_quiet = now, 0, 0

    def _drain_done(self) -> None:
        """Record every finished job's result, each in its own savepoint of the current transaction."""
        while True:
            try:
                pool, keys, done, outcome, error = self._done.get_nowait()
            except queue.Empty:
                return
            self._busy.difference_update(keys)
            if pool == "transfer":
                self.transfers -= 1
            if isinstance(error, Interrupted):
                continue  # cut short by the stop: nothing to record, the next start does it again
            try:
                with self.state.savepoint():
                    done(outcome, error)
            except Exception:
                log.exception("bug while recording a job's result")

    def _flush_outbox(self) -> None:
        """Publish the outbox, many messages per AMQP body and per publisher confirm.

        A destination whose publish the broker refuses is held back, in order, and tried again
        later; the other destinations' messages go on.
        """
        if self.broker is None:
            return
        now = time.time()
        held = {dest for dest, (_n, until, _told) in self._held.items() if until > now}
        while True:
            rows = self.state.outbox(OUTBOX_BATCH, held=held)
            if not rows:
                return
            for dest, chunk in _chunks(rows):
                if dest in held:
                    continue
                try:
                    self.broker.publish(dest, messages.encode_batch([body for _, _, body in chunk]))
                except PublishRefused as e:
                    held.add(dest)
                    self._refused(dest, e, now)
                    continue
                with self.state.transaction():
                    self.state.sent([seq for seq, _, _ in chunk])
                if dest in self._held:
                    del self._held[dest]
                    log.warning("messages to agent %r go out again", dest)

    def _refused(self, dest: str, e: PublishRefused, now: float) -> None:
        refusals, _until, told = self._held.get(dest, (0, 0.0, float("-inf")))
        refusals += 1
        if now - told >= PERSON_REPEAT:
            told = now
            log.error(
                "the broker refuses messages to agent %r (%s); they wait in the outbox, in order, "
                "and the other agents' messages go on (said again every %d minutes)",
                dest,
                e,
                PERSON_REPEAT // 60,
            )
        self._held[dest] = (refusals, now + backoff(refusals, base=1, cap=60), told)


# pika's words for a login or vhost the broker refuses (a person must fix the user or password).
_LOGIN_REFUSED = re.compile(r"Authentication|AccessDenied|ACCESS_REFUSED - Login")
OUTBOX_BATCH = 2000
_CHUNK_BYTES = 256 * 1024


def _chunks(rows: list[tuple[int, str, bytes]]) -> Iterator[tuple[str, list[tuple[int, str, bytes]]]]:
    """Split outbox rows into per-destination chunks, keeping each destination's order."""
    by_dest: dict[str, list[tuple[int, str, bytes]]] = {}
    for row in rows:
        by_dest.setdefault(row[1], []).append(row)
    for dest, dest_rows in by_dest.items():
        chunk: list[tuple[int, str, bytes]] = []
        size = 0
        for row in dest_rows:
            if chunk and (size + len(row[2]) > _CHUNK_BYTES or len(chunk) >= messages.MAX_BATCH):
                yield dest, chunk
                chunk, size = [], 0
            chunk.append(row)
            size += len(row[2]) + 1
        if chunk:
            yield dest, chunk


def _reencode(element: object) -> bytes:
    """The JSON of one element of a batch, for the dead-letter queue."""
    return json.dumps(element, ensure_ascii=True, default=str).encode("ascii")
