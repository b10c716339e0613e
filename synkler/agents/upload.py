"""The upload role: notice settled entries in file_dir, offer them, push them when admitted.

Upload's entry states: offered -> (waiting) -> uploading -> (pushed) -> sent -> delivered -> done,
or failed; superseded when a newer version of the name replaces one not yet sent.

A new name is offered as soon as it has settled and hashed while central admits it and while it is
pushed: the md5 goes with `sent`, once both the push and the hash are done (`pushed`: the push is,
the hash is not yet). A name relayed before is hashed first, so an entry that was only touched
(same content) is not sent again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from ..hops import transfer
from ..hops.checksum import EntryStat, md5_entry, stat_entry
from ..linux.fs import open_for_writing
from ..messages import name_problem, new_entry_id
from ..state import Entry
from .base import Agent, hash_groups
from .watch import DirWatcher

log = logging.getLogger("synkler")

SCAN_INTERVAL = 0.5  # seconds between looks at file_dir when inotify is not available
RESCAN_INTERVAL = 5.0  # backstop rescan when inotify tells us about changes
MIN_SCAN_GAP = 0.05  # a burst of changes costs one scan per this many seconds at most
CENTRAL = "central"
UNSENT = ("offered", "waiting", "uploading", "pushed")  # versions a newer one withdraws


class Upload(Agent):
    mode = "upload"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pending: dict[str, tuple[str, float]] = {}  # name -> (signature, unchanged since)
        # name -> signature of the name's latest version in the state, as committed: a rescan skips
        # what is on its way or delivered without a query per name. The signature holds the ctime,
        # so a file never gets back a signature it had; a changed one is looked up again.
        self.relayed: dict[str, str] = {}
        self.next_scan = 0.0
        self.last_scan = 0.0
        self.warned: set[str] = set()
        self.changed = threading.Event()
        self.watcher = DirWatcher(str(self.cfg.file_dir), self._on_change)
        self.watching = False

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.file_dir, name)

    def cleanup_target(self, entry: Entry) -> tuple[str, str]:
        return entry.name, self.path(entry.name)

    def startup(self) -> None:
        self.resume_cleanups()
        # Hashes cut short by the stop start again.
        self._hash_entries([e for e in self.state.by_state(*UNSENT) if not e.md5])
        self.watching = self.watcher.start()
        if self.watching:
            log.debug("watching %s through inotify", self.cfg.file_dir)

    def shutdown(self) -> None:
        self.watcher.stop()

    def _on_change(self) -> None:
        """Called by the watcher thread: something happened in file_dir; look soon."""
        self.changed.set()
        self.rt.wake()

    def next_wakeup(self) -> float | None:
        if "<scan>" in self.rt.busy:
            return None  # the scan's completion wakes the loop; a past time here would make it spin
        return self.last_scan + MIN_SCAN_GAP if self.changed.is_set() else self.next_scan

    # noticing entries ----------------------------------------------------------------------------

    def _scan(self) -> tuple[dict[str, EntryStat | Exception | None], set[str]]:
        """Fingerprint every entry of file_dir; also say which are whole already: files renamed in
        (nothing happened to them since) that no process holds open for writing."""
        found: dict[str, EntryStat | Exception | None] = {}
        whole: set[str] = set()
        renamed = self.watcher.take_renamed()
        with os.scandir(self.cfg.file_dir) as it:
            for d in it:
                if d.name.startswith("."):
                    continue
                try:
                    if d.name in renamed:  # asked before the fingerprint, so that is of the whole file
                        writing = open_for_writing(d.path)
                        if writing is False:
                            whole.add(d.name)
                        else:
                            why = "is still open for writing" if writing else "may still be written"
                            log.debug("%s: renamed in, but %s: it settles first", d.name, why)
                    found[d.name] = stat_entry(d.path)
                except FileNotFoundError:  # vanished while we looked
                    found[d.name] = None
                except (OSError, ValueError) as e:  # unreadable, or holds a fifo/socket/device
                    found[d.name] = e
        return found, whole

    def _scanned(
        self,
        result: tuple[dict[str, EntryStat | Exception | None], set[str]] | None,
        error: BaseException | None,
    ) -> None:
        now = time.time()
        self.next_scan = now + (RESCAN_INTERVAL if self.watching else SCAN_INTERVAL)
        if error is not None:
            log.error("cannot scan %s: %s", self.cfg.file_dir, error)
            return
        found, whole = result
        for known in (self.pending, self.relayed):
            for name in [n for n in known if n not in found]:
                del known[name]
        fresh: list[Entry] = []  # offered now, to be hashed while they travel
        for name, st in found.items():
            if not isinstance(st, EntryStat):
                self.pending.pop(name, None)
                if st is not None and name not in self.warned:
                    self.warned.add(name)
                    log.warning("not sending %r: %s", name, st)
                continue
            problem = name_problem(name)
            if problem:
                if name not in self.warned:
                    self.warned.add(name)
                    log.warning("ignoring %r in %s: %s", name, self.cfg.file_dir, problem)
                continue
            if self.relayed.get(name) == st.signature:
                continue  # this content is already on its way or delivered
            latest = self.state.latest_by_name(name)
            if latest is not None and latest.signature == st.signature:
                self.pending.pop(name, None)
                self.state.after_commit(lambda n=name, s=st.signature: self.relayed.__setitem__(n, s))
                continue
            seen = self.pending.get(name)
            if name in whole:  # counts as settled already
                log.debug("%s: renamed in and not open for writing: no need to wait for it to settle", name)
                seen = (st.signature, float("-inf"))
            if seen is None or seen[0] != st.signature:
                self.pending[name] = (st.signature, now)
            elif now - seen[1] >= self.cfg.settle_seconds and "md5:" + name not in self.rt.busy:
                if latest is None or latest.state == "failed":
                    fresh.append(self._offer(name, st, ""))
                else:
                    self._hash(name, st.signature)  # maybe only touched: compare before sending
        self._hash_entries(fresh)
        # Look again when the first pending entry may have settled (entries being hashed wait for that).
        deadlines = [since + self.cfg.settle_seconds for since in (s[1] for s in self.pending.values())]
        deadlines = [d for d in deadlines if d > now]
        if deadlines:
            self.next_scan = min(self.next_scan, min(deadlines))

    def _hash(self, name: str, signature: str) -> None:
        path = self.path(name)

        def work() -> tuple[str, EntryStat]:
            return md5_entry(path), stat_entry(path)

        def done(result: tuple[str, EntryStat] | None, error: BaseException | None) -> None:
            if error is not None:
                log.warning("%s: cannot read it (%s); will look again", name, error)
                self.pending.pop(name, None)
                return
            md5, st = result
            if st.signature != signature:
                self.pending[name] = (st.signature, time.time())  # changed while hashing: settle again
                return
            latest = self.state.latest_by_name(name)
            if latest is not None and latest.md5 == md5 and latest.state != "failed":
                self.state.update(latest, signature=st.signature)  # touched, same content: nothing to send
                return
            self._offer(name, st, md5)

        self.rt.submit("hash", "md5:" + name, work, done)

    def _offer(self, name: str, st: EntryStat, md5: str) -> Entry:
        """Record a new version of `name` and offer it (md5 "": not hashed yet; see _hash_entries)."""
        entry = Entry(
            id=new_entry_id(),
            name=name,
            kind=st.kind,
            size=st.size,
            files=st.files,
            md5=md5,
            state="offered",
            peer=CENTRAL,
            signature=st.signature,
        )
        # Older versions of this name not yet sent would now send the new content under the
        # old md5: withdraw them (one already pushed and being verified goes on).
        for older in self.state.by_name(name, *UNSENT):
            self._withdraw(older, "superseded by a newer version")
        self.state.insert(entry)
        self.send(CENTRAL, "offer", entry.id, name=name, kind=st.kind, size=st.size, files=st.files)
        self.pending.pop(name, None)
        log.info(
            "%s: offered (%s, %d bytes, %d files%s)",
            name,
            st.kind,
            st.size,
            st.files,
            f", md5 {md5}" if md5 else "",
        )
        return entry

    def _hash_entries(self, entries: list[Entry]) -> None:
        """md5 of offered entries while they wait for admission and while they are pushed."""
        for group in hash_groups(entries):
            self._hash_group(group)

    def _hash_group(self, group: list[Entry]) -> None:
        def work() -> list[tuple[str, EntryStat] | BaseException]:
            results: list[tuple[str, EntryStat] | BaseException] = []
            for entry in group:
                path = self.path(entry.name)
                try:
                    results.append((md5_entry(path), stat_entry(path)))
                except Exception as e:  # this entry only; the others of the group go on
                    results.append(e)
            return results

        def done(results: list | None, error: BaseException | None) -> None:
            for entry, result in zip(group, results or [error] * len(group)):
                try:
                    with self.state.savepoint():
                        self._entry_hashed(entry, result)
                except Exception:
                    log.exception("%s: bug while recording its md5", entry.name)

        self.rt.submit("hash", ["md5:" + e.id for e in group], work, done)

    def _entry_hashed(self, entry: Entry, result: tuple[str, EntryStat] | BaseException) -> None:
        now_entry = self.state.get(entry.id)
        if now_entry.state == "superseded" or now_entry.md5:
            return
        if not isinstance(result, BaseException) and result[1].signature == entry.signature:
            self.state.update(now_entry, md5=result[0])
            log.debug("%s: md5 %s", entry.name, result[0])  # INFO gives it in the "delivered" line
            if now_entry.state == "pushed":
                self._sent(now_entry)
        elif now_entry.state in UNSENT:
            # Changed (or gone) since it was offered: what is being pushed is not what settled.
            # The scan offers the new content as a new version.
            why = f"cannot read it ({result})" if isinstance(result, BaseException) else "changed while sent"
            self._withdraw(now_entry, why)

    def _sent(self, entry: Entry) -> None:
        """Pushed and hashed: tell central, which verifies what arrived against the md5."""
        self.state.update(entry, state="sent", tries=0, reason=None)
        self.send(entry.peer, "sent", entry.id, attempt=entry.attempt, md5=entry.md5)

    # messages ------------------------------------------------------------------------------------

    def on_message(self, msg: dict[str, Any]) -> None:
        entry = self.entry_for(msg)
        kind = msg["type"]
        if kind == "admit":
            newest = self.state.latest_by_name(entry.name)
            if entry.state == "superseded" or (newest.id != entry.id and entry.state in (*UNSENT, "sent")):
                # Central asks again for a version that has changed since: withdraw it (again).
                self._withdraw(entry, "superseded by a newer version")
            elif entry.state in (*UNSENT, "sent") and msg["attempt"] > entry.attempt:
                self.state.update(
                    entry,
                    state="uploading",
                    attempt=msg["attempt"],
                    path=msg["dest"],
                    tries=0,
                    due=0,
                    reason=None,
                )
                self.transfer_due = True
        elif kind == "wait":
            if entry.state == "offered":
                self.state.update(entry, state="waiting", reason=msg["reason"])
        elif kind == "delivered":
            if entry.state not in ("delivered", "done"):
                script = bool(self.cfg.cleanup_script)
                self.state.update(
                    entry,
                    state="delivered" if script else "done",
                    stored_as=msg["stored_as"],
                    cleanup="pending" if script else None,
                    reason=None,
                    tries=0,
                )
                self.cleanup_due = self.cleanup_due or script
                log.info("%s: delivered (md5 %s, as %s at download)", entry.name, entry.md5, msg["stored_as"])
        elif kind == "failed":
            if entry.state not in ("delivered", "done", "failed", "superseded"):
                self.state.update(entry, state="failed", reason=f"{msg['hop']}: {msg['reason']}")
                log.error(
                    "%s: central reports failure at %s: %s; the data stays here",
                    entry.name,
                    msg["hop"],
                    msg["reason"],
                )
        else:
            from ..errors import MessageError

            raise MessageError(f"upload does not take {kind!r} messages")

    def _withdraw(self, entry: Entry, why: str) -> None:
        if entry.state != "superseded":
            self.state.update(entry, state="superseded", reason=why)
            log.info("%s: version %s withdrawn: %s", entry.name, entry.md5 or entry.id, why)
        self.send(entry.peer, "withdraw", entry.id, reason=why)

    # jobs ----------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if "<scan>" not in self.rt.busy and now >= self.next_wakeup():
            self.changed.clear()
            self.last_scan = now
            self.rt.submit("scan", "<scan>", self._scan, self._scanned)
        due = self.due_for_transfer("uploading", now)
        for batch in self.batches(due, group=lambda e: e.path):
            self._push(batch)
        self.start_due_cleanups(now)

    def _push(self, batch: list[Entry]) -> None:
        """One rsync run for entries admitted into the same directory on central."""
        attempts = {e.id: e.attempt for e in batch}
        names = [e.name for e in batch]
        dest = batch[0].path
        what = f"{names[0]} (attempt {batch[0].attempt})" if len(batch) == 1 else f"{len(batch)} entries"
        log.info("pushing %s to central", what)
        started = time.time()

        def done(result: transfer.Result | None, error: BaseException | None) -> None:
            self.link_result(result)
            ok = error is None and result.ok
            why = "" if ok else repr(error) if error else result.summary()
            for entry in batch:
                now_entry = self.state.get(entry.id)
                if now_entry.state != "uploading" or now_entry.attempt != attempts[entry.id]:
                    continue  # superseded meanwhile
                if ok and now_entry.md5:
                    self._sent(now_entry)
                elif ok:
                    self.state.update(now_entry, state="pushed", tries=0, reason=None)  # md5 to come
                elif not self.retry_later(
                    now_entry,
                    "push to central",
                    why,
                    out_of_space=bool(result and result.out_of_space),
                    link_down=bool(result and result.link_down),
                ):
                    self.send(now_entry.peer, "failed", entry.id, hop="push to central", reason=why[:1900])
            if ok:
                log.info("pushed %s in %.1f s", what, time.time() - started)

        self.rt.submit(
            "transfer",
            list(attempts),
            lambda: transfer.push(self.cfg, str(self.cfg.file_dir), names, dest),
            done,
        )
