"""The exceptions synkler raises on purpose, each with the exit status the CLI maps it to."""

from __future__ import annotations


class SynklerError(Exception):
    """Base of synkler's own errors: one line for the user, no traceback."""

    exit_code = 1


class ConfigError(SynklerError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = 2

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

    exit_code = 3


class MessageError(SynklerError):
    """A message failed validation; it is dead-lettered, never acted upon."""


class PidfileError(SynklerError):
    """The pidfile could not be created or holds garbage."""
