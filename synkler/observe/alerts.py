"""Notices to people: conditions that need someone are told by webhook, email or a command.

A *condition* has a stable key (`entry-failed:<entry id>`, `agent-silent:download`, `disk-full:central`,
`needs-person:ssh`, `dead-letters` ...). Every `check_seconds` the agent's main loop looks at what holds
now (`look`, reading the state database and, at central, the broker) and compares it with the
conditions it told as started (`changes`, pure). A new one is recorded and a *started* notice queued
for every channel; one that no longer holds is removed and a *cleared* notice queued — both in the
main loop's transaction (synkler.state: tables alert_conditions and alert_notices), so a restart
neither repeats nor loses a notice.

Sending is off the main loop, on a worker of its own (the runtime's "alert" pool): per channel, all
queued notices go out as one message once the oldest has waited `group_seconds` (several conditions
that start together make one message) and the channel has sent fewer than `max_per_hour` messages in
the last hour (the rest wait and go out together, listed up to LISTED and counted beyond). A message
that cannot be sent stays queued and is tried again with a growing pause; the relay never waits for
it. The channels themselves are synkler.observe.channels; the message format is documented in
docs/notices.md.

Which agent tells what (so that no condition is told twice): central tells failed entries, stuck
entries, its own disk, dead letters, and silent download and upload agents; download tells a silent
central; upload and download tell their failed cleanup scripts and ssh refusals that need a person.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .. import destinations as dests
from .. import text
from ..agents import FACTS
from ..agents.base import GIVE_UP_ADVICE, PERSON_REPEAT, Cleanup, Key
from ..agents.facts import needs_person_reason
from ..agents.pools import Pool
from ..backoff import backoff
from ..config import Alerts as AlertsConfig
from ..errors import BrokerError, StateUnavailable
from ..linux.fs import free_bytes, total_bytes
from ..text import again, count, shown
from .channels import deliver, when_text
from .hooks import Hook

if TYPE_CHECKING:
    from ..broker.amqp import Broker
    from ..config import Config
    from ..state import Entry, State
    from .report import Report

log = logging.getLogger("synkler")

NOTICE_V = 1
LISTED = 50  # notices listed one by one in a message; the others are counted in `more`
TAKEN = 5000  # notices taken into one message at most (the rest go in the next)
HOUR = 3600.0
STUCK_LISTED = 200  # stuck entries told one by one at most
ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Condition:
    """Something a person should know while it holds: `key` is stable for as long as it does."""

    key: str
    severity: str  # error | warning
    summary: str  # one line
    todo: str  # what to do about it
    details: Mapping[str, Any] = field(default_factory=dict)


# decisions (pure) ----------------------------------------------------------------------------------


def changes(
    told: Collection[str], now_holding: Mapping[str, Condition], unknown: Collection[str] = ()
) -> tuple[list[Condition], list[str]]:
    """(conditions that started, keys that cleared), given the keys told as started and the
    conditions that hold now. A told key under one of the `unknown` prefixes (what could not be
    looked at this time, e.g. the broker was out of reach) neither clears nor starts."""
    started = [c for k, c in sorted(now_holding.items()) if k not in told]
    cleared = [k for k in sorted(told) if k not in now_holding and not k.startswith(tuple(unknown))]
    return started, cleared


def notice(cond: Condition, state: str, now: float, since: float) -> dict[str, Any]:
    """One notice: a condition `state` ("started" | "cleared") at `now`, holding since `since`."""
    return {
        "key": cond.key,
        "state": state,
        "severity": cond.severity,
        "summary": cond.summary,
        "details": dict(cond.details),
        "todo": cond.todo if state == "started" else "Nothing: this condition has cleared.",
        "since": round(since, 3),
        "at": round(now, 3),
    }


def cleared_notice(started: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The notice that a condition told as `started` (its started notice) has cleared."""
    cond = Condition(
        key=str(started.get("key", "")),
        severity=str(started.get("severity", WARNING)),
        summary=str(started.get("summary", "")),
        todo="",
        details=started.get("details") or {},
    )
    return notice(cond, "cleared", now, float(started.get("since") or now))


