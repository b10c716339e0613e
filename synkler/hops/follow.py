"""The md5 of a big file taken while rsync writes it, so the check after a hop needs no second read.

rsync writes a file it receives into a temporary file ``.<name>.XXXXXX`` beside the destination,
from the first byte to the last, closes it and renames it into place. A Follower watches that
directory through inotify, opens the temporary file when it appears and hashes each block soon
after it lands (from the page cache, on a thread of its own, while ssh and rsync use the network
and the other core). When the transfer is over, `finish` reads what is left and returns the digest
with the identity of the file it read.

A directory entry is followed file by file: every subdirectory rsync makes is watched too.

The digest stands for a file only when all of these hold (`verified_md5` checks the last two):
- the follower saw the temporary file renamed to the name, and no write to the name after that
  (inotify reports every write(2) in the directory, in order; a lost event voids the follow);
- the file there now is that inode, with the size read and the ctime it had just after the rename
  (any later change of content, even through mmap, changes the ctime);
- the digest is the expected md5 (for a directory: the tree digest made with it). A follow that
  disagrees proves nothing (rsync may have preallocated the file, a user's --inplace or --temp-dir
  may put the data elsewhere): the entry is then read and hashed as it is, as it always was for
  entries below FOLLOW_MIN.
It assumes what rsync does: nothing writes into rsync's temporary file but rsync, and rsync writes
it from start to end and never again after the rename.
"""

from __future__ import annotations

import logging
import os
import re
import select
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..linux.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    Inotify,
)
from .checksum import TooBig, md5_entry, new_md5

log = logging.getLogger(__name__)

FOLLOW_MIN = 16 << 20  # smaller files are read again after the hop: following them would not pay
# Smaller files are pulled once they are verified at central. The same as FOLLOW_MIN: the early
# pull reads what central's follower links, and download is told only once a push has begun.
EARLY_MIN = FOLLOW_MIN
IDLE_GIVE_UP = 120.0  # seconds without a byte of its file after which a follower stops
# Seconds to let writes pile up before reading them: one read per burst, not per write. Fewer, larger
# reads cost the hop less: a 1 GiB push with a follower took 2.93 s (median of 6) reading every
# 0.1 s, against 3.17 s every 0.02 s and 3.09 s every 0.05 s; 0.2 s was no better than 0.1 s.
# `finish` does not wait it out.
COALESCE = 0.1
# Meanwhile the events are taken this often, so that a file rsync makes, writes and renames within
# COALESCE (a fast link, a file of a few tens of MiB) is still opened before it is renamed. Taking
# them every 0.02 s kept what reading every 0.1 s gained (3.77 s against 3.75 s, medians of 6).
EVENTS_EVERY = 0.02
_MASK = IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE
_NAME_MAX = 255
_READ = 1 << 20


def pulled_early(kind: str, size: int) -> bool:
    """Is a file big enough for download to pull it while upload still pushes it? Each early run
    costs an rsync at both ends (over the shared ssh connection); on a fast link a file of a few
    tens of MiB is pushed before download's first run, which then ends with the fetch. On a link
    slower than the disks, every such file would otherwise cross the two links one after the other."""
    return kind == "file" and size >= EARLY_MIN


def worth_following(kind: str, size: int, files: int) -> bool:
    """Big files, and directories of big files (1 MiB a file on average): for small files, the
    events and reads of following cost about what a read after the hop does."""
    if kind == "file":
        return size >= FOLLOW_MIN
    return kind == "dir" and size >= FOLLOW_MIN and size >= files * (1 << 20)


@dataclass(frozen=True)
class Followed:
    """What a follower read: the digest and the file read (device, inode, size, ctime after the rename)."""

    md5: str
    dev: int
    ino: int
    size: int
    ctime_ns: int

    def matches(self, path: str | bytes) -> bool:
        """Is the regular file at `path` the one read, unchanged since rsync renamed it into place?"""
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns) == (
            self.dev,
            self.ino,
            self.size,
            self.ctime_ns,
        )


