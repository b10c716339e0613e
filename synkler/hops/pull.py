"""Download's pulls: rsync runs from central into the staging place, the md5 of what arrived, and the
early pull of a big file while upload still pushes it. These run on worker threads and return
typed outcomes; the download agent (synkler.agents.download) records them in the main loop and
decides what follows. The name a verified entry takes is the agent's choice too (`Choose`, from
synkler.agents.naming), made here on the worker because it reads what file_dir holds.

Pulls land in ``file_dir/.synkler-<id>/<entry id>`` (dot-prefixed, so nothing else mistakes them for
finished data; owner-only, 0700, so nobody else reads them before they are placed; the entry itself
under its id, as central stores it).

A big file is pulled early: while upload pushes it, central says so (`pushing`) and download appends
what has arrived to its copy in staging, hashing it as it comes (synkler.hops.early). When the
`fetch` comes, one more run appends the rest from the verified copy, and the copy counts only if
its md5 is the one in `fetch`; otherwise it is dropped and pulled whole, as any other entry. A copy
kept across a restart is an `Early` that has hashed nothing yet: the job that next uses it hashes
what is on disk first, on its worker thread.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

from ..errors import Interrupted
from ..linux.fs import remove_tree
from ..state import Entry
from . import transfer
from .bagit import work_dir
from .checksum import STOPPING, EntryDigest, FileDigest, alg_of, digest_entry, hop_mismatch
from .early import Early, Trailing, length, trimmed
from .follow import Followed, Follower, verified_md5, worth_following

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

FOLLOWERS = 4  # entries of one pull hashed while they arrive (synkler.hops.follow); the others after it
BAG = ".bag"  # the bag of entry <id> is built as <id>.bag in staging

# Where a verified entry goes in file_dir: (entry, md5) -> (its stored_as, already there).
Choose = Callable[[Entry, str], "tuple[str, bool]"]


class Staging:
    """Download's staging place: the pulled copies, by entry id, and rsync's partial files."""

    def __init__(self, cfg: Config):
        self.dir = os.path.join(cfg.file_dir, f".synkler-{cfg.id}")
        self.partial_dir = os.path.join(self.dir, transfer.PARTIAL_DIR)  # rsync's, shared

    def of(self, entry_id: str) -> str:
        """Where the entry is pulled to (file, directory or symlink), named by its id."""
        return os.path.join(self.dir, entry_id)

    def bag(self, entry_id: str) -> str:
        """Where the entry's BagIt bag is built (`layout: bagit`; synkler.hops.bagit)."""
        return self.of(entry_id) + BAG

    def drop(self, entry_id: str) -> None:
        """Remove what a pull of the entry left in staging: the copy, its bag (built or being built)
        and rsync's partial file."""
        remove_tree(self.of(entry_id))
        for path in (self.bag(entry_id), work_dir(self.bag(entry_id))):
            if os.path.lexists(path):
                remove_tree(path)
        if os.path.lexists(self.partial_dir):
            remove_tree(os.path.join(self.partial_dir, entry_id))
            self.drop_empty_partial_dir()

    def drop_empty_partial_dir(self) -> None:
        try:
            os.rmdir(self.partial_dir)
        except OSError:
            pass  # missing, or holds partial files of pulls to resume

    def leftovers(self) -> list[tuple[str, str]]:
        """(entry id, path) of everything in staging: copies and partial files."""
        items = [(n, os.path.join(self.dir, n)) for n in os.listdir(self.dir)]
        if os.path.isdir(self.partial_dir):
            items += [(n, os.path.join(self.partial_dir, n)) for n in os.listdir(self.partial_dir)]
        return [(name, path) for name, path in items if path != self.partial_dir]


# outcomes of a pull, per entry --------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """The copy's md5 matched: it goes to `target`, or is there already (`present`)."""

    target: str
    present: bool
    digest: EntryDigest | None = None  # what was read of it (for its receipt); None: not kept