def free_at(sent: Sequence[float], now: float, per_hour: int) -> float:
    """When a channel that sent messages at `sent` may send the next one (<= now: at once)."""
    recent = sorted(t for t in sent if t > now - HOUR)
    if len(recent) < per_hour:
        return now
    return recent[-per_hour] + HOUR


def due_at(oldest: float, sent: Sequence[float], now: float, cfg: AlertsConfig) -> float:
    """When a channel whose oldest queued notice was queued at `oldest` sends: once that notice has
    waited group_seconds (others that start meanwhile join it) and the rate limit allows."""
    return max(oldest + cfg.group_seconds, free_at(sent, now, cfg.max_per_hour))


def message(
    notices: Sequence[Mapping[str, Any]], who: Mapping[str, str], now: float, *, listed: int = LISTED
) -> dict[str, Any]:
    """The message one send carries: who sends it, a one-line `text` (what chat webhooks show), the
    first `listed` notices and how many more there are."""
    started = sum(1 for n in notices if n.get("state") == "started")
    cleared = len(notices) - started
    head = f"synkler {who.get('instance', '')}/{who.get('agent', '')}"
    if len(notices) == 1:
        n = notices[0]
        text = f"[{head}] {n['state']}: {n['summary']}"
    else:
        parts = [f"{started} started" if started else "", f"{cleared} cleared" if cleared else ""]
        first = next((n for n in notices if n.get("state") == "started"), notices[0])
        text = f"[{head}] {', '.join(p for p in parts if p)}: {first['summary']}, ..."
    return {
        "kind": "synkler-notice",
        "v": NOTICE_V,
        **who,
        "at": round(now, 3),
        "text": text,
        "notices": [dict(n) for n in notices[:listed]],
        "more": max(0, len(notices) - listed),
    }


# conditions (pure, from what the agent has) ----------------------------------------------------------


def _advice(reason: str) -> tuple[str, str]:
    """(hop, what to do) for an entry that failed with `reason` ("<hop>: <why>" when a hop is known)."""
    for hop, advice in GIVE_UP_ADVICE.items():
        if reason.startswith(hop + ":"):
            return hop, advice
    return (
        "",
        "Read the reason and the agent's log, fix the cause, then `synkler retry <entry>` (docs/runbook.md).",
    )


def entry_failed(e: Entry) -> Condition:
    reason = e.reason or ""
    hop, todo = _advice(reason)
    return Condition(
        key=f"entry-failed:{e.id}",
        severity=ERROR,
        summary=f"entry {shown(e.name)} failed" + (f" ({hop})" if hop else ""),
        todo=todo,
        details={"entry": e.id, "name": shown(e.name), "hop": hop, "reason": shown(reason)},
    )


def cleanup_failed(e: Entry, role: str) -> Condition:
    return Condition(
        key=f"cleanup-failed:{e.id}",
        severity=ERROR,
        summary=f"the cleanup script of {shown(e.name)} failed at {role}",
        todo=f"Read the script's output in the {role} agent's log and fix the cause; then "
        f"`synkler retry {shown(e.name)}` on {role} runs it again. The entry itself was delivered.",
        details={"entry": e.id, "name": shown(e.name), "cleanup": e.cleanup, "reason": shown(e.reason or "")},
    )


def stuck(e: Entry, now: float, minutes: float, destination: str | None = None) -> Condition:
    """An entry not delivered stuck_minutes after its offer; with several downloads, one condition
    per destination that has not fetched it yet (the others are not held up by it)."""
    to = f" to {shown(destination)}" if destination else ""
    return Condition(
        key=f"stuck:{e.id}:{destination}" if destination else f"stuck:{e.id}",
        severity=WARNING,
        summary=f"entry {shown(e.name)} not delivered{to} {count(int((now - e.created) // 60), 'minute')} "
        "after its offer",
        todo="See where it waits with `synkler status --relay` (its state and reason); a peer that is "
        "silent, a full disk or a link that is down is told by its own notice.",
        details={
            "entry": e.id,
            "name": shown(e.name),
            "state": e.state,
            "reason": shown(e.reason or ""),
            "stuck_minutes": minutes,
            **({"destination": destination} if destination else {}),
        },
    )


