"""The central role: admit offers, verify what upload pushed, hand it to download, expire it.

Central's directory is ``file_dir/<id>/``: ``staging/<upload agent>/`` receives pushes,
``stored/<entry id>`` is a verified copy that download pulls (the entry itself under its id: its name
is in the state, and a directory per entry would cost a mkdir each, the dearest step for small
files). An entry only ever reaches ``stored`` by a rename after its md5 matched. ``growing/<entry id>``
is a hard link to rsync's temporary file of a big file while upload pushes it, so that download can
pull what has arrived before it is verified (download places nothing before its own md5 matches).
Central never opens an ssh connection.

States: waiting -> uploading -> verifying -> downloading -> delivered -> expired, or failed.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any

from ..errors import MessageError
from ..hops import transfer
from ..hops.checksum import md5_entry
from ..hops.follow import Follower, pulled_early, verified_md5, worth_following
from ..linux.fs import free_bytes, remove_tree, rename_noreplace, total_bytes
from ..messages import is_valid_entry_id
from ..state import Entry
from .base import GIVE_UP_ADVICE, Agent, hash_groups

log = logging.getLogger("synkler")

DOWNLOAD = "download"
MAX_ADMITTED = 2000  # entries admitted but not yet verified; free space is the other limit
ADMIT_RECHECK = 1.0  # seconds: waiting entries are looked at again this often (free space changes)
SWEEP_INTERVAL = 60.0  # seconds between looks for stale partial files (and their minimum age)


class Central(Agent):
    mode = "central"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.base = os.path.join(self.cfg.file_dir, self.cfg.id)
        self.staging_dir = os.path.join(self.base, "staging")
        self.stored_dir = os.path.join(self.base, "stored")
        self.growing_dir = os.path.join(self.base, "growing")
        self.next_sweep = 0.0
        self.next_admit_check = 0.0
        self.admit_due = self.verify_due = True
        # entry id -> Follower hashing a big file while upload pushes it (synkler.hops.follow); verify
        # jobs take them from worker threads, hence the lock.
        self.followers: dict[str, Follower] = {}
        self.followers_lock = threading.Lock()

    def staging(self, entry: Entry) -> str:
        """Where the entry's upload agent pushes: one directory per upload agent, so one rsync run
        can carry many entries. Central admits one version of a name per agent at a time."""
        return os.path.join(self.staging_dir, entry.peer)

    def staged(self, entry: Entry) -> str:
        return os.path.join(self.staging_dir, entry.peer, entry.name)

    def stored(self, entry: Entry) -> str:
        """The verified copy of the entry (file, directory or symlink), named by its id."""
        return os.path.join(self.stored_dir, entry.id)

    def startup(self) -> None:
        os.makedirs(self.staging_dir, exist_ok=True)
        os.makedirs(self.stored_dir, exist_ok=True)
        os.makedirs(self.growing_dir, exist_ok=True)
        for name in os.listdir(self.growing_dir):  # pushes cut short by the stop start again
            remove_tree(os.path.join(self.growing_dir, name))
        in_flight = {(e.peer, e.name) for e in self.state.by_state("waiting", "uploading", "verifying")}
        for peer in os.listdir(self.staging_dir):
            top = os.path.join(self.staging_dir, peer)
            if not os.path.isdir(top) or os.path.islink(top):
                log.warning("leaving unknown item %s alone", top)
                continue
            for name in os.listdir(top):
                if name == transfer.PARTIAL_DIR:
                    if not any(p == peer for p, _ in in_flight):
                        remove_tree(os.path.join(top, name))
                elif (peer, name) not in in_flight:
                    log.info("removing leftover staging/%s/%s", peer, name)
                    remove_tree(os.path.join(top, name))
        keep = ("verifying", "downloading", "delivered", "failed")
        for name in os.listdir(self.stored_dir):
            entry = self.state.get(name) if is_valid_entry_id(name) else None
            if entry is None and not is_valid_entry_id(name):
                log.warning("leaving unknown item %s in %s alone", name, self.stored_dir)
            elif entry is None or entry.state not in keep:
                log.info("removing leftover stored/%s (%s)", name, entry.state if entry else "unknown entry")
                remove_tree(os.path.join(self.stored_dir, name))
        self._follow_more()  # pushes cut short by the stop start again

    def shutdown(self) -> None:
        with self.followers_lock:
            followers, self.followers = list(self.followers.values()), {}
        for follower in followers:
            follower.stop()

    # hashing big files while they arrive ----------------------------------------------------------

    def _follow(self, entry: Entry) -> None:
        """Hash a big file (or a directory of them) while upload pushes it, if fewer than
        max_transfers are followed already."""
        self._unfollow(entry.id)
        if not worth_following(entry.kind, entry.size, entry.files):
            return
        directory, name, kind = self.staging(entry), entry.name, entry.kind
        early = pulled_early(entry.kind, entry.size)
        link = functools.partial(self._link_growing, entry.id) if early else None

        def start() -> None:
            with self.followers_lock:
                if len(self.followers) >= self.cfg.max_transfers or entry.id in self.followers:
                    return
                self.followers[entry.id] = Follower(directory, name, kind, on_open=link).start()

        self.state.after_commit(start)

    def _follow_more(self) -> None:
        """Follow uploading big files that have no follower yet, while there are free followers
        (one that gave up waiting for its push frees its place)."""
        with self.followers_lock:
            ended = [entry_id for entry_id, follower in self.followers.items() if follower.ended]
        for entry_id in ended:
            self._unfollow(entry_id)
        with self.followers_lock:
            free = self.cfg.max_transfers - len(self.followers)
        if free <= 0:
            return
        for entry in self.state.by_state("uploading"):
            if (
                free > 0
                and worth_following(entry.kind, entry.size, entry.files)
                and entry.id not in self.followers
            ):
                self._follow(entry)
                free -= 1

    def _unfollow(self, entry_id: str) -> None:
        with self.followers_lock:
            follower = self.followers.pop(entry_id, None)
        if follower is not None:
            follower.stop()
        self._drop_growing(entry_id)

    def growing(self, entry_id: str) -> str:
        return os.path.join(self.growing_dir, entry_id)

    def _link_growing(self, entry_id: str, fd: int) -> None:
        """On a follower's thread: make growing/<entry id> the file rsync has just begun to write
        (a new try replaces the link of the one before)."""
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

    def _drop_growing(self, entry_id: str) -> None:
        remove_tree(self.growing(entry_id))

    def _take_follower(self, entry_id: str) -> Follower | None:
        with self.followers_lock:
            return self.followers.pop(entry_id, None)

    # messages ------------------------------------------------------------------------------------

    def on_message(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "offer":
            if self.state.get(msg["entry"]) is not None:
                return  # a duplicate offer: already handled
            entry = self.state.insert(self.entry_from(msg, "waiting"))
            self.admit_due = True
            log.debug("%s: offered by %s (%d bytes)", entry.name, entry.peer, entry.size)
            return  # admitted (or told to wait) by the tick that follows, in offer order
        entry = self.entry_for(msg)
        if kind == "sent":
            if entry.state == "uploading" and msg["attempt"] == entry.attempt:
                self.state.update(entry, state="verifying", md5=msg["md5"], tries=0, due=0)
                self.verify_due = True
        elif kind == "fetched":
            if entry.state == "downloading":
                keep = self.cfg.keep_minutes * 60
                self.state.update(
                    entry, state="delivered", stored_as=msg["stored_as"], due=time.time() + keep
                )
                self.send(entry.peer, "delivered", entry.id, stored_as=msg["stored_as"])
                log.info(
                    "%s: delivered to %s as %s; central copy kept %g min",
                    entry.name,
                    msg["from"],
                    msg["stored_as"],
                    self.cfg.keep_minutes,
                )
        elif kind == "corrupt":
            if entry.state == "downloading" and "recheck:" + entry.id not in self.rt.busy:
                log.warning(
                    "%s: download got md5 %s instead of %s; checking central's copy",
                    entry.name,
                    msg["got"],
                    entry.md5,
                )
                self._recheck(entry)
        elif kind == "withdraw":
            if entry.state in ("waiting", "uploading", "verifying"):
                self.state.update(entry, state="withdrawn", reason=msg["reason"])
                self._unfollow(entry.id)
                remove_tree(self.staged(entry))
                self.admit_due = True  # its name and its room are free for the newer version
                log.info("%s: withdrawn by %s: %s", entry.name, msg["from"], msg["reason"])
        elif kind == "failed":
            if entry.state not in ("delivered", "expired", "failed", "withdrawn"):
                reason = f"{msg['hop']}: {msg['reason']}"
                self.state.update(entry, state="failed", reason=reason)
                self._unfollow(entry.id)
                log.error("%s: %s reports failure: %s", entry.name, msg["from"], reason)
                if msg["from"] != entry.peer:
                    self.send(entry.peer, "failed", entry.id, hop=msg["hop"], reason=msg["reason"])
        else:
            raise MessageError(f"central does not take {kind!r} messages")

    # admission -----------------------------------------------------------------------------------

    def _admit_waiting(self) -> None:
        """Admit waiting entries, oldest first, while there is room; tell the others why they wait.

        Room: at most MAX_ADMITTED entries between admission and verification, one version of a name
        per upload agent at a time (they share a staging path), and free space on file_dir's
        filesystem above the free_percent reserve, minus what admitted entries have yet to bring.
        """
        waiting = self.state.by_state("waiting")
        if not waiting:
            return
        active = self.state.by_state("uploading", "verifying")
        count = len(active)
        busy_names = {(e.peer, e.name) for e in active}
        free = free_bytes(self.cfg.file_dir)
        reserve = total_bytes(self.cfg.file_dir) * self.cfg.free_percent / 100
        room = free - reserve - sum(e.size for e in active if e.state == "uploading")
        blocked = None  # once an entry must wait for room, later ones queue behind it
        for entry in waiting:
            if blocked:
                why = "older entries are waiting for room"
            elif count >= MAX_ADMITTED:
                why = blocked = f"{count} entries admitted and not yet verified"
            elif (entry.peer, entry.name) in busy_names:
                why = "another version of this name is still being uploaded"
            elif entry.size > room:
                available, reserve_pct = max(0, int(room)), self.cfg.free_percent
                why = blocked = (
                    f"needs {entry.size} bytes, {available} available above the {reserve_pct}% reserve"
                )
            else:
                self._admit(entry)
                count += 1
                busy_names.add((entry.peer, entry.name))
                room -= entry.size
                continue
            if entry.reason != why:  # say it once per reason, not at every tick
                self.state.update(entry, reason=why)
                self.send(entry.peer, "wait", entry.id, reason=why)
                log.info("%s: waiting: %s", entry.name, why)

    def _sweep_staging(self, now: float) -> None:
        """Remove what no push will finish or resume: staged copies and partial files of names
        that are no longer waiting, uploading or being verified.

        A push cut off mid-file leaves its partial file for the next try; an rsync that was killed,
        or that still ran for a version upload withdrew, may even write one late. Only items that
        have not changed for a while are touched (ctime: rsync keeps the sender's mtime).
        """
        live = {(e.peer, e.name) for e in self.state.by_state("waiting", "uploading", "verifying")}

        def stale(path: str) -> bool:
            try:
                return now - os.lstat(path).st_ctime > SWEEP_INTERVAL
            except FileNotFoundError:
                return False

        for peer in os.listdir(self.staging_dir):
            top = os.path.join(self.staging_dir, peer)
            partial = os.path.join(top, transfer.PARTIAL_DIR)
            try:
                names = os.listdir(top)
                partials = os.listdir(partial) if transfer.PARTIAL_DIR in names else []
            except OSError:
                continue
            for name in partials:
                if (peer, name) not in live and stale(os.path.join(partial, name)):
                    log.info("removing stale partial file %s/%s", partial, name)
                    self._drop_partial(partial, name)
            for name in names:
                if (
                    name != transfer.PARTIAL_DIR
                    and (peer, name) not in live
                    and stale(os.path.join(top, name))
                ):
                    log.info("removing stale staged copy %s/%s", top, name)
                    remove_tree(os.path.join(top, name))

    @staticmethod
    def _drop_partial(partial_dir: str, name: str) -> None:
        """Remove one partial file, and the partial dir once it is empty (as rsync itself would)."""
        remove_tree(os.path.join(partial_dir, name))
        try:
            os.rmdir(partial_dir)
        except OSError:
            pass  # missing, or still holds partial files of running pushes

    def _admit(self, entry: Entry) -> None:
        os.makedirs(self.staging(entry), exist_ok=True)
        remove_tree(self.staged(entry))  # a fresh start for every attempt
        self.state.update(entry, state="uploading", attempt=entry.attempt + 1, tries=0, reason=None)
        self.send(entry.peer, "admit", entry.id, attempt=entry.attempt, dest=self.staging(entry))
        if pulled_early(entry.kind, entry.size):
            path = self.growing(entry.id)
            self.send(DOWNLOAD, "pushing", entry.id, size=entry.size, path=path)
        self._follow(entry)

    # jobs ----------------------------------------------------------------------------------------

    def look_again(self) -> None:
        super().look_again()
        self.admit_due = self.verify_due = True

    def tick(self, now: float) -> None:
        # The loop ticks after every message batch and finished job: look at the (possibly
        # thousands of) waiting and verifying entries only when something may have changed.
        if self.admit_due or now >= self.next_admit_check:
            self.admit_due, self.next_admit_check = False, now + ADMIT_RECHECK
            self._admit_waiting()
        if now >= self.next_sweep:
            self.next_sweep = now + SWEEP_INTERVAL
            self._sweep_staging(now)
            self._follow_more()
        if self.verify_due:
            self.verify_due = False
            ready = (
                self.state.get(entry_id)
                for entry_id, _ in self.state.ids_by_state("verifying")
                if entry_id not in self.rt.busy
            )
            for group in hash_groups(ready):
                self._verify(group)
        for entry in self.state.by_state("delivered", due_before=now):
            if entry.id not in self.rt.busy:
                self._expire(entry)

    def _verify(self, group: list[Entry]) -> None:
        """md5 of the staged copies of a group of entries, by one job (small entries share one:
        one hand-over and one wake-up of the loop instead of one per entry). A big file's follower
        usually has the md5 already (synkler.hops.follow)."""

        def work() -> list[tuple[str, bool] | BaseException]:
            results: list[tuple[str, bool] | BaseException] = []
            for entry in group:
                staged, stored = self.staged(entry), self.stored(entry)
                follower = self._take_follower(entry.id)
                try:
                    followed = follower.finish() if follower else None
                    # A crash between the rename and its commit leaves the verified copy in stored/.
                    if not os.path.lexists(staged) and os.path.lexists(stored):
                        results.append((md5_entry(stored), True))
                    else:
                        md5, unread = verified_md5(staged, entry.md5, followed)
                        if unread:
                            log.debug("%s: hashed while it arrived", entry.name)
                        results.append((md5, False))
                except Exception as e:  # this entry only; the others of the group go on
                    results.append(e)
            return results

        def done(results: list | None, error: BaseException | None) -> None:
            # Whatever happens below (even a rollback), look at verifying entries and admission again.
            self.verify_due = self.admit_due = True
            if any(worth_following(e.kind, e.size, e.files) for e in group):
                self._follow_more()  # a follower is free again
            for entry, result in zip(group, results or [error] * len(group)):
                try:
                    with self.state.savepoint():
                        if isinstance(result, BaseException):
                            self._verified(entry, None, result)
                        else:
                            self._verified(entry, result, None)
                except Exception:
                    log.exception("%s: bug while recording its md5 check", entry.name)

        self.rt.submit("hash", [e.id for e in group], work, done)

    def _verified(self, entry: Entry, result: tuple[str, bool] | None, error: BaseException | None) -> None:
        """Record one md5 check: on a match move the copy into stored/ and tell download."""
        staged = self.staged(entry)
        stored = self.stored(entry)
        entry_now = self.state.get(entry.id)
        if entry_now.state != "verifying":
            return
        self._drop_growing(entry.id)  # download pulls the rest from stored/, or all of it again
        md5, in_store = result if result else (None, False)
        if md5 == entry.md5:
            if not in_store:
                rename_noreplace(staged, stored)
            # An interrupted earlier push may have left a partial file of this name behind.
            self._drop_partial(os.path.join(self.staging(entry), transfer.PARTIAL_DIR), entry.name)
            self.state.update(entry_now, state="downloading", tries=0, path=stored)
            self.send(
                DOWNLOAD,
                "fetch",
                entry.id,
                name=entry.name,
                kind=entry.kind,
                size=entry.size,
                files=entry.files,
                md5=entry.md5,
                attempt=entry_now.attempt,  # grows when central had to get the entry again
                path=stored,
            )
            log.info("%s: md5 verified at central (%s); download may fetch it", entry.name, md5)
            return
        why = (
            f"md5 mismatch at central: expected {entry.md5}, got {md5}"
            if md5
            else f"cannot read upload: {error}"
        )
        remove_tree(staged)
        if entry_now.attempt >= self.cfg.max_attempts:
            self._give_up(entry_now, "upload to central", why)
        else:
            log.warning("%s: %s; asking upload again", entry.name, why)
            self._admit(entry_now)

    def _give_up(self, entry: Entry, hop: str, why: str) -> None:
        """max_attempts uploads did not give a good copy: fail the entry and tell upload."""
        self.state.update(entry, state="failed", reason=why)
        self.send(entry.peer, "failed", entry.id, hop=hop, reason=why)
        log.error(
            "%s: %s after %d attempts; giving up. %s", entry.name, why, entry.attempt, GIVE_UP_ADVICE[hop]
        )

    def _recheck(self, entry: Entry) -> None:
        """Verify the stored copy again; if it went bad, drop it and get the entry again from upload."""
        stored = self.stored(entry)

        def done(md5: str | None, error: BaseException | None) -> None:
            entry_now = self.state.get(entry.id)
            if entry_now.state != "downloading":
                return
            if md5 == entry.md5:
                log.info("%s: central's copy is intact; download pulls again", entry.name)
                return
            why = (
                f"stored copy at central went bad (md5 {md5})" if md5 else f"stored copy unreadable: {error}"
            )
            remove_tree(self.stored(entry))
            if entry_now.attempt >= self.cfg.max_attempts:
                self._give_up(entry_now, "store at central", why)
                return
            log.warning("%s: %s; getting it again from upload", entry.name, why)
            self.state.update(entry_now, state="waiting", reason=why)
            self.admit_due = True

        self.rt.submit("hash", "recheck:" + entry.id, lambda: md5_entry(stored), done)

    def _expire(self, entry: Entry) -> None:
        path = self.stored(entry)

        def done(_result: None, error: BaseException | None) -> None:
            self.admit_due = True  # space was freed
            if error is not None:
                log.error("%s: cannot remove central copy %s: %s", entry.name, path, error)
                self.state.update(self.state.get(entry.id), due=time.time() + 60)
                return
            self.state.update(self.state.get(entry.id), state="expired")
            log.info("%s: central copy removed (%g min after delivery)", entry.name, self.cfg.keep_minutes)

        self.rt.submit("hash", entry.id, lambda: remove_tree(path), done)