@dataclass(frozen=True)
class Mismatch:
    """The copy arrived whole with another md5 or second hash (and was removed)."""

    got: str
    why: str = ""


@dataclass(frozen=True)
class NotPulled:
    """Nothing usable arrived: `cause` is "space" (a disk was full), "link" (central out of reach),
    "person" (ssh refused for a reason a person must fix) or "rsync" (any other failure)."""

    cause: str
    why: str


Outcome = Union[Verified, Mismatch, NotPulled]


@dataclass(frozen=True)
class PullRun:
    """A pull of a batch: rsync's result, each entry's outcome, and an early copy to go on from."""

    result: transfer.Result
    outcomes: dict[str, Outcome]
    early: Early | None = None


def _failure(result: transfer.Result) -> str:
    if result.out_of_space:
        return "space"
    if result.needs_person:
        return "person"
    return "link" if result.link_down else "rsync"


# the last run of an early pull ---------------------------------------------------------------------


def finish_early(
    cfg: Config, entry: Entry, early: Early, choose: Choose, checksum: str = ""
) -> PullRun | None:
    """Append the rest of an early-pulled file from its verified copy.

    The copy is whole and its md5 matched (Verified), or the link or the disk failed and the copy is
    kept for the next try (NotPulled, with `early` in the run). None: the copy was removed, pull
    the file whole.
    """
    # What the early pull had not hashed yet (all of a copy kept across a restart) is hashed while
    # the last run goes, on a thread of the worker (a stop ends it: Interrupted); what that run
    # brings, once it has ended.
    if entry.kind != "file":
        why = f"the entry is a {entry.kind}"
    elif not early.hash_more(early.hashed):
        why = "it was replaced"
    elif not min(length(early.local), entry.size - 1):
        why = "nothing was pulled early"
    else:
        # Never the last byte: the last run must write to the file for rsync to set its mode and mtime.
        before = min(length(early.local), entry.size - 1)
        os.truncate(early.local, before)
        if STOPPING.is_set():
            raise Interrupted("the agent is stopping")  # the copy stays for the next start
        with Trailing(early, entry.size - 1) as trailing:
            trailing.ended(before)
            result = transfer.pull_more(cfg, entry.path or "", early.local)
            trimmed(early.local, before, result)  # a run ended by the stop: the copy stays for the next
        if not result.ok and STOPPING.is_set():
            raise Interrupted("the agent is stopping")  # ended by the stop: the copy stays for the next start
        if result.link_down or result.out_of_space:  # (needs_person is a link_down)
            return PullRun(result, {entry.id: NotPulled(_failure(result), result.summary())}, early)
        if not result.ok:
            why = result.summary()
        elif trailing.replaced or not early.hash_more(entry.size) or early.hashed != entry.size:
            why = f"{early.hashed} bytes instead of {entry.size}"
        elif (got := early.hexdigest()) != entry.md5:
            why = f"md5 mismatch at download: expected {entry.md5}, got {got}"
        else:
            log.info("%s: %d of %d bytes were pulled while upload pushed it", entry.name, before, entry.size)
            # The early copy was hashed with md5 as it came; a second hash takes one more read of it.
            digest = digest_entry(early.local, alg_of(checksum)) if checksum else None
            strong = digest.strong if digest else None
            wrong = hop_mismatch("download", entry.known_md5(), checksum, got, strong)
            if wrong is None:
                other = digest.files[0].strong if digest else None
                record = FileDigest(b"", "file", entry.size, got, other)
                target, present = choose(entry, entry.known_md5())
                found = EntryDigest(got, strong, [record])
                return PullRun(result, {entry.id: Verified(target, present, found)})
            why = wrong
    log.info("%s: the early copy is not used (%s); pulling it whole", entry.name, why)
    remove_tree(early.local)
    return None


# the pull of a batch -------------------------------------------------------------------------------


