"""Download's early pull: a big file pulled while upload still pushes it to central.

Central links the file being pushed where download can read it (`growing/<entry id>`) and says so
(`pushing`) when the push begins. Download then appends what has arrived to its copy in staging, run
after run of `rsync --append`, and hashes it as it comes (`Early`, memory only; `Trailing`, the
thread that hashes what each run appended once the run has ended, while the next goes). The run
after the `fetch`, from central's verified copy, is synkler.hops.pull.finish_early. A copy kept
across a restart is an `Early` that has hashed nothing yet: what is on disk is hashed while the next
run goes.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import Interrupted
from . import transfer
from .checksum import STOPPING, new_md5

if TYPE_CHECKING:
    import hashlib

    from ..config import Config

log = logging.getLogger("synkler")

EARLY_QUEUE = 64  # pushes begun that wait, in download's memory, for a slot to be pulled early
EARLY_WAIT = 60.0  # seconds an early pull waits for upload's push to begin before it gives up
EARLY_STEP = 8 << 20  # an early run that brought less than this waits EARLY_PAUSE before the next
EARLY_PAUSE = 0.25
TRAIL_EVERY = 0.1  # seconds between two looks at what an early pull's runs appended, to hash it
# rsync ended by a signal may write its last write buffer (256 KiB) a second time, at the end of the
# file it appends to: its signal handler flushes the buffer again when the signal comes after the
# buffer was written and before it was emptied. Seen in the links benchmark (rsync 3.5.0): an early
# copy whose run the fetch ended had its last 256 KiB repeat the 256 KiB before them, so the copy
# failed its md5 and the file was pulled whole. What a run that did not end well appended last is
# therefore cut off (at most this much, never what the copy held before the run) and pulled again.
CUT_TAIL = 1 << 20
# rsync's error line for a source that does not exist ends with ENOENT's number, whatever the locale.
_MISSING = re.compile(
    rf"^rsync: \[sender\] .*\(2\)\s*$|rrsync error: {transfer.RRSYNC_NO_FILE}|"
    r"^sftp: .*: No such file or directory$",
    re.MULTILINE,
)


# the early pull ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Early:
    """A big file pulled while upload pushes it: its copy in staging and the md5 of its first bytes.

    The digest leaves out the copy's last byte, so that the run after `fetch` always brings at least
    one byte: rsync sets the file's mode and mtime only on a file it writes to. The pulling job
    appends and hashes; the main loop only sets `fetched` and, once the job has ended, `ended`.
    A copy found at startup has hashed nothing: the next job hashes it first (`hash_more`).
    """

    local: str
    fetched: threading.Event = field(default_factory=threading.Event)  # the fetch has come: stop
    digest: hashlib._Hash = field(default_factory=new_md5)
    hashed: int = 0
    ino: int | None = None
    ended: float | None = None  # when the early pulling stopped

    def hash_more(self, limit: int, stop: threading.Event | None = None) -> bool:
        """Hash what has been appended (at most up to `limit`, less if `stop` is set meanwhile);
        False if the copy is not the file hashed so far (`hash_more(hashed)` only checks that)."""
        try:
            fd = os.open(self.local, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return self.ino is None
        try:
            st = os.fstat(fd)
            if self.ino is None:
                self.ino = st.st_ino
            if st.st_ino != self.ino or st.st_size < self.hashed:
                return False
            while self.hashed < min(st.st_size, limit):
                if STOPPING.is_set():
                    raise Interrupted("the agent is stopping")
                if stop is not None and stop.is_set():
                    break
                block = os.pread(fd, min(1 << 20, limit - self.hashed), self.hashed)
                if not block:
                    break
                self.digest.update(block)
                self.hashed += len(block)
            return True
        finally:
            os.close(fd)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def early_room(pulling_early: int, transfers: int, max_transfers: int) -> bool:
    """May download begin one more early pull? While a transfer slot is free and fewer are pulled
    early than max_transfers less one (at least one): that slot stays for pulls of entries already
    fetched, since an early pull ends only with its fetch or with its push."""
    return transfers < max_transfers and pulling_early < max(1, max_transfers - 1)


def pull_early(cfg: Config, entry_id: str, path: str, size: int, early: Early) -> None:
    """Pull a file while upload pushes it to central, until its fetch comes or the push ends.

    Each run brings what central's file held when the run began, so download's link idles between
    two runs while upload's carries on: the copy falls behind by that much each run. What a run
    appended is therefore hashed on a thread of its own while the next run goes (`Trailing`), not
    between the runs."""
    give_up = time.monotonic() + EARLY_WAIT
    if not early.hash_more(early.hashed):
        raise OSError(f"{early.local} was replaced while it was pulled early")
    # A copy kept from an earlier run (a restart, an earlier try of the push): the pull goes on
    # where it ends (what is not hashed yet is hashed meanwhile), and its push has begun.
    arrived = length(early.local) > 0
    if arrived:
        log.info("pulling entry %s early again, from the %d bytes it has", entry_id, length(early.local))
    with Trailing(early, size - 1) as trailing:
        trailing.ended(length(early.local))
        while not early.fetched.is_set() and not trailing.replaced:
            before = length(early.local)
            # The fetch ends a run at once: the run after it appends the rest from the verified copy
            # in one go, rather than after this one has brought what the file held at its start (for
            # a big file on a slow link, many seconds in which nothing seemed to happen).
            began = time.monotonic()
            result = transfer.pull_more(cfg, path, early.local, cancel=early.fetched)
            # What a run cut short appended is kept, less the tail its end may have spoiled.
            brought = trimmed(early.local, before, result) - before
            trailing.ended(before + brought)
            log.debug(
                "early run of entry %s: %d bytes in %.2f s", entry_id, brought, time.monotonic() - began
            )
            if not result.ok:
                if not _MISSING.search(result.output) or arrived or time.monotonic() > give_up:
                    # The push is over (or failed, or never began): the fetch decides.
                    log.debug("early pull of entry %s ends: %s", entry_id, result.summary())
                    break
                early.fetched.wait(EARLY_PAUSE)
                continue
            if not arrived:
                arrived = True
                log.info("pulling entry %s early, while upload pushes it", entry_id)
            if length(early.local) >= size:
                break  # all of it is here: its slot goes to another push (the fetch checks it)
            if brought < EARLY_STEP:
                early.fetched.wait(EARLY_PAUSE)
    # What is not hashed yet is hashed by the run after the fetch, while it runs.
    if trailing.replaced or not early.hash_more(early.hashed):
        raise OSError(f"{early.local} was replaced while it was pulled early")


def trimmed(local: str, before: int, result: transfer.Result) -> int:
    """The length of the copy at `local` after a run that began with it `before` bytes long: when
    the run did not end well (ended by the fetch or the stop, or failed), its last CUT_TAIL bytes
    are cut off first, down to `before` at most."""
    now = length(local)
    if result.ok or now <= before:
        return now
    keep = max(before, now - CUT_TAIL)
    os.truncate(local, keep)
    return keep


def length(path: str) -> int:
    """The size of the file at `path` (0: none)."""
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


class Trailing:
    """`with Trailing(early, limit) as trailing:` hash an early copy on a thread of its own, every
    TRAIL_EVERY seconds, up to what the runs that have ended appended (`ended(length)` after each;
    at most `limit`), while the next run goes; until the block ends. Only bytes whose run has ended
    are hashed, as when each run was followed by a read: a byte gone bad once rsync wrote it (the
    tests' corrupting rsync) is read bad. `replaced`: the copy is no longer the file hashed (the
    caller gives the early pull up)."""

    def __init__(self, early: Early, limit: int):
        self.early = early
        self.limit = limit
        self.upto = early.hashed
        self.replaced = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="early-md5", daemon=True)

    def __enter__(self) -> Trailing:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()  # a hash under way ends at its next block: the rest is hashed later
        self._thread.join()

    def ended(self, length: int) -> None:
        """A run has ended with the copy `length` bytes long: those may be hashed."""
        self.upto = max(self.upto, min(length, self.limit))

    def _run(self) -> None:
        try:
            while not self._done.wait(TRAIL_EVERY):
                if not self.early.hash_more(self.upto, stop=self._done):
                    self.replaced = True
                    return
        except Interrupted:
            return  # the agent stops: the job's own hash_more says so