def needs_person(entries: Sequence[Entry], role: str) -> Condition | None:
    if not entries:
        return None
    first = entries[0]
    return Condition(
        key="needs-person:ssh",
        severity=ERROR,
        summary=f"ssh to central refused at {role}: a key, host key or host name needs fixing",
        todo="Run `synkler check` on this host: it tests ssh and rsync to central and says what is "
        "refused. Entries wait and are tried again by themselves once it is fixed.",
        details={"entries waiting": len(entries), "reason": shown(first.reason or "")},
    )


def silent(
    role: str, name: str, report: Report | None, now: float, minutes: float, every: float
) -> Condition | None:
    """An agent whose latest presence report is older than `minutes` (and 3 report intervals)."""
    if report is None:
        return None  # never ran under this id: nothing to miss
    at = report.at
    if not at or now - at <= max(minutes * 60, 3 * every):  # no time in it: nothing to judge
        return None
    stopped = report.stopped
    how = "stopped" if stopped else "silent"
    return Condition(
        key=f"agent-silent:{name}",
        severity=ERROR,
        summary=f"{role} agent {shown(name)} {how} for {count(int((now - at) // 60), 'minute')}",
        todo=f"Start the {role} agent {shown(name)} on {shown(report.host)} "
        "(`systemctl status synkler@...`, or its log); entries wait for it meanwhile.",
        details={
            "agent": name,
            "host": shown(report.host),
            "last report": when_text(at),
            "stopped": bool(stopped),
        },
    )


def disk_full(free: int, total: int, warn: float, role: str) -> Condition | None:
    if total <= 0:
        return None
    used = 100.0 * (total - free) / total
    if used < warn:
        return None
    return Condition(
        key=f"disk-full:{role}",
        severity=WARNING,
        summary=f"{role}'s file system is {used:.0f} % full",
        todo="Free space on it or give it more; entries that do not fit wait (docs/runbook.md, 'Disk full').",
        details={
            "used percent": round(used, 1),
            "free bytes": free,
            "total bytes": total,
            "warn percent": warn,
        },
    )


def broker_login(refused: str | None, role: str, user: str) -> Condition | None:
    if refused is None:
        return None
    return Condition(
        key="needs-person:broker",
        severity=ERROR,
        summary=f"the broker refuses the login of the {role} agent (user {shown(user)})",
        todo="Fix broker_username / broker_password(_file) or the user on the broker (`synkler "
        "broker-setup` prints the commands; `synkler check` tests the login). The agent tries again "
        "by itself.",
        details={"user": shown(user), "reason": shown(refused)},
    )


def dead_letters(count: int | None) -> Condition | None:
    if not count:
        return None
    return Condition(
        key="dead-letters",
        severity=WARNING,
        summary=f"{text.count(count, 'message')} in the dead-letter queue",
        todo="Read why in the agents' logs (`dead-lettering a message: ...`) and look at the messages in "
        "the queue synkler:<id>:dead (docs/runbook.md, 'Dead-letter queue'); then purge it.",
        details={"messages": count},
    )


def test_condition(cfg: Config) -> Condition:
    """The notice `synkler alerts test` sends: a channel works if it arrives."""
    return Condition(
        key="test",
        severity=WARNING,
        summary=f"a test notice from {cfg.mode} agent {shown(cfg.name)}: this channel works",
        todo="Nothing: `synkler alerts test` sent it to try the channel.",
        details={"config": shown(str(cfg.path))},
    )


def sender(cfg: Config, role: str) -> dict[str, str]:
    """Who a message is from (its instance, role, agent and host fields)."""
    return {"instance": cfg.id, "role": role, "agent": cfg.name, "host": socket.gethostname()}


# the shell -----------------------------------------------------------------------------------------


class Runner(Protocol):
    """What alerts need of the runtime (synkler.runtime.loop)."""

    cfg: Config
    state: State
    broker: Broker | None

    @property
    def login_refused(self) -> str | None:
        """Why the broker refuses this agent's login (None: it does not)."""

    def submit(self, pool: Pool, keys: Sequence[Key], work: Any, done: Any) -> None: ...

    def busy(self, key: Key) -> bool: ...


