"""The whole relay seen from any host: `synkler status --relay`.

Assembled from what the agents report through the broker (synkler.observe.presence) and what the broker
tells of their queues; no other connection. `collect` is the thin shell that reads the broker
(declaring nothing: a mistyped id creates no queue); `assemble`, `verdict` and `render` are pure.
The JSON view (`assemble`'s result, version `VIEW_V`) is documented in docs/operations.md.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..agents import FACTS
from ..agents.base import RERUN, Cleanup
from ..agents.central import Mid
from ..agents.facts import LINK_DOWN, NEEDS_PERSON
from ..text import shown
from .presence import INTERVAL
from .progress import Progress, duration_text, size_text

if TYPE_CHECKING:
    from ..config import Config

VIEW_V = 1
ROLES = ("upload", "central", "download")
SILENT_INTERVALS = 3  # an agent whose last report is older than this many of its intervals is silent
SILENT_MIN = 15.0  # ... and at least this many seconds
FINISHED_SHOWN = 5  # finished entries shown without --all
SHOWN_REASON = 160  # characters of a reason in the text view


# reading reports -----------------------------------------------------------------------------------


def parse_report(body: bytes | None) -> dict[str, Any] | None:
    """A presence report (or an older agent's holder record) as a dict; None if there is none or it
    is not one (anyone allowed on the broker could have written it: nothing in it is trusted)."""
    if body is None:
        return None
    try:
        d = json.loads(body)
    except ValueError:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("host"), str):
        return None
    return d


def _num(d: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = d.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _int(d: Mapping[str, Any], key: str) -> int:
    return int(_num(d, key))


def _str(d: Mapping[str, Any], key: str) -> str:
    value = d.get(key)
    return value if isinstance(value, str) else ""


def _ints(value: object) -> dict[str, int]:
    """A dict of counts (entries per state, bytes of a disk), keeping only what is one."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}


def _list(d: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = d.get(key)
    return [x for x in value if isinstance(x, dict)] if isinstance(value, list) else []


# assembling ----------------------------------------------------------------------------------------


def agent_status(report: Mapping[str, Any] | None, now: float) -> tuple[str, float | None]:
    """("running" | "stopped" | "silent" | "never seen", when it was last heard from)."""
    if report is None:
        return "never seen", None
    at = _num(report, "at", _num(report, "since"))  # a holder record has no "at": since is its time
    if _num(report, "stopped"):
        return "stopped", at
    every = _num(report, "every", INTERVAL) or INTERVAL
    if now - at > max(SILENT_MIN, SILENT_INTERVALS * every):
        return "silent", at
    return "running", at


def assemble(
    instance: str,
    agents: list[tuple[str, str]],
    reports: Mapping[str, Mapping[str, Any] | None],
    queues: Mapping[str, tuple[int, int] | None],
    dead: int | None,
    now: float,
    *,
    seen_from: tuple[str, str] | None = None,
    all_finished: bool = False,
) -> dict[str, Any]:
    """The relay view: `agents` (role, name) in order, each one's report (None: none) and queue
    ((messages, consumers), None: no queue), the dead letters, at `now`."""
    agent_rows = []
    for role, name in agents:
        report = reports.get(name)
        status, heard = agent_status(report, now)
        q = queues.get(name)
        row: dict[str, Any] = {"role": role, "name": name, "status": status, "heard": heard}
        if report is not None:
            row.update(
                host=_str(report, "host"),
                pid=_int(report, "pid"),
                version=_str(report, "version"),
                since=_num(report, "since") or None,
                stopped=_num(report, "stopped") or None,
                counts=_ints(report.get("counts")),
                unfinished=_int(report, "unfinished"),
                oldest=_num(report, "oldest") or None,
                outbox=_int(report, "outbox"),
                transfers=_int(report, "transfers"),
                hashes=_int(report, "hashes"),
                disk=_ints(report.get("disk")) or None,
                left_out=_int(report, "left_out"),
            )
        row["queue"] = None if q is None else {"messages": q[0], "consumers": q[1]}
        agent_rows.append(row)

    entries: dict[str, dict[str, Any]] = {}
    for role, name in agents:
        report = reports.get(name)
        if report is None:
            continue
        for listed, done in ((_list(report, "entries"), False), (_list(report, "finished"), True)):
            for r in listed:
                entry_id = _str(r, "id")
                if not entry_id:
                    continue
                e = entries.setdefault(
                    entry_id,
                    {
                        "id": entry_id,
                        "name": _str(r, "name"),
                        "size": _int(r, "size"),
                        "finished": True,
                        "created": _num(r, "created"),
                        "updated": 0.0,
                        "roles": {},
                    },
                )
                if role == "upload" or not e["name"]:
                    e["name"] = _str(r, "name")  # upload's name is the entry's; download's may differ
                e["finished"] = e["finished"] and done
                e["updated"] = max(e["updated"], _num(r, "updated"))
                place = {
                    "agent": name,
                    "state": _str(r, "state"),
                    "attempt": _int(r, "attempt"),
                    "tries": _int(r, "tries"),
                    "retry_at": _num(r, "due") if _int(r, "tries") and _num(r, "due") > now else None,
                    "reason": _str(r, "reason"),
                }
                for key in ("stored_as", "cleanup"):
                    if _str(r, key):
                        place[key] = _str(r, key)
                if isinstance(r.get("progress"), dict):
                    place["progress"] = r["progress"]
                e["roles"][role] = place
    unfinished = sorted((e for e in entries.values() if not e["finished"]), key=lambda e: e["created"])
    finished = sorted((e for e in entries.values() if e["finished"]), key=lambda e: -e["updated"])
    view: dict[str, Any] = {
        "kind": "synkler-relay-view",
        "v": VIEW_V,
        "instance": instance,
        "at": round(now, 3),
        "seen_from": None if seen_from is None else {"role": seen_from[0], "agent": seen_from[1]},
        "agents": agent_rows,
        "entries": unfinished + (finished if all_finished else finished[:FINISHED_SHOWN]),
        "finished_listed": len(finished),
        "broker": {
            "queues": [
                {"agent": name, "messages": q[0], "consumers": q[1]}
                if q
                else {"agent": name, "exists": False}
                for name, q in ((n, queues.get(n)) for _, n in agents)
            ],
            "dead_letters": dead,
        },
    }
    view["problems"] = problems(view, now)
    view["verdict"] = verdict(view, now)
    return view


# the verdict ---------------------------------------------------------------------------------------


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def problems(view: Mapping[str, Any], now: float) -> list[str]:
    """What needs a look, worst first; empty when all flows."""
    out: list[str] = []
    agents = view["agents"]
    by_role: dict[str, list[dict[str, Any]]] = {}
    for a in agents:
        by_role.setdefault(a["role"], []).append(a)
    seen = [a for a in agents if a["status"] != "never seen"]
    never = [a for a in agents if a["status"] == "never seen"]
    if not seen:
        out.append(
            f"no agent of instance '{shown(view['instance'])}' has reported: is the id right? do they run?"
        )
    elif never:
        names = " and ".join(
            a["role"] if a["name"] == a["role"] else f"{a['role']} '{shown(a['name'])}'" for a in never
        )
        out.append(
            f"{names} never seen under instance '{shown(view['instance'])}': is the id right on every host?"
        )
    central = (by_role.get("central") or [{}])[0].get("counts", {})
    for a in agents:
        label = a["role"] if a["name"] == a["role"] else f"{a['role']} '{shown(a['name'])}'"
        waiting = _waiting_for(a, central, agents)
        tail = f": {_count(waiting, 'entry')} {'waits' if waiting == 1 else 'wait'} for it" if waiting else ""
        if a["status"] == "silent":
            out.append(f"{label} silent for {duration_text(now - (a['heard'] or now))}{tail}")
        elif a["status"] == "stopped":
            out.append(f"{label} stopped {duration_text(now - (a['stopped'] or now))} ago{tail}")
    failed: set[str] = set()
    person: dict[str, int] = {}
    disk: dict[str, int] = {}
    link: dict[str, int] = {}
    for e in view["entries"]:
        for role, place in e["roles"].items():
            facts = FACTS[role]
            if place["state"] == facts.failed:
                failed.add(e["id"])
            reason = place["reason"]
            if e["finished"] or not reason:
                continue
            if NEEDS_PERSON in reason:
                person[role] = person.get(role, 0) + 1
            elif any(marker in reason for marker in facts.disk_waits):
                disk[role] = disk.get(role, 0) + 1
            elif LINK_DOWN in reason:
                link[role] = link.get(role, 0) + 1
    n_failed = max([len(failed)] + [a.get("counts", {}).get(FACTS[a["role"]].failed, 0) for a in agents])
    if n_failed:
        out.append(f"{n_failed} failed: a person must look (synkler status on the hosts says why)")
    out += [f"{_count(n, 'entry')} need a person at {role}" for role, n in person.items()]
    out += [f"{n} waiting for disk at {role}" for role, n in disk.items()]
    out += [f"{n} waiting for the link to central at {role}" for role, n in link.items()]
    dead = view["broker"]["dead_letters"]
    if dead:
        out.append(f"{_count(dead, 'dead-lettered message')} in {shown('synkler:' + view['instance'])}:dead")
    return out


def _waiting_for(agent: Mapping[str, Any], central: Mapping[str, int], agents: list[dict[str, Any]]) -> int:
    """How many entries wait for a stopped or silent agent, as the others report them."""
    if agent["role"] == "download":
        return int(central.get(Mid.DOWNLOADING.value, 0))
    if agent["role"] == "central":
        return sum(a.get("unfinished", 0) for a in agents if a["role"] == "upload")
    return int(central.get(Mid.UPLOADING.value, 0)) if agent["role"] == "upload" else 0


def verdict(view: Mapping[str, Any], now: float) -> str:
    """One line: the problems, or that all flows and how much is in flight."""
    found = view.get("problems")
    if found is None:
        found = problems(view, now)
    if found:
        return "; ".join(found)
    moving = sum(1 for e in view["entries"] if not e["finished"])
    if not moving:
        return "all flowing, nothing in flight"
    transfers = sum(1 for e in view["entries"] for p in e["roles"].values() if "progress" in p)
    return f"all flowing: {_count(moving, 'entry')} in flight" + (
        f", {transfers} moving now" if transfers else ""
    )


# the text view -------------------------------------------------------------------------------------


def _clock(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    t = datetime.datetime.fromtimestamp(ts)
    same_day = t.date() == datetime.datetime.fromtimestamp(now).date()
    return t.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M")


def _progress_text(p: Mapping[str, Any]) -> str:
    try:
        return Progress(
            str(p.get("what", "")), int(p["done"]), int(p["total"]), p.get("rate"), p.get("eta"), 0.0
        ).text()
    except (KeyError, TypeError, ValueError):
        return ""


def _place_text(place: Mapping[str, Any] | None, now: float) -> str:
    if place is None:
        return "-"
    parts = [shown(place["state"])]
    if place["attempt"] > 1:
        parts.append(f"attempt {place['attempt']}")
    if place["tries"]:
        parts.append(f"try {place['tries']}")
    if place.get("retry_at"):
        parts.append(f"retry {_clock(place['retry_at'], now)}")
    if place.get("cleanup") in (*RERUN, Cleanup.SKIPPED):
        parts.append(f"cleanup {place['cleanup']}")
    if "progress" in place:
        parts.append(_progress_text(place["progress"]))
    return " ".join(parts[:1]) + (" (" + ", ".join(parts[1:]) + ")" if parts[1:] else "")


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def render(view: Mapping[str, Any], now: float) -> list[str]:
    """The view as lines of text for a person (names and reasons escaped)."""
    seen_from = view.get("seen_from")
    where = f", seen from {seen_from['role']} '{shown(seen_from['agent'])}'" if seen_from else ""
    lines = [
        f"relay '{shown(view['instance'])}': {view['verdict']}",
        f"({_clock(view['at'], now)}{where})",
        "",
    ]
    rows = [["ROLE", "NAME", "HOST", "VERSION", "STATUS", "SINCE", "HEARD", "QUEUE", "FIGURES"]]
    for a in view["agents"]:
        status = a["status"]
        if status == "stopped":
            status = f"stopped {_clock(a.get('stopped'), now)}"
        heard = f"{duration_text(now - a['heard'])} ago" if a.get("heard") else "-"
        q = a["queue"]
        queue = (
            "-"
            if q is None
            else f"{q['messages']} msg, {q['consumers']} consumer" + ("" if q["consumers"] == 1 else "s")
        )
        figures = []
        if a.get("counts"):
            figures.append(" ".join(f"{k} {v}" for k, v in sorted(a["counts"].items())))
        if a.get("outbox"):
            figures.append(f"outbox {a['outbox']}")
        if a.get("oldest"):
            figures.append(f"oldest unfinished {duration_text(now - a['oldest'])}")
        disk = a.get("disk")
        if isinstance(disk, dict) and a["role"] == "central":
            free, reserve = int(disk.get("free", 0)), int(disk.get("reserve", 0))
            figures.append(f"free {size_text(free)} (reserve {size_text(reserve)})")
        rows.append(
            [
                a["role"],
                shown(a["name"]),
                shown(a.get("host", "-")),
                shown(a.get("version", "-")),
                status,
                _clock(a.get("since"), now),
                heard,
                queue,
                "; ".join(figures),
            ]
        )
    lines += _table(rows)
    unfinished = [e for e in view["entries"] if not e["finished"]]
    finished = [e for e in view["entries"] if e["finished"]]
    left = {a["role"]: a.get("left_out", 0) for a in view["agents"] if a.get("left_out")}
    head = f"{_count(len(unfinished), 'unfinished entry')}"
    if left:
        head += " listed (" + ", ".join(f"{role} has {n} more" for role, n in left.items()) + ")"
    head += f"; {len(finished)} of the {view['finished_listed']} latest finished shown"
    lines += ["", head]
    if view["entries"]:
        rows = [["NAME", "SIZE", *(r.upper() for r in ROLES)]]
        notes: dict[int, list[str]] = {}
        for e in view["entries"]:
            rows.append(
                [
                    shown(e["name"]),
                    size_text(e["size"]),
                    *(_place_text(e["roles"].get(r), now) for r in ROLES),
                ]
            )
            notes[len(rows) - 1] = [
                f"    {role}: {shown(place['reason'][:SHOWN_REASON])}"
                for role, place in e["roles"].items()
                if place["reason"] and not e["finished"]
            ]
        table = _table(rows)
        for i, line in enumerate(table):
            lines.append(line.rstrip())
            lines += notes.get(i, [])
    dead = view["broker"]["dead_letters"]
    lines += ["", f"broker: dead letters {'-' if dead is None else dead}"]
    return lines


# the shell -----------------------------------------------------------------------------------------


def collect(cfg: Config, *, all_finished: bool = False) -> dict[str, Any]:
    """Read every agent's report and queue through the broker and assemble the view."""
    from ..broker.amqp import Broker, BrokerParams

    broker = Broker(BrokerParams.from_config(cfg), cfg.id, cfg.name)
    broker.connect(consume=False, declare=False)
    try:
        reports = {name: parse_report(broker.peek_presence(name)) for name in ("central", "download")}
        peers = (reports["central"] or {}).get("peers")
        uploads = {p for p in peers if isinstance(p, str)} if isinstance(peers, list) else set()
        if cfg.mode == "upload":
            uploads.add(cfg.name)
        for name in sorted(uploads | {"upload"}):
            reports[name] = parse_report(broker.peek_presence(name))
        if not uploads or reports["upload"] is not None:
            uploads.add("upload")  # the default name, when central has named no peer yet
        agents = [("upload", n) for n in sorted(uploads)] + [("central", "central"), ("download", "download")]
        queues = {name: broker.queue_info(name) for _, name in agents}
        dead = broker.dead_count()
    finally:
        broker.close()
    return assemble(
        cfg.id,
        agents,
        reports,
        queues,
        dead,
        time.time(),
        seen_from=(cfg.mode, cfg.name),
        all_finished=all_finished,
    )


def cmd_relay(cfg: Config, *, as_json: bool, watch: bool, all_finished: bool, interval: float = 2.0) -> int:
    """`synkler status --relay [--json] [--watch] [--all]`."""
    import sys

    from ..errors import BrokerError, ExitStatus

    if not watch:
        view = collect(cfg, all_finished=all_finished)
        if as_json:
            print(json.dumps(view, indent=2, ensure_ascii=True))
        else:
            print("\n".join(render(view, view["at"])))
        return ExitStatus.OK

    def screen_text() -> str:
        try:
            view = collect(cfg, all_finished=all_finished)
        except BrokerError as e:
            return f"relay '{shown(cfg.id)}': cannot read the broker: {shown(str(e))}; trying again"
        return "\n".join(render(view, view["at"]))

    from ..cli.screen import watch as watch_screen

    return watch_screen(screen_text, interval, sys.stdout)