def pull(
    cfg: Config,
    staging: Staging,
    batch: list[Entry],
    early: Early | None,
    choose: Choose,
    checksums: dict[str, str] | None = None,
) -> PullRun:
    """One rsync run for entries stored under the same directory on central, then md5 of each (and
    its second hash, entry id -> `<alg>:<hex>` in `checksums`, in the same read)."""
    checksums = checksums or {}
    if early is not None:
        finished = finish_early(cfg, batch[0], early, choose, checksums.get(batch[0].id, ""))
        if finished is not None:
            return finished
    # Big files (and directories of them) are hashed while they arrive (synkler.hops.follow), at
    # most FOLLOWERS entries per run. Not those with a second hash: a follower makes an md5 only.
    follow = [e for e in batch if worth_following(e.kind, e.size, e.files) and not checksums.get(e.id)][
        :FOLLOWERS
    ]
    followers = {e.id: Follower(staging.dir, e.id, e.kind).start() for e in follow}
    # A batch with nothing to follow is written in place (no temporary file and rename per file):
    # staging is download's own, and what a cut-off run left is verified before it counts.
    inplace = not follow
    try:
        where = os.path.dirname(batch[0].path or "")
        result = transfer.pull(cfg, where, [e.id for e in batch], staging.dir, inplace=inplace)
    except BaseException:
        for follower in followers.values():
            follower.stop()
        raise
    followed = {entry_id: follower.finish() for entry_id, follower in followers.items()}
    # Verify every entry even if rsync failed: whatever arrived whole is good, what did not fails its
    # md5 (with a temporary file rsync only puts complete files in place, partial ones wait in the
    # partial dir; in place, a cut-off file is where it goes, and stays there for the next run).
    outcomes: dict[str, Outcome] = {
        e.id: _outcome(cfg, staging, e, result, checksums.get(e.id, ""), followed.get(e.id), choose)
        for e in batch
    }
    # rsync removes its partial dir only if this run made it: not after resuming a cut-off pull.
    staging.drop_empty_partial_dir()
    return PullRun(result, outcomes)


def _outcome(
    cfg: Config,
    staging: Staging,
    e: Entry,
    result: transfer.Result,
    checksum: str,
    followed: dict[bytes, Followed] | None,
    choose: Choose,
) -> Outcome:
    """What a pull run (`result`) left of one entry: verified (and the name it takes), a mismatch
    (the copy removed), or not pulled."""
    path = staging.of(e.id)
    if not os.path.lexists(path):
        return NotPulled(_failure(result), result.summary() if not result.ok else "nothing arrived")
    digest, unread = read_copy(path, e.known_md5(), checksum, followed)
    if unread:
        log.debug("%s: hashed while it arrived", e.name)
    wrong = hop_mismatch("download", e.known_md5(), checksum, digest.md5, digest.strong)
    if wrong and not result.ok:
        # The run broke off: a directory may be incomplete. That is no corruption: keep what
        # arrived for the next run to complete.
        return NotPulled(_failure(result), result.summary())
    if wrong:
        # rsync's quick check would take a bad copy for done: remove it, pull it anew.
        staging.drop(e.id)
        return Mismatch(digest.md5, wrong)
    target, present = choose(e, digest.md5)
    return Verified(target, present, digest)


def read_copy(
    path: str, md5: str, checksum: str, followed: dict[bytes, Followed] | None
) -> tuple[EntryDigest, bool]:
    """The digests of a pulled copy, with each file's (for its receipt), reading each file once; and
    whether what a follower read stood in for reading some of it (as in verified_md5; md5 only, so
    never with a second hash)."""
    if checksum:
        return digest_entry(path, alg_of(checksum)), False
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        got, unread = verified_md5(path, md5, followed)
        kind = "link" if stat.S_ISLNK(st.st_mode) else "file"
        return EntryDigest(got, None, [FileDigest(b"", kind, st.st_size, got)]), unread
    digest = digest_entry(path, None, known=followed)
    if not followed:
        return digest, False
    if digest.md5 != md5:
        return digest_entry(path), False  # only a match ever rests on what was followed
    top = os.fsencode(path)
    return digest, any(f.matches(os.path.join(top, rel)) for rel, f in followed.items())
