"""A fake runtime for unit tests of the roles' decisions: no broker, no sshd, no worker threads.

`Role` builds an agent of one role on a real state database in a temporary directory and plays the
runtime's part: it hands it messages and ticks, each in a transaction, and keeps the jobs the agent
submits until the test runs them (`run`: the real work, here and now) or answers them with an
outcome of its choosing (`finish`: an rsync result, an md5). What the agent sent is read back from
its outbox as typed messages.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synkler import __version__, messages
from synkler.agents import AGENTS
from synkler.agents.base import Key
from synkler.config import parse_config
from synkler.messages import Message
from synkler.runtime.inbox import Inbox
from synkler.runtime.loop import Runtime
from synkler.state import Entry, State


@dataclass
class Job:
    pool: str
    keys: tuple[Key, ...]
    work: Callable[[], Any]
    done: Callable[[Any, BaseException | None], None]


class FakeJobs:
    """The runtime's side of the seam (synkler.agents.base.Jobs), with jobs kept for the test."""

    def __init__(self, state: State):
        self.state = state
        self.transfers = 0
        self.stopping = False
        self.pending: list[Job] = []
        self.held: set[Key] = set()
        self.place: str | None = "/srv/central/lab"  # central's directory, as if it had announced it
        self.places: dict[str, str] = {}  # a pool's other centrals' directories
        self.consumer_counts: dict[str, int] = {}  # agent -> consumers of its queue (a pool)
        self.offers_waiting: int | None = 1  # offers ready in the upload's offers queue (a pool)
        self.rooms: dict[str, tuple[int, float]] = {}  # a pool's central -> (offers, bytes) it reports
        self.versions: dict[str, str | None] = {}  # central -> the synkler version it reports (default: ours)

    def busy(self, key: Key) -> bool:
        return key in self.held

    def submit(self, pool: str, keys: Sequence[Key], work: Callable[[], Any], done: Any) -> None:
        job = Job(pool, tuple(keys), work, done)
        self.state.after_commit(lambda: self._start(job))  # as the runtime: only once committed

    def _start(self, job: Job) -> None:
        self.held.update(job.keys)
        self.transfers += job.pool == "transfer"
        self.pending.append(job)

    def wake(self) -> None:
        pass

    def central_place(self, fresh: bool = False, central: str | None = None) -> str | None:
        return self.places.get(central or "", self.place)

    def central_version(self, central: str) -> str | None:
        return self.versions.get(central, __version__)

    def consumers(self, agent: str) -> int | None:
        return self.consumer_counts.get(agent, 1)

    def offers_ready(self, upload: str) -> int | None:
        return self.offers_waiting

    def room(self, central: str) -> tuple[int, float] | None:
        return self.rooms.get(central)


