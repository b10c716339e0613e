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

import json
import logging
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .. import messages, transfer
from ..backoff import backoff
from ..broker import Broker, BrokerParams
from ..errors import BrokerError, MessageError
from ..state import Entry, State

log = logging.getLogger("synkler")

TICK = 0.5  # longest the loop sleeps when nothing happens; events wake it at once
BATCH_ENTRIES = 500  # at most this many entries in one rsync run
BATCH_BYTES = 64 << 20  # ... and about this many bytes; bigger entries get a run of their own
SPACE_WAIT = 30.0  # seconds between tries of a step that failed for lack of disk space
# What a person can do when a hop gives up (after the log line that says which hop failed and why).
REOFFER = "then `touch` the entry in upload's file_dir to relay it again (docs/operations.md)."
GIVE_UP_ADVICE = {
    "push to central": "The entry stays in upload's file_dir. Fix the cause (`synkler check` tests "
    "ssh and rsync to central), " + REOFFER,
    "pull from central": "Upload keeps its copy, central its verified one (stored/<entry id>). Fix the "
    "cause on download's side or the path to central, " + REOFFER,
    "upload to central": "Upload keeps its copy. Find out why the copies differ (a file still being "
    "written, a disk or memory problem), " + REOFFER,
    "store at central": "Upload keeps its copy. Central's copies keep going bad: check central's disk, "
    + REOFFER,
}


HASH_GROUP = 100  # small entries hashed by one job (md5 at upload and central)
HASH_GROUP_BYTES = 4 << 20  # ... at most this many bytes together; a bigger entry gets a job alone


def hash_groups(entries: Iterable[Entry]) -> Iterator[list[Entry]]:
    """Entries in groups for md5 jobs: small ones share a job (one hand-over to a worker and one
    wake-up of the loop instead of one each), a big one gets its own."""
    group: list[Entry] = []
    size = 0
    for entry in entries:
        if entry.size >= HASH_GROUP_BYTES:
            yield [entry]
            continue
        group.append(entry)
        size += entry.size
        if len(group) >= HASH_GROUP or size >= HASH_GROUP_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


