"""The inbox: what the main loop does with one AMQP body. Decode it (one message or a batch),
authenticate each message, hand it to the agent in a savepoint, and say what becomes of the body:
acked, dead-lettered or requeued. Dead letters are logged, a flood of them counted rather than
written out line by line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Literal

from .. import messages
from ..agents.agent import Agent
from ..broker.names import broker_user
from ..errors import MessageError, NotYet, StateUnavailable
from ..state import State
from ..text import count

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

DEAD_LOG_BURST = 10  # dead letters logged one by one per DEAD_LOG_WINDOW; the rest are counted
DEAD_LOG_WINDOW = 60.0
# A message that cannot be judged yet (NotYet: central has not announced where its directory is)
# is normal for a moment after a start; only once it has lasted this long is it worth a warning
# (then once per NOT_YET_PATIENCE while it lasts). A gap of NOT_YET_GAP without one ends the spell.
NOT_YET_PATIENCE = 60.0
NOT_YET_GAP = 10.0

# What becomes of a body: acked (its effect is committed with the pass), dead-lettered, or left
# queued to come back (the agent cannot act now; the message is fine).
Outcome = Literal["ack", "dead", "requeue"]


class Inbox:
    """Hands the agent the messages of each AMQP body, only those its sender may send."""

    def __init__(self, cfg: Config, state: State, agent: Agent):
        self.cfg = cfg
        self.state = state
        self.agent = agent
        self._dead_window = 0.0  # when the current window of dead-letter log lines began
        self._dead_logged = 0  # dead letters logged one by one in it
        self._dead_quiet = 0  # and those only counted
        self._not_yet_since: float | None = None  # when the current spell of NotYet began
        self._not_yet_last = 0.0  # the last NotYet of it
        self._not_yet_warned = 0.0  # when it was last warned about

    def apply(self, body: bytes, user: str | None = None) -> tuple[Outcome, list[bytes]]:
        """Handle one AMQP body published by broker user `user`, in the caller's transaction: what
        becomes of it, and the elements of a batch to dead-letter."""
        try:
            items = messages.decode_many(body)
        except MessageError as e:
            self._dead_log("dead-lettering a message: %s: %r", e, body[:200])
            return "dead", []
        dead: list[bytes] = []
        try:
            with self.state.savepoint():
                for element, item in items:
                    if isinstance(item, MessageError):
                        self._dead_log("dead-lettering a message of a batch: %s", item)
                        dead.append(_reencode(element))
                        continue
                    try:
                        self.authenticate(item, user)
                        self.agent.observer.heard_from(item.sender, time.time())
                        with self.state.savepoint():
                            self.agent.on_message(item)
                    except MessageError as e:
                        self._dead_log("dead-lettering a message: %s: %r", e, str(element)[:200])
                        dead.append(_reencode(element))
        except NotYet as e:
            # Central's first presence report comes a moment after a start: the message comes back
            # and is acted upon then. Said only when it lasts (a central that never reports).
            self._not_yet(e, time.monotonic())
            return "requeue", []
        except (StateUnavailable, OSError) as e:
            # Disk full, database locked, a directory we cannot write: the message is fine, we are not.
            # Let it come back later (handlers are idempotent) instead of dead-lettering a valid request.
            log.error("cannot act on a message now (%s); it stays queued", e)
            return "requeue", []
        except Exception:
            log.exception("bug while handling a message; dead-lettering it: %r", body[:200])
            return "dead", []
        if len(items) == 1 and dead:
            return "dead", []  # a single message is dead-lettered as it came
        return "ack", dead

    def _not_yet(self, e: NotYet, now: float) -> None:
        """Log a message that must wait for central's announcement: at DEBUG while the wait is
        young, at WARNING once it has lasted NOT_YET_PATIENCE (and again each NOT_YET_PATIENCE)."""
        if self._not_yet_since is None or now - self._not_yet_last > NOT_YET_GAP:
            self._not_yet_since, self._not_yet_warned = now, now
        self._not_yet_last = now
        lasted = now - self._not_yet_since
        if lasted < NOT_YET_PATIENCE or now - self._not_yet_warned < NOT_YET_PATIENCE:
            log.debug("cannot act on a message yet (%s); it stays queued", e)
            return
        self._not_yet_warned = now
        log.warning(
            "cannot act on messages for %s (%s); they stay queued: is central running, and may this "
            "agent's broker user read its reports? (synkler check)",
            count(round(lasted), "second"),
            e,
        )

    def authenticate(self, msg: messages.Message, user: str | None) -> None:
        """With `authenticate`, a message counts only if the broker user that published it is the
        one of the agent it claims to come from (`<name>@<id>`): the broker vouches for the user
        (user_id), the agent's own checks then tie the agent to the entry."""
        if not self.cfg.authenticate:
            return
        expected = broker_user(self.cfg.id, msg.sender)
        if user != expected:
            raise MessageError(
                f"{msg.TYPE} claims to come from {msg.sender!r}, but broker user {user!r} published "
                f"it, not {expected!r}"
            )

    def _dead_log(self, fmt: str, *args: object) -> None:
        """Log a dead letter, at most DEAD_LOG_BURST a minute: a flood of bad messages is counted,
        not written out line by line."""
        self._end_dead_window(time.monotonic())
        if self._dead_logged < DEAD_LOG_BURST:
            self._dead_logged += 1
            log.warning(fmt, *args)
        else:
            self._dead_quiet += 1

    def tell_quiet(self) -> None:
        """Once a window is over, say how many dead letters it only counted (each pass of the loop)."""
        if self._dead_quiet:
            self._end_dead_window(time.monotonic())

    def _end_dead_window(self, now: float) -> None:
        if now - self._dead_window < DEAD_LOG_WINDOW:
            return
        if self._dead_quiet:
            log.warning(
                "%d more messages were dead-lettered in the last %.0f s (not logged one by one)",
                self._dead_quiet,
                now - self._dead_window,
            )
        self._dead_window, self._dead_logged, self._dead_quiet = now, 0, 0


def _reencode(element: object) -> bytes:
    """The JSON of one element of a batch, for the dead-letter queue."""
    return json.dumps(element, ensure_ascii=True, default=str).encode("ascii")
