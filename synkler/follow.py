"""The md5 of a big file taken while rsync writes it, so the check after a hop needs no second read.

rsync writes a file it receives into a temporary file ``.<name>.XXXXXX`` beside the destination,
from the first byte to the last, closes it and renames it into place. A Follower watches that
directory through inotify, opens the temporary file when it appears and hashes each block soon
after it lands (from the page cache, on a thread of its own, while ssh and rsync use the network
and the other core). When the transfer is over, `finish` reads what is left and returns the digest
with the identity of the file it read.

The digest stands for the file only when all of these hold (`verified_md5` checks the last two):
- the follower saw the temporary file renamed to the name, and no write to the name after that
  (inotify reports every write(2) in the directory, in order; a lost event voids the follow);
- the file there now is that inode, with the size read and the ctime it had just after the rename
  (any later change of content, even through mmap, changes the ctime);
- the digest is the expected md5. A follow that disagrees proves nothing (rsync may have
  preallocated the file, a user's --inplace or --temp-dir may put the data elsewhere): the file is
  then read and hashed as it is, as it always was for files below FOLLOW_MIN.
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
from dataclasses import dataclass

from .checksum import md5_entry, new_md5
from .watch import IN_CLOSE_WRITE, IN_CREATE, IN_MODIFY, IN_MOVED_FROM, IN_MOVED_TO, IN_Q_OVERFLOW, Inotify

log = logging.getLogger(__name__)

FOLLOW_MIN = 16 << 20  # smaller files are read again after the hop: following them would not pay
IDLE_GIVE_UP = 120.0  # seconds without a byte of its file after which a follower stops
COALESCE = 0.02  # seconds to let writes pile up after an event: one read per burst, not per write
_MASK = IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
_NAME_MAX = 255
_READ = 1 << 20


def worth_following(kind: str, size: int) -> bool:
    return kind == "file" and size >= FOLLOW_MIN


@dataclass(frozen=True)
class Followed:
    """What a follower read: the digest and the file read (device, inode, size, ctime after the rename)."""

    md5: str
    dev: int
    ino: int
    size: int
    ctime_ns: int

    def matches(self, path: str) -> bool:
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


def verified_md5(path: str, expected: str, followed: Followed | None) -> tuple[str, bool]:
    """(md5 of the entry at `path`, whether the follower's digest stood for it instead of a read)."""
    if followed is not None and followed.md5 == expected and followed.matches(path):
        return followed.md5, True
    return md5_entry(path), False


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


class Follower:
    """Hashes the file that rsync writes as `name` in `directory` while it arrives, on a thread.

    A transfer resumed from a partial file (rsync's --partial-dir) is not followed: rsync 3.5
    updates the partial file where it lies instead of writing a new file from the start.
    """

    def __init__(self, directory: str, name: str):
        self.directory = os.fsencode(directory)
        self.name = os.fsencode(name)
        self._finish = threading.Event()
        self._abandon = False
        self._watching = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._result: Followed | None = None
        self._thread = threading.Thread(target=self._run, name="follow", daemon=True)
        # What is being read, and what the events said about it.
        self._fd = -1
        self._open_path = b""
        self._digest = new_md5()
        self._size = 0
        self._cookie: int | None = None  # of the rename away from the temporary name
        self._renamed_ctime: int | None = None  # ctime just after the rename into place
        self._buf = bytearray(_READ)

    def start(self) -> Follower:
        """Start following; returns once the directory is watched (or following is impossible),
        so a transfer started after this is seen from its first byte."""
        self._thread.start()
        self._watching.wait()
        return self

    def finish(self) -> Followed | None:
        """The transfer has ended: hash the rest and return what was read (None: it cannot stand
        for the file). Once only: a second call returns the same answer."""
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
            inotify.watch(os.fsdecode(self.directory), _MASK)
            self._watching.set()
            self._result = self._follow(inotify)
        except OSError as e:  # no inotify, the directory went: the file gets hashed the usual way
            log.debug("cannot follow %s in %s: %s", self.name, self.directory, e)
        finally:
            self._watching.set()
            if inotify is not None:
                inotify.close()
            if self._fd >= 0:
                os.close(self._fd)

    def _follow(self, inotify: Inotify) -> Followed | None:
        # A temporary file made before the watch began: the newest one (older ones are left-overs).
        made = []
        for name in os.listdir(self.directory):
            if is_temp_name(self.name, name):
                try:
                    path = os.path.join(self.directory, name)
                    made.append((os.lstat(path).st_ctime_ns, path))
                except FileNotFoundError:
                    pass
        if made:
            self._open(max(made)[1])
        last_progress = time.monotonic()
        while True:
            finishing = self._finish.is_set()
            for _wd, mask, cookie, name in inotify.events():
                if mask & IN_Q_OVERFLOW:
                    return None  # events were lost: a write after the rename could be among them
                path = os.path.join(self.directory, name)
                if mask & IN_CREATE and is_temp_name(self.name, name) and path != self._open_path:
                    self._open(path)  # a new run (a retry after a cut) writes a new file
                    last_progress = time.monotonic()
                elif mask & IN_MOVED_FROM and path == self._open_path:
                    self._cookie = cookie
                elif name != self.name:
                    continue
                elif mask & IN_MOVED_TO:
                    moved_here = self._fd >= 0 and self._cookie is not None and cookie == self._cookie
                    self._renamed_ctime = os.fstat(self._fd).st_ctime_ns if moved_here else None
                elif mask & (IN_MODIFY | IN_CLOSE_WRITE):
                    self._renamed_ctime = None  # written after the rename: not (only) what rsync wrote
            if self._read():
                last_progress = time.monotonic()
            if finishing or self._abandon:
                break
            if time.monotonic() - last_progress > IDLE_GIVE_UP:
                return None
            ready, _, _ = select.select([inotify.fd, self._wake_r], [], [], 1.0)
            if ready and self._wake_r not in ready:
                self._finish.wait(COALESCE)
        if self._abandon or self._fd < 0 or self._renamed_ctime is None:
            return None
        st = os.fstat(self._fd)
        if st.st_size != self._size:
            return None
        return Followed(self._digest.hexdigest(), st.st_dev, st.st_ino, self._size, self._renamed_ctime)

    def _open(self, path: bytes) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._open_path, self._digest, self._size = path, new_md5(), 0
        self._cookie = self._renamed_ctime = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # already renamed or removed: nothing to follow
        if stat.S_ISREG(os.fstat(fd).st_mode):
            self._fd = fd
        else:
            os.close(fd)

    def _read(self) -> bool:
        """Hash what has landed since the last read; True if there was any."""
        if self._fd < 0:
            return False
        view = memoryview(self._buf)
        got = False
        while not self._abandon:  # a follower far behind is stopped between two reads
            n = os.readv(self._fd, [self._buf])
            if not n:
                return got
            self._digest.update(view[:n])
            self._size += n
            got = True
        return got