class Role:
    """One agent of `mode`, its state database and its fake runtime. Every Role made in a test is
    closed after it (tests/unit/conftest.py)."""

    OPEN: list[Role] = []

    def __init__(self, mode: str, tmp_path: Path, **settings: Any):
        Role.OPEN.append(self)
        file_dir = tmp_path / "files"
        file_dir.mkdir(exist_ok=True)
        data = {
            "mode": mode,
            "id": "lab",
            "file_dir": str(file_dir),
            "synkler_server": "central.example",
            "state_db": str(tmp_path / f"{mode}.sqlite"),
            **settings,
        }
        self.cfg = parse_config(data, tmp_path / "synkler.conf", environ={}, home=tmp_path)
        self.state = State(self.cfg.state_db)
        self.jobs = FakeJobs(self.state)
        self.jobs.place = f"/srv/central/{self.cfg.id}"
        self.agent = AGENTS[mode](self.cfg, self.state, self.jobs)
        self.file_dir = file_dir

    def close(self) -> None:
        self.agent.shutdown()
        self.state.close()

    # what the runtime does -------------------------------------------------------------------------

    def start(self) -> None:
        with self.state.transaction():
            self.agent.startup()

    def deliver(self, msg: Message) -> None:
        with self.state.transaction(), self.state.savepoint():
            self.agent.on_message(msg)

    def apply(self, body: bytes, user: str | None = None) -> tuple[str, list[bytes]]:
        """An AMQP body as the runtime's main loop handles it (synkler.runtime.inbox: decode, authenticate,
        dispatch, each in a savepoint), in a transaction: ("ack" | "dead" | "requeue", dead elements)."""
        with self.state.transaction():
            return Inbox(self.cfg, self.state, self.agent).apply(body, user)

    def tick(self, now: float | None = None) -> None:
        with self.state.transaction():
            self.agent.tick(time.time() if now is None else now)

    def request(self, action: str, entry_id: str) -> tuple[bool, str]:
        """An operator's request (synkler retry | forget | resend): written as the command writes it,
        taken in a pass of the main loop as the runtime takes it; (done?, the agent's answer)."""
        with self.state.transaction():
            seq = self.state.add_request(entry_id, action)
        with self.state.transaction():
            self.agent.take_requests()
        request = self.state.get_request(seq)
        assert request is not None and request.answered is not None, "the request was not taken"
        return bool(request.ok), request.answer or ""

    def job(self, pool: str | None = None) -> Job:
        """The one job waiting (of `pool`)."""
        jobs = [j for j in self.jobs.pending if pool is None or j.pool == pool]
        assert len(jobs) == 1, f"expected one {pool or ''} job, got {jobs}"
        return jobs[0]

    def finish(self, job: Job, outcome: Any = None, error: BaseException | None = None) -> None:
        """Hand the job's outcome back in the main loop, as the runtime does."""
        self.jobs.pending.remove(job)
        self.jobs.held.difference_update(job.keys)
        self.jobs.transfers -= job.pool == "transfer"
        with self.state.transaction(), self.state.savepoint():
            job.done(outcome, error)

    def run(self, job: Job) -> None:
        """Do the job's real work here, and hand back what it gave."""
        try:
            outcome, error = job.work(), None
        except Exception as e:
            outcome, error = None, e
        self.finish(job, outcome, error)

    # looking at it ---------------------------------------------------------------------------------

    def given(self, state: str, name: str = "data.bin", entry_id: str | None = None, **fields: Any) -> Entry:
        """An entry already in `state` (as an earlier run of the agent left it)."""
        values: dict[str, Any] = {"kind": "file", "size": 4, "files": 1, "md5": "a" * 32, "attempt": 1}
        values.update(fields)
        entry = Entry(id=entry_id or uuid.uuid4().hex, name=name, state=state, **values)
        with self.state.transaction():
            self.state.insert(entry)
        return entry

    def entry(self, entry_id: str) -> Entry:
        entry = self.state.get(entry_id)
        assert entry is not None
        return entry

    def sent(self) -> list[tuple[str, Message]]:
        """What the agent sent since the last look: (to whom, message)."""
        rows = self.state.outbox(10_000)
        with self.state.transaction():
            self.state.sent([seq for seq, _, _ in rows])
        return [(dest, messages.decode(body)) for _, dest, body in rows]


@contextmanager
def central_runtime(tmp_path: Path, **settings: Any) -> Iterator[Runtime]:
    """The real runtime of a central agent on a real state database, no broker connected (a test
    sets `broker` to a fake of its own), its worker pools shut down afterwards."""
    (tmp_path / "files").mkdir(exist_ok=True)
    data = {
        "mode": "central",
        "file_dir": str(tmp_path / "files"),
        "synkler_server": "broker.example",
        "state_db": str(tmp_path / "central.sqlite"),
        **settings,
    }
    runtime = Runtime(
        parse_config(data, tmp_path / "synkler.conf", environ={}, home=tmp_path), AGENTS["central"]
    )
    try:
        yield runtime
    finally:
        runtime.state.close()
        runtime.workers.shutdown()
