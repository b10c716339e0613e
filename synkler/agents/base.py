"""What the three roles share: the Agent base class (retries, transfer batches, cleanup scripts).

An agent reacts to messages, job results and time; it never talks to the broker itself. The
runtime (synkler.runtime) runs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import messages
from ..backoff import backoff
from ..errors import MessageError
from ..hops import cleanup, transfer
from ..state import Entry, State

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("synkler")

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
        survives the agent (synkler.hops.scriptrunner): an agent killed meanwhile collects the result at
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
            lambda: cleanup.run_cleanup(self.cfg, entry.id, name, full_path, resume=resume),
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