class Alerts:
    """Looks at conditions on a timer, records them, and sends the queued notices."""

    def __init__(self, runtime: Runner, role: str):
        self.runtime = runtime
        self.cfg = runtime.cfg.alerts
        self.role = role
        self.next_look = 0.0
        self.sent: dict[str, list[float]] = {}  # channel -> when its messages went out (the last hour)
        self.failures: dict[str, int] = {}  # channel -> failed sends in a row
        self.retry_at: dict[str, float] = {}  # channel -> no send before
        self.told: dict[str, float] = {}  # channel -> last ERROR about it (monotonic)
        self._complained = float("-inf")

    @property
    def enabled(self) -> bool:
        return self.cfg is not None and bool(self.cfg.channels)

    def tick(self, now: float) -> None:
        """In the main loop's transaction: look at the conditions if due, start due sends."""
        if self.cfg is None or not self.cfg.channels:
            return
        if now >= self.next_look:
            self.next_look = now + self.cfg.check_seconds
            holding, unknown = self.look(now)
            self.record(holding, unknown, now)
        self.send_due(now)

    # conditions ------------------------------------------------------------------------------------

    def look(self, now: float) -> tuple[dict[str, Condition], list[str]]:
        """The conditions that hold now, and the key prefixes that could not be looked at."""
        assert self.cfg is not None
        state, cfg, role = self.runtime.state, self.runtime.cfg, self.role
        facts = FACTS[role]
        found: list[Condition | None] = []
        unknown: list[str] = []
        if role == "central":
            found += [entry_failed(e) for e in state.by_state(facts.failed)]
            offered_before = now - self.cfg.stuck_minutes * 60
            on_the_way = [s for s in facts.unfinished if s != facts.failed]
            waiting = state.listed(on_the_way, limit=STUCK_LISTED)
            for e in waiting:
                if e.created < offered_before:
                    found += [stuck(e, now, self.cfg.stuck_minutes, d) for d in self._stuck_at(e)]
            try:
                found.append(
                    disk_full(
                        free_bytes(cfg.file_dir), total_bytes(cfg.file_dir), self.cfg.disk_warn_percent, role
                    )
                )
            except OSError:
                unknown.append("disk-full:")
        else:
            found += [cleanup_failed(e, role) for e in state.by_cleanup(Cleanup.FAILED)]
            marked = state.reason_like(needs_person_reason("%", "%"), sorted(facts.transferring), 100)
            found.append(needs_person(marked, role))
        found.append(broker_login(self.runtime.login_refused, role, cfg.broker_username))
        found += self._from_broker(now, unknown)
        return {c.key: c for c in found if c is not None}, unknown

    def _stuck_at(self, e: Entry) -> list[str | None]:
        """Where a stuck entry waits: with routes, each destination that has not fetched it (once
        stored: before that it waits for upload, which is one place); else one place, unnamed."""
        cfg = self.runtime.cfg
        if not cfg.routes or not e.path:
            return [None]
        return list(dests.waiting_for(dests.of(self.runtime.state, e.id, cfg.download_name))) or [None]

    def _from_broker(self, now: float, unknown: list[str]) -> list[Condition | None]:
        """Silent peers and dead letters, from what the broker holds (central; download: central)."""
        from .report import INTERVAL, Report

        assert self.cfg is not None
        cfg = self.runtime.cfg
        if self.role == "central":
            peers = [("download", d) for d in cfg.destinations] + [
                ("upload", p) for p in self.runtime.state.peers(64)
            ]
        elif self.role == "download":
            peers = [("central", cfg.central_name)]
        else:
            return []
        broker = self.runtime.broker
        if broker is None or not broker.connected:
            unknown += ["agent-silent:", "dead-letters"]
            return []
        out: list[Condition | None] = []
        try:
            for role, name in peers:
                report = Report.decode(broker.peek_presence(name))
                out.append(silent(role, name, report, now, self.cfg.silent_minutes, INTERVAL))
            if self.role == "central":
                out.append(dead_letters(broker.dead_count()))
        except BrokerError:
            unknown += ["agent-silent:", "dead-letters"]
            return []
        return out

    def record(self, holding: Mapping[str, Condition], unknown: Collection[str], now: float) -> None:
        """Record what started and cleared and queue its notices, in the current transaction."""
        assert self.cfg is not None
        state = self.runtime.state
        told = state.open_conditions()
        started, cleared = changes(told, holding, unknown)
        out: list[dict[str, Any]] = []
        for cond in started:
            n = notice(cond, "started", now, now)
            state.condition_started(cond.key, now, json.dumps(n))
            out.append(n)
            log.log(logging.ERROR if cond.severity == ERROR else logging.WARNING, "alert: %s", cond.summary)
        for key in cleared:
            try:
                first = json.loads(told[key][1])
            except ValueError:
                first = {"key": key, "summary": key, "since": told[key][0]}
            n = cleared_notice(first, now)
            state.condition_cleared(key)
            out.append(n)
            log.info("alert cleared: %s", n["summary"])
        for channel in self.cfg.channels:
            for n in out:
                state.queue_notice(channel, json.dumps(n), now)

    # sending ---------------------------------------------------------------------------------------

    def send_due(self, now: float) -> None:
        assert self.cfg is not None
        for name, channel in self.cfg.channels.items():
            if self.runtime.busy(Key("alert", name)) or now < self.retry_at.get(name, 0.0):
                continue
            rows = self.runtime.state.notices(name, TAKEN)
            if not rows:
                continue
            sent = self.sent.setdefault(name, [])
            sent[:] = [t for t in sent if t > now - HOUR]
            if now < due_at(min(r[2] for r in rows), sent, now, self.cfg):
                continue
            notices = [json.loads(r[1]) for r in rows]
            msg = message(notices, self.who(), now)
            seqs = [r[0] for r in rows]
            self.runtime.submit(
                Pool.ALERT,
                [Key("alert", name)],
                lambda channel=channel, msg=msg: deliver(channel, msg),
                lambda _outcome, error, name=name, seqs=seqs, now=now: self._ended(name, seqs, error, now),
            )

    def who(self) -> dict[str, str]:
        return sender(self.runtime.cfg, self.role)

    def _ended(self, name: str, seqs: list[int], error: BaseException | None, now: float) -> None:
        """In the main loop: a send begun at `now` ended. Sent: forget its notices. Not: keep them,
        try again later."""
        if error is None:
            self.runtime.state.notices_sent(seqs)
            self.sent.setdefault(name, []).append(now)
            if self.failures.pop(name, 0):
                log.warning("alerts: notices go out by %s again", name)
            self.retry_at.pop(name, None)
            return
        failures = self.failures.get(name, 0) + 1
        self.failures[name] = failures
        delay = backoff(failures, base=5, cap=600)
        self.retry_at[name] = now + delay
        mono = time.monotonic()
        level = logging.WARNING
        if failures >= 3 and mono - self.told.get(name, float("-inf")) >= PERSON_REPEAT:
            self.told[name] = mono
            level = logging.ERROR  # it has lasted: a person must look (said again every 10 minutes)
        elif failures > 1:
            level = logging.DEBUG
        log.log(
            level,
            "alerts: cannot send %s by %s (%s); trying again in %.0f s%s",
            count(len(seqs), "notice"),
            name,
            error,
            delay,
            again(failures),
        )


class AlertsHook(Hook):
    """The alerts in the loop: conditions looked at and due notices started in each pass, and
    before the start too (a broker that refuses the login is told). A failure here costs only
    this look (said every PERSON_REPEAT seconds), never the relay's work."""

    def __init__(self, alerts: Alerts):
        self.alerts = alerts
        self._complained = float("-inf")

    def in_pass(self, now: float) -> None:
        if not self.alerts.enabled:
            return
        try:
            with self.alerts.runtime.state.savepoint():
                self.alerts.tick(now)
        except Exception:
            if now - self._complained >= PERSON_REPEAT:
                self._complained = now
                log.exception(
                    "error while looking at the conditions for alerts (said again every 10 minutes)"
                )

    def waiting(self, now: float) -> None:
        if not self.alerts.enabled:
            return
        try:
            with self.alerts.runtime.state.transaction():
                self.in_pass(now)
        except (StateUnavailable, OSError) as e:
            log.debug("alerts not looked at: %s", e)
