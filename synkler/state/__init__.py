"""The agent's durable memory: one SQLite database (WAL) with the entries, the outbox and the
operator's requests.

This package is the only code that touches SQLite. One thread (the agent's main loop) owns the
connection; workers never write here, they hand results back to that thread. SQLite's errors
leave here as StateError, or StateUnavailable for the ones that may pass (disk full, locked).

`State` is one class made of a part per concern: the connection and its transactions
(`database.py`), the entries (`entries.py`), the small tables beside them (`tables.py`), the outbox
(`outbox.py`), an operator's requests (`requests.py`) and what the alerts keep (`alerts.py`); the
schema is in `schema.py`, the rows as Python sees them in `rows.py`.
"""

from __future__ import annotations

from .alerts import Alerts
from .database import CACHE_KIB, Database
from .entries import Entries
from .outbox import Outbox
from .requests import ANSWERS_KEPT, Request, Requests
from .rows import Ended, Entry
from .tables import Tables

__all__ = ["ANSWERS_KEPT", "CACHE_KIB", "Database", "Ended", "Entry", "Request", "State"]


class State(Entries, Tables, Outbox, Requests, Alerts):
    """Entries and outbox of one agent. Use `transaction()` around every change."""
