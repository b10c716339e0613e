"""The runtime's own decisions, with a fake broker: a refused destination, a rival agent."""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest
from support.fakes import central_runtime

from synkler import messages
from synkler.agents.base import PERSON_REPEAT
from synkler.agents.pools import Pool
from synkler.broker.amqp import Broker, BrokerParams
from synkler.errors import AgentActive, BrokerError, ExitStatus, NoQueueYet, PublishRefused
from synkler.observe.hooks import Hook
from synkler.runtime import consumer, inbox, outbox
from synkler.runtime.loop import Runtime


class FakeBroker:
    """Publishes into a list; refuses every publish to the agents in `refusing` (with `why`)."""

    def __init__(self, refusing: set[str], why: type[PublishRefused] = PublishRefused):
        self.refusing = refusing
        self.why = why
        self.published: list[tuple[str, list[str]]] = []
        self.tried: list[str] = []

    def publish(self, agent: str, body: bytes) -> None:
        self.tried.append(agent)
        if agent in self.refusing:
            if self.why is NoQueueYet:
                raise NoQueueYet("1 message returned as unroutable")
            raise PublishRefused("PRECONDITION_FAILED - inequivalent arg 'durable'")
        self.published.append((agent, [m.entry for _, m in messages.decode_many(body)]))

    def close(self) -> None:
        pass


@pytest.fixture
def rt(tmp_path):
    with central_runtime(tmp_path) as r:
        yield r


def enqueue(rt: Runtime, dest: str, n: int) -> list[str]:
    ids = [messages.new_entry_id() for _ in range(n)]
    with rt.state.transaction():
        for entry in ids:
            rt.state.enqueue(dest, messages.encode(messages.Wait(entry, "central", reason="no room")))
    return ids


def test_a_refused_destination_is_held_back_in_order_and_the_others_go_out(rt, monkeypatch):
    broker = rt.broker = FakeBroker(refusing={"ghost"})
    ghost = enqueue(rt, "ghost", 3)
    up = enqueue(rt, "upload", 2)
    now = [1000.0]
    monkeypatch.setattr(outbox.time, "time", lambda: now[0])

    rt.outbox.flush(broker)
    assert broker.published == [("upload", up)]
    assert [dest for _, dest, _ in rt.state.outbox(100)] == ["ghost"] * 3
    # Held back: not tried again before its pause is over, while new messages to others go out.
    more = enqueue(rt, "upload", 1)
    now[0] += 0.1
    rt.outbox.flush(broker)
    assert broker.tried.count("ghost") == 1
    assert broker.published[-1] == ("upload", more)
    # The broker takes them again: they go out, in their order, and the hold is gone.
    broker.refusing.clear()
    now[0] += 120
    rt.outbox.flush(broker)
    assert broker.published[-1] == ("ghost", ghost)
    assert rt.state.outbox(100) == []
    assert rt.outbox.held == {}


def test_a_destination_refused_again_and_again_waits_longer_each_time_up_to_a_minute(rt, monkeypatch):
    broker = rt.broker = FakeBroker(refusing={"ghost"})
    enqueue(rt, "ghost", 1)
    now = [1000.0]
    monkeypatch.setattr(outbox.time, "time", lambda: now[0])
    pauses = []
    for _ in range(12):
        rt.outbox.flush(broker)
        _n, until, _told, _since = rt.outbox.held["ghost"]
        pauses.append(until - now[0])
        now[0] = until
    assert broker.tried == ["ghost"] * 12
    assert pauses[-1] <= 60 and pauses[-1] > pauses[0]


