"""A standby of upload or download that takes over greets the centrals, so that it resumes the
first agent's entries instead of stranding them (docs/protocol.md, "A standby that takes over").

The standby has a state database of its own. On taking over it says `hello` (a fresh token) to
every central it works with; each central answers with what it holds open for that agent (to
download: `fetch` again for every entry it waits on; to upload: `open`, each entry described, and
`admit` again for those being pushed), then `greeted` with the token. Until every central has
answered, the agent is *greeting* (a flag in its state, so a restart greets again). Upload offers
nothing meanwhile (synkler.agents.adoption); download needs no such wait.

In a pool, a central whose queue has had no consumer for `reown_seconds` is not waited for (the
rule upload re-owns by); its answer, if it comes back, is taken late.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

from ..messages import Greeted, Hello, new_entry_id
from ..state import State
from .base import PERSON_REPEAT, Jobs
from .endpoint import Endpoint
from .ownership import Reowner

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("synkler")

GREETING = "greeting"  # the flag while greeting: {"token", "waiting": [centrals not answered], "since"}
LATE = "greeting-late"  # a pool: the centrals no longer waited for (gone), whose answer is taken late


class Greeting(Endpoint):
    """Upload's and download's greeting of the centrals after a takeover."""

    ROLE: ClassVar[str] = ""  # "upload" or "download" (the `role` of its `hello`)

    def __init__(self, cfg: Config, state: State, jobs: Jobs):
        super().__init__(cfg, state, jobs)
        self.absent = Reowner(cfg.reown_seconds)  # a pool: centrals gone while their answer is awaited
        self.greet_told = 0.0  # when the agent last said whom it waits for

    @property
    def greeting(self) -> dict[str, Any] | None:
        """The greeting under way (None: none; the agent works as usual). Read from the state each
        time (a lookup by key): a rolled back pass leaves no stale copy."""
        raw = self.state.flag(GREETING)
        return json.loads(raw) if raw else None

    def _put_greeting(self, greeting: dict[str, Any] | None) -> None:
        self.state.put_flag(GREETING, json.dumps(greeting) if greeting else None)

    def took_over(self) -> None:
        """Greeting starts: `startup`, which follows, says hello."""
        centrals = sorted(self.cfg.central_names)
        self._put_greeting({"token": new_entry_id(), "waiting": centrals, "since": time.time()})
        log.warning(
            "%s agent %r took over with a state of its own: asking %s to announce again what the first "
            "agent had on its way",
            self.ROLE,
            self.name,
            ", ".join(centrals),
        )

    def greet_again(self) -> None:
        """At start (`startup`): `hello` to the centrals that have not answered yet, after a
        takeover, or after a stop cut a greeting short (answers are taken once)."""
        greeting = self.greeting
        if greeting is not None:
            log.info("hello to %s", ", ".join(greeting["waiting"]))
            self.say_hello()

    def say_hello(self) -> None:
        greeting = self.greeting
        if greeting is not None:
            for central in greeting["waiting"]:
                self.send(central, Hello(greeting["token"], self.name, role=self.ROLE))

    def late(self) -> list[str]:
        """The centrals of a pool whose answer came too late for the greeting (taken all the same)."""
        return list(json.loads(self.state.flag(LATE) or "[]"))

    def answering(self, central: str) -> bool:
        """Is an answer (`open`) from this central expected now?"""
        greeting = self.greeting
        return (greeting is not None and central in greeting["waiting"]) or central in self.late()

    def on_greeted(self, msg: Greeted) -> None:
        self.from_central(msg)
        greeting = self.greeting
        late = self.late()
        if msg.sender in late:
            rest = [c for c in late if c != msg.sender]
            self.state.put_flag(LATE, json.dumps(rest) if rest else None)
            log.info("central %s announced again %d entries, late", msg.sender, msg.entries)
            return
        if greeting is None or msg.entry != greeting["token"] or msg.sender not in greeting["waiting"]:
            log.info("central %s answered a greeting that is over (%d entries)", msg.sender, msg.entries)
            return
        log.info("%s announced again %d entries of the first %s agent", msg.sender, msg.entries, self.ROLE)
        self._answered(greeting, msg.sender)

    def _answered(self, greeting: dict[str, Any], central: str) -> None:
        waiting = [c for c in greeting["waiting"] if c != central]
        if waiting:
            self._put_greeting({**greeting, "waiting": waiting})
            return
        self._put_greeting(None)
        log.info(
            "every central has answered: the %s agent that took over goes on with its entries", self.ROLE
        )
        self.greeted()

    def greeted(self) -> None:
        """Every central has answered (or is gone): the role goes on as usual."""

    def tick_greeting(self, now: float) -> None:
        """While greeting: say whom the agent waits for (every PERSON_REPEAT/10 s), and in a pool
        stop waiting for a central gone for `reown_seconds`."""
        greeting = self.greeting
        if greeting is None:
            return
        if now - self.greet_told >= PERSON_REPEAT / 10:
            self.greet_told = now
            log.warning(
                "waiting for %s to announce again the first %s agent's entries (since %s)",
                ", ".join(greeting["waiting"]),
                self.ROLE,
                time.strftime("%H:%M:%S", time.localtime(greeting["since"])),
            )
        if not self.cfg.centrals or not self.absent.due(now):
            return
        for central in self.absent.gone(set(greeting["waiting"]), self.jobs.consumers, now):
            log.warning(
                "central %s has had no consumer for %.0f s: not waiting for its answer (it is taken "
                "when it comes)",
                central,
                self.cfg.reown_seconds,
            )
            greeting = self.greeting
            if greeting is not None:
                self.state.put_flag(LATE, json.dumps(sorted({*self.late(), central})))
                self._answered(greeting, central)
