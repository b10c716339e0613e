"""The names of an instance's broker objects and users, and the bounds of its dead-letter queue:
pure, no pika (broker-setup and the tests use them without a connection). Every object is
`synkler:<id>:…`; ':' occurs in no id or agent name, so no two instances or agents share one."""

from __future__ import annotations

from ..messages import OFFERS, offers_key

__all__ = ["offers_key"]

DEAD_MAX = 10_000  # dead letters kept; beyond that the oldest go (x-max-length, drop-head)
# ... and at most this many bytes of them: the agents' own messages are a few kB, so only big
# forged ones reach it (40 of 8 MiB kept 335 MB before the bound).
DEAD_MAX_BYTES = 64 * 1024 * 1024


def exchange_name(instance: str) -> str:
    return f"synkler:{instance}"


def queue_name(instance: str, agent: str) -> str:
    """The agent's queue (a quorum queue: synkler.broker.topology)."""
    return f"synkler:{instance}:inbox:{agent}"


def offers_queue(instance: str, upload: str) -> str:
    """An upload agent's offers in a pool of centrals (a quorum queue every central consumes)."""
    return f"synkler:{instance}:offers:{upload}"


def queue_for(instance: str, key: str) -> str:
    """The queue a message to routing key `key` of the instance's exchange is meant for: an agent's
    queue, or (`offers:<upload>`) an upload agent's offers queue."""
    if key.startswith(OFFERS):
        return offers_queue(instance, key[len(OFFERS) :])
    return queue_name(instance, key)


def classic_queue_name(instance: str, agent: str) -> str:
    """The agent's queue as synkler 0.5 named it (a classic queue, which cannot be declared again as
    a quorum queue): the agent moves what it still holds into its new one. Removed in synkler 0.8."""
    return f"synkler:{instance}:agent:{agent}"


def lock_name(instance: str, agent: str) -> str:
    """The exclusive queue whose owner is the agent's one active process: the broker refuses to
    declare it on a second connection (RESOURCE_LOCKED), and deletes it with its connection."""
    return f"synkler:{instance}:lock:{agent}"


def holder_name(instance: str, agent: str) -> str:
    return f"synkler:{instance}:holder:{agent}"


def presence_exchange(instance: str) -> str:
    return f"synkler:{instance}:presence"


def old_holder_exchange(instance: str) -> str:
    """The direct exchange earlier versions wrote holder records through (no longer used)."""
    return f"synkler:{instance}:holder"


def dead_name(instance: str) -> str:
    return f"synkler:{instance}:dead"


def broker_user(instance: str, agent: str) -> str:
    """The broker user of an agent where messages are authenticated: `<name>@<id>` ('@' occurs in
    neither, so no two agents of any instances share one)."""
    return f"{agent}@{instance}"


def legacy_queue_name(instance: str, agent: str) -> str | None:
    """The agent's queue as synkler 0.4 named it, or None where that name is ambiguous: with a '.'
    in the id or the name it may be another instance's queue, and 'dead' was the dead-letter queue.
    A 0.4 compatibility shim: removed in synkler 0.7."""
    if "." in instance or "." in agent or agent == "dead":
        return None
    return f"synkler.{instance}.{agent}"
