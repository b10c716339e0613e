"""Log lines for operators: every line names the agent, names are escaped, text or JSON.

One handler on the root logger, set up once by the CLI (``setup``), then told which agent it speaks
for once the configuration is known (``use_agent``). The agent prefix and the escaping live here
only, so no log call has to think about them.

A text line reads ``2026-12-02 10:00:00,123 upload[lab-a@lab,pid=4321] WARNING data.csv: …``: time,
role, agent name, instance id and process id, level, message. The id and pid tell apart agents that
share a log file: two instances' agents of one name, or a standby and the working agent (a
standby's "stopped" is not the working agent's). The prefix holds no space, so the level stays the
fourth word, right before the message, and ``grep ' ERROR '`` or ``awk '{print $4}'`` keep working.
A JSON line (``log_format: json``) is one object: time, level, role, agent, id, pid, entry, logger, message
(and exception).

The entry of a line: agent log calls about one entry start with ``"%s: "`` and pass the entry's
name first (``log.info("%s: delivered …", entry.name)``); ``entry_of`` reads it from there, or from
``extra={"entry": name}``. tests/unit/test_logs.py holds the agents to that convention.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
from typing import Any, TextIO

from ..text import shown

PIKA = "pika"  # the one library whose own log lines can be asked for: --debug=pika


class Agent:
    """Whom the log lines speak for: the role and agent name once the configuration is loaded."""

    def __init__(self) -> None:
        self.role: str | None = None
        self.name: str | None = None
        self.id: str | None = None

    def label(self, pid: int | None) -> str:
        """`upload[lab-a@lab,pid=4321]`; `synkler` before the configuration is known."""
        if self.role is None:
            return "synkler"
        where = f"@{shown(self.id)}" if self.id else ""
        return f"{self.role}[{shown(self.name or self.role)}{where},pid={pid}]"


AGENT = Agent()


def entry_of(record: logging.LogRecord) -> str | None:
    """The entry a record is about: ``extra={"entry": …}``, or the first argument of a ``"%s: …"``."""
    entry = getattr(record, "entry", None)
    if isinstance(entry, str):
        return entry
    args = record.args
    if isinstance(record.msg, str) and record.msg.startswith("%s: ") and isinstance(args, tuple) and args:
        first = args[0]
        if isinstance(first, str):
            return first
    return None


def _details(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """Traceback and stack of a record, as logging.Formatter would append them (cached like it)."""
    parts = []
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


class TextFormatter(logging.Formatter):
    """``time role[name@id,pid=N] LEVEL message``; each traceback line gets the same head and a '|'."""

    def __init__(self, agent: Agent = AGENT):
        super().__init__()
        self.agent = agent

    def format(self, record: logging.LogRecord) -> str:
        head = f"{self.formatTime(record)} {self.agent.label(record.process)} {record.levelname}"
        lines = [f"{head} {shown(record.getMessage())}"]
        details = _details(self, record)
        lines += [f"{head} | {shown(line)}" for line in details.splitlines()]
        return "\n".join(lines)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers. Every string in it is escaped as in text lines."""

    def __init__(self, agent: Agent = AGENT):
        super().__init__()
        self.agent = agent

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created).astimezone()
        entry = entry_of(record)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "role": self.agent.role,
            "agent": shown(self.agent.name) if self.agent.name is not None else None,
            "id": self.agent.id,
            "pid": record.process,
            "entry": shown(entry) if entry is not None else None,
            "logger": record.name,
            "message": shown(record.getMessage()),
        }
        details = _details(self, record)
        if details:
            line["exception"] = "\n".join(shown(part) for part in details.splitlines())
        return json.dumps(line, ensure_ascii=False)


FORMATS = {"text": TextFormatter, "json": JsonFormatter}

_handler: logging.Handler | None = None  # the one setup() installed


def level_for(verbose: bool, debug: bool) -> int:
    """synkler's own level: WARNING by default (what a person must know), INFO with -v (the life of
    each entry), DEBUG with --debug (synkler's detail)."""
    return logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING


def setup(
    *, verbose: bool = False, debug: bool = False, pika: bool = False, stream: TextIO | None = None
) -> None:
    """Send log lines to ``stream`` (stderr) in text, as "synkler" until ``use_agent`` is called.

    Other libraries say only warnings and errors. pika says nothing: synkler reports what a broker
    problem means itself, and pika's own lines (hundreds per entry at DEBUG) come only when asked for
    with ``pika=True`` (``--debug=pika``).
    """
    global _handler
    root = logging.getLogger()
    if _handler is not None:  # set up again (in-process tests): replace ours, leave others alone
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    _handler.setFormatter(TextFormatter(AGENT))
    root.addHandler(_handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("synkler").setLevel(level_for(verbose, debug))
    logging.getLogger(PIKA).setLevel(logging.DEBUG if pika else logging.CRITICAL + 1)
    logging.captureWarnings(True)
    threading.excepthook = _thread_died


def use_agent(role: str, name: str, instance: str, log_format: str = "text") -> None:
    """From now on lines name this agent, in this format."""
    AGENT.role, AGENT.name, AGENT.id = role, name, instance
    if _handler is not None:
        _handler.setFormatter(FORMATS[log_format](AGENT))


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """An exception that ended a thread: a log line like any other, not a bare traceback."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("synkler").error("thread %s died", name, exc_info=exc_info)  # type: ignore[arg-type]
