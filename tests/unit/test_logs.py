"""synkler.service.logs: escaping, the agent prefix, JSON lines, levels, and the log-call convention that
names each line's entry."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from synkler.service import logs
from synkler.service.logs import Agent, JsonFormatter, TextFormatter, entry_of
from synkler.text import shown, some_entries

AGENTS_DIR = Path(__file__).resolve().parents[2] / "synkler" / "agents"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("plain.txt", "plain.txt"),
        ("Grüße run", "Grüße run"),  # readable non-ASCII stays
        ("line\nbreak", "line\\nbreak"),
        ("tab\there\r", "tab\\there\\r"),
        ("esc\x1b[31mred", "esc\\x1b[31mred"),
        ("nul\x00 del\x7f csi\x9b", "nul\\x00 del\\x7f csi\\x9b"),
        ("bidi \u202egnp.exe", "bidi \\u202egnp.exe"),
        ("sep\u2028arator", "sep\\u2028arator"),
        (os.fsdecode(b"caf\xe9.txt"), "caf\\xe9.txt"),  # a byte that is not UTF-8
        ("lone \ud800", "lone \\ud800"),  # no byte made it: still no raw surrogate
    ],
)
def test_shown_escapes_control_characters_and_bytes_that_are_not_utf8(text, expected):
    assert shown(text) == expected
    shown(text).encode("utf-8")  # always writable as UTF-8


def record(msg: str, *args: object, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("synkler", level, __file__, 1, msg, args, None)
    rec.created = 1_764_662_400.0  # 2025-12-02 08:00:00 UTC
    rec.__dict__.update(extra)
    return rec


@pytest.fixture
def agent() -> Agent:
    a = Agent()
    a.role, a.name, a.id = "upload", "lab-a", "lab"
    return a


def test_a_text_line_has_time_agent_level_and_the_escaped_message(agent):
    line = TextFormatter(agent).format(record("%s: delivered", "bad\nname", level=logging.WARNING))
    assert "\n" not in line
    assert line.endswith(f" upload[lab-a@lab,pid={os.getpid()}] WARNING bad\\nname: delivered")
    assert line.split()[3] == "WARNING"  # the level stays the fourth word
    assert line[:4].isdigit()


def test_before_the_config_is_read_lines_speak_for_synkler():
    line = TextFormatter(Agent()).format(record("starting"))
    assert line.endswith(" synkler INFO starting")


def test_every_line_of_a_traceback_names_the_agent(agent):
    try:
        raise ValueError("boom\x1b[2J")
    except ValueError:
        rec = record("bug", level=logging.ERROR)
        rec.exc_info = sys.exc_info()
    lines = TextFormatter(agent).format(rec).splitlines()
    assert len(lines) > 2
    assert all(f" upload[lab-a@lab,pid={os.getpid()}] ERROR " in line for line in lines)
    assert lines[1].endswith("| Traceback (most recent call last):")
    assert lines[-1].endswith("| ValueError: boom\\x1b[2J")


def test_a_json_line_is_one_object_with_agent_entry_and_escaped_strings(agent):
    name = os.fsdecode(b"caf\xe9\x1b.txt")
    line = JsonFormatter(agent).format(record("%s: offered (%d bytes)", name, 4))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj == {
        "time": obj["time"],
        "level": "INFO",
        "role": "upload",
        "agent": "lab-a",
        "id": "lab",
        "pid": os.getpid(),
        "entry": "caf\\xe9\\x1b.txt",
        "logger": "synkler",
        "message": "caf\\xe9\\x1b.txt: offered (4 bytes)",
    }
    assert obj["time"].startswith("2025-12-02T") and obj["time"][-6] in "+-"


def test_a_json_line_carries_the_traceback_in_one_field(agent):
    try:
        raise RuntimeError("x")
    except RuntimeError:
        rec = record("bug", level=logging.ERROR)
        rec.exc_info = sys.exc_info()
    obj = json.loads(JsonFormatter(agent).format(rec))
    assert obj["entry"] is None
    assert obj["exception"].startswith("Traceback") and obj["exception"].endswith("RuntimeError: x")


def test_the_entry_of_a_line_is_its_leading_name_or_an_explicit_extra():
    assert entry_of(record("%s: pushing to central%s", "a.txt", " (retry 1)")) == "a.txt"
    assert entry_of(record("connected to broker %s:%s", "h", 1)) is None
    assert entry_of(record("%s; reconnecting", "a")) is None
    assert entry_of(record("pushing %s", "x", entry="b.txt")) == "b.txt"


def test_a_batch_is_named_by_its_count_and_its_first_names():
    assert some_entries(["a", "b"]) == "2 entries (a, b)"
    assert some_entries([f"n{i}" for i in range(500)]) == "500 entries (n0, n1, n2, …)"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """logs.setup() writing to a string; the logging set-up is restored afterwards."""
    saved = {name: logging.getLogger(name).level for name in ("", "synkler", "pika")}
    hook = threading.excepthook
    out = io.StringIO()
    yield out
    threading.excepthook = hook
    logging.captureWarnings(False)
    logging.getLogger().removeHandler(logs._handler)
    logs._handler = None
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    logs.AGENT.role = logs.AGENT.name = logs.AGENT.id = None


@pytest.mark.parametrize(
    "options, shown_levels",
    [
        ({}, {"WARNING"}),
        ({"verbose": True}, {"INFO", "WARNING"}),
        ({"debug": True}, {"DEBUG", "INFO", "WARNING"}),
    ],
)
def test_levels_default_v_and_debug_and_pika_only_on_request(stream, options, shown_levels):
    logs.setup(stream=stream, **options)
    logs.use_agent("download", "download", "lab", "text")
    for level in (logging.DEBUG, logging.INFO, logging.WARNING):
        logging.getLogger("synkler.agents").log(level, "mine")
        logging.getLogger("pika.connection").log(level, "pika's")
    lines = stream.getvalue().splitlines()
    assert {line.split()[3] for line in lines} == shown_levels
    head = f" download[download@lab,pid={os.getpid()}] "
    assert all(head in line and line.endswith(" mine") for line in lines)


def test_debug_pika_adds_pika_s_own_lines(stream):
    logs.setup(stream=stream, debug=True, pika=True)
    logging.getLogger("pika.connection").debug("Created channel=1")
    assert stream.getvalue().rstrip().endswith(" synkler DEBUG Created channel=1")


def test_a_thread_that_dies_is_a_log_line_naming_the_agent(stream):
    logs.setup(stream=stream)
    logs.use_agent("central", "central", "lab", "text")

    def boom() -> None:
        raise RuntimeError("in a worker")

    worker = threading.Thread(target=boom, name="worker-1")
    worker.start()
    worker.join()
    lines = stream.getvalue().splitlines()
    head = f" central[central@lab,pid={os.getpid()}] ERROR"
    assert lines[0].endswith(f"{head} thread worker-1 died")
    assert lines[-1].endswith(f"{head} | RuntimeError: in a worker")


def test_use_agent_json_switches_the_format(stream):
    logs.setup(stream=stream)
    logs.use_agent("central", "central", "lab", "json")
    logging.getLogger("synkler").warning("%s: waiting: %s", "big.bin", "no room")
    obj = json.loads(stream.getvalue())
    assert (obj["role"], obj["entry"], obj["level"]) == ("central", "big.bin", "WARNING")


# --------------------------------------------------------------------------------------------------
# The convention entry_of relies on, checked over the agents' source


def _log_calls(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "log"
        ):
            yield node


def test_agent_log_lines_that_start_with_a_name_pass_the_entry_name_first():
    """A call `log.x("%s: …", first, …)` must pass an entry's name as `first` (something `…name`)."""
    wrong = []
    for path in sorted(AGENTS_DIR.glob("*.py")):
        for call in _log_calls(ast.parse(path.read_text())):
            args = call.args[1:] if call.func.attr == "log" else call.args
            if not args or not isinstance(args[0], ast.Constant) or not isinstance(args[0].value, str):
                continue
            if args[0].value.startswith("%s: "):
                first = ast.unparse(args[1])
                if not first.endswith("name"):  # name, entry.name, batch[0].name, first_name
                    wrong.append(f"{path.name}:{call.lineno}: {first}")
    assert not wrong, wrong


def test_the_daemons_log_file_is_made_0640_whatever_the_umask_and_an_existing_one_keeps_its_mode(
    tmp_path: Path,
):
    from synkler.service.daemonize import LogFile

    old = os.umask(0o077)  # the daemon's
    try:
        made = LogFile(tmp_path / "new.log")
        own = tmp_path / "own.log"
        own.touch(mode=0o600)
        kept = LogFile(own)
    finally:
        os.umask(old)
    os.close(made.fileno())
    os.close(kept.fileno())
    assert (made.path.stat().st_mode & 0o777, own.stat().st_mode & 0o777) == (0o640, 0o600)
