"""Text for people: counts whose noun agrees, and the few words about attempts."""

from __future__ import annotations

from dataclasses import replace

from synkler.agents.upload import push_count
from synkler.observe import alerts
from synkler.observe.report import Report
from synkler.state import Entry
from synkler.text import again, count, some_entries


def test_a_count_has_its_noun_agree():
    assert [count(n, "entry") for n in (0, 1, 2)] == ["0 entries", "1 entry", "2 entries"]
    assert count(0, "unfinished entry") == "0 unfinished entries"
    assert [count(1, "minute"), count(1, "message")] == ["1 minute", "1 message"]
    assert count(5, "message") == "5 messages"
    assert count(2, "day") == "2 days" and count(3, "mouse", "mice") == "3 mice"
    assert some_entries(["a"]) == "1 entry (a)" and some_entries(["a", "b"]) == "2 entries (a, b)"


def test_a_failure_tried_again_says_how_many_in_a_row_only_from_the_second():
    assert again(1) == "" and again(0) == ""
    assert again(3) == " (failed 3 times in a row)"


def test_a_first_push_says_no_attempt_and_a_retry_says_which():
    e = Entry(id="e1", name="a", kind="file", md5="x", state="uploading", attempt=1)
    assert push_count(e) == ""
    assert push_count(replace(e, tries=2)) == " (retry 2)"
    again_asked = replace(e, attempt=2, tries=1)
    assert push_count(again_asked) == " (retry 1, upload 2 asked by central)"


def test_notices_count_minutes_and_messages_in_agreement():
    e = Entry(id="e1", name="a", kind="file", md5="x", state="waiting", created=1000.0)
    assert alerts.stuck(e, 1000.0 + 90, 1).summary == "entry a not delivered 1 minute after its offer"
    gone = alerts.silent("download", "download", Report("h", at=1000.0), 1000.0 + 61, 1 / 60, 5.0)
    assert gone is not None and gone.summary == "download agent download silent for 1 minute"
    dead = alerts.dead_letters(1)
    assert dead is not None and dead.summary == "1 message in the dead-letter queue"
