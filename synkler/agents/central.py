"""The central role: admit offers, verify what upload pushed, hand it to download, expire it.

Central never opens an ssh connection: upload pushes into its spool (synkler.agents.spool) and
download pulls from it. Big files are hashed while they arrive (synkler.agents.followers); the
md5 checks and the looks at what arrives run on workers (synkler.agents.staged). What is admitted
when, and for how long, is decided in synkler.agents.admission.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

from .. import bundles, receipts
from .. import destinations as dests
from ..errors import MessageError, Refused
from ..hops.checksum import alg_of, hop_mismatch, md5_entry
from ..hops.follow import pulled_early, worth_following
from ..linux.fs import remove_tree
from ..messages import (
    ADMITTED,
    ARRIVED,
    GIVEN_UP,
    RELAYED,
    UNADMITTED,
    Admit,
    Corrupt,
    Delivered,
    Failed,
    Fetch,
    Fetched,
    Forget,
    Hello,
    Offer,
    Pushing,
    Sent,
    Wait,
    Withdraw,
)
from ..metadata import canonical, requirement_problems
from ..state import Entry, Request, State
from ..text import count as counted
from ..text import shown, some_entries
from . import admission, fanout, waits
from .admission import ABOVE_RESERVE, MAX_ADMITTED_PER_AGENT, ROOM_WAIT, Offers, Room, admission_pass
from .base import (
    ENTRY,
    FORGET,
    GIVE_UP_ADVICE,
    RECHECK,
    REOFFER,
    RETRY,
    Jobs,
    Key,
    Status,
    Transitions,
    hash_groups,
)
from .central_pool import PoolCentral
from .facts import (
    ADMISSION_AT_CENTRAL,
    BUNDLE_AT_CENTRAL,
    METADATA_AT_CENTRAL,
    PULL,
    PUSH,
    STORE_AT_CENTRAL,
    UPLOAD_TO_CENTRAL,
    facts,
    hop,
)
from .followers import Followers
from .pools import Pool
from .spool import Arrival, PlaceRefused, Spool
from .staged import Checked, Oversize, ToCheck, check_pushed, measure_arrivals

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

ADMIT_RECHECK = 1.0  # seconds: waiting entries are looked at again this often (free space changes)
SWEEP_INTERVAL = 60.0  # seconds between looks for stale partial files


class Mid(Status):
    """Central's entry states."""

    WAITING = "waiting"
    UPLOADING = "uploading"
    VERIFYING = "verifying"
    DOWNLOADING = "downloading"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    FAILED = "failed"
    FORGOTTEN = "forgotten"


