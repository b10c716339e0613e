"""How far long work has got: bytes done, rate and time left, from successive samples.

The receiver of a transfer sees the bytes arrive on its own disk (`arrived`): rsync writes a file
into a temporary file beside its destination (`.<name>.XXXXXX`), or resumes it in the partial
dir, and a directory entry grows in place. Nothing parses rsync's output. A file is looked at in
every round of samples; a directory, walked file by file, only now and then (`Arrivals`). An md5
counts what it has read (synkler.hops.checksum.running). `Meter` turns the samples into a rate and an ETA; the
agent's presence reports carry them (synkler.observe.presence) and, with -v, a long one is logged now and
then (`Meter.line_due`).
"""

from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass

WINDOW = 30.0  # seconds of samples the rate is taken over
LONG = 5.0  # a transfer or md5 running this long gets progress lines with -v ...
EVERY = 15.0  # ... one every this many seconds
WALK_MAX = 5000  # files counted in a directory entry that is arriving (an estimate beyond)
WALK_EVERY = 5.0  # seconds: a directory entry arriving is walked again at most this often ...
WALK_BUDGET = 5000  # ... and a round of samples walks at most about this many files in all


@dataclass(frozen=True)
class Progress:
    """Where one transfer or md5 is: `what` (push, pull, md5), bytes done of total, bytes per
    second (None until two samples), seconds left (None when unknown)."""

    what: str
    done: int
    total: int
    rate: float | None
    eta: float | None
    started: float

    def as_dict(self) -> dict[str, object]:
        return {
            "what": self.what,
            "done": self.done,
            "total": self.total,
            "rate": None if self.rate is None else round(self.rate, 1),
            "eta": None if self.eta is None else round(self.eta, 1),
            "started": round(self.started, 3),
        }

    def text(self) -> str:
        """'120 MB of 300 MB, 12 MB/s, 15 s left' (the parts that are known)."""
        parts = [f"{size_text(self.done)} of {size_text(self.total)}"]
        if self.rate is not None:
            parts.append(f"{size_text(int(self.rate))}/s")
        if self.eta is not None:
            parts.append(f"{duration_text(self.eta)} left")
        return ", ".join(parts)


def rate_and_eta(samples: list[tuple[float, int]], total: int) -> tuple[float | None, float | None]:
    """Bytes per second over the samples (time, bytes done; oldest first) and the seconds left at
    that rate. A rate needs two samples apart in time; no progress means no ETA."""
    if len(samples) < 2:
        return None, None
    (t0, b0), (t1, b1) = samples[0], samples[-1]
    if t1 <= t0:
        return None, None
    rate = max(0.0, (b1 - b0) / (t1 - t0))
    left = max(0, total - b1)
    eta = left / rate if rate > 0 else (0.0 if left == 0 else None)
    return rate, eta


class Meter:
    """Samples per key (an entry id and what is done to it); forgets keys not sampled in a round."""

    def __init__(self, window: float = WINDOW):
        self.window = window
        self._samples: dict[tuple[str, str], deque[tuple[float, int]]] = {}
        self._started: dict[tuple[str, str], float] = {}
        self._logged: dict[tuple[str, str], float] = {}
        self._seen: set[tuple[str, str]] = set()

    def sample(self, key: str, what: str, done: int, total: int, now: float) -> Progress:
        k = (key, what)
        self._seen.add(k)
        samples = self._samples.setdefault(k, deque())
        if samples and done < samples[-1][1]:
            samples.clear()  # started again (a new attempt): the rate starts again too
        samples.append((now, done))
        while len(samples) > 2 and now - samples[0][0] > self.window:
            samples.popleft()
        started = self._started.setdefault(k, now)
        rate, eta = rate_and_eta(list(samples), total)
        return Progress(what, done, total, rate, eta, started)

    def last(self, key: str, what: str, total: int) -> Progress | None:
        """The progress of the latest sample, kept for this round (no new sample: the work was not
        looked at again); None if there is none."""
        k = (key, what)
        samples = self._samples.get(k)
        if not samples:
            return None
        self._seen.add(k)
        rate, eta = rate_and_eta(list(samples), total)
        return Progress(what, samples[-1][1], total, rate, eta, self._started[k])

    def line_due(self, key: str, what: str, now: float) -> bool:
        """Is a -v progress line due: running for LONG s, none logged for EVERY s?"""
        k = (key, what)
        started = self._started.get(k)
        if started is None or now - started < LONG:
            return False
        last = self._logged.get(k)
        if last is not None and now - last < EVERY:
            return False
        self._logged[k] = now
        return True

    def end_round(self) -> None:
        """Forget what was not sampled since the last call (finished, failed, stopped)."""
        for k in set(self._samples) - self._seen:
            self._samples.pop(k, None)
            self._started.pop(k, None)
            self._logged.pop(k, None)
        self._seen = set()


