"""What observers know of a role: its facts, declared once by the role beside its states.

Presence reports, metrics, alerts and the relay view (synkler.observe) never spell a state name, a
hop name or a reason marker themselves: each role module (upload, central, download) declares a
`Facts` next to its `Status` enum and `TRANSITIONS` table, and `synkler.agents.FACTS` maps a role
to it. A test keeps state names out of every other module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The hops as the roles name them in reasons ("<hop>: <why>"), log lines and notices.
PUSH_TO_CENTRAL = "push to central"  # upload's rsync into central's staging
PULL_FROM_CENTRAL = "pull from central"  # download's rsync out of central's stored copies
UPLOAD_TO_CENTRAL = "upload to central"  # central: what upload pushed kept arriving bad
STORE_AT_CENTRAL = "store at central"  # central: its stored copy kept going bad
ADMISSION_AT_CENTRAL = "admission at central"  # central: the entry can never fit
METADATA_AT_CENTRAL = "metadata check at central"  # central: the entry lacks required metadata
# central: a bundle it cannot route (its routes choose by name); upload sends its files one by one
BUNDLE_AT_CENTRAL = "bundle at central"
# A reason that says a person must act (ssh refused a key, host key or host name):
# "<hop>: needs a person: <why>".
NEEDS_PERSON = "needs a person"
# A reason that says the entry waits, no fault of its own: "<hop>: link down" or "<hop>: waiting
# for disk space".
LINK_DOWN = "link down"
DISK_WAIT = "waiting for disk space"
# The hops as metrics label them, and which of them each hop above is.
PUSH, PULL, RELAY = "push", "pull", "relay"
METRIC_HOP = {PUSH_TO_CENTRAL: PUSH, PULL_FROM_CENTRAL: PULL}


def needs_person_reason(hop: str, why: str) -> str:
    """The reason of an entry that waits for a person to fix what ssh refused."""
    return f"{hop}: {NEEDS_PERSON}: {why}"


@dataclass(frozen=True)
class Hop:
    """A stretch of an entry's way that a role sees begin and end (by its state changes).

    `name` is the metrics' label: push (upload -> central), pull (central -> download), relay
    (upload, end to end). Entering a `start` state from outside them starts the hop's clock (no
    start states: it is timed from the entry's creation). The hop ends when an entry enters an `end`
    state from one of the states `during` it; so a later change between other states that also
    lands in `end` (download's delivered -> done after placing) does not count it a second time.
    """

    name: str
    start: frozenset[str]
    during: frozenset[str]
    end: frozenset[str]


def hop(name: str, start: Iterable[str], end: Iterable[str], during: Iterable[str] | None = None) -> Hop:
    """A hop; `during` defaults to its start states."""
    starts = frozenset(str(s) for s in start)
    inside = starts if during is None else frozenset(str(s) for s in during)
    return Hop(name, starts, inside, frozenset(str(s) for s in end))


@dataclass(frozen=True)
class Facts:
    """What observers need of one role's states."""

    role: str
    states: tuple[str, ...]  # every state, in the enum's order
    finished: frozenset[str]  # the role is done with the entry (the others are unfinished; failed too)
    failed: str  # given up: a person must look
    receiving: str | None  # the state in which the role receives an entry's bytes
    hashing: frozenset[str]  # the states in which the role may be hashing an entry
    transferring: frozenset[str]  # the states of the role's own transfer (its reason may need a person)
    given_up: frozenset[str]  # the states that leave every hop another way than its end
    disk_waits: tuple[str, ...]  # an entry's reason with one of these: it waits for disk space
    hops: tuple[Hop, ...] = ()

    @property
    def unfinished(self) -> tuple[str, ...]:
        return tuple(s for s in self.states if s not in self.finished)


def facts(
    role: str,
    states: Iterable[object],
    *,
    finished: Iterable[object],
    failed: object,
    receiving: object | None,
    hashing: Iterable[object],
    transferring: Iterable[object],
    given_up: Iterable[object],
    disk_waits: tuple[str, ...],
    hops: tuple[Hop, ...],
) -> Facts:
    """A role's facts from its enum members (kept as their plain string values)."""
    return Facts(
        role=role,
        states=tuple(str(s) for s in states),
        finished=frozenset(str(s) for s in finished),
        failed=str(failed),
        receiving=None if receiving is None else str(receiving),
        hashing=frozenset(str(s) for s in hashing),
        transferring=frozenset(str(s) for s in transferring),
        given_up=frozenset(str(s) for s in given_up),
        disk_waits=disk_waits,
        hops=hops,
    )
