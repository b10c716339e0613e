"""Central's spool: its directories on disk, what is left over in them after a stop, and the sweep.

``file_dir/<id>/`` (like each directory in it, owner-only: 0700) holds
- ``staging/<upload agent>/<name>``: where each upload agent pushes (one directory per agent, so one
  rsync run can carry many entries), with rsync's partial files in ``.synkler-partial/``;
- ``stored/<entry id>``: a verified copy, the entry itself under its id (its name is in the state; a
  directory per entry would cost a mkdir each, the dearest step for small files). An entry only
  ever gets here by a rename after its md5 matched;
- ``growing/<entry id>``: a hard link to rsync's temporary file of a big file while upload pushes
  it, so that download can pull what has arrived before it is verified (download places nothing
  before its own md5 matches).

The spool decides nothing: central tells it which entries are live.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SynklerError
from ..hops.transfer import PARTIAL_DIR
from ..linux.fs import free_bytes, remove_tree, rename_noreplace, total_bytes, usable_bytes
from ..messages import is_valid_entry_id
from ..private import private_dir
from ..state import Entry
from ..text import shown

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

SWEEP_AGE = 60.0  # seconds: what has not changed for this long and is not live is swept
TEMPORARY = re.compile(r"\.(.+)\.[^./]{6}\Z", re.S)  # rsync's temporary file of <name>: .<name>.XXXXXX


@dataclass(frozen=True)
class Arrival:
    """What has arrived of a push so far: its bytes (regular files, as an offer counts them; of each
    file its biggest form: the file, rsync's temporary file or its partial file, since a resumed push
    holds two of them at once) and the last change to any of it (ctime: rsync keeps the sender's
    mtime); 0 if nothing is there."""

    size: int
    changed: float


def arrived(staging: str, name: str) -> Arrival:
    """What has arrived in `staging` of the entry `name` (on a worker: it may walk a whole tree)."""
    return arrivals(staging, [name])[name]


def arrivals(staging: str, names: Collection[str]) -> dict[str, Arrival]:
    """What has arrived in `staging` of each of `names`: one listing of the directory for them all
    (a look per name listed it once per entry: 20,000 entries admitted, 20,000 listings of it)."""
    found = _sizes(staging, set(names))
    return {name: Arrival(*found.get(name, (0, 0.0))) for name in names}


def _sizes(directory: str, only: Collection[str] | None = None) -> dict[str, tuple[int, float]]:
    """Bytes per name in `directory` (a subdirectory: all it holds), the temporary and partial files
    of a name counted as that name, and the last change seen of each. `only`: these names alone."""
    found: dict[str, tuple[int, float]] = {}

    def seen(name: str, size: int, ctime: float) -> None:
        if only is None or name in only:
            was_size, was_changed = found.get(name, (0, 0.0))
            found[name] = (max(was_size, size), max(was_changed, ctime))

    try:
        items = list(os.scandir(directory))
    except OSError:
        return found
    for item in items:
        try:
            st = item.stat(follow_symlinks=False)
        except OSError:
            continue  # gone meanwhile
        if item.name == PARTIAL_DIR and stat.S_ISDIR(st.st_mode):
            for name, (size, changed) in _sizes(item.path, only).items():
                seen(name, size, changed)
            continue
        temporary = TEMPORARY.match(item.name)
        name = temporary.group(1) if temporary and stat.S_ISREG(st.st_mode) else item.name
        if stat.S_ISDIR(st.st_mode) and (only is None or name in only):
            inside = _sizes(item.path).values()
            seen(name, sum(size for size, _ in inside), max([st.st_ctime, *(c for _, c in inside)]))
        elif stat.S_ISREG(st.st_mode) or (stat.S_ISLNK(st.st_mode) and only is not None):  # a symlink entry
            seen(name, st.st_size, st.st_ctime)
    return found


class PlaceRefused(SynklerError):
    """A directory of central's spool is a symlink or not the agent's own: pushes and pulls would
    land where someone else chose, so it is not used."""


def own_dir(path: str) -> None:
    """Make `path` (0700) if missing; else it must be a real directory (not a symlink) owned by the
    agent's user, or PlaceRefused. (file_dir itself may be a symlink: the operator chose it.)"""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise PlaceRefused(
            f"{shown(path)} is a symlink (to {shown(os.readlink(path))}): central does not use it; "
            "remove it (central makes the directory again)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise PlaceRefused(f"{shown(path)} is not a directory: central does not use it; remove it")
    if st.st_uid != os.geteuid():
        raise PlaceRefused(
            f"{shown(path)} belongs to uid {st.st_uid}, not to central's user (uid {os.geteuid()}): "
            "central does not use it; remove it or give it to central's user"
        )


