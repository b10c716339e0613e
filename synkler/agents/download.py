"""The download role: pull verified entries from central, verify them again, publish them by rename.

Pulls land in ``file_dir/.synkler-<id>/<entry id>`` (dot-prefixed, so nothing else mistakes them for
finished data; the entry itself under its id, as central stores it). After the md5 matches, the
entry is renamed into ``file_dir`` without ever replacing anything: an existing entry of the same
name and other content is kept and the new one is placed beside it as ``name (2).ext``,
``name (3).ext`` ... (directories: ``name (2)``). Same name and same md5: already there, nothing to do.

States: fetching -> placing -> delivered (cleanup script pending) -> done, or failed.

A big file is pulled early: while upload pushes it, central says so (`pushing`) and download appends
what has arrived to its copy in staging, hashing it as it comes (`Early`, memory only). When the
`fetch` comes, one more run appends the rest from the verified copy, and the copy counts only if
its md5 is the one in `fetch`; otherwise it is dropped and pulled whole, as any other entry.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Any

from ..errors import MessageError
from ..hops import transfer
from ..hops.checksum import md5_entry, new_md5, stat_entry
from ..hops.follow import Follower, verified_md5, worth_following
from ..linux.fs import remove_tree, rename_noreplace
from ..state import Entry
from .base import Agent

log = logging.getLogger("synkler")

MAX_VERSIONS = 1000
FOLLOWERS = 4  # entries of one pull hashed while they arrive (synkler.hops.follow); the others after it
EARLY_MAX = 2  # files pulled early at a time
EARLY_WAIT = 60.0  # seconds an early pull waits for upload's push to begin before it gives up
EARLY_KEEP = 600.0  # seconds an early copy whose fetch never came is kept (central gave it up)
EARLY_STEP = 8 << 20  # an early run that brought less than this waits EARLY_PAUSE before the next
EARLY_PAUSE = 0.25
# rsync's error line for a source that does not exist ends with ENOENT's number, whatever the locale.
_MISSING = re.compile(r"^rsync: \[sender\] .*\(2\)\s*$", re.MULTILINE)


def versioned_name(name: str, kind: str, n: int) -> str:
    """The n-th name tried for `name` (n = 1 is the name itself): 'data (2).csv', 'run42 (2)'."""
    if n == 1:
        return name
    stem, dot, ext = name.rpartition(".")
    if kind == "dir" or not dot or not stem:
        return f"{name} ({n})"
    return f"{stem} ({n}).{ext}"


def stored_root(entry: Entry) -> str:
    """Central's directory of stored entries, from a fetch path "<root>/<entry id>"."""
    return os.path.dirname(entry.path)


def choose_name(file_dir: str, name: str, kind: str, md5: str) -> tuple[str, bool]:
    """Where a verified entry goes: (name, already_present). Reads existing same-named entries."""
    for n in range(1, MAX_VERSIONS + 1):
        candidate = versioned_name(name, kind, n)
        path = os.path.join(file_dir, candidate)
        if not os.path.lexists(path):
            return candidate, False
        try:
            # The digest leaves out the top-level kind (an empty dir and an empty file agree): compare it too.
            if stat_entry(path).kind == kind and md5_entry(path) == md5:
                return candidate, True
        except (OSError, ValueError):
            pass  # unreadable or odd: certainly not our content
    raise RuntimeError(f"{MAX_VERSIONS} entries named like {name!r} already exist")


class Early:
    """A big file pulled while upload pushes it: its copy in staging and the md5 of its first bytes.

    The digest leaves out the copy's last byte, so that the run after `fetch` always brings at least
    one byte: rsync sets the file's mode and mtime only on a file it writes to.
    """

    def __init__(self, local: str):
        self.local = local
        self.fetched = threading.Event()  # the fetch has come: stop pulling early
        self.digest = new_md5()
        self.hashed = 0
        self.ino: int | None = None
        self.ended: float | None = None  # when the early pulling stopped

    def hash_more(self, limit: int) -> bool:
        """Hash what has been appended (at most up to `limit`); False if the copy is not the file
        hashed so far."""
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
                block = os.pread(fd, min(1 << 20, limit - self.hashed), self.hashed)
                if not block:
                    break
                self.digest.update(block)
                self.hashed += len(block)
            return True
        finally:
            os.close(fd)


