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

import logging
import queue
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .. import messages, transfer
from ..backoff import backoff
from ..broker import Broker, BrokerParams
from ..errors import BrokerError, MessageError
from ..state import Entry, State

log = logging.getLogger("synkler")

TICK = 0.5  # longest the loop sleeps when nothing happens; events wake it at once


def msg_type(body: bytes) -> str:
    try:
        return str(messages.decode(body)["type"])
    except Exception:
        return "malformed"


class Agent:
    """Base of the three roles: reacts to messages, job results and time. No direct broker I/O."""

    mode = ""

    def __init__(self, cfg, state: State, runtime: Runtime):
        self.cfg = cfg
        self.state = state
        self.rt = runtime
        self.name = cfg.name

    def startup(self) -> None:
        """Reconcile the disk with the durable state after a (possibly unclean) stop."""

    def on_message(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        """Start what is due. Called often: keep it cheap."""

    # helpers shared by the roles -----------------------------------------------------------------

    def send(self, to: str, mtype: str, entry: str, **body: Any) -> None:
        """Queue a message in the outbox, in the caller's transaction."""
        self.state.enqueue(to, messages.encode(mtype, entry, self.name, **body))

    def entry_for(self, msg: dict[str, Any]) -> Entry:
        entry = self.state.get(msg["entry"])
        if entry is None:
            raise MessageError(f"{msg['type']} for unknown entry {msg['entry']}")
        return entry

    def retry_later(self, entry: Entry, hop: str, why: str, **changes: Any) -> bool:
        """Count a failed step; schedule a retry, or mark the entry failed. True if it will retry."""
        if self.rt.stopping:
            # A transfer cut short by our own shutdown is not the hop's fault: redo it at the next start.
            log.info("%s: %s interrupted by shutdown; resumes at the next start", entry.name, hop)
            return True
        tries = entry.tries + 1
        if tries >= self.cfg.max_attempts:
            self.state.update(entry, state="failed", tries=tries, reason=f"{hop}: {why}", **changes)
            log.error(
                "%s: %s failed %d times, giving up: %s. The data stays where it is; fix the cause and "
                "put the entry back in place to relay it again.",
                entry.name,
                hop,
                tries,
                why,
            )
            return False
        delay = backoff(tries, cap=self.cfg.retry_max_seconds)
        self.state.update(entry, tries=tries, due=time.time() + delay, reason=f"{hop}: {why}", **changes)
        log.warning("%s: %s failed (%s); retry %d in %.1f s", entry.name, hop, why, tries, delay)
        return True

    def start_cleanup(self, entry: Entry, name: str, full_path: str) -> None:
        """Run the cleanup script for a delivered entry, at most once.

        'running' is committed before the script starts; an agent that dies while the script runs
        finds 'running' at its next start and marks it 'interrupted' instead of running it again.
        """
        self.state.update(entry, cleanup="running")

        def done(result: transfer.Result | None, error: BaseException | None) -> None:
            entry_now = self.state.get(entry.id)
            if error is not None or not result.ok:
                why = repr(error) if error else result.summary()
                self.state.update(entry_now, cleanup="failed", state="done", reason=f"cleanup script: {why}")
                log.error(
                    "%s: cleanup script failed (%s); output: %s",
                    name,
                    why,
                    (result.output if result else "").strip(),
                )
            else:
                self.state.update(entry_now, cleanup="done", state="done")
                log.info(
                    "%s: cleanup script ran (exit 0)%s",
                    name,
                    f": {result.output.strip()}" if result.output.strip() else "",
                )

        self.rt.submit(
            "script", "cleanup:" + entry.id, lambda: transfer.run_cleanup(self.cfg, name, full_path), done
        )

    def interrupt_cleanups(self) -> None:
        for entry in self.state.by_state("delivered"):
            if entry.cleanup == "running":
                self.state.update(
                    entry,
                    cleanup="interrupted",
                    state="done",
                    reason="agent stopped while the cleanup script ran",
                )
                log.warning(
                    "%s: the agent stopped while its cleanup script ran; not running it again", entry.name
                )


class Runtime:
    """Wires an Agent to the broker, the state database, worker threads and signals."""

    def __init__(self, cfg, agent_class: type[Agent]):
        self.cfg = cfg
        self.state = State(cfg.state_db)
        self.agent = agent_class(cfg, self.state, self)
        self.broker: Broker | None = None
        self._params = BrokerParams.from_config(cfg)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._done: queue.Queue[tuple[Callable, Any, BaseException | None]] = queue.Queue()
        self._pools = {
            "transfer": ThreadPoolExecutor(cfg.max_transfers, thread_name_prefix="transfer"),
            "hash": ThreadPoolExecutor(2, thread_name_prefix="hash"),
            # Its own thread, so noticing new entries never waits behind the md5 of a big one.
            "scan": ThreadPoolExecutor(1, thread_name_prefix="scan"),
            "script": ThreadPoolExecutor(1, thread_name_prefix="script"),
        }
        self.busy: set[str] = set()  # entry ids with a job running
        self._connect_failures = 0
        self._next_connect = 0.0

    # jobs ----------------------------------------------------------------------------------------

    def submit(
        self, pool: str, key: str, fn: Callable[[], Any], done: Callable[[Any, BaseException | None], None]
    ):
        """Run `fn` on a worker thread; `done(result, error)` then runs in the main loop, in a transaction."""

        def work() -> None:
            try:
                result, error = fn(), None
            except BaseException as e:  # handed to the main loop, which decides
                result, error = None, e
            self._done.put((lambda r, e: (self.busy.discard(key), done(r, e)), result, error))
            self.wake()

        def start() -> None:
            self.busy.add(key)
            self._pools[pool].submit(work)

        # Start only once the state change that led here is committed (see State.after_commit);
        # a rolled-back change starts nothing and leaves nothing marked busy.
        self.state.after_commit(start)

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
        self.wake()

    # main loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.stop)
        log.info(
            "%s agent %r of instance %r starting (state %s)",
            self.agent.mode,
            self.cfg.name,
            self.cfg.id,
            self.cfg.state_db,
        )
        with self.state.transaction():
            self.agent.startup()
        try:
            while not self._stop.is_set():
                self._step()
        finally:
            log.info("stopping: ending transfers, waiting for running jobs")
            transfer.terminate_all()
            for pool in self._pools.values():
                pool.shutdown(wait=True, cancel_futures=True)
            self._drain_done()
            try:
                self._flush_outbox()
            except BrokerError:
                pass  # the outbox is durable: sent at the next start
            if self.broker:
                self.broker.close()
            self.state.close()
            log.info("stopped")

    def _step(self) -> None:
        now = time.time()
        if self.broker is None and now >= self._next_connect:
            self._connect()
        deliveries: list[tuple[int, bytes]] = []
        try:
            if self.broker is not None:
                deliveries = self.broker.poll(0 if self._wake.is_set() else TICK)
            else:
                self._wake.wait(max(0.0, min(TICK, self._next_connect - now)))
            self._wake.clear()
            for tag, body in deliveries:
                self._handle(tag, body)
            self._drain_done()
            self._tick()
            self._flush_outbox()
        except BrokerError as e:
            self._lost(e)

    def _tick(self) -> None:
        try:
            with self.state.transaction():
                self.agent.tick(time.time())
        except Exception:
            # A full disk or a vanished directory must not kill the agent: log, pause, try again.
            log.exception("error in the agent's periodic work; retrying in a second")
            self._stop.wait(1.0)

    def _connect(self) -> None:
        broker = Broker(self._params, self.cfg.id, self.cfg.name)
        try:
            broker.connect()
        except BrokerError as e:
            self._connect_failures += 1
            delay = backoff(self._connect_failures, base=0.5, cap=30)
            self._next_connect = time.time() + delay
            level = (
                logging.WARNING
                if self._connect_failures in (1, 5) or self._connect_failures % 20 == 0
                else logging.DEBUG
            )
            log.log(level, "%s; retrying in %.1f s (attempt %d)", e, delay, self._connect_failures)
            return
        if self._connect_failures:
            log.info("connected to broker %s:%s again", self._params.host, self._params.port)
        else:
            log.info("connected to broker %s:%s", self._params.host, self._params.port)
        self._connect_failures = 0
        self.broker = broker

    def _lost(self, e: BrokerError) -> None:
        log.warning("%s; reconnecting", e)
        if self.broker is not None:
            self.broker.close()
        self.broker = None
        self._connect_failures += 1
        self._next_connect = time.time() + backoff(self._connect_failures, base=0.5, cap=30)

    def _handle(self, tag: int, body: bytes) -> None:
        try:
            msg = messages.decode(body)
            with self.state.transaction():
                self.agent.on_message(msg)
        except MessageError as e:
            log.warning("dead-lettering a message: %s: %r", e, body[:200])
            self.broker.reject(tag)
            return
        except (sqlite3.OperationalError, OSError) as e:
            # Disk full, database locked, a directory we cannot write: the message is fine, we are not.
            # Let it come back later instead of dead-lettering a valid request.
            log.error("cannot act on a %s message now (%s); it stays queued", msg_type(body), e)
            self.broker.reject(tag, requeue=True)
            self._stop.wait(1.0)
            return
        except Exception:
            log.exception("bug while handling a message; dead-lettering it: %r", body[:200])
            self.broker.reject(tag)
            return
        self.broker.ack(tag)

    def _drain_done(self) -> None:
        while True:
            try:
                callback, result, error = self._done.get_nowait()
            except queue.Empty:
                return
            try:
                with self.state.transaction():
                    callback(result, error)
            except Exception:
                log.exception("bug while recording a job's result")

    def _flush_outbox(self) -> None:
        if self.broker is None:
            return
        while True:
            rows = self.state.outbox(200)
            if not rows:
                return
            for seq, dest, body in rows:
                self.broker.publish(dest, body)
                self.state.sent(seq)
