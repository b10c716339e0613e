"""The agents' log lines in a real relay: each names its agent, names are escaped, the levels say
what they promise (docs/running.md, "Logs")."""

from __future__ import annotations

import json
import os
import re

from support.relay_helpers import deliver, place

from synkler.hops.checksum import md5_entry

# time, role[name@id,pid=N], level, message
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+)\[([^\]@]+)@([^\],]+),pid=(\d+)\] "
    r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) "
)
ESC_NAME = "esc\x1b[31mred\nline.txt"  # ESC and a newline: refused by upload, with one warning
LATIN1_NAME = os.fsdecode(b"caf\xe9.txt")  # not UTF-8: relays byte-exact


UNAUTHENTICATED = "messages are not authenticated"
NOT_PROVEN = "deliveries are not proven"  # no receipt keys (docs/security.md, "Delivery receipts")


def at_start(message: str) -> bool:
    """One of the warnings each agent of this test's relay says once at start."""
    return UNAUTHENTICATED in message or NOT_PROVEN in message


def test_a_relay_run_logs_lines_that_name_their_agent_and_escape_names_at_every_level(make_relay):
    # upload: text, -v (the life of each entry). central: JSON, --debug (synkler's detail, no pika).
    # download: text, no option (only what a person must know: nothing, in a run where all goes well).
    relay = make_relay(central={"log_format": "json"})
    relay.start("upload", flags=["-v"])
    relay.start("central", flags=["--debug"])
    relay.start("download", flags=[])
    pids = {role: proc.pid for role, proc in relay.procs.items()}
    md5s = {"plain.txt": place(relay.dirs["upload"], "plain.txt", b"4 by")}
    (relay.dirs["upload"] / ESC_NAME).write_bytes(b"refused")
    tmp = relay.dirs["upload"].parent / ".latin1"
    tmp.write_bytes(b"caf\xc3\xa9 in latin-1\n")
    md5s[LATIN1_NAME] = md5_entry(tmp)
    os.rename(tmp, relay.dirs["upload"] / LATIN1_NAME)
    deliver(relay, md5s)
    relay.stop()

    raw = {role: relay.log_path(role).read_bytes() for role in ("upload", "central", "download")}
    for role, data in raw.items():
        assert b"\x1b" not in data, role  # never a raw ESC in a log
        assert b"\xe9" not in data, role  # never a byte that is not UTF-8

    upload = raw["upload"].decode().splitlines()
    assert upload
    for line in upload:
        match = TEXT_LINE.match(line)
        assert match, line
        assert match.group(1, 2, 3) == ("upload", "upload", relay.instance), line
        assert int(match.group(4)) == pids["upload"], line
        assert match.group(5) != "DEBUG", line
    text = "\n".join(upload)
    for name in ("plain.txt", "caf\\xe9.txt"):  # the life of each entry, the name escaped
        assert f" INFO {name}: offered" in text, name
        assert re.search(rf" INFO (pushing .*{re.escape(name)}|{re.escape(name)}: pushing)", text), name
        assert f" INFO {name}: delivered" in text, name
    escaped = "esc\\x1b[31mred\\nline.txt"
    [refused] = [line for line in upload if escaped in line]
    assert " WARNING esc\\x1b[31mred\\nline.txt: not sending it" in refused
    # What a person must know, and nothing else: that messages are not authenticated (the test's shared
    # login) and deliveries not proven (no receipt keys), each said once at start, and the refused name.
    warned = [line for line in upload if TEXT_LINE.match(line).group(5) not in ("DEBUG", "INFO")]
    assert [w for w in warned if not at_start(w)] == [refused]
    assert len([w for w in warned if UNAUTHENTICATED in w]) == 1
    assert len([w for w in warned if NOT_PROVEN in w]) == 1

    central = [json.loads(line) for line in raw["central"].decode().splitlines()]  # one object a line
    assert central
    assert {(r["role"], r["agent"], r["id"]) for r in central} == {("central", "central", relay.instance)}
    assert {r["pid"] for r in central} == {pids["central"]}
    said = [r for r in central if not at_start(r["message"])]
    assert [r["level"] for r in central if UNAUTHENTICATED in r["message"]] == ["WARNING"]
    assert [r["level"] for r in central if NOT_PROVEN in r["message"]] == ["WARNING"]
    assert {r["level"] for r in said} == {"DEBUG", "INFO"}, "a warning in a run where all went well"
    assert not [r for r in central if not r["logger"].startswith("synkler")], "a line not from synkler"
    entries = {r["entry"] for r in central}
    assert {"plain.txt", "caf\\xe9.txt"} <= entries
    delivered = [r for r in central if r["entry"] == "plain.txt" and ": delivered to" in r["message"]]
    assert len(delivered) == 1 and delivered[0]["level"] == "INFO"

    # All went well: nothing to say but that messages are not authenticated and deliveries not proven.
    lines = raw["download"].decode().splitlines()
    assert len(lines) == 2 and all(" WARNING " in line and at_start(line) for line in lines), lines
    assert any(UNAUTHENTICATED in line for line in lines) and any(NOT_PROVEN in line for line in lines)