class Download(Agent):
    mode = "download"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.staging_dir = os.path.join(self.cfg.file_dir, f".synkler-{self.cfg.id}")
        self.partial_dir = os.path.join(self.staging_dir, transfer.PARTIAL_DIR)  # rsync's, shared
        self.place_due = True  # set when an entry's name was chosen and it may be renamed into place
        self.early: dict[str, Early] = {}  # entry id -> its early pull (memory only)

    def cleanup_target(self, entry: Entry) -> tuple[str, str]:
        return entry.stored_as, os.path.join(self.cfg.file_dir, entry.stored_as)

    def staging(self, entry: Entry) -> str:
        """Where the entry is pulled to (file, directory or symlink), named by its id."""
        return os.path.join(self.staging_dir, entry.id)

    def startup(self) -> None:
        os.makedirs(self.staging_dir, exist_ok=True)
        # A pull cut short keeps what it got, and rsync's partial file, for its entry's next run;
        # anything else in staging is left over.
        partial = self.partial_dir
        items = [os.path.join(self.staging_dir, n) for n in os.listdir(self.staging_dir)]
        if os.path.isdir(partial):
            items += [os.path.join(partial, n) for n in os.listdir(partial)]
        for path in items:
            if path == partial:
                continue
            entry = self.state.get(os.path.basename(path))
            if entry is None or entry.state not in ("fetching", "placing"):
                log.info("removing leftover staging %s", os.path.relpath(path, self.staging_dir))
                remove_tree(path)
        self._drop_empty_partial_dir()
        self.resume_cleanups()

    def _drop_staging(self, entry: Entry) -> None:
        """Remove what a pull of the entry left in staging: the copy and rsync's partial file."""
        remove_tree(self.staging(entry))
        if os.path.lexists(self.partial_dir):
            remove_tree(os.path.join(self.partial_dir, entry.id))
            self._drop_empty_partial_dir()

    def _drop_empty_partial_dir(self) -> None:
        try:
            os.rmdir(self.partial_dir)
        except OSError:
            pass  # missing, or holds partial files of pulls to resume

    def on_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "pushing":
            if (
                self.state.get(msg["entry"]) is None
                and msg["entry"] not in self.early
                and len(self.early) < EARLY_MAX
                and self.rt.transfers < self.cfg.max_transfers
            ):
                self._pull_early(msg["entry"], msg["path"], msg["size"])
            return
        if msg["type"] != "fetch":
            raise MessageError(f"download does not take {msg['type']!r} messages")
        if not msg["path"].endswith(f"/{msg['entry']}"):
            raise MessageError(f"fetch: path {msg['path']!r} is not <stored dir>/<entry id>")
        entry = self.state.get(msg["entry"])
        if msg["entry"] in self.early:
            self.early[msg["entry"]].fetched.set()
        if entry is None:
            entry = self.entry_from(msg, "fetching", attempt=msg["attempt"], path=msg["path"])
            self.state.insert(entry)
            self.transfer_due = True
        elif entry.state in ("fetching", "failed") and msg["attempt"] > entry.attempt:
            # Central has a fresh copy (it found its stored one bad and got it again from upload).
            self.state.update(
                entry, state="fetching", attempt=msg["attempt"], path=msg["path"], tries=0, due=0
            )
            self.transfer_due = True

    def look_again(self) -> None:
        super().look_again()
        self.place_due = True

    def tick(self, now: float) -> None:
        due = self.due_for_transfer("fetching", now)
        for batch in self.batches(due, group=lambda e: stored_root(e)):
            self._fetch(batch)
        if self.place_due:
            self.place_due = False
            for entry in self.state.by_state("placing"):
                self._place(entry)
        self.start_due_cleanups(now)
        for entry_id, early in list(self.early.items()):
            if early.ended and now - early.ended > EARLY_KEEP and self.state.get(entry_id) is None:
                log.info("dropping the early copy of entry %s: central never sent it", entry_id)
                del self.early[entry_id]
                remove_tree(early.local)

    def shutdown(self) -> None:
        for early in self.early.values():
            early.fetched.set()

    def _pull_early(self, entry_id: str, path: str, size: int) -> None:
        """Pull a file while upload pushes it to central, until its fetch comes or the push ends."""
        early = self.early[entry_id] = Early(os.path.join(self.staging_dir, entry_id))

        def work() -> None:
            give_up = time.monotonic() + EARLY_WAIT
            arrived = False
            while not early.fetched.is_set():
                before = early.hashed
                result = transfer.pull_more(self.cfg, path, early.local)
                # Also what a run cut short appended: the next run, or the one after the fetch, goes on
                # from there.
                if not early.hash_more(size - 1):
                    raise OSError(f"{early.local} was replaced while it was pulled early")
                if not result.ok:
                    if not _MISSING.search(result.output) or arrived or time.monotonic() > give_up:
                        # The push is over (or failed, or never began): the fetch decides.
                        log.debug("early pull of entry %s ends: %s", entry_id, result.summary())
                        return
                    early.fetched.wait(EARLY_PAUSE)
                    continue
                if not arrived:
                    arrived = True
                    log.info("pulling entry %s early, while upload pushes it", entry_id)
                if early.hashed - before < EARLY_STEP:
                    early.fetched.wait(EARLY_PAUSE)

        def done(_result: None, error: BaseException | None) -> None:
            early.ended = time.time()
            if error is not None:
                log.warning("early pull of entry %s stopped: %s", entry_id, error)
                self._drop_early(entry_id)

        self.rt.submit("transfer", entry_id, work, done)

    def _drop_early(self, entry_id: str) -> None:
        early = self.early.pop(entry_id, None)
        if early is not None:
            remove_tree(early.local)

    def _finish_early(self, entry: Entry, early: Early) -> tuple[transfer.Result, tuple[str, Any]] | None:
        """Append the rest of an early-pulled file from its verified copy.

        (result, outcome): the copy is whole and its md5 matched ("ok"), or the link or the disk
        failed and the copy is kept for the next try ("link", "space"). None: the copy was removed,
        pull the file whole.
        """
        if not early.hashed or not early.hash_more(early.hashed):
            why = "nothing was pulled early" if not early.hashed else "it was replaced"
        else:
            before = early.hashed
            os.truncate(early.local, early.hashed)  # the copy is what was hashed, no more
            result = transfer.pull_more(self.cfg, entry.path, early.local)
            if result.link_down or result.out_of_space:
                return result, ("space" if result.out_of_space else "link", result.summary())
            if not result.ok:
                why = result.summary()
            elif not early.hash_more(entry.size) or early.hashed != entry.size:
                why = f"{early.hashed} bytes instead of {entry.size}"
            elif early.digest.hexdigest() != entry.md5:
                why = f"md5 mismatch at download: expected {entry.md5}, got {early.digest.hexdigest()}"
            else:
                pulled = f"{before} of {entry.size} bytes were pulled while upload pushed it"
                log.info("%s: %s", entry.name, pulled)
                return result, ("ok", choose_name(self.cfg.file_dir, entry.name, entry.kind, entry.md5))
        log.info("%s: the early copy is not used (%s); pulling it whole", entry.name, why)
        remove_tree(early.local)
        return None

    def _fetch(self, batch: list[Entry]) -> None:
        """One rsync run for entries stored under the same directory on central, then md5 of each."""
        what = batch[0].name if len(batch) == 1 else f"{len(batch)} entries"
        log.info("pulling %s from central", what)
        # Big files go alone (base.BATCH_BYTES): one pulled early has a batch of its own.
        early = self.early.pop(batch[0].id, None) if len(batch) == 1 else None
        kept: list[Early] = []

        def work() -> tuple[transfer.Result, dict[str, tuple[str, Any]]]:
            if early is not None:
                finished = self._finish_early(batch[0], early)
                if finished is not None:
                    result, outcome = finished
                    if outcome[0] != "ok":
                        kept.append(early)  # the next try goes on from it
                    return result, {batch[0].id: outcome}
            # Big files (and directories of them) are hashed while they arrive (synkler.hops.follow), at
            # most FOLLOWERS entries per run.
            follow = [e for e in batch if worth_following(e.kind, e.size, e.files)][:FOLLOWERS]
            followers = {e.id: Follower(self.staging_dir, e.id, e.kind).start() for e in follow}
            try:
                result = transfer.pull(
                    self.cfg, stored_root(batch[0]), [e.id for e in batch], self.staging_dir
                )
            except BaseException:
                for follower in followers.values():
                    follower.stop()
                raise
            followed = {entry_id: follower.finish() for entry_id, follower in followers.items()}
            outcomes: dict[str, tuple[str, Any]] = {}
            failure = "space" if result.out_of_space else "link" if result.link_down else "rsync"
            # Verify every entry even if rsync failed: whatever arrived whole is good (rsync only ever
            # puts complete files in place; partial ones wait in the partial dir).
            for e in batch:
                path = self.staging(e)
                if not os.path.lexists(path):
                    outcomes[e.id] = (failure, result.summary() if not result.ok else "nothing arrived")
                    continue
                md5, unread = verified_md5(path, e.md5, followed.get(e.id))
                if unread:
                    log.debug("%s: hashed while it arrived", e.name)
                if md5 != e.md5 and not result.ok:
                    # The run broke off: a directory may be incomplete. That is no corruption: keep what
                    # arrived for the next run to complete.
                    outcomes[e.id] = (failure, result.summary())
                    continue
                if md5 != e.md5:
                    # rsync's quick check would take a bad copy for done: remove it, pull it anew.
                    self._drop_staging(e)
                    outcomes[e.id] = ("mismatch", md5)
                    continue
                outcomes[e.id] = ("ok", choose_name(self.cfg.file_dir, e.name, e.kind, md5))
            # rsync removes its partial dir only if this run made it: not after resuming a cut-off pull.
            self._drop_empty_partial_dir()
            return result, outcomes

        def done(
            ran: tuple[transfer.Result, dict[str, tuple[str, Any]]] | None, error: BaseException | None
        ) -> None:
            result, outcomes = ran if ran else (None, None)
            self.link_result(result)
            for early_copy in kept:
                self.early[batch[0].id] = early_copy
            for entry in batch:
                entry_now = self.state.get(entry.id)
                if entry_now.state != "fetching":
                    continue
                outcome, detail = outcomes[entry.id] if outcomes else ("error", repr(error))
                if outcome == "mismatch":
                    # Central re-checks its stored copy (and gets it again from upload if it is bad).
                    self.send(entry.peer, "corrupt", entry.id, got=detail)
                    detail = f"md5 mismatch at download: expected {entry.md5}, got {detail}"
                if outcome != "ok":
                    if not self.retry_later(
                        entry_now,
                        "pull from central",
                        detail,
                        out_of_space=outcome == "space",
                        link_down=outcome == "link",
                    ):
                        self.send(
                            entry.peer, "failed", entry.id, hop="pull from central", reason=detail[:1900]
                        )
                    continue
                target, present = detail
                log.debug("%s: md5 verified at download (%s)", entry.name, entry.md5)
                if present:
                    self._drop_staging(entry)
                    self.state.update(entry_now, state="done", stored_as=target, tries=0, reason=None)
                    self.send(entry.peer, "fetched", entry.id, stored_as=target, outcome="present")
                    log.info(
                        "%s: already present as %s with the same md5 (%s); nothing to do",
                        entry.name,
                        target,
                        entry.md5,
                    )
                    continue
                # Commit the chosen name before the rename, so a crash in between is recognised at restart.
                self.state.update(entry_now, state="placing", stored_as=target, tries=0, reason=None)
                self.place_due = True

        self.rt.submit("transfer", [e.id for e in batch], work, done)

    def _place(self, entry: Entry) -> None:
        """Rename the verified copy into file_dir."""
        src = self.staging(entry)
        dst = os.path.join(self.cfg.file_dir, entry.stored_as)
        if os.path.lexists(src):
            try:
                rename_noreplace(src, dst)
            except FileExistsError:
                # Someone put something there since we looked: choose again (the pull is a no-op now).
                self.state.update(entry, state="fetching", due=0)
                self.transfer_due = True
                return
        elif not os.path.lexists(dst):
            log.warning("%s: staged copy vanished before it was placed; fetching again", entry.name)
            self.state.update(entry, state="fetching", due=0)
            self.transfer_due = True
            return
        script = bool(self.cfg.cleanup_script)
        self.state.update(
            entry, state="delivered" if script else "done", cleanup="pending" if script else None
        )
        self.cleanup_due = self.cleanup_due or script
        self.send(entry.peer, "fetched", entry.id, stored_as=entry.stored_as, outcome="placed")
        log.info(
            "%s: delivered into %s as %s (md5 %s verified)",
            entry.name,
            self.cfg.file_dir,
            entry.stored_as,
            entry.md5,
        )
