"""The vocabulary the roles share with each other and with the runtime: the names of the fixed
roles, what a job holds busy (`Key`), the seam to the runtime (`Jobs`), what an agent tells its
observers (`Observer`), the base of each role's states (`Status`) and of the cleanup column.

The roles themselves build on `Agent` (synkler.agents.agent: states, moves, messages, an operator's
requests) and, for upload and download, `Endpoint` (synkler.agents.endpoint: transfers, retries,
cleanup scripts).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Callable, NamedTuple, Protocol, TypeVar

from ..errors import Refused
from ..state import Entry
from .facts import (
    ADMISSION_AT_CENTRAL,
    METADATA_AT_CENTRAL,
    PULL_FROM_CENTRAL,
    PUSH_TO_CENTRAL,
    STORE_AT_CENTRAL,
    UPLOAD_TO_CENTRAL,
)
from .pools import Pool

log = logging.getLogger("synkler")

PERSON_REPEAT = 600  # seconds between ERROR lines while ssh refuses for a reason a person must fix
# What a person can do when a hop gives up (after the log line that says which hop failed and why).
REOFFER = "then `synkler retry <entry>` on upload relays it again (docs/runbook.md)."
GIVE_UP_ADVICE = {
    PUSH_TO_CENTRAL: "The entry stays in upload's file_dir. Fix the cause (`synkler check` tests "
    "ssh and rsync to central), " + REOFFER,
    PULL_FROM_CENTRAL: "Upload keeps its copy, central its verified one (stored/<entry id>). Fix the "
    "cause on download's side or the path to central, then `synkler retry <entry>` on download pulls it "
    "again (docs/runbook.md).",
    UPLOAD_TO_CENTRAL: "Upload keeps its copy. Find out why the copies differ (a file still being "
    "written, a disk or memory problem), " + REOFFER,
    STORE_AT_CENTRAL: "Upload keeps its copy. Central's copies keep going bad: check central's disk, "
    + REOFFER,
    ADMISSION_AT_CENTRAL: "Upload keeps its copy. Give central's file_dir a bigger file system (or a "
    "lower free_percent), " + REOFFER,
    METADATA_AT_CENTRAL: "Upload keeps its copy. Add the metadata central requires: `synkler send -k "
    "KEY:VALUE <name>` on upload, or write <name>.meta.json beside it; upload offers it again at once "
    "(docs/metadata.md).",
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


class Key(NamedTuple):
    """What a running job holds busy until its outcome is recorded: `kind` and an entry id or name."""

    kind: str
    of: str = ""


ENTRY = "entry"  # the transfer or check of an entry (its id): one job at a time per entry
HASHING = "md5"  # upload: the md5 of an offered entry (its id)
NAME = "md5 of name"  # upload: the md5 of a name relayed before, before a new version is offered
CLEANUP = "cleanup"  # the cleanup script of an entry (its id)
RECHECK = "recheck"  # central: the md5 of a stored copy download found bad (its id)
SCAN = Key("scan")  # upload: the listing of file_dir

# What an operator can ask of one entry (synkler retry | forget | resend, docs/runbook.md). The
# command writes the request into the agent's state database; the running agent takes it in its main
# loop (Agent.take_requests) and answers there.
RETRY, FORGET, RESEND = "retry", "forget", "resend"
ACTIONS = (RETRY, FORGET, RESEND)


def at_destination(action: str, destination: str) -> str:
    """An operator's action at one destination of an entry (`forget --to DEST`), as a request holds it."""
    return f"{action}:{destination}"


def request_for(mode: str, name: str, action: str, to: str | None) -> str:
    """The request the agent (`mode`, `name`) is given for an operator's `action [--to DEST]`
    (docs/runbook.md, "At one destination"). Central and upload take the destination (each agent
    refuses what it cannot do there); a download is one destination itself: `--to` naming it is the
    same as none, and naming another is an error (that entry is the other download's)."""
    if to is None:
        return action
    if mode != "download":
        return at_destination(action, to)
    if to == name:
        return action
    raise Refused(
        f"this is download {name!r}: {to!r} is another download; run `synkler {action}` with {to}'s "
        f"configuration, or `synkler {action} ENTRY --to {to}` on central"
    )


