"""The upload role: notice settled entries in file_dir, offer them, push them when admitted.

A new name is offered as soon as it has settled and hashed while central admits it and while it is
pushed: the md5 goes with `sent`, once both the push and the hash are done (`pushed`: the push is,
the hash is not yet). A name relayed before is hashed first, so an entry that was only touched
(same content) is not sent again.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import TYPE_CHECKING

from .. import bundles
from .. import destinations as dests
from ..errors import Refused
from ..hops import cleanup, receiptfiles, transfer
from ..hops.checksum import EntryStat
from ..hops.follow import worth_following
from ..messages import Admit, Delivered, Failed, Forget, Greeted, Hello, Open, Wait
from ..metadata import loads, sidecar_of
from ..state import Entry, State
from ..text import shown, some_entries
from . import sidecars
from .adoption import Adopting
from .base import ENTRY, NAME, RESEND, RETRY, Cleanup, Jobs, Key
from .facts import PUSH_TO_CENTRAL
from .listing import data_signature
from .upload_answers import Answers
from .upload_scan import Noticing
from .upload_states import FACTS as FACTS
from .upload_states import FINISHED, FORGETTABLE, TRANSITIONS, UNSENT, Up

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")


class Upload(Answers, Noticing, Adopting):
    mode = "upload"
    WITHDRAWN = (Up.SUPERSEDED,)
    OWNED = (Up.WAITING, Up.UPLOADING, Up.PUSHED, Up.SENT)
    OFFERED, WAITING, SENT = Up.OFFERED, Up.WAITING, Up.SENT
    STATES = Up
    NEW = (Up.OFFERED,)
    TRANSITIONS = TRANSITIONS
    DELIVERED, DONE, FAILED, FORGOTTEN = Up.DELIVERED, Up.DONE, Up.FAILED, Up.FORGOTTEN
    FORGETTABLE = FORGETTABLE
    TRANSFERRING, HOP = Up.UPLOADING, PUSH_TO_CENTRAL
    RETRYABLE = frozenset({Up.FAILED})
    FINISHED = FINISHED

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        self.handlers = {
            Admit: self.on_admit,
            Wait: self.on_wait,
            Delivered: self.on_delivered,
            Failed: self.on_failed,
            Forget: self.on_forget,
            Open: self.on_open,
            Greeted: self.on_greeted,
            Hello: self.on_hello,
        }
        # The second hash every entry gets beside its md5, computed in the same read (docs/checksums.md).
        self.strong = None if cfg.checksum == "md5" else cfg.checksum
        self.retention = receiptfiles.Retention(cfg.receipt_dir, cfg.receipt_keep_days)

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.file_dir, name)

    def cleanup_target(self, entry: Entry) -> tuple[str, str]:
        return entry.name, self.path(entry.name)

    def cleanup_content(self, entry: Entry) -> cleanup.Content:
        # The entry's fingerprint holds its sidecar's: the script's check looks at the data alone.
        return cleanup.Content(entry.kind, entry.md5, data_signature(entry.signature))

    def _cleanup_ended(
        self,
        entry_id: str,
        name: str,
        result: transfer.Result | cleanup.Skipped | None,
        error: BaseException | None,
    ) -> None:
        super()._cleanup_ended(entry_id, name, result, error)
        if self.entry(entry_id).cleanup == Cleanup.DONE:
            self.state.after_commit(functools.partial(self._drop_sidecar, name))

    def _drop_sidecar(self, name: str) -> None:
        """The sidecar goes with its entry: once the cleanup script has removed (or moved) the
        entry, its sidecar is removed too. One left by a script that keeps the entry stays."""
        if os.path.lexists(self.path(name)):
            return
        try:
            if sidecars.remove(str(self.cfg.file_dir), name):
                log.info("%s: its sidecar %s removed with it", name, sidecar_of(name))
        except OSError as e:
            log.warning("%s: cannot remove its sidecar %s: %s", name, sidecar_of(name), e)

    def startup(self) -> None:
        if not self.download_keys:
            log.warning(
                "download_public_key is not set: deliveries are not proven (the cleanup script runs on "
                "central's word, without download's signed receipt); see docs/security.md, "
                "'Delivery receipts'"
            )
        self.resume_cleanups()
        self.sweep_bundles()
        # Hashes cut short by the stop start again.
        self.hash_entries([e for e in self.state.by_state(*UNSENT) if not e.md5])
        self.greet_again()
        self.start_watching()

    # an operator's requests ----------------------------------------------------------------------

    @classmethod
    def refusal(cls, action: str, entry: Entry, latest: bool, *, present: bool = True) -> str | None:
        action, _, to = action.partition(":")
        if to and action == RETRY:
            return (
                f"a destination's failed pull is retried at central, which keeps the verified copy: "
                f"`synkler retry ENTRY --to {to}` there"
            )
        if to and action != RESEND:
            return f"central forgets an entry at one destination: `synkler {action} ENTRY --to {to}` there"
        # Retry (of a failed entry or its cleanup script) and resend act on what the name holds now.
        if action in (RETRY, RESEND) and not latest and entry.state != Up.SUPERSEDED:
            return "a newer version of its name has come since: act on that one"
        if action == RETRY and entry.state == Up.WAITING:
            return (
                "it waits for central to admit it, which central does as soon as there is room (it looks "
                "every second): `synkler retry` on central answers what it needs"
            )
        if action == RESEND:
            why = None
            if entry.state not in (Up.DONE, Up.FORGOTTEN):
                why = f"it is {entry.state}: only a delivered or forgotten entry can be sent again"
        else:
            why = super().refusal(action, entry, latest, present=present)
        sends = action == RESEND or (action == RETRY and entry.state == Up.FAILED)
        if why is None and sends and not present:
            why = "its name is no longer in upload's file_dir: nothing to send"
        return why

    def present(self, entry: Entry) -> bool:
        if entry.kind == bundles.KIND:
            return self.bundle_present(entry)
        return os.path.lexists(self.path(entry.name))

    def peers(self, entry: Entry) -> list[str]:
        owner = self.owner(entry)
        return [owner] if owner else []

    def retry_failed(self, entry: Entry) -> str:
        """The file again as a new entry, and the failed one forgotten at every role (central drops a
        copy it kept, download what it pulled of it)."""
        if entry.kind == bundles.KIND:
            return self.retry_bundle(entry)
        new = self._offer_again(entry)
        if self.entry(entry.id).state != Up.FORGOTTEN:  # one refused for its metadata is already
            self.forget(entry, f"retried by an operator at upload: sent again as entry {new.id}")
        return f"{shown(entry.name)}: sent again as entry {new.id}; the failed entry {entry.id} is forgotten"

    def resend(self, entry: Entry, to: str | None = None) -> str:
        """Send the entry again as a new one, to the destinations it went to (`to`: that one only)."""
        rows = dests.rows(self.state, entry.id)  # {}: routed by central's download_name, as then
        found = rows or dests.of(self.state, entry.id, self.cfg.download_name)
        try:
            again = tuple(dests.acted_on(RESEND, found, to))
        except ValueError as e:
            raise Refused(f"{shown(entry.name)} (entry {entry.id}): cannot resend: {e}") from None
        where = f" to {', '.join(again)}" if rows or to else ""
        if entry.kind == bundles.KIND:
            return self.resend_bundle(entry, again if rows or to else (), where)
        new = self._offer_again(entry, again if rows or to else ())
        return f"{shown(entry.name)}: sent again{where} as entry {new.id} (entry {entry.id} stays as it was)"

    def _offer_again(self, entry: Entry, to: tuple[str, ...] = ()) -> Entry:
        """Offer what the entry's name holds as a new version, without waiting for a change.

        The new version starts from the fingerprint last recorded for the name's content, and is
        hashed on its way, as any new name: if the file changed since (or goes), the hash withdraws
        it and the scan offers what is there now.
        """
        if self.jobs.busy(Key(NAME, entry.name)):
            raise Refused(f"{shown(entry.name)}: upload is reading it right now; ask again in a moment")
        stat = EntryStat(entry.kind, entry.size, entry.files, entry.signature or "")
        new = self._offer(entry.name, stat, None, loads(self.state.metadata(entry.id)), to=to)
        self.hash_entries([new])
        return new

    # jobs ----------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.tick_greeting(now)
        self.tick_scan(now)
        self.reown_gone(now)
        due = self.due_for_transfer(Up.UPLOADING, now)
        for batch in self.batches(due, group=lambda e: (e.peer, e.path, e.kind == bundles.KIND)):
            self._push(batch)
        self.start_due_cleanups(now)
        self.prune_history(now)
        self.retention.tick(now)

    def _push(self, batch: list[Entry]) -> None:
        """One rsync run for entries admitted into the same directory on central."""
        names = [e.name for e in batch]
        what = some_entries(names)
        if len(batch) == 1:
            log.info("%s: pushing to central%s", batch[0].name, push_count(batch[0]))
        else:
            log.info("pushing %s to central", what)
        self.submit_transfer(
            [Key(ENTRY, e.id) for e in batch],
            functools.partial(
                transfer.push,
                self.link_cfg(batch[0]),
                self._source(batch[0]),
                names,
                batch[0].path or "",
                # Central follows big entries by rsync's temporary files: the others are written in
                # place (central's staging is its own; its md5 judges what a cut-off run left).
                inplace=not any(worth_following(e.kind, e.size, e.files) for e in batch),
            ),
            functools.partial(
                self._pushed,
                {e.id: e.attempt for e in batch},
                names[0],
                what,
                self.link_of(batch[0]),
                time.time(),
            ),
            self.link_of(batch[0]),
        )

    def _pushed(
        self,
        attempts: dict[str, int],
        first_name: str,
        what: str,
        link: str,
        started: float,
        result: transfer.Result | None,
        error: BaseException | None,
    ) -> None:
        self.link_result(result, started, link)
        ok = result is not None and result.ok
        why = "" if ok else repr(error) if result is None else result.summary()
        for entry_id, attempt in attempts.items():
            entry = self.entry(entry_id)
            if entry.state != Up.UPLOADING or entry.attempt != attempt:
                continue  # superseded meanwhile
            if ok and entry.md5:
                self.sent(entry)
            elif ok:
                self.move(entry, Up.PUSHED, tries=0, reason=None)  # md5 to come
            elif not self.retry_later(
                entry,
                PUSH_TO_CENTRAL,
                why,
                out_of_space=bool(result and result.out_of_space),
                link_down=bool(result and result.link_down),
                needs_person=bool(result and result.needs_person),
            ):
                self.send_to_owner(entry, Failed(entry.id, self.name, hop=PUSH_TO_CENTRAL, reason=why[:1900]))
        if ok and len(attempts) == 1:
            log.info("%s: pushed in %.1f s", first_name, time.time() - started)
        elif ok:
            log.info("pushed %s in %.1f s", what, time.time() - started)

    def _source(self, entry: Entry) -> str:
        """The directory a batch of entries is pushed from: file_dir, or for bundles their own."""
        return self.bundle_root if entry.kind == bundles.KIND else str(self.cfg.file_dir)


def push_count(entry: Entry) -> str:
    """Which push this is, for the log: nothing for the first, then ' (retry 2)' after local
    failures and ' (upload 2 asked by central)' when central asked for it again (a bad md5)."""
    parts = [f"retry {entry.tries}"] if entry.tries else []
    if entry.attempt > 1:
        parts.append(f"upload {entry.attempt} asked by central")
    return f" ({', '.join(parts)})" if parts else ""