def verified_md5(
    path: str, expected: str, followed: dict[bytes, Followed] | None, limit: int | None = None
) -> tuple[str, bool]:
    """(md5 of the entry at `path`, whether what a follower read stood in for reading it again).
    `limit`: as for checksum.md5_entry (more bytes raise TooBig, before anything is read).

    A file: the follower's digest, if it is the expected one and the file is still the one read.
    A directory: the tree digest with the followed files' digests where those files are still the
    ones read (the others are read); if that is not the expected digest, the whole tree is read
    again, so that only a match ever rests on what was followed.
    """
    if followed:
        st = os.lstat(path)
        mode = st.st_mode
        if limit is not None and stat.S_ISREG(mode) and st.st_size > limit:
            raise TooBig(st.st_size)
        if stat.S_ISREG(mode):
            mine = followed.get(b"")
            if mine is not None and mine.md5 == expected and mine.matches(path):
                return mine.md5, True
        elif stat.S_ISDIR(mode) and md5_entry(path, known=followed, limit=limit) == expected:
            top = os.fsencode(path)
            return expected, any(f.matches(os.path.join(top, rel)) for rel, f in followed.items())
    return md5_entry(path, limit=limit), False


_TEMP = re.compile(rb"\.(.+)\.[A-Za-z0-9]{6}", re.DOTALL)


def is_temp_name(name: bytes, candidate: bytes) -> bool:
    """Is `candidate` rsync's temporary name for `name`? A dot, the name (a leading dot dropped,
    one trailing dot dropped, a long name cut to about NAME_MAX - 9 bytes), a dot, six characters."""
    m = _TEMP.fullmatch(candidate)
    if m is None:
        return False
    base, got = name[1:] if name.startswith(b".") else name, m.group(1)
    return (
        got == base
        or (base.endswith(b".") and got == base[:-1])
        or (len(base) > _NAME_MAX - 9 and len(got) >= _NAME_MAX - 15 and base.startswith(got))
    )


class _Temp:
    """One of rsync's temporary files being read: its descriptor and the digest so far."""

    __slots__ = ("fd", "digest", "size")

    def __init__(self, fd: int):
        self.fd = fd
        self.digest = new_md5()
        self.size = 0


