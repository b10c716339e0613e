"""The exceptions synkler raises on purpose, each with the exit status the CLI maps it to."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Every status the synkler command exits with (docs/running.md, "Exit status")."""

    OK = 0
    FAILURE = 1  # a failed check or demo, an agent that cannot run, a pidfile or state database error
    CONFIG = 2  # the configuration file is missing or invalid
    BROKER = 3  # BrokerError: `status --relay` cannot read the broker (`run` retries, `check` reports)
    INTERRUPTED = 130  # Ctrl-C outside the agent loop (128 + SIGINT, as shells report it)
    BROKEN_PIPE = 141  # the reader of stdout went away (`synkler check | head -1`): 128 + SIGPIPE


class SynklerError(Exception):
    """Base of synkler's own errors: one line for the user, no traceback."""

    exit_code = ExitStatus.FAILURE


class ConfigError(SynklerError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = ExitStatus.CONFIG

    def __init__(self, path: object, key: str | None, problem: str):
        self.path = str(path) if path is not None else None
        self.key = key
        self.problem = problem
        where = self.path or "synkler.conf"
        if key:
            super().__init__(f"{where}: {key}: {problem}")
        else:
            super().__init__(f"{where}: {problem}")


class BrokerError(SynklerError):
    """The message broker could not be reached or refused an operation."""

    exit_code = ExitStatus.BROKER


class PublishRefused(BrokerError):
    """The broker refused one publish (its queue was declared by someone else with other arguments,
    or rejects messages); the connection is fine and other destinations' messages can go."""


class NoQueueYet(PublishRefused):
    """The broker has no queue for the destination (unroutable): with authentication each agent
    declares only its own queue, so one that has not run yet has none; its messages wait."""


class AgentActive(BrokerError):
    """Another agent of this instance and name consumes the agent's queue: this one may not work."""

    def __init__(self, queue: str, holder: object, *, mine: bool = False):
        self.queue = queue
        self.holder = holder  # synkler.broker.amqp.Holder, or None if it cannot be told
        self.mine = mine  # the holder is this very process: a connection of its own not yet gone
        who = f" ({holder})" if holder is not None else ""
        super().__init__(f"another agent consumes {queue}{who}")


class MessageError(SynklerError):
    """A message failed validation; it is dead-lettered, never acted upon."""


class NotYet(SynklerError):
    """A message cannot be judged yet (central has not announced where its directory is): it stays
    queued and comes back, never acted upon before it can be checked."""


class Refused(SynklerError):
    """An operator's request (retry, forget, resend) does not apply to the entry as it is now."""


class NoState(SynklerError):
    """The agent of this configuration has no state database in any place it may keep one."""


class PidfileError(SynklerError):
    """The pidfile could not be created or holds garbage."""


class StateError(SynklerError):
    """The agent's state database failed (any SQLite error): a corrupt file, a broken constraint."""


class StateUnavailable(StateError):
    """The state database cannot be used now (SQLite's OperationalError): disk full, locked, read-only,
    cannot be opened. What was asked of it may work later."""


class Interrupted(BaseException):
    """Work cut short because the agent is stopping: nothing is recorded, it is done again at the
    next start. A BaseException, so that a job's `except Exception` for one entry lets it through."""