def test_an_agent_without_a_queue_yet_is_a_warning_and_an_error_only_once_it_lasts(rt, monkeypatch, caplog):
    # With authentication each agent declares only its own queue: right after a first start, central
    # may answer before download has declared its queue. That is no person's business yet.
    broker = rt.broker = FakeBroker(refusing={"download"}, why=NoQueueYet)
    enqueue(rt, "download", 2)
    now = [1000.0]
    monkeypatch.setattr(outbox.time, "time", lambda: now[0])
    caplog.set_level("WARNING", logger="synkler")

    def said(level: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == level]

    while now[0] < 1000.0 + PERSON_REPEAT - 60:
        rt.outbox.flush(broker)
        now[0] = rt.outbox.held["download"][1]
    assert said("ERROR") == []
    [warned] = said("WARNING")
    assert warned.startswith(
        "no queue for agent 'download' yet (1 message returned as unroutable): has it ever run?"
    )
    # An upload agent without a queue is no first start's wait (an offer from an invented sender).
    enqueue(rt, "ghost", 1)
    broker.refusing.add("ghost")
    rt.outbox.flush(broker)
    [ghost] = said("ERROR")
    assert ghost.startswith("the broker refuses messages to agent 'ghost'")
    caplog.clear()
    # Still none after ten minutes: a person must look (a name mistyped, an agent never started).
    while now[0] < 1000.0 + PERSON_REPEAT + 60:
        rt.outbox.flush(broker)
        now[0] = rt.outbox.held["download"][1]
    [error] = said("ERROR")
    assert error.startswith(
        "the broker refuses messages to agent 'download' (1 message returned as unroutable)"
    )
    broker.refusing.clear()
    now[0] = max(until for _n, until, _told, _since in rt.outbox.held.values())
    rt.outbox.flush(broker)
    assert sorted(dest for dest, _ in broker.published) == ["download", "ghost"]


def test_an_agent_without_a_queue_yet_is_looked_for_again_within_seconds_however_long_it_lasted(
    rt, monkeypatch
):
    # Download started a minute after central: its messages go out seconds after its queue appears,
    # not after a pause grown over its absence. Another refusal still backs off to a minute.
    broker = rt.broker = FakeBroker(refusing={"download", "ghost"})
    broker.why = NoQueueYet
    enqueue(rt, "download", 1)
    enqueue(rt, "ghost", 1)  # an upload agent with no queue: no first start's wait
    now = [1000.0]
    monkeypatch.setattr(outbox.time, "time", lambda: now[0])
    pauses: dict[str, list[float]] = {"download": [], "ghost": []}
    while now[0] < 1000.0 + 600:
        rt.outbox.flush(broker)
        for dest, seen in pauses.items():
            refusals, until, _told, _since = rt.outbox.held[dest]
            if refusals > len(seen):  # refused again just now
                seen.append(until - now[0])
        now[0] = min(until for _n, until, _told, _since in rt.outbox.held.values())
    assert max(pauses["download"]) <= outbox.NO_QUEUE_CAP
    assert max(pauses["ghost"]) > outbox.NO_QUEUE_CAP
    broker.refusing.discard("download")
    now[0] = rt.outbox.held["download"][1]
    rt.outbox.flush(broker)
    assert [dest for dest, _ in broker.published] == ["download"]


def test_a_publish_looks_for_the_queue_of_an_agent_it_does_not_declare_once_per_connection():
    # A publish that some queue takes is confirmed, whichever queue: one bound with `#` (an
    # operator's tap) takes what is sent to an agent that never ran. So with `authenticate` (each
    # agent declares only its own queue) the publisher looks for that agent's queue first.
    params = BrokerParams("broker.example", authenticate=True)
    authenticated = Broker(params, "lab", "lab-a", offers=("lab-a",))
    assert authenticated.queue_to_find("central") == "synkler:lab:inbox:central"
    assert authenticated.queue_to_find("download") == "synkler:lab:inbox:download"
    assert authenticated.queue_to_find("offers:lab-a") is None  # its own offers queue: declared
    assert authenticated.queue_to_find("offers:lab-b") == "synkler:lab:offers:lab-b"
    authenticated._declared.add("central")  # found once: not looked for again on this connection
    assert authenticated.queue_to_find("central") is None
    # Without authentication an agent declares central's and download's queues itself.
    declaring = Broker(params, "lab", "lab-a", peers=("central", "download"))
    assert declaring.queue_to_find("central") is None
    assert declaring.queue_to_find("ghost") == "synkler:lab:inbox:ghost"


def test_a_queue_declared_otherwise_is_an_error_at_once(rt, monkeypatch, caplog):
    broker = rt.broker = FakeBroker(refusing={"ghost"})
    enqueue(rt, "ghost", 1)
    monkeypatch.setattr(outbox.time, "time", lambda: 1000.0)
    caplog.set_level("WARNING", logger="synkler")
    rt.outbox.flush(broker)
    assert [r.levelname for r in caplog.records] == ["ERROR"]