# An operator may forget an entry not delivered yet (at any role: the forget is passed on); a failed
# entry is delivered after all if download, retried there, gets the verified copy central kept.
FORGETTABLE = frozenset({Mid.WAITING, Mid.UPLOADING, Mid.VERIFYING, Mid.DOWNLOADING, Mid.FAILED})
TRANSITIONS: Transitions = {
    Mid.WAITING: frozenset({Mid.UPLOADING, Mid.WITHDRAWN, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.UPLOADING: frozenset({Mid.VERIFYING, Mid.WAITING, Mid.WITHDRAWN, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.VERIFYING: frozenset({Mid.DOWNLOADING, Mid.UPLOADING, Mid.WITHDRAWN, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.DOWNLOADING: frozenset({Mid.DELIVERED, Mid.WAITING, Mid.FAILED, Mid.FORGOTTEN}),
    Mid.DELIVERED: frozenset({Mid.EXPIRED}),
    Mid.EXPIRED: frozenset(),
    Mid.WITHDRAWN: frozenset(),
    # failed -> downloading: an operator's retry at the destinations where it failed
    Mid.FAILED: frozenset({Mid.DOWNLOADING, Mid.DELIVERED, Mid.FORGOTTEN}),
    # forgotten -> waiting: in a pool, an entry re-owned from this central and offered to it again
    Mid.FORGOTTEN: frozenset({Mid.WAITING}),
}
IN_FLIGHT = (Mid.WAITING, Mid.UPLOADING, Mid.VERIFYING)  # their staged copies may still be needed
ARRIVALS = Key("arrivals")  # the look at what has arrived of admitted entries
KEEP_STORED = (Mid.VERIFYING, Mid.DOWNLOADING, Mid.DELIVERED, Mid.FAILED)  # their stored/ copies stay
# The states an entry ends in at this role (pruned from the history keep_history_days later).
FINISHED = (Mid.EXPIRED, Mid.WITHDRAWN, Mid.FORGOTTEN)
# What observers know of these states (synkler.agents.facts). Delivered is finished for the relay:
# only its expiry is left (the history keeps it until then: Central.FINISHED).
FACTS = facts(
    "central",
    Mid,
    finished=(Mid.DELIVERED, *FINISHED),
    failed=Mid.FAILED,
    receiving=Mid.UPLOADING,
    hashing=[Mid.VERIFYING],
    transferring=[],
    given_up=(Mid.FAILED, Mid.FORGOTTEN, Mid.WITHDRAWN, Mid.EXPIRED),
    disk_waits=(ROOM_WAIT, ABOVE_RESERVE),
    hops=(
        # admitted -> md5 verified
        hop(PUSH, [Mid.UPLOADING], [Mid.DOWNLOADING], during=[Mid.UPLOADING, Mid.VERIFYING]),
        # verified -> download confirmed it (also after it failed here, when download retried it)
        hop(PULL, [Mid.DOWNLOADING], [Mid.DELIVERED], during=[Mid.DOWNLOADING, Mid.FAILED]),
    ),
)


class Central(PoolCentral):
    mode = "central"
    TAKING, WAITING = IN_FLIGHT, Mid.WAITING
    SETTLED = (Mid.DELIVERED, Mid.EXPIRED)
    STATES = Mid
    NEW = (Mid.WAITING,)
    TRANSITIONS = TRANSITIONS
    FORGOTTEN = Mid.FORGOTTEN
    FORGETTABLE = FORGETTABLE
    FINISHED = FINISHED
    # What a standby upload agent that says `hello` is told of its entries (`open`), by state.
    HELD = {
        Mid.WAITING: UNADMITTED,
        Mid.UPLOADING: ADMITTED,
        Mid.VERIFYING: ARRIVED,
        Mid.DOWNLOADING: ARRIVED,
        Mid.DELIVERED: RELAYED,
        Mid.EXPIRED: RELAYED,
        Mid.FAILED: GIVEN_UP,
    }
    UPLOADING, STORED = Mid.UPLOADING, (Mid.DOWNLOADING, Mid.FAILED)

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        self.handlers = {
            Offer: self.on_offer,
            Sent: self.on_sent,
            Fetched: self.on_fetched,
            Corrupt: self.on_corrupt,
            Withdraw: self.on_withdraw,
            Failed: self.on_failed,
            Forget: self.on_forget,
            Hello: self.on_hello,
        }
        self.spool = Spool(self.cfg)
        self.followers = Followers(self.cfg.max_transfers)
        self.next_sweep = 0.0
        self.next_admit_check = 0.0
        self.admit_due = self.verify_due = True
        self.overtaken: dict[str, int] = {}  # waiting entry id -> bytes admitted past it (see _admit_waiting)
        # waiting entry id -> when it was first seen waiting its turn, not told yet (None: told)
        self.in_line: dict[str, float | None] = {}
        self.offers = Offers(state, (*IN_FLIGHT, Mid.FAILED))
        self.lease = cfg.admission_lease_minutes * 60
        self.next_arrival_look = 0.0
        # download name -> its pinned public key (checked by the config)
        self.download_keys = {d: receipts.load_public_key(k) for d, k in cfg.download_keys().items()}

    def startup(self) -> None:
        unpinned = [d for d in self.cfg.destinations if d not in self.download_keys]
        if unpinned and self.download_keys:
            log.warning(
                "download_public_key pins no key for %s: deliveries there are not proven", ", ".join(unpinned)
            )
        if not self.download_keys:
            log.warning(
                "download_public_key is not set: deliveries are not proven (a `fetched` is believed "
                "without download's signed receipt); see docs/security.md, 'Delivery receipts'"
            )
        self._reconcile()

    def _reconcile(self) -> None:
        in_flight = {(e.peer or "", e.name) for e in self.state.by_state(*IN_FLIGHT)}

        def keep_stored(entry_id: str) -> str | None:
            entry = self.state.get(entry_id)
            if entry is None:
                return "unknown entry"
            return None if entry.state in KEEP_STORED else entry.state

        self.spool.reconcile(in_flight, keep_stored)
        for entry in self.state.by_state(Mid.UPLOADING, due_before=0):  # admitted by an older version
            self.state.update(entry, due=time.time() + self.lease)
        self._follow_more()  # pushes cut short by the stop start again

    def shutdown(self) -> None:
        self.followers.stop_all()

    # hashing big files while they arrive ----------------------------------------------------------

    def _follow(self, entry: Entry) -> None:
        """Hash a big file (or a directory of them) while upload pushes it, if fewer than
        max_transfers are followed already."""
        self._unfollow(entry.id)
        if not worth_following(entry.kind, entry.size, entry.files):
            return
        link = (
            functools.partial(self.spool.link_growing, entry.id)
            if pulled_early(entry.kind, entry.size)
            else None
        )
        start = functools.partial(
            self.followers.start, entry.id, self.spool.staging(entry), entry.name, entry.kind, link
        )
        self.state.after_commit(start)

    def _follow_more(self) -> None:
        """Follow uploading big files that have no follower yet, while there are free followers
        (one that gave up waiting for its push frees its place)."""
        for entry_id in self.followers.ended():
            self._unfollow(entry_id)
        free = self.followers.free()
        if free <= 0:
            return
        for entry in self.state.by_state(Mid.UPLOADING):
            if (
                free > 0
                and worth_following(entry.kind, entry.size, entry.files)
                and entry.id not in self.followers
            ):
                self._follow(entry)
                free -= 1

    def _unfollow(self, entry_id: str) -> None:
        self.followers.stop(entry_id)
        self.spool.drop_growing(entry_id)

    # messages ------------------------------------------------------------------------------------

    def on_offer(self, msg: Offer) -> None:
        if msg.sender in (self.cfg.central_name, self.cfg.download_name, *self.cfg.destinations):
            raise MessageError(f"offer from {msg.sender!r}: only upload agents offer")
        known = self.state.get(msg.entry)
        if self.pool_offer(msg, known):
            return
        if known is not None:
            if known.peer != msg.sender:
                raise MessageError(
                    f"offer of entry {msg.entry} from {msg.sender!r}: {known.peer!r} offered it"
                )
            return  # a duplicate offer: already handled
        if msg.kind == bundles.KIND and (why := fanout.bundle_refusal(self.cfg)) is not None:
            # Not recorded: upload takes the bundle apart and offers its files one by one.
            hop = BUNDLE_AT_CENTRAL
            self.send(msg.sender, Failed(msg.entry, self.name, hop=hop, reason=why, epoch=msg.epoch))
            log.info("%s: not taken from %s: %s", msg.name, msg.sender, why)
            return
        refused = self.offers.refusal(msg.sender) or fanout.unknown(self.cfg, msg.to)
        if refused is not None:  # not recorded: a flood of offers costs no rows
            self.state.after_commit(functools.partial(self.observer.refused_offer, msg.sender))
            self.send(msg.sender, Failed(msg.entry, self.name, hop=ADMISSION_AT_CENTRAL, reason=refused))
            return
        entry = self.create(self.entry_from(msg, Mid.WAITING))
        self.took(entry, msg)
        self.state.put_metadata(entry.id, canonical(msg.meta) if msg.meta else None)
        lacks = requirement_problems(msg.meta, self.cfg.require_metadata)
        if lacks:
            self._refuse_metadata(entry, lacks)
            return
        if msg.to:
            dests.route(self.state, entry.id, msg.to)  # an operator's resend: in place of the routes'
        self.admit_due = True
        log.debug("%s: offered by %s (%d bytes)", entry.name, entry.peer, entry.size)
        # admitted (or told to wait) by the tick that follows, in offer order

    def _refuse_metadata(self, entry: Entry, lacks: list[str]) -> None:
        """An entry without the metadata central requires (require_metadata) is refused at once: it
        stays at upload, failed with the reason, until its metadata is added (upload then offers it
        again as a new entry and forgets this one)."""
        why = f"lacks the metadata central requires: {'; '.join(lacks)}"[:1900]
        self.move(entry, Mid.FAILED, reason=f"{METADATA_AT_CENTRAL}: {why}")
        self.send(entry.peer or "", Failed(entry.id, self.name, hop=METADATA_AT_CENTRAL, reason=why))
        log.error("%s: refused: %s. %s", entry.name, why, GIVE_UP_ADVICE[METADATA_AT_CENTRAL])

    def on_sent(self, msg: Sent) -> None:
        entry = self.entry_for(msg)
        if entry.state == Mid.UPLOADING and msg.attempt == entry.attempt:
            self.move(entry, Mid.VERIFYING, md5=msg.md5, due=0)
            self.state.put_checksum(entry.id, msg.checksum)
            self.verify_due = True

    def on_fetched(self, msg: Fetched) -> None:
        entry, row = self._at_destination(msg)
        if row.state == dests.FETCHED and msg.receipt and entry.state != Mid.FORGOTTEN:
            self._delivered_again(entry, row, msg)
            return
        if entry.state in (Mid.DELIVERED, Mid.EXPIRED, Mid.FORGOTTEN) or row.state in dests.ENDED:
            return  # a copy of one taken already, or an entry an operator forgot meanwhile
        # Download has a say only over an entry central asked it to fetch: one downloading, or one
        # failed since (`path` is set with the fetch): download, retried by an operator, got the
        # verified copy central kept. Not one that failed before it was stored.
        if not (entry.state == Mid.DOWNLOADING or (entry.state == Mid.FAILED and entry.path)):
            if self.cfg.uploads:
                # A pool: download's answer to this central's fetch of an earlier ownership, which
                # ended (re-owned) and began again here since. The fetch of this one is still to come.
                log.info(
                    "%s: fetched of an earlier ownership (it is %s here now): ignored",
                    entry.name,
                    entry.state,
                )
                return
            raise MessageError(
                f"fetched for entry {entry.id}, which is {entry.state} at central: "
                "central never asked download to fetch it"
            )
        self._check_receipt(entry, msg)
        dests.mark(self.state, entry.id, msg.sender, dests.FETCHED, stored_as=msg.stored_as)
        if msg.receipt:
            self.state.put_receipt(entry.id, msg.sender, msg.receipt)
        self._pass_on(entry, msg)
        rest = dests.waiting_for(dests.of(self.state, entry.id, self.cfg.download_name))
        if rest:
            log.info(
                "%s: delivered to %s as %s; central copy kept for %s",
                entry.name,
                msg.sender,
                msg.stored_as,
                ", ".join(rest),
            )
            return
        keep = self.cfg.keep_minutes * 60
        self.move(entry, Mid.DELIVERED, stored_as=msg.stored_as, due=time.time() + keep, reason=None)
        log.info(
            "%s: delivered to %s as %s; central copy kept %g min",
            entry.name,
            msg.sender,
            msg.stored_as,
            self.cfg.keep_minutes,
        )

    def _at_destination(self, msg: Fetched | Corrupt | Failed) -> tuple[Entry, dests.Row]:
        """The entry a download's message is about, and that download's row: only a destination of
        the entry has a say over it (MessageError otherwise)."""
        rows = dests.of(self.state, msg.entry, self.cfg.download_name)
        entry = self.entry_for(msg, *rows)
        row = rows[msg.sender]
        if not row.updated:  # an entry of an older synkler, which kept no rows: as its state says
            if entry.state == Mid.DOWNLOADING or (entry.state == Mid.FAILED and entry.path):
                row = row._replace(state=dests.FETCHING)
            elif entry.state in (Mid.DELIVERED, Mid.EXPIRED):
                row = row._replace(state=dests.FETCHED, stored_as=entry.stored_as)
        return entry, row

    def _delivered_again(self, entry: Entry, row: dests.Row, msg: Fetched) -> None:
        """A destination's receipt of an entry it fetched, again (`synkler resend` on download, or a
        copy): kept, and passed on to upload, which may have refused the first as not proven (its key
        was pinned after the delivery); upload takes it once."""
        if msg.stored_as != row.stored_as:
            raise MessageError(
                f"fetched for entry {entry.id} as {msg.stored_as!r}: it was delivered as {row.stored_as!r}"
            )
        self._check_receipt(entry, msg)
        self.state.put_receipt(entry.id, msg.sender, msg.receipt)
        self._pass_on(entry, msg)
        log.info("%s: %s's receipt came again; passed on to %s", entry.name, msg.sender, entry.peer)

    def _pass_on(self, entry: Entry, msg: Fetched) -> None:
        """Tell upload of a destination's `fetched`, with its receipt and receipt document."""
        where = msg.sender if self.cfg.routes else ""  # a relay without routes: as before (download_name)
        said = dict(stored_as=msg.stored_as, receipt=msg.receipt, proof=msg.proof, destination=where)
        self.send(entry.peer or "", Delivered(entry.id, self.name, **said))

    def _check_receipt(self, entry: Entry, msg: Fetched) -> None:
        """With download's key pinned, a `fetched` acts only with download's signed receipt for this
        very entry and content (ReceiptError, a MessageError: dead-lettered, nothing done)."""
        key = self.download_keys.get(msg.sender)
        if key is None:
            if self.download_keys:
                raise receipts.ReceiptError(
                    f"fetched for entry {entry.id} from {msg.sender!r}, whose key download_public_key does "
                    "not pin: not believed"
                )
            return
        if not msg.receipt:
            raise receipts.ReceiptError(f"fetched for entry {entry.id} without a receipt: not believed")
        expected = self._expected(entry, msg.sender, msg.stored_as, msg.outcome)
        receipts.check(msg.receipt, key, expected)

    def _expected(
        self, entry: Entry, destination: str, stored_as: str, outcome: str = ""
    ) -> receipts.Receipt:
        return receipts.for_entry(self.cfg.id, entry, destination, stored_as, outcome=outcome)

    def on_corrupt(self, msg: Corrupt) -> None:
        entry, _ = self._at_destination(msg)
        if entry.state == Mid.DOWNLOADING and not self.jobs.busy(Key(RECHECK, entry.id)):
            log.warning(
                "%s: download got md5 %s instead of %s; checking central's copy",
                entry.name,
                msg.got,
                entry.md5,
            )
            self._recheck(entry)

    def on_withdraw(self, msg: Withdraw) -> None:
        entry = self.entry_for(msg)
        if entry.state in IN_FLIGHT:
            self.move(entry, Mid.WITHDRAWN, reason=msg.reason)
            self._unfollow(entry.id)
            self.spool.drop_staged(entry)
            self.admit_due = True  # its name and its room are free for the newer version
            log.info("%s: withdrawn by %s: %s", entry.name, msg.sender, msg.reason)

    def on_failed(self, msg: Failed) -> None:
        known = self.state.get(msg.entry)
        rows = dests.of(self.state, msg.entry, self.cfg.download_name)
        entry = self.entry_for(msg, (known.peer if known else None) or "", *rows)
        if msg.sender != entry.peer:
            self._failed_at(*self._at_destination(msg), msg)
            return
        if entry.state in (Mid.DELIVERED, Mid.EXPIRED, Mid.FAILED, Mid.WITHDRAWN, Mid.FORGOTTEN):
            return  # ended already (or failed: told once)
        # Upload has a say while it sends the entry.
        if entry.state not in IN_FLIGHT:
            raise MessageError(
                f"failed for entry {entry.id} from {msg.sender!r} while it is {entry.state} at central: "
                f"{msg.sender!r} has no say over it now"
            )
        reason = f"{msg.hop}: {msg.reason}"
        self.move(entry, Mid.FAILED, reason=reason)
        self._unfollow(entry.id)
        log.error("%s: %s reports failure: %s", entry.name, msg.sender, reason)

    def _failed_at(self, entry: Entry, row: dests.Row, msg: Failed) -> None:
        """A destination gave up its pull: its row fails (the others go on), the entry fails (a person
        must look; central keeps its verified copy), and upload is told."""
        ended = (Mid.FAILED, Mid.DELIVERED, Mid.EXPIRED, Mid.WITHDRAWN, Mid.FORGOTTEN)
        if row.state in (dests.FAILED, *dests.ENDED) or (
            row.state != dests.FETCHING and entry.state in ended
        ):
            return  # ended already (or failed: told once)
        if row.state != dests.FETCHING or entry.state not in (Mid.DOWNLOADING, Mid.FAILED):
            raise MessageError(
                f"failed for entry {entry.id} from {msg.sender!r} while it is {entry.state} at central: "
                f"{msg.sender!r} has no say over it now"
            )
        reason = f"{msg.hop}: {msg.reason}"
        dests.mark(self.state, entry.id, msg.sender, dests.FAILED, reason=reason)
        if entry.state == Mid.DOWNLOADING:
            self.move(entry, Mid.FAILED, reason=reason)
        self._unfollow(entry.id)
        log.error("%s: %s reports failure: %s", entry.name, msg.sender, reason)
        where = msg.sender if self.cfg.routes else ""
        self.send(
            entry.peer or "", Failed(entry.id, self.name, hop=msg.hop, reason=msg.reason, destination=where)
        )

    # an operator's requests ----------------------------------------------------------------------

    @classmethod
    def refusal(cls, action: str, entry: Entry, latest: bool, *, present: bool = True) -> str | None:
        base, _, destination = action.partition(":")
        stored = entry.state == Mid.DOWNLOADING or (entry.state == Mid.FAILED and entry.path)
        if base == RETRY and entry.state == Mid.FAILED and entry.path:  # where its pulls failed
            return None
        if destination:  # at one destination: forget, once central asked it to fetch; retry, above
            if base not in (FORGET, RETRY):
                return f"only upload sends an entry again: `synkler {base} ENTRY --to {destination}` there"
            if base == FORGET and stored:
                return None
            if base == FORGET:
                return f"it is {entry.state}: only a stored, undelivered entry is forgotten at a destination"
            return f"it is {entry.state}: only an entry that failed at a destination is retried there"
        if action == RETRY and entry.state == Mid.WAITING:
            return None  # looked at again now (it is every second anyway)
        if action == RETRY:
            return (
                "central does not retry: run `synkler retry` on upload (it sends the entry again), or on "
                "download for a failed pull (it pulls central's verified copy again)"
            )
        return super().refusal(action, entry, latest, present=present)

    def on_request(self, request: Request) -> str:
        action, _, destination = request.action.partition(":")
        if not destination:
            return super().on_request(request)
        entry = self.state.get(request.entry)
        if entry is None:
            raise Refused(f"the central agent has no entry {request.entry}")
        why = self.refusal(request.action, entry, True)
        if why is not None:
            raise Refused(f"{shown(entry.name)} (entry {entry.id}): cannot {action} at {destination}: {why}")
        if action == RETRY:
            return self._retry_at(entry, destination)
        return self._forget_at(entry, destination)

    def _forget_at(self, entry: Entry, destination: str) -> str:
        """`forget --to DEST`: the entry ends at that destination only (it is told, and so is upload,
        which stops waiting for its receipt); once every other destination has fetched it, it is
        delivered."""
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        what = f"{shown(entry.name)} (entry {entry.id})"
        if destination not in rows:
            raise Refused(f"{what} does not go to {destination!r} (it goes to {', '.join(rows)})")
        if rows[destination].state in dests.ENDED:
            raise Refused(f"{what}: {destination} has {rows[destination].state} it already")
        reason = f"forgotten at {destination} by an operator at central"
        dests.mark(self.state, entry.id, destination, dests.FORGOTTEN, reason=reason)
        self.send(destination, Forget(entry.id, self.name, reason=reason))
        self.send(entry.peer or "", Forget(entry.id, self.name, reason=reason, destination=destination))
        log.info("%s: %s", entry.name, reason)
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        if dests.all_fetched(rows):
            keep = self.cfg.keep_minutes * 60
            self.move(entry, Mid.DELIVERED, due=time.time() + keep, reason=None)
            return f"{what} is forgotten at {destination}; every other destination has it: delivered"
        if not dests.waiting_for(rows):  # forgotten everywhere
            self.forget(entry, reason)
            return f"{what} is forgotten at every destination, so here too; its peers are told"
        return f"{what} is forgotten at {destination}; still waiting for {', '.join(dests.waiting_for(rows))}"

    def _retry_at(self, entry: Entry, destination: str | None) -> str:
        """`retry [--to DEST]` of an entry that failed at a destination: central asks it (without
        `--to`: every destination where it failed) to pull the verified copy it kept again; the
        others are not touched. The entry is on its way again once no destination has failed."""
        what = f"{shown(entry.name)} (entry {entry.id})"
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        try:
            chosen = dests.acted_on(RETRY, rows, destination)
        except ValueError as e:
            raise Refused(f"{what}: cannot retry: {e}") from None
        fetch = fanout.fetch_of(self.state, self.name, entry, again="retried by an operator at central")
        for dest in chosen:
            self.send(dest, fetch)
            dests.mark(self.state, entry.id, dest, dests.FETCHING)
        rows = dests.of(self.state, entry.id, self.cfg.download_name)
        failed = [d for d, r in rows.items() if r.state == dests.FAILED]
        if not failed:
            self.move(entry, Mid.DOWNLOADING, reason=None)
        log.info("%s: retried by an operator at %s", entry.name, ", ".join(chosen))
        others = [d for d in rows if d not in chosen]
        told = f"; {', '.join(others)} not touched" if others else ""
        return f"{what}: {', '.join(chosen)} asked to pull central's verified copy again{told}"

    def retry(self, entry: Entry) -> str:
        """A waiting entry: admitted now if there is room, else the answer says what it waits for; one
        that failed at its destinations: asked again there (_retry_at)."""
        if entry.state == Mid.FAILED:
            return self._retry_at(entry, None)
        self._admit_waiting()
        now = self.entry(entry.id)
        if now.state != Mid.WAITING:
            return f"{shown(entry.name)} (entry {entry.id}): admitted now"
        return f"{shown(entry.name)} (entry {entry.id}): still waits: {shown(now.reason or ROOM_WAIT)}"

    def retry_waiting(self, cause: str) -> str:
        """Central's entries wait only for room (a cause of `disk`): admitted now where there is."""
        if cause not in (waits.DISK, waits.ANY):
            return f"no entry at central waits for {waits.what(cause)}: central's entries wait only for room"
        before = [e.id for e in self.state.by_state(Mid.WAITING)]
        self._admit_waiting()
        still = {e.id for e in self.state.by_state(Mid.WAITING)}
        admitted = [e.name for e in map(self.entry, before) if e.state == Mid.UPLOADING]
        if not before:
            return "no entry at central waits for room"
        told = f"{some_entries([shown(n) for n in admitted])} admitted now" if admitted else "none admitted"
        return f"{told}; {len(still)} still waiting for room (`synkler status` says what each needs)"

    def peers(self, entry: Entry) -> list[str]:
        return [entry.peer or "", *dests.of(self.state, entry.id, self.cfg.download_name)]

    def drop(self, entry: Entry) -> None:
        """Its copies go: the staged one (a running push may still write there: the sweep removes that a
        minute later, as for a withdrawn version) and the stored one. A running md5 check or expiry
        finds the entry forgotten and records nothing."""
        self._unfollow(entry.id)
        if entry.state in (Mid.UPLOADING, Mid.VERIFYING):  # only then is the staging path this version's
            self.spool.drop_staged(entry)
            self.spool.drop_partial(entry)
        self.spool.drop_stored(entry.id)
        self.admit_due = True  # its room and its name are free

    # admission -----------------------------------------------------------------------------------

    def _admit_waiting(self, now: float | None = None) -> None:
        """Admit waiting entries, oldest first, while there is room (synkler.agents.admission); tell
        the others why they wait. What has passed a big entry is counted in memory: a restart of
        central lets as much pass again."""
        waiting = self.state.oldest_per_peer(Mid.WAITING, MAX_ADMITTED_PER_AGENT)
        self.overtaken = {e.id: self.overtaken.get(e.id, 0) for e in waiting}
        self.in_line = {e.id: self.in_line[e.id] for e in waiting if e.id in self.in_line}
        self.short_of_space = False
        if not waiting:
            return
        active = self.state.by_state(Mid.UPLOADING, Mid.VERIFYING)
        space = self.spool.room() - sum(e.size for e in active if e.state == Mid.UPLOADING)
        room = Room(space, self.spool.capacity(), self.cfg.free_percent)
        now = time.time() if now is None else now
        for verdict in admission_pass(waiting, active, room, self.overtaken, now):
            entry, why = verdict.entry, verdict.why
            if verdict.never:
                self._give_up(entry, ADMISSION_AT_CENTRAL, why or "", at_once=True)
            elif why is None:
                self._admit(entry)
            else:
                self.short_of_space |= ABOVE_RESERVE in why  # it waits for room above the reserve
                self._waits(entry, why, verdict.turn, now)

    def _waits(self, entry: Entry, why: str, turn: bool, now: float) -> None:
        """Record why an entry waits and tell its upload agent, once per reason; one that only waits
        its turn behind the caps is told only once it has waited TURN_TELL seconds (in a burst, most
        are admitted before). After a restart of central such an entry may be told twice: upload
        takes a `wait` again as a no-op."""
        if not turn:
            self.in_line.pop(entry.id, None)
            if entry.reason != why:
                self.state.update(entry, reason=why)
                self._tell_wait(entry, why)
            return
        if entry.reason != why:
            self.state.update(entry, reason=why)
            self.in_line[entry.id] = now  # told once this reason has lasted
            return
        first = self.in_line.setdefault(entry.id, now)  # after a restart: counted from now
        if first is not None and now - first >= admission.TURN_TELL:
            self.in_line[entry.id] = None
            self._tell_wait(entry, why)

    def _tell_wait(self, entry: Entry, why: str) -> None:
        self.send(entry.peer or "", Wait(entry.id, self.name, reason=why))
        log.info("%s: waiting: %s", entry.name, why)

    def _admit(self, entry: Entry) -> None:
        try:
            self.spool.prepare(entry)
        except PlaceRefused as e:
            # A person must look (someone planted it, or changed its owner); nothing is pushed there.
            self.move(entry, Mid.FAILED, reason=f"{ADMISSION_AT_CENTRAL}: {e}")
            failed = Failed(entry.id, self.name, hop=ADMISSION_AT_CENTRAL, reason=str(e))
            self.send(entry.peer or "", failed)
            log.error("%s: %s; giving up. Upload keeps its copy; %s", entry.name, e, REOFFER)
            return
        lease_ends = time.time() + self.lease
        entry = self.move(entry, Mid.UPLOADING, attempt=entry.attempt + 1, due=lease_ends, reason=None)
        to = fanout.route(self.state, self.cfg, entry)  # frozen at the first admission
        self.send(entry.peer or "", self.admit_for(entry))
        if pulled_early(entry.kind, entry.size):
            path = self.spool.growing(entry.id)
            for dest in to:
                self.send(dest, Pushing(entry.id, self.name, size=entry.size, path=path))
        self._follow(entry)

    def admit_for(self, entry: Entry) -> Admit:
        """The `admit` of the entry's current attempt (its destinations frozen already)."""
        to = tuple(dests.rows(self.state, entry.id)) if self.cfg.routes else ()
        return Admit(entry.id, self.name, attempt=entry.attempt, dest=self.spool.staging(entry), to=to)

    def fetch_for(self, entry: Entry) -> Fetch:
        """The `fetch` of the entry's verified, stored copy."""
        return fanout.fetch_of(self.state, self.name, entry)

    # jobs ----------------------------------------------------------------------------------------

    def look_again(self) -> None:
        self.admit_due = self.verify_due = True

    def tick(self, now: float) -> None:
        # The loop ticks after every message batch and finished job: look at the (possibly
        # thousands of) waiting and verifying entries only when something may have changed.
        if self.admit_due or now >= self.next_admit_check:
            self.admit_due, self.next_admit_check = False, now + ADMIT_RECHECK
            self._admit_waiting(now)
        if now >= self.next_sweep:
            self.next_sweep = now + SWEEP_INTERVAL
            self.spool.sweep(now, {(e.peer or "", e.name) for e in self.state.by_state(*IN_FLIGHT)})
            self._follow_more()
        if self.verify_due:
            self.verify_due = False
            ready = (
                self.entry(entry_id)
                for entry_id, _ in self.state.ids_by_state(Mid.VERIFYING)
                if not self.jobs.busy(Key(ENTRY, entry_id))
            )
            for group in hash_groups(ready):
                self._verify(group)
        for entry in self.state.by_state(Mid.DELIVERED, due_before=now):
            if not self.jobs.busy(Key(ENTRY, entry.id)):
                self._expire(entry)
        if now >= self.next_arrival_look and not self.jobs.busy(ARRIVALS):
            self._look_at_arrivals(now)
        self.prune_history(now)

    # what arrives of admitted entries: more bytes than offered, and leases --------------------------

    def _look_at_arrivals(self, now: float) -> None:
        """Measure what has arrived of each admitted entry, by one job: more bytes than offered fail
        the entry as soon as they are seen; a lease that ended lapses if nothing arrived meanwhile,
        neither of it nor of any other entry of its upload agent (an agent that is pushing works
        through its admitted entries a few transfer runs at a time: they wait their turn)."""
        uploading = [e for e in self.state.by_state(Mid.UPLOADING) if not self.jobs.busy(Key(ENTRY, e.id))]
        if not uploading:
            self.next_arrival_look = now + admission.ARRIVAL_LOOK
            return
        staging = {e.id: (self.spool.staging(e), e.name) for e in uploading}
        self.jobs.submit(
            Pool.SCAN,  # not Pool.HASH: a look at a big tree never delays an md5 check
            [ARRIVALS],
            functools.partial(measure_arrivals, staging),
            functools.partial(
                self._arrivals_seen, staging, {e.id: e.attempt for e in uploading}, time.monotonic()
            ),
        )

    def _arrivals_seen(
        self,
        staging: dict[str, tuple[str, str]],
        attempts: dict[str, int],
        started: float,
        measured: tuple[dict[str, Arrival], dict[str, float]] | None,
        error: BaseException | None,
    ) -> None:
        # A look costs at most a tenth of the time: a tree of many files is walked less often.
        took = time.monotonic() - started
        self.next_arrival_look = time.time() + max(admission.ARRIVAL_LOOK, 10 * took)
        if measured is None:
            log.error("cannot look at what arrives in central's staging: %r", error)
            return
        arrivals, latest = measured
        now = time.time()
        for entry_id, arrival in arrivals.items():
            entry = self.state.get(entry_id)
            if entry is None or entry.state != Mid.UPLOADING or entry.attempt != attempts[entry_id]:
                continue  # sent, withdrawn or forgotten meanwhile
            too_big = admission.oversize(entry, arrival.size, "seen while it arrived")
            if too_big is not None:
                self._refuse_pushed(entry, too_big)
                continue
            lease_ends = admission.lease_lapsed(entry, latest[staging[entry_id][0]], now, self.lease)
            if lease_ends is None:
                self._lapse(entry)
            elif lease_ends != entry.due:
                self.state.update(entry, due=lease_ends)

    def _refuse_pushed(self, entry: Entry, why: str) -> None:
        """More bytes than offered arrived: a failed hop. What arrived is discarded (a push still
        writing leaves a temporary file that the sweep removes once it stops changing)."""
        self._unfollow(entry.id)
        self.spool.drop_staged(entry)
        self.spool.drop_partial(entry)
        self.admit_due = True
        self._give_up(entry, UPLOAD_TO_CENTRAL, why, at_once=True)

    def _lapse(self, entry: Entry) -> None:
        """Nothing was pushed for an admitted entry within its lease: its slot goes to others, and it
        waits as long again before it is admitted again (counted in `tries`, not as an attempt)."""
        minutes = self.lease / 60
        why = f"admitted, but nothing arrived in {minutes:g} min: admitted again in {minutes:g} min"
        self._unfollow(entry.id)
        self.move(entry, Mid.WAITING, tries=entry.tries + 1, due=time.time() + self.lease, reason=why)
        self.send(entry.peer or "", Wait(entry.id, self.name, reason=why))
        self.admit_due = True
        log.warning("%s: %s (upload agent %s)", entry.name, why, entry.peer)

    def _verify(self, group: list[Entry]) -> None:
        """md5 of the staged copies of a group of entries, by one job (small entries share one:
        one hand-over and one wake-up of the loop instead of one per entry)."""
        items = [
            ToCheck(
                e.id,
                e.name,
                self.spool.staged(e),
                self.spool.stored(e.id),
                e.known_md5(),
                e.size,
                alg_of(self.state.checksum(e.id)),
            )
            for e in group
        ]
        self.jobs.submit(
            Pool.HASH,
            [Key(ENTRY, e.id) for e in group],
            functools.partial(check_pushed, items, self.followers.take),
            functools.partial(self._checked, group),
        )

    def _checked(
        self, group: list[Entry], results: list[Checked | Exception] | None, error: BaseException | None
    ) -> None:
        # Whatever happens below (even a rollback), look at verifying entries and admission again.
        self.verify_due = self.admit_due = True
        if any(worth_following(e.kind, e.size, e.files) for e in group):
            self._follow_more()  # a follower is free again
        self.record_each(group, results, error, self._verified, "its md5 check")

    def _verified(self, entry: Entry, result: Checked | BaseException) -> None:
        """Record one md5 check: on a match move the copy into stored/ and tell download."""
        entry_now = self.entry(entry.id)
        if entry_now.state != Mid.VERIFYING:
            return
        self.spool.drop_growing(entry.id)  # download pulls the rest from stored/, or all of it again
        checked = result if isinstance(result, Checked) else None
        checksum = self.state.checksum(entry.id)
        wrong = (
            hop_mismatch("central", entry.known_md5(), checksum, checked.md5, checked.checksum)
            if checked is not None
            else None
        )
        if checked is not None and wrong is None:
            if not checked.in_store:
                self.spool.store(entry)
            self.spool.drop_partial(entry)
            stored = self.spool.stored(entry.id)
            entry_now = self.move(entry_now, Mid.DOWNLOADING, tries=0, path=stored)  # leases no longer matter
            to = fanout.ask_to_fetch(self.state, self.cfg, entry, self.fetch_for(entry_now), self.send)
            log.info(
                "%s: md5 verified at central (%s); %s may fetch it", entry.name, checked.md5, ", ".join(to)
            )
            return
        if isinstance(result, Oversize):
            why = admission.oversize(entry, result.size, "found when it was verified")
            self._refuse_pushed(entry_now, why or "")
            return
        why = wrong if checked is not None and wrong else f"cannot read upload: {result}"
        if checked is not None:
            self.state.after_commit(functools.partial(self.observer.mismatch, PUSH))
        self.spool.drop_staged(entry)
        if self._copies(entry_now) >= self.cfg.max_attempts:
            self._give_up(entry_now, UPLOAD_TO_CENTRAL, why)
        else:
            log.warning("%s: %s; asking upload again", entry.name, why)
            self._admit(entry_now)

    def _copies(self, entry: Entry) -> int:
        """The copies upload was asked for (admissions, less those whose lease lapsed)."""
        return entry.attempt - entry.tries

    def _give_up(self, entry: Entry, hop: str, why: str, *, at_once: bool = False) -> None:
        """Fail the entry and tell upload: max_attempts uploads did not give a good copy, or (at
        once) it can never be admitted or more bytes arrived than it had."""
        # The reason names its hop, as every failed entry's does: the notice and status say where.
        self.move(entry, Mid.FAILED, reason=f"{hop}: {why}")
        self.send(entry.peer or "", Failed(entry.id, self.name, hop=hop, reason=why))
        after = "at once" if at_once else f"after {counted(self._copies(entry), 'attempt')}"
        log.error("%s: %s; giving up %s. %s", entry.name, why, after, GIVE_UP_ADVICE[hop])

    def _recheck(self, entry: Entry) -> None:
        """Verify the stored copy again; if it went bad, drop it and get the entry again from upload."""
        self.jobs.submit(
            Pool.HASH,
            [Key(RECHECK, entry.id)],
            functools.partial(md5_entry, self.spool.stored(entry.id)),
            functools.partial(self._rechecked, entry.id),
        )

    def _rechecked(self, entry_id: str, md5: str | None, error: BaseException | None) -> None:
        entry = self.entry(entry_id)
        if entry.state != Mid.DOWNLOADING:
            return
        if md5 == entry.md5:
            log.info("%s: central's copy is intact; download pulls again", entry.name)
            return
        why = f"stored copy at central went bad (md5 {md5})" if md5 else f"stored copy unreadable: {error}"
        self.spool.drop_stored(entry.id)
        # No stored copy, no fetch download may answer: a `fetched` for it now is refused.
        entry = self.state.update(entry, path=None)
        if self._copies(entry) >= self.cfg.max_attempts:
            self._give_up(entry, STORE_AT_CENTRAL, why)
            return
        log.warning("%s: %s; getting it again from upload", entry.name, why)
        self.move(entry, Mid.WAITING, reason=why)
        self.admit_due = True

    def _expire(self, entry: Entry) -> None:
        problem = self._unproven(entry)
        if problem:
            # Only a changed key or a changed database gets here (`fetched` is refused without a
            # good receipt): keep the copy, and say so every hour until a person looks.
            self.state.update(entry, due=time.time() + 3600, reason=f"central copy kept: {problem}")
            log.error("%s: not removing central's copy: %s", entry.name, problem)
            return
        self.jobs.submit(
            Pool.REMOVE,
            [Key(ENTRY, entry.id)],
            functools.partial(remove_tree, self.spool.stored(entry.id)),
            functools.partial(self._expired, entry.id),
        )

    def _unproven(self, entry: Entry) -> str | None:
        """Why the delivery of an entry about to expire is not proven by the receipt central keeps
        (None: it is, or no key is pinned, or it was delivered before a key was: no receipt kept)."""
        tokens = self.state.receipts(entry.id)
        for dest, row in dests.of(self.state, entry.id, self.cfg.download_name).items():
            token, key = tokens.get(dest), self.download_keys.get(dest)
            if key is None or token is None:
                continue
            try:
                receipts.check(
                    token, key, self._expected(entry, dest, row.stored_as or entry.stored_as or "")
                )
            except receipts.ReceiptError as e:
                return f"{dest}: {e}"
        return None

    def _expired(self, entry_id: str, _result: None, error: BaseException | None) -> None:
        self.admit_due = True  # space was freed
        entry = self.entry(entry_id)
        if error is not None:
            log.error("%s: cannot remove central copy %s: %s", entry.name, self.spool.stored(entry_id), error)
            self.state.update(entry, due=time.time() + 60)
            return
        self.move(entry, Mid.EXPIRED)
        log.info("%s: central copy removed (%g min after delivery)", entry.name, self.cfg.keep_minutes)