T = TypeVar("T")
Done = Callable[["T | None", "BaseException | None"], None]


def job_error(error: BaseException | None) -> BaseException:
    """The error a job ended with (a job ends with an outcome or an error)."""
    return error if error is not None else RuntimeError("the job ended without an outcome")


class Jobs(Protocol):
    """What an agent sees of the runtime that runs it."""

    @property
    def transfers(self) -> int:
        """rsync runs going on (jobs of Pool.TRANSFER)."""

    @property
    def stopping(self) -> bool:
        """The agent is stopping: a job cut short now is not the entry's fault."""

    def busy(self, key: Key) -> bool:
        """Does a job hold `key`?"""

    def submit(self, pool: Pool, keys: Sequence[Key], work: Callable[[], T], done: Done[T]) -> None:
        """Run `work()` on a worker of `pool` once the current transaction commits; then
        `done(outcome, error)` runs in the main loop, in a transaction. `keys` stay busy meanwhile."""

    def wake(self) -> None:
        """Make the main loop pass soon (from any thread)."""

    def central_place(self, fresh: bool = False, central: str | None = None) -> str | None:
        """Central's directory of this instance, `<central's file_dir>/<id>`, as central announces
        it; `fresh`: ask again (central's config may have changed). None if it never said.
        `central`: which central of a pool (default: central_name)."""

    def central_version(self, central: str) -> str | None:
        """The synkler version a central's presence report says it runs (read again at most once a
        minute); None if it never reported (or not known: not connected)."""

    def consumers(self, agent: str) -> int | None:
        """How many consume an agent's queue now (None: not known: not connected, or no queue)."""

    def offers_ready(self, upload: str) -> int | None:
        """Offers waiting in an upload agent's offers queue of a pool, not yet taken by a central
        (None: not known: not connected, or no queue)."""

    def room(self, central: str) -> tuple[int, float] | None:
        """A central of a pool, as its presence report says now: (the offers it may take, the
        bytes it may still take above its reserve); None if it does not report room (no fresh
        report, stopped, draining, or not a pool's)."""


class Observer:
    """What an agent tells about as it happens, for its metrics (synkler.observe.metrics); by default nothing.
    Called in the main loop; `moved` only once the change has committed."""

    def moved(self, old: str | None, entry: Entry) -> None:
        """An entry was created (`old` None) or changed state from `old`."""

    def mismatch(self, hop: str) -> None:
        """A copy's md5 did not match after `hop`."""

    def retried(self, hop: str, cause: str) -> None:
        """A step of `hop` failed and is scheduled again; `cause`: failure, link_down, disk_full or
        needs_person."""

    def heard_from(self, peer: str, now: float) -> None:
        """A message from agent `peer` arrived."""

    def refused_offer(self, peer: str) -> None:
        """Central refused an offer of upload agent `peer`: it has as many entries as one may."""


class Status(str, enum.Enum):
    """Base of each role's entry states. The value is what the state column holds and status shows."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Cleanup(Status):
    """Where an entry's cleanup script is (upload and download; the `cleanup` column)."""

    PENDING = "pending"  # due: starts when the script runner is free (and a retry's wait is over)
    RUNNING = "running"  # committed before the runner starts; collected after a restart
    DONE = "done"  # exit 0
    FAILED = "failed"  # failed cleanup_attempts times
    INTERRUPTED = "interrupted"  # its runner died mid-script: not run again
    SKIPPED = "skipped"  # not run: the name no longer held the delivered content (the reason says why)


Transitions = Mapping[Status, "frozenset[Status]"]