class Arrivals:
    """What has arrived of each entry, a round of samples at a time (`arrived` for each), for less:
    a file entry is looked at in every round (a stat or two), but a directory entry is walked file by
    file, so one is walked again only WALK_EVERY s after its last walk, and only while the round's
    WALK_BUDGET of files lasts (the others' turn comes in the next rounds). Bundles of a thousand
    small files arriving by the dozen (two rounds a second) were 64,000 stats a second at central."""

    def __init__(self, every: float = WALK_EVERY, budget: int = WALK_BUDGET):
        self.every = every
        self.budget = budget
        self._walked: dict[str, float] = {}  # a directory entry's path -> when it was walked
        self._asked: set[str] = set()
        self._listing: dict[str, list[str]] = {}
        self._left = budget

    def new_round(self) -> None:
        """A new round of samples: directories listed again, the budget whole again, and the
        entries not looked at in the last round forgotten."""
        for path in set(self._walked) - self._asked:
            del self._walked[path]
        self._asked = set()
        self._listing = {}
        self._left = self.budget

    def look(self, directory: str, name: str, now: float) -> int | None:
        """Bytes of entry `name` arrived in `directory` (as `arrived`); None for a directory entry
        whose walk is not due (its last figure stands) or does not fit in this round's budget."""
        path = os.path.join(directory, name)
        self._asked.add(path)
        try:
            tree = stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            tree = False
        if not tree:
            return arrived(directory, name, self._listing)
        last = self._walked.get(path)
        if (last is not None and now - last < self.every) or self._left <= 0:
            return None
        self._walked[path] = now
        total, seen = _walk(path)
        self._left -= seen
        return total + _beside(directory, name, self._listing)


def arrived(directory: str, name: str, listing: dict[str, list[str]]) -> int:
    """Bytes of entry `name` that have arrived in `directory` (the receiver's side of rsync): the
    entry itself (a directory: what is in it so far), rsync's temporary file beside it and its
    partial file. `listing` caches each directory's names for one round of samples."""
    return _size(os.path.join(directory, name)) + _beside(directory, name, listing)


def _beside(directory: str, name: str, listing: dict[str, list[str]]) -> int:
    """Bytes of rsync's temporary file of `name` in `directory` and of its partial file."""
    total = 0
    names = listing.get(directory)
    if names is None:
        try:
            names = listing[directory] = os.listdir(directory)
        except OSError:
            names = listing[directory] = []
    prefix = f".{name}."
    for other in names:
        # rsync's temporary file: ".<name>." and 6 characters (a long name cut short by rsync is missed)
        if len(other) == len(prefix) + 6 and other.startswith(prefix):
            total += _size(os.path.join(directory, other))
    return total + _size(os.path.join(directory, ".synkler-partial", name))


def _size(path: str) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if not stat.S_ISDIR(st.st_mode):
        return 0
    return _walk(path)[0]


def _walk(path: str) -> tuple[int, int]:
    """Bytes of the regular files in directory `path` (up to WALK_MAX items seen), and the items seen."""
    total, seen, pending = 0, 0, [path]
    while pending and seen < WALK_MAX:
        try:
            with os.scandir(pending.pop()) as it:
                for e in it:
                    seen += 1
                    try:
                        if e.is_dir(follow_symlinks=False):
                            pending.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            total += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total, seen


def size_text(n: float) -> str:
    """Bytes for a person: 0 B, 512 B, 1.5 kB, 300 MB, 1.20 GB (powers of 1000, like rsync's -h)."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        n /= 1000
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if n < 100 else f"{n:.0f} {unit}"
    raise AssertionError("unreachable")


def duration_text(seconds: float) -> str:
    """5 s, 12 min, 3 h 5 min, 2 d 4 h."""
    s = int(max(0, seconds))
    if s < 120:
        return f"{s} s"
    m = s // 60
    if m < 120:
        return f"{m} min"
    h = m // 60
    if h < 48:
        return f"{h} h {m % 60} min" if m % 60 else f"{h} h"
    return f"{h // 24} d {h % 24} h" if h % 24 else f"{h // 24} d"