def test_a_lost_connection_is_not_taken_for_a_refusal(rt):
    class Lost(FakeBroker):
        def publish(self, agent: str, body: bytes) -> None:
            raise BrokerError("lost broker connection")

    broker = rt.broker = Lost(set())
    enqueue(rt, "upload", 1)
    with pytest.raises(BrokerError):
        rt.outbox.flush(broker)
    assert rt.outbox.held == {}
    assert len(rt.state.outbox(100)) == 1


def test_an_agent_refused_before_its_start_waits_as_a_standby(rt):
    rt.consumer.rival(AgentActive("q", None))
    assert not rt.stopping
    assert rt.exit_status == ExitStatus.OK


def test_an_agent_whose_queue_another_took_while_the_broker_was_away_stops(rt):
    rt.consumer.started = True
    rt.consumer.rival(AgentActive("q", None))
    assert rt.stopping
    assert rt.exit_status == ExitStatus.FAILURE


def test_an_agent_refused_by_its_own_stale_connection_waits_for_it(rt):
    rt.consumer.started = True
    rt.consumer.rival(AgentActive("q", None, mine=True))
    assert not rt.stopping


class Probe:
    """The standby's look at its queue: `consumers` of it, nothing consumed."""

    def __init__(self, consumers: int):
        self.n = consumers
        self.consuming = False

    def connect(self, *, consume: bool = True) -> None:
        self.consuming = consume

    def consumers(self):
        return self.n, None

    def close(self) -> None:
        pass


def test_a_standby_takes_over_only_once_its_queue_has_had_no_consumer_for_the_grace(rt, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(consumer.time, "time", lambda: now[0])
    rt.consumer.rival(AgentActive("q", None))
    assert rt.consumer.standby
    assert not rt.consumer.free_long_enough(Probe(1))  # the other one is there
    assert not rt.consumer.free_long_enough(Probe(0))  # gone for a moment: a restart, a reconnect
    now[0] += consumer.STANDBY_GRACE / 2
    assert not rt.consumer.free_long_enough(Probe(0))
    assert not rt.consumer.free_long_enough(Probe(1))  # it came back: the grace starts again
    now[0] += consumer.STANDBY_GRACE
    assert not rt.consumer.free_long_enough(Probe(0))
    now[0] += consumer.STANDBY_GRACE - 1
    assert not rt.consumer.free_long_enough(Probe(0))
    now[0] += 1
    probe = Probe(0)
    assert rt.consumer.free_long_enough(probe)
    assert not probe.consuming  # it only looked


def test_a_flood_of_bad_messages_is_logged_ten_a_minute_and_counted(rt, monkeypatch, caplog):
    clock = [5000.0]
    monkeypatch.setattr(inbox.time, "monotonic", lambda: clock[0])
    caplog.set_level("WARNING", logger="synkler")
    for _ in range(25):
        assert rt.inbox.apply(b"not json at all") == ("dead", [])
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if m.startswith("dead-lettering")]) == inbox.DEAD_LOG_BURST
    assert not any("more messages" in m for m in lines)
    clock[0] += inbox.DEAD_LOG_WINDOW
    rt._work([])  # the loop's next pass says how many were not shown
    assert any(
        m.startswith("15 more messages were dead-lettered") for m in (r.getMessage() for r in caplog.records)
    )