class Agent:
    """Base of the three roles: reacts to messages, job results and time. No direct broker I/O."""

    mode = ""

    def __init__(self, cfg, state: State, runtime: Runtime):
        self.cfg = cfg
        self.state = state
        self.rt = runtime
        self.name = cfg.name
        self.cleanup_due = True  # set when an entry's cleanup script becomes due
        self.transfer_due = True  # set when an entry may need a transfer, or a transfer slot freed up
        self.next_transfer_retry = float("inf")  # when a failed transfer is due to run again
        self.next_cleanup_retry = float("inf")  # when a failed cleanup script is due to run again
        self.link_failures = 0  # transfer runs in a row that could not reach central

    def startup(self) -> None:
        """Reconcile the disk with the durable state after a (possibly unclean) stop."""

    def on_message(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        """Start what is due. Called often: keep it cheap."""

    def next_wakeup(self) -> float | None:
        """When `tick` next has something to do on its own (None: nothing timed)."""
        return None

    def look_again(self) -> None:
        """Forget the hints that let `tick` skip work (after a tick was rolled back)."""
        self.cleanup_due = self.transfer_due = True

    def shutdown(self) -> None:
        """Release what `startup` took (threads, watches)."""

    # helpers shared by the roles -----------------------------------------------------------------

    def send(self, to: str, mtype: str, entry: str, **body: Any) -> None:
        """Queue a message in the outbox, in the caller's transaction."""
        self.state.enqueue(to, messages.encode(mtype, entry, self.name, **body))

    def entry_from(self, msg: dict[str, Any], state: str, **fields: Any) -> Entry:
        """A new entry described by an offer or fetch message (name, kind, size, files, and the md5
        if the message has it: an offer does not, "" stands for not known yet)."""
        meta = {k: msg[k] for k in ("name", "kind", "size", "files")}
        return Entry(id=msg["entry"], state=state, peer=msg["from"], md5=msg.get("md5", ""), **meta, **fields)

    def entry_for(self, msg: dict[str, Any]) -> Entry:
        entry = self.state.get(msg["entry"])
        if entry is None:
            raise MessageError(f"{msg['type']} for unknown entry {msg['entry']}")
        return entry

    def link_result(self, result: transfer.Result | None) -> None:
        """Note how a transfer run went: the backoff for a link that is down grows with its failures."""
        if result is not None and result.ok:
            self.link_failures = 0
        elif result is not None and result.link_down:
            self.link_failures += 1

    def retry_later(
        self,
        entry: Entry,
        hop: str,
        why: str,
        *,
        out_of_space: bool = False,
        link_down: bool = False,
        **changes: Any,
    ) -> bool:
        """Count a failed step; schedule a retry, or mark the entry failed. True if it will retry.

        Two causes are no fault of the entry's and do not count toward max_attempts:
        `out_of_space` (a disk was full: tried again every SPACE_WAIT seconds, at most
        retry_max_seconds) and `link_down` (central could not be reached, or the link broke or
        stalled: tried again with a backoff that grows with the failed runs in a row, up to
        retry_max_seconds). Either way the entry waits, however long that takes.
        """
        if self.rt.stopping:
            # A transfer cut short by our own shutdown is not the hop's fault: redo it at the next start.
            log.info("%s: %s interrupted by shutdown; resumes at the next start", entry.name, hop)
            return True
        if out_of_space or link_down:
            waiting = f"{hop}: waiting for disk space" if out_of_space else f"{hop}: link down"
            if out_of_space:
                delay = backoff(6, cap=min(SPACE_WAIT, self.cfg.retry_max_seconds))
            else:
                delay = backoff(max(1, self.link_failures), cap=self.cfg.retry_max_seconds)
            said = (entry.reason or "").startswith(waiting)  # warn once, not at every try
            level = logging.DEBUG if said else logging.WARNING
            self.state.update(entry, due=time.time() + delay, reason=f"{waiting}: {why}", **changes)
            log.log(
                level,
                "%s: %s failed %s (%s); trying again in %.0f s, not counted as a failed attempt",
                entry.name,
                hop,
                "for lack of disk space" if out_of_space else "because the link to central is down",
                why,
                delay,
            )
            return True
        tries = entry.tries + 1
        if tries >= self.cfg.max_attempts:
            self.state.update(entry, state="failed", tries=tries, reason=f"{hop}: {why}", **changes)
            log.error(
                "%s: %s failed %d times, giving up: %s. %s",
                entry.name,
                hop,
                tries,
                why,
                GIVE_UP_ADVICE.get(hop, "The data stays where it is."),
            )
            return False
        delay = backoff(tries, cap=self.cfg.retry_max_seconds)
        self.state.update(entry, tries=tries, due=time.time() + delay, reason=f"{hop}: {why}", **changes)
        log.warning("%s: %s failed (%s); retry %d in %.1f s", entry.name, hop, why, tries, delay)
        return True

    def due_for_transfer(self, state: str, now: float) -> list[Entry]:
        """Entries in `state` whose transfer may start now and is not running, oldest first.

        The loop passes after every message and finished job, and thousands of entries may be in
        `state`: look only when something changed (`transfer_due`) or a retry has come due, and
        load only the entries that are due and not already being transferred.
        """
        if self.rt.transfers >= self.cfg.max_transfers:
            return []  # transfer_due stays as it is: the run that ends frees a slot and sets it
        if not self.transfer_due and now < self.next_transfer_retry:
            return []
        self.transfer_due, self.next_transfer_retry = False, float("inf")
        due = []
        for entry_id, entry_due in self.state.ids_by_state(state):
            if entry_id in self.rt.busy:
                continue
            if entry_due > now:
                self.next_transfer_retry = min(self.next_transfer_retry, entry_due)
            else:
                due.append(self.state.get(entry_id))
        return due

    def batches(self, entries: list[Entry], group) -> list[list[Entry]]:
        """Group entries for transfer runs: many small entries share one rsync run, big ones go alone.

        Only entries on their first try are grouped: one that failed before goes alone, so a single
        bad entry cannot hold a whole batch back. Returns at most as many batches as there are free
        transfer slots, oldest entries first.
        """
        free = self.cfg.max_transfers - self.rt.transfers
        out: list[list[Entry]] = []
        open_batches: dict[Any, tuple[list[Entry], int]] = {}
        for entry in entries:
            alone = bool(entry.tries) or entry.size >= BATCH_BYTES
            key = group(entry)
            batch, size = ([], 0) if alone else open_batches.get(key, ([], 0))
            if not batch:
                if len(out) >= free:
                    continue  # no slot for a new run; entries of open batches may still join
                out.append(batch)
            batch.append(entry)
            if alone:
                continue
            size += entry.size
            if len(batch) >= BATCH_ENTRIES or size >= BATCH_BYTES:
                open_batches.pop(key, None)  # full: the next entry of this group starts a new batch
            else:
                open_batches[key] = (batch, size)
        return out

    def cleanup_target(self, entry: Entry) -> tuple[str, str]:
        """(%f, %F) for the entry's cleanup script: its name and full path on this host."""
        raise NotImplementedError

    def start_cleanup(self, entry: Entry, *, resume: bool = False) -> None:
        """Run the cleanup script for a delivered entry exactly once, as far as anything can.

        'running' is committed before the script starts. The script runs under a runner that
        survives the agent (synkler.scriptrunner): an agent killed meanwhile collects the result at
        its next start. Only if the runner itself died mid-script is the cleanup 'interrupted';
        it is then not run again.
        """
        if not resume:
            self.state.update(entry, cleanup="running")
        name, full_path = self.cleanup_target(entry)

        def done(result: transfer.Result | None, error: BaseException | None) -> None:
            entry_now = self.state.get(entry.id)
            if result is None and error is None:
                self.state.update(
                    entry_now, cleanup="interrupted", state="done", reason="cleanup script interrupted"
                )
                log.warning(
                    "%s: the cleanup script was interrupted (its runner died); not running it again", name
                )
            elif (error is not None or not result.ok) and entry_now.tries + 1 < self.cfg.cleanup_attempts:
                why = repr(error) if error else result.summary()
                tries = entry_now.tries + 1
                delay = backoff(tries, cap=self.cfg.retry_max_seconds)
                self.state.update(
                    entry_now,
                    cleanup="pending",
                    tries=tries,
                    due=time.time() + delay,
                    reason=f"cleanup script: {why}",
                )
                self.next_cleanup_retry = min(self.next_cleanup_retry, entry_now.due)
                log.warning(
                    "%s: cleanup script failed (%s); run %d of %d in %.1f s; output: %s",
                    name,
                    why,
                    tries + 1,
                    self.cfg.cleanup_attempts,
                    delay,
                    (result.output if result else "").strip(),
                )
            elif error is not None or not result.ok:
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
                output = result.output.strip()
                log.info("%s: cleanup script ran (exit 0)%s", name, f": {output}" if output else "")

        self.rt.submit(
            "script",
            "cleanup:" + entry.id,
            lambda: transfer.run_cleanup(self.cfg, entry.id, name, full_path, resume=resume),
            done,
        )

    def start_due_cleanups(self, now: float) -> None:
        if not self.cleanup_due and now < self.next_cleanup_retry:
            return
        self.cleanup_due, self.next_cleanup_retry = False, float("inf")
        for entry in self.state.by_state("delivered"):
            if entry.cleanup != "pending" or "cleanup:" + entry.id in self.rt.busy:
                continue
            if entry.due > now:  # a retry after a failed run, not yet due
                self.next_cleanup_retry = min(self.next_cleanup_retry, entry.due)
                continue
            self.start_cleanup(entry)

    def resume_cleanups(self) -> None:
        """At start: scripts marked running when the agent stopped are collected, not run again."""
        for entry in self.state.by_state("delivered"):
            if entry.cleanup == "running":
                log.info(
                    "%s: the agent stopped while the cleanup script ran; collecting its result", entry.name
                )
                self.start_cleanup(entry, resume=True)


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
        self.transfers = 0  # rsync runs going on
        self._connect_failures = 0
        self._next_connect = 0.0

    # jobs ----------------------------------------------------------------------------------------

    def submit(
        self,
        pool: str,
        keys: str | list[str],
        fn: Callable[[], Any],
        done: Callable[[Any, BaseException | None], None],
    ):
        """Run `fn` on a worker thread; `done(result, error)` then runs in the main loop, in a transaction.

        `keys` (entry ids and the like) are marked busy until `done` has run.
        """
        keys = [keys] if isinstance(keys, str) else list(keys)

        def finish(result: Any, error: BaseException | None) -> None:
            self.busy.difference_update(keys)
            if pool == "transfer":
                self.transfers -= 1
                self.agent.transfer_due = True  # a slot is free, and retries may have been scheduled
            done(result, error)

        def work() -> None:
            try:
                result, error = fn(), None
            except BaseException as e:  # handed to the main loop, which decides
                result, error = None, e
            self._done.put((finish, result, error))
            self.wake()

        def start() -> None:
            self.busy.update(keys)
            if pool == "transfer":
                self.transfers += 1
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
            self.agent.shutdown()
            transfer.terminate_all()
            for pool in self._pools.values():
                pool.shutdown(wait=True, cancel_futures=True)
            with self.state.transaction():
                self._drain_done()
            try:
                self._flush_outbox()
            except BrokerError:
                pass  # the outbox is durable: sent at the next start
            if self.broker:
                self.broker.close()
            self.state.close()
            if self.cfg.mode != "central":
                transfer.close_shared_connection(self.cfg)
            log.info("stopped")

    def _step(self) -> None:
        now = time.time()
        if self.broker is None and now >= self._next_connect:
            self._connect()
        deliveries: list[tuple[int, bytes]] = []
        try:
            timeout = self._sleep_for(now)
            if self.broker is not None:
                deliveries = self.broker.poll(timeout)
            else:
                self._wake.wait(max(0.0, min(timeout, self._next_connect - now)))
            self._wake.clear()
            self._work(deliveries)
            self._flush_outbox()
        except BrokerError as e:
            self._lost(e)

    def _work(self, deliveries: list[tuple[int, bytes]]) -> None:
        """One pass, one transaction, one commit: the deliveries, the finished jobs, the tick.

        Each delivery, job result and the tick has a savepoint of its own, so one that fails is
        undone alone. Acks, rejects and dead letters go out only after the commit: a crash before
        it means redelivery, and every handler takes a redelivered message as a no-op.
        """
        outcomes: list[tuple[int, str, list[bytes]]] = []
        pause = False
        try:
            with self.state.transaction():
                for tag, body in deliveries:
                    outcomes.append((tag, *self._apply(body)))
                self._drain_done()
                try:
                    with self.state.savepoint():
                        self.agent.tick(time.time())
                except Exception:
                    # A full disk or a vanished directory must not kill the agent: log, pause, retry.
                    log.exception("error in the agent's periodic work; retrying in a second")
                    self.agent.look_again()
                    pause = True
        except (sqlite3.OperationalError, OSError) as e:  # the commit itself failed
            log.error("cannot record the agent's state (%s); messages stay queued", e)
            outcomes = [(tag, "requeue", []) for tag, _ in deliveries]
            self.agent.look_again()
        for tag, outcome, dead in outcomes:
            for body in dead:
                self.broker.dead_letter(body)
            if outcome == "ack":
                self.broker.ack(tag)
            else:
                self.broker.reject(tag, requeue=outcome == "requeue")
        if pause or any(outcome == "requeue" for _, outcome, _ in outcomes):
            self._stop.wait(1.0)

    def _sleep_for(self, now: float) -> float:
        """How long the loop may wait for events: up to TICK, less if a timer of the agent is due."""
        if self._wake.is_set():
            return 0.0
        wakeup = self.agent.next_wakeup()
        return TICK if wakeup is None else max(0.0, min(TICK, wakeup - now))

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

    def _apply(self, body: bytes) -> tuple[str, list[bytes]]:
        """Handle one AMQP body: ("ack" | "dead" | "requeue", elements of a batch to dead-letter)."""
        try:
            items = messages.decode_many(body)
        except MessageError as e:
            log.warning("dead-lettering a message: %s: %r", e, body[:200])
            return "dead", []
        dead: list[bytes] = []
        try:
            with self.state.savepoint():
                for item in items:
                    if isinstance(item, MessageError):
                        log.warning("dead-lettering a message of a batch: %s", item)
                        dead.append(_reencode(item))
                        continue
                    try:
                        with self.state.savepoint():
                            self.agent.on_message(item)
                    except MessageError as e:
                        log.warning("dead-lettering a message: %s: %r", e, str(item)[:200])
                        dead.append(_reencode(item))
        except (sqlite3.OperationalError, OSError) as e:
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

    def _drain_done(self) -> None:
        """Record every finished job's result, each in its own savepoint of the current transaction."""
        while True:
            try:
                callback, result, error = self._done.get_nowait()
            except queue.Empty:
                return
            try:
                with self.state.savepoint():
                    callback(result, error)
            except Exception:
                log.exception("bug while recording a job's result")

    def _flush_outbox(self) -> None:
        """Publish the outbox, many messages per AMQP body and per publisher confirm."""
        if self.broker is None:
            return
        while True:
            rows = self.state.outbox(OUTBOX_BATCH)
            if not rows:
                return
            for dest, chunk in _chunks(rows):
                self.broker.publish(dest, messages.encode_batch([body for _, _, body in chunk]))
                with self.state.transaction():
                    self.state.sent([seq for seq, _, _ in chunk])


OUTBOX_BATCH = 2000
_CHUNK_BYTES = 256 * 1024


def _chunks(rows: list[tuple[int, str, bytes]]):
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


def _reencode(item: object) -> bytes:
    """The JSON of one element of a batch, for the dead-letter queue."""
    if isinstance(item, MessageError):
        item = getattr(item, "element", str(item))
    return json.dumps(item, ensure_ascii=True, default=str).encode("ascii")