class Spool:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.base = os.path.join(cfg.file_dir, cfg.id)
        self.staging_dir = os.path.join(self.base, "staging")
        self.stored_dir = os.path.join(self.base, "stored")
        self.growing_dir = os.path.join(self.base, "growing")

    # places --------------------------------------------------------------------------------------

    def staging(self, entry: Entry) -> str:
        """Where the entry's upload agent pushes. Central admits one version of a name per agent at
        a time, since they share this place."""
        return os.path.join(self.staging_dir, entry.peer or "")

    def staged(self, entry: Entry) -> str:
        return os.path.join(self.staging(entry), entry.name)

    def stored(self, entry_id: str) -> str:
        """The verified copy of the entry (file, directory or symlink), named by its id."""
        return os.path.join(self.stored_dir, entry_id)

    def growing(self, entry_id: str) -> str:
        return os.path.join(self.growing_dir, entry_id)

    def room(self) -> float:
        """Bytes free on file_dir's filesystem above the free_percent reserve."""
        return free_bytes(self.cfg.file_dir) - self._reserve()

    def capacity(self) -> float:
        """The most file_dir's filesystem could ever hold above the reserve, were it empty: an
        entry bigger than this can never be admitted."""
        return usable_bytes(self.cfg.file_dir) - self._reserve()

    def _reserve(self) -> float:
        return total_bytes(self.cfg.file_dir) * self.cfg.free_percent / 100

    # changes -------------------------------------------------------------------------------------

    def prepare(self, entry: Entry) -> None:
        """A fresh start for a push of the entry: its staging directory there, no old copy in it.
        PlaceRefused if that directory is a symlink or not the agent's own."""
        own_dir(self.staging(entry))
        remove_tree(self.staged(entry))

    def store(self, entry: Entry) -> None:
        """Move a verified staged copy into stored/ (never over anything)."""
        rename_noreplace(self.staged(entry), self.stored(entry.id))

    def drop_staged(self, entry: Entry) -> None:
        remove_tree(self.staged(entry))

    def drop_stored(self, entry_id: str) -> None:
        remove_tree(self.stored(entry_id))

    def drop_partial(self, entry: Entry) -> None:
        """An interrupted earlier push may have left a partial file of this name behind."""
        self._drop_partial(os.path.join(self.staging(entry), PARTIAL_DIR), entry.name)

    @staticmethod
    def _drop_partial(partial_dir: str, name: str) -> None:
        """Remove one partial file, and the partial dir once it is empty (as rsync itself would)."""
        remove_tree(os.path.join(partial_dir, name))
        try:
            os.rmdir(partial_dir)
        except OSError:
            pass  # missing, or still holds partial files of running pushes

    def link_growing(self, entry_id: str, fd: int) -> bool:
        """On a follower's thread: make growing/<entry id> the file rsync has just begun to write
        (a new try replaces the link of the one before). False: it could not be linked."""
        path = self.growing(entry_id)
        try:
            # linkat() with AT_SYMLINK_FOLLOW links the open file itself, whatever its name is by now
            # (Python calls plain link(), which does not follow, unless a directory fd is given).
            directory = os.open(self.growing_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(f"/proc/self/fd/{fd}", entry_id + ".new", dst_dir_fd=directory, follow_symlinks=True)
            finally:
                os.close(directory)
            os.replace(path + ".new", path)
        except OSError as e:  # download then pulls the verified copy, as it would anyway
            log.debug("cannot link %s for an early pull: %s", path, e)
            remove_tree(path + ".new")
            return False
        return True

    def drop_growing(self, entry_id: str) -> None:
        remove_tree(self.growing(entry_id))

    # after a stop, and once a minute -------------------------------------------------------------

    def reconcile(
        self, in_flight: Collection[tuple[str, str]], keep_stored: Callable[[str], str | None]
    ) -> None:
        """At start: remove what no entry will use again.

        `in_flight`: (upload agent, name) of the entries that may still be pushed or checked; their
        staged copies and partial files stay. `keep_stored(entry id)`: None if stored/<entry id>
        stays, else why it goes.
        """
        # Data in transit is for the agent's user (who is also the ssh login of upload and download).
        for path in (self.base, self.staging_dir, self.stored_dir, self.growing_dir):
            own_dir(path)
            private_dir(path)
        for name in os.listdir(self.growing_dir):  # pushes cut short by the stop start again
            remove_tree(os.path.join(self.growing_dir, name))
        for peer in os.listdir(self.staging_dir):
            top = os.path.join(self.staging_dir, peer)
            if not os.path.isdir(top) or os.path.islink(top):
                log.warning("leaving unknown item %s alone", top)
                continue
            for name in os.listdir(top):
                if name == PARTIAL_DIR:
                    if not any(p == peer for p, _ in in_flight):
                        remove_tree(os.path.join(top, name))
                elif (peer, name) not in in_flight:
                    log.info("removing leftover staging/%s/%s", peer, name)
                    remove_tree(os.path.join(top, name))
        for name in os.listdir(self.stored_dir):
            if not is_valid_entry_id(name):
                log.warning("leaving unknown item %s in %s alone", name, self.stored_dir)
                continue
            why = keep_stored(name)
            if why is not None:
                log.info("removing leftover stored/%s (%s)", name, why)
                remove_tree(os.path.join(self.stored_dir, name))

    def sweep(self, now: float, live: Collection[tuple[str, str]]) -> None:
        """Remove what no push will finish or resume: staged copies and partial files of names
        that are not `live` (waiting, uploading or being verified).

        A push cut off mid-file leaves its partial file for the next try; an rsync that was killed,
        or that still ran for a version upload withdrew, may even write one late. Only items that
        have not changed for a while are touched (ctime: rsync keeps the sender's mtime).
        """

        def stale(path: str) -> bool:
            try:
                return now - os.lstat(path).st_ctime > SWEEP_AGE
            except FileNotFoundError:
                return False

        for peer in os.listdir(self.staging_dir):
            top = os.path.join(self.staging_dir, peer)
            partial = os.path.join(top, PARTIAL_DIR)
            try:
                names = os.listdir(top)
                partials = os.listdir(partial) if PARTIAL_DIR in names else []
            except OSError:
                continue
            for name in partials:
                if (peer, name) not in live and stale(os.path.join(partial, name)):
                    log.info("removing stale partial file %s/%s", partial, name)
                    self._drop_partial(partial, name)
            for name in names:
                if name != PARTIAL_DIR and (peer, name) not in live and stale(os.path.join(top, name)):
                    log.info("removing stale staged copy %s/%s", top, name)
                    remove_tree(os.path.join(top, name))