class Recorder(Hook):
    """An observer that notes the moments the loop tells it, and what it saw then."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.seen: list[tuple[str, object]] = []

    def in_pass(self, now: float) -> None:
        self.seen.append(("in_pass", self.rt.state._depth > 0))  # inside the pass's transaction

    def after_pass(self, now: float) -> None:
        self.seen.append(("after_pass", len(self.rt.state.outbox(100))))  # the outbox went out first

    def at_stop(self, now: float) -> None:
        self.seen.append(("at_stop", None))

    def after_stop(self) -> None:
        self.seen.append(("after_stop", self.rt.broker))


class Polled(FakeBroker):
    """A broker with nothing to deliver; it says it is not connected: no presence reports."""

    connected = False

    def poll(self, timeout: float) -> list:
        return []

    def close(self) -> None:
        pass


def test_an_observer_hears_of_each_pass_in_its_transaction_and_after_the_outbox_went_out(rt):
    rt.broker = Polled(set())
    recorder = Recorder(rt)
    rt.hooks.hooks.append(recorder)
    with rt.state.transaction():
        rt.agent.startup()
    enqueue(rt, "upload", 2)
    rt._step()
    assert recorder.seen == [("in_pass", True), ("after_pass", 0)]


def test_an_observer_hears_of_an_orderly_stop_before_and_after_the_broker_is_closed(rt):
    rt.broker = Polled(set())
    recorder = Recorder(rt)
    rt.hooks.hooks.append(recorder)
    rt._started = True
    rt._finish()
    assert recorder.seen == [("at_stop", None), ("after_stop", None)]


def test_a_message_waiting_a_moment_for_centrals_announcement_is_not_an_error_but_a_lasting_wait_warns(
    rt, monkeypatch, caplog
):
    from synkler.errors import NotYet, StateUnavailable

    clock = [7000.0]
    monkeypatch.setattr(inbox.time, "monotonic", lambda: clock[0])
    why = [NotYet("admit: central has not yet announced where its directory is")]

    def on_message(msg):
        raise why[0]

    monkeypatch.setattr(rt.agent, "on_message", on_message)
    body = messages.encode(messages.Wait(messages.new_entry_id(), "central", reason="no room"))
    caplog.set_level("DEBUG", logger="synkler")

    def apply():
        with rt.state.transaction():  # as the loop's pass holds one
            return rt.inbox.apply(body)

    def said(level: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == level]

    # Just after a start: the message comes back each second and is acted upon once central reports.
    for _ in range(int(inbox.NOT_YET_PATIENCE) - 1):
        assert apply() == ("requeue", [])
        clock[0] += 1
    assert said("WARNING") == [] and said("ERROR") == []
    assert any(m.startswith("cannot act on a message yet (admit: central has not") for m in said("DEBUG"))
    # Lasting: a warning saying for how long, then once a minute while it lasts, not once a pass.
    for _ in range(2 * int(inbox.NOT_YET_PATIENCE) + 1):
        assert apply() == ("requeue", [])
        clock[0] += 1
    assert said("ERROR") == []
    [first, second] = said("WARNING")
    assert first.startswith("cannot act on messages for 60 seconds (admit: central has not yet announced")
    assert "synkler check" in first and second.startswith("cannot act on messages for 120 seconds")
    # A pause ends the spell: the next wait is a moment again.
    caplog.clear()
    clock[0] += inbox.NOT_YET_GAP + 1
    assert apply() == ("requeue", [])
    assert said("WARNING") == []
    # A state that cannot be written is no moment's wait: an error at once.
    why[0] = StateUnavailable("database is locked")
    assert apply() == ("requeue", [])
    assert said("ERROR") == ["cannot act on a message now (database is locked); it stays queued"]


def test_a_stop_starts_no_queued_job_while_it_waits_for_a_running_one(tmp_path):
    # A pull ends slowly at the stop, while cleanup scripts are queued behind one that runs: none
    # of those starts meanwhile (each would hold the stop up by its run time).
    with central_runtime(tmp_path) as rt:
        workers, ran = rt.workers, []
        script_runs, cancelled = threading.Event(), threading.Event()

        def pull() -> None:
            cancelled.wait(10)  # the queues are cancelled before any pool is waited for
            script_runs.set()  # the running script ends...
            ran.append("pull")

        def script(n: int) -> None:
            if n == 1:
                script_runs.wait(30)
            ran.append(f"script {n}")

        def cancel_then_end_the_pull(executor, real=ThreadPoolExecutor.shutdown, **kw):
            real(executor, **kw)
            if not kw.get("wait", True) and executor is workers._pools[Pool.SCRIPT]:
                cancelled.set()

        with rt.state.transaction():
            workers.submit(Pool.TRANSFER, [], pull, lambda *_: None)
            for n in (1, 2, 3):
                workers.submit(Pool.SCRIPT, [], functools.partial(script, n), lambda *_: None)
        with mock.patch.object(ThreadPoolExecutor, "shutdown", cancel_then_end_the_pull):
            workers.shutdown()
        assert sorted(ran) == ["pull", "script 1"]