class Follower:
    """Hashes what rsync writes as `name` in `directory` while it arrives, on a thread: a file
    (kind "file"), or each file of a directory tree (kind "dir"; its subdirectories are watched as
    rsync makes them).

    A transfer resumed from a partial file (rsync's --partial-dir) is not followed: rsync 3.5
    updates the partial file where it lies instead of writing a new file from the start.
    """

    def __init__(
        self, directory: str, name: str, kind: str = "file", on_open: Callable[[int], None] | None = None
    ):
        """`on_open(fd)` is called, on the follower's thread, with each temporary file of a file
        entry that it opens (central links it where download can pull it early)."""
        self.directory = os.fsencode(directory)
        self.on_open = on_open
        self.name = os.fsencode(name)
        self.tree = kind == "dir"
        self._finish = threading.Event()
        self._abandon = False
        self._watching = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._result: dict[bytes, Followed] = {}
        self._thread = threading.Thread(target=self._run, name="follow", daemon=True)
        # Paths below are relative to `directory`.
        self._dirs: dict[int, bytes] = {}  # inotify watch -> the directory it watches (b"": directory)
        self._temps: dict[bytes, _Temp] = {}  # temporary files being read
        self._moving: dict[int, _Temp] = {}  # renamed away from their temporary name, by inotify cookie
        self._done: dict[bytes, Followed] = {}  # files rsync renamed into place, read whole
        self._buf = bytearray(_READ)

    def start(self) -> Follower:
        """Start following; returns once the directory is watched (or following is impossible),
        so a transfer started after this is seen from its first byte."""
        self._thread.start()
        self._watching.wait()
        return self

    def finish(self) -> dict[bytes, Followed]:
        """The transfer has ended: hash the rest and return what was read, by path within the
        entry (b"" for a file entry). Missing paths were not followed to the end. Once only: a
        second call returns the same answer."""
        if not self._finish.is_set():
            self._finish.set()
            os.write(self._wake_w, b"x")
            self._thread.join()
            os.close(self._wake_r)
            os.close(self._wake_w)
        return self._result

    def stop(self) -> None:
        """Not needed any more (the entry went another way, or the agent stops)."""
        self._abandon = True
        self.finish()

    @property
    def ended(self) -> bool:
        """Stopped on its own, unasked: nothing arrived for IDLE_GIVE_UP seconds, or no inotify."""
        return not self._thread.is_alive()

    def _run(self) -> None:
        inotify = None
        try:
            inotify = Inotify()
            self._dirs[inotify.watch(os.fsdecode(self.directory), _MASK)] = b""
            if self.tree and os.path.isdir(os.path.join(self.directory, self.name)):
                self._watch_tree(inotify, self.name)  # a pull cut off before left part of it
            self._watching.set()
            done = self._follow(inotify)
            if self.tree:
                top = self.name + b"/"
                self._result = {p[len(top) :]: f for p, f in done.items() if p.startswith(top)}
            elif self.name in done:
                self._result = {b"": done[self.name]}
        except OSError as e:  # no inotify, the directory went: the entry gets hashed the usual way
            log.debug("cannot follow %s in %s: %s", self.name, self.directory, e)
        finally:
            self._watching.set()
            if inotify is not None:
                inotify.close()
            for temp in [*self._temps.values(), *self._moving.values()]:
                os.close(temp.fd)

    def _in_tree(self, rel: bytes) -> bool:
        return rel == self.name or rel.startswith(self.name + b"/")

    def _is_temp(self, rel_dir: bytes, name: bytes) -> bool:
        if self.tree:
            return self._in_tree(rel_dir) and _TEMP.fullmatch(name) is not None
        return rel_dir == b"" and is_temp_name(self.name, name)

    def _wanted(self, rel: bytes) -> bool:
        """Is `rel` a file whose content is part of the entry?"""
        return rel.startswith(self.name + b"/") if self.tree else rel == self.name

    def _watch_tree(self, inotify: Inotify, rel: bytes) -> None:
        """Watch a directory of the entry and those below it, and open the temporary files in
        them (made before the watch began)."""
        try:
            self._dirs[inotify.watch(os.fsdecode(os.path.join(self.directory, rel)), _MASK)] = rel
            listing = list(os.scandir(os.path.join(self.directory, rel)))
        except OSError:  # gone, or out of watches: what is in it is read after the hop
            return
        for item in listing:
            sub = rel + b"/" + os.fsencode(item.name)
            if item.is_dir(follow_symlinks=False):
                self._watch_tree(inotify, sub)
            elif _TEMP.fullmatch(os.fsencode(item.name)) and sub not in self._temps:
                self._open(sub)

    def _follow(self, inotify: Inotify) -> dict[bytes, Followed]:
        if not self.tree:
            self._open_newest_temp()
        last_progress = time.monotonic()
        while True:
            finishing = self._finish.is_set()
            events = self._events(inotify)
            if events is None:
                return {}  # events were lost: a write after a rename could be among them
            progressed = events
            for temp in self._temps.values():
                progressed = self._read(temp) or progressed
            if progressed:
                last_progress = time.monotonic()
            if finishing or self._abandon:
                break
            if time.monotonic() - last_progress > IDLE_GIVE_UP:
                return {}
            ready, _, _ = select.select([inotify.fd, self._wake_r], [], [], 1.0)
            if ready and self._wake_r not in ready:
                arrived = self._take_events(inotify)
                if arrived is None:
                    return {}
                if arrived:
                    last_progress = time.monotonic()
        return {} if self._abandon else self._done

    def _open_newest_temp(self) -> None:
        """A temporary file made before the watch began: the newest one (older ones are left-overs)."""
        made = []
        for name in os.listdir(self.directory):
            if is_temp_name(self.name, name):
                try:
                    made.append((os.lstat(os.path.join(self.directory, name)).st_ctime_ns, name))
                except FileNotFoundError:
                    pass
        if made:
            self._open(max(made)[1])

    def _take_events(self, inotify: Inotify) -> bool | None:
        """Events as they come for COALESCE seconds: True if any, None if some were lost.

        Only the reading waits for writes to pile up (COALESCE); the events are taken at once and
        then every EVENTS_EVERY, so a file made and renamed meanwhile is still opened."""
        deadline = time.monotonic() + COALESCE
        any_events = False
        while True:
            events = self._events(inotify)
            if events is None:
                return None
            any_events = any_events or events
            left = deadline - time.monotonic()
            if left <= 0 or self._finish.wait(min(left, EVENTS_EVERY)):
                return any_events

    def _events(self, inotify: Inotify) -> bool | None:
        """Act on the events that have come in; True if a file or directory to follow appeared,
        None if events were lost."""
        appeared = False
        for wd, mask, cookie, name in inotify.events():
            if mask & IN_Q_OVERFLOW:
                return None
            rel_dir = self._dirs.get(wd)
            if rel_dir is None:
                continue
            rel = rel_dir + b"/" + name if rel_dir else name
            if mask & IN_ISDIR:
                if mask & (IN_CREATE | IN_MOVED_TO) and self.tree and self._in_tree(rel):
                    self._watch_tree(inotify, rel)
                    appeared = True
            elif mask & IN_CREATE and self._is_temp(rel_dir, name):
                self._open(rel)  # a new file, or a new run (a retry after a cut) of one
                appeared = True
            elif mask & IN_MOVED_FROM and rel in self._temps:
                self._moving[cookie] = self._temps.pop(rel)
            elif not self._wanted(rel):
                continue
            elif mask & IN_MOVED_TO and cookie in self._moving:
                self._renamed(self._moving.pop(cookie), rel)
            else:  # written, removed or replaced after rsync put it there: not what was read
                self._done.pop(rel, None)
        return appeared

    def _open(self, rel: bytes) -> None:
        old = self._temps.pop(rel, None)
        if old is not None:
            os.close(old.fd)
        if not self.tree:  # one file: a new temporary file replaces what was read before
            for temp in self._temps.values():
                os.close(temp.fd)
            self._temps.clear()
        try:
            fd = os.open(os.path.join(self.directory, rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # already renamed or removed: nothing to follow
        if stat.S_ISREG(os.fstat(fd).st_mode):
            self._temps[rel] = _Temp(fd)
            if self.on_open is not None and not self.tree:
                self.on_open(fd)
        else:
            os.close(fd)

    def _renamed(self, temp: _Temp, rel: bytes) -> None:
        """rsync renamed a temporary file to `rel`, complete and closed: read the rest, note what was read."""
        try:
            self._read(temp)
            st = os.fstat(temp.fd)
            if st.st_size == temp.size and not self._abandon:
                self._done[rel] = Followed(
                    temp.digest.hexdigest(), st.st_dev, st.st_ino, temp.size, st.st_ctime_ns
                )
        finally:
            os.close(temp.fd)

    def _read(self, temp: _Temp) -> bool:
        """Hash what has landed since the last read; True if there was any."""
        view = memoryview(self._buf)
        got = False
        while not self._abandon:  # a follower far behind is stopped between two reads
            n = os.readv(temp.fd, [self._buf])
            if not n:
                return got
            temp.digest.update(view[:n])
            temp.size += n
            got = True
        return got
