"""The whole relay seen from any host: what `synkler status --relay` shows (synkler.cli.relay).

Assembled from what the agents report through the broker (synkler.observe.report.Report) and what
the broker tells of their queues; no other connection. Everything here is pure: `assemble` joins the
reports into the view, `problems` and `verdict` judge it, `render` writes it for a person. The JSON
view (`assemble`'s result, version `VIEW_V`) is documented in docs/status.md ("The JSON view").
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from ..agents import FACTS
from ..agents.base import Cleanup
from ..agents.central import Mid
from ..agents.endpoint import RERUN
from ..agents.facts import LINK_DOWN, NEEDS_PERSON
from ..text import count, shown
from .progress import Progress, duration_text, size_text
from .report import Listed, Report

VIEW_V = 1
ROLES = ("upload", "central", "download")
SILENT_INTERVALS = 3  # an agent whose last report is older than this many of its intervals is silent
SILENT_MIN = 15.0  # ... and at least this many seconds
FINISHED_SHOWN = 5  # finished entries shown without --all
SHOWN_REASON = 160  # characters of a reason in the text view

Queue = tuple[int, int]  # an agent's queue: (messages, consumers)


# assembling ----------------------------------------------------------------------------------------


def agent_status(report: Report | None, now: float) -> tuple[str, float | None]:
    """("running" | "stopped" | "silent" | "never seen", when it was last heard from)."""
    if report is None:
        return "never seen", None
    if report.stopped:
        return "stopped", report.at
    if now - report.at > max(SILENT_MIN, SILENT_INTERVALS * report.every):
        return "silent", report.at
    return "running", report.at


def pool_room(report: Report | None, now: float) -> tuple[int, float] | None:
    """A central of a pool as its report says now: (the offers it may take, the bytes it may still
    take above its reserve); None unless it is running (heard lately, not stopped, not draining)
    and says both."""
    if report is None or report.room is None or report.draining or report.disk is None:
        return None
    if agent_status(report, now)[0] != "running":
        return None
    return report.room, float(report.disk.free - report.disk.reserve)


def _agent_row(
    role: str, name: str, report: Report | None, queue: Queue | None, now: float
) -> dict[str, Any]:
    status, heard = agent_status(report, now)
    if report is not None and report.draining and status == "running":
        status = "draining"  # a central of a pool that takes no new offers (`synkler drain`)
    row: dict[str, Any] = {"role": role, "name": name, "status": status, "heard": heard}
    if report is not None:
        row.update(
            host=report.host,
            pid=report.pid,
            version=report.version,
            since=report.since or None,
            stopped=report.stopped,
            counts=dict(report.counts),
            unfinished=report.unfinished,
            oldest=report.oldest,
            outbox=report.outbox,
            transfers=report.transfers,
            hashes=report.hashes,
            disk=None if report.disk is None else report.disk.encode(),
            left_out=report.left_out,
        )
        if report.room is not None:
            row["room"] = report.room  # a central of a pool: the offers it may take now
    row["queue"] = None if queue is None else {"messages": queue[0], "consumers": queue[1]}
    return row


def _place(listed: Listed, agent: str, now: float) -> dict[str, Any]:
    """Where an entry is at one role, as its report lists it."""
    place: dict[str, Any] = {
        "agent": agent,
        "state": listed.state,
        "attempt": listed.attempt,
        "tries": listed.tries,
        "retry_at": listed.due if listed.tries and listed.due > now else None,
        "reason": listed.reason,
    }
    if listed.stored_as:
        place["stored_as"] = listed.stored_as
    if listed.cleanup:
        place["cleanup"] = listed.cleanup
    if listed.progress is not None:
        place["progress"] = listed.progress.as_dict()
    return place


def _join(
    agents: list[tuple[str, str]], reports: Mapping[str, Report | None], now: float
) -> dict[str, dict[str, Any]]:
    """Entry id -> the entry with its place at each role that lists it. An entry is finished when
    no role lists it as unfinished."""
    entries: dict[str, dict[str, Any]] = {}
    owners: dict[str, Listed] = {}  # a pool: the row of the central that owns each entry
    for role, name in agents:
        report = reports.get(name)
        if report is None:
            continue
        for listed, done in ((report.entries, False), (report.finished, True)):
            for r in listed:
                e = entries.setdefault(
                    r.id,
                    {
                        "id": r.id,
                        "name": r.name,
                        "size": r.size,
                        "finished": True,
                        "created": r.created,
                        "updated": 0.0,
                        "roles": {},
                    },
                )
                if role == "upload" or not e["name"]:
                    e["name"] = r.name  # upload's name is the entry's; download's may differ
                if r.bundle:
                    e["bundle"] = r.bundle  # how many files the bundle holds
                e["finished"] = e["finished"] and done
                e["updated"] = max(e["updated"], r.updated)
                if role == "download" and "download" in e["roles"]:  # another destination of it
                    e.setdefault("destinations", {})[name] = _place(r, name, now)
                elif role != "central" or _owns(r, owners.get(r.id)):
                    e["roles"][role] = _place(r, name, now)
                    if role == "central":
                        owners[r.id] = r
                if r.at:
                    e["at"] = dict(r.at)  # central's rows: where it stands at each destination
    return entries


def _owns(listed: Listed, other: Listed | None) -> bool:
    """A pool of centrals: is this central's row of an entry the owner's, rather than `other`
    (another central's)? One that dropped the entry (re-owned from it: `forgotten`) is not; of the
    others, the one that acted on it last (the new owner's rows are newer than those a lost central
    last reported)."""
    if other is None:
        return True
    if (listed.state == Mid.FORGOTTEN) != (other.state == Mid.FORGOTTEN):
        return listed.state != Mid.FORGOTTEN
    return listed.updated > other.updated


def assemble(
    instance: str,
    agents: list[tuple[str, str]],
    reports: Mapping[str, Report | None],
    queues: Mapping[str, Queue | None],
    dead: int | None,
    now: float,
    *,
    seen_from: tuple[str, str] | None = None,
    all_finished: bool = False,
) -> dict[str, Any]:
    """The relay view: `agents` (role, name) in order, each one's report (None: none) and queue
    ((messages, consumers), None: no queue), the dead letters, at `now`."""
    entries = _join(agents, reports, now).values()
    unfinished = sorted((e for e in entries if not e["finished"]), key=lambda e: e["created"])
    finished = sorted((e for e in entries if e["finished"]), key=lambda e: -e["updated"])
    view: dict[str, Any] = {
        "kind": "synkler-relay-view",
        "v": VIEW_V,
        "instance": instance,
        "at": round(now, 3),
        "seen_from": None if seen_from is None else {"role": seen_from[0], "agent": seen_from[1]},
        "agents": [_agent_row(role, name, reports.get(name), queues.get(name), now) for role, name in agents],
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


def _label(agent: Mapping[str, Any]) -> str:
    return agent["role"] if agent["name"] == agent["role"] else f"{agent['role']} '{shown(agent['name'])}'"


def _agent_problems(view: Mapping[str, Any], now: float) -> list[str]:
    """Agents that never reported, stopped or went silent, and what waits for them."""
    out: list[str] = []
    agents = view["agents"]
    instance = shown(view["instance"])
    seen = [a for a in agents if a["status"] != "never seen"]
    never = [a for a in agents if a["status"] == "never seen"]
    if not seen:
        out.append(f"no agent of instance '{instance}' has reported: is the id right? do they run?")
    elif never:
        names = " and ".join(map(_label, never))
        out.append(f"{names} never seen under instance '{instance}': is the id right on every host?")
    central: dict[str, int] = {}  # the centrals' counts (a pool's added up)
    for a in agents:
        if a["role"] == "central":
            for state, n in a.get("counts", {}).items():
                central[state] = central.get(state, 0) + n
    for a in agents:
        waiting = _waiting_for(a, central, agents)
        tail = f": {count(waiting, 'entry')} {'waits' if waiting == 1 else 'wait'} for it" if waiting else ""
        if a["status"] == "silent":
            out.append(f"{_label(a)} silent for {duration_text(now - (a['heard'] or now))}{tail}")
        elif a["status"] == "stopped":
            out.append(f"{_label(a)} stopped {duration_text(now - (a['stopped'] or now))} ago{tail}")
    return out


def _entry_problems(view: Mapping[str, Any]) -> list[str]:
    """Failed entries, and unfinished ones that wait for a person, for disk space or for the link."""
    failed: set[str] = set()
    waits: dict[str, dict[str, int]] = {"person": {}, "disk": {}, "link": {}}
    for e in view["entries"]:
        for role, place in e["roles"].items():
            facts = FACTS[role]
            if place["state"] == facts.failed:
                failed.add(e["id"])
            reason = place["reason"]
            if e["finished"] or not reason:
                continue
            if NEEDS_PERSON in reason:
                kind = "person"
            elif any(marker in reason for marker in facts.disk_waits):
                kind = "disk"
            elif LINK_DOWN in reason:
                kind = "link"
            else:
                continue
            waits[kind][role] = waits[kind].get(role, 0) + 1
    agents = view["agents"]
    n_failed = max([len(failed)] + [a.get("counts", {}).get(FACTS[a["role"]].failed, 0) for a in agents])
    out = []
    if n_failed:
        out.append(f"{n_failed} failed: a person must look (synkler status on the hosts says why)")
    out += [
        f"{count(n, 'entry')} {'needs' if n == 1 else 'need'} a person at {role}"
        for role, n in waits["person"].items()
    ]
    out += [f"{n} waiting for disk at {role}" for role, n in waits["disk"].items()]
    out += [f"{n} waiting for the link to central at {role}" for role, n in waits["link"].items()]
    return out


def problems(view: Mapping[str, Any], now: float) -> list[str]:
    """What needs a look, worst first; empty when all flows."""
    out = _agent_problems(view, now) + _entry_problems(view)
    dead = view["broker"]["dead_letters"]
    if dead:
        out.append(f"{count(dead, 'dead-lettered message')} in {shown('synkler:' + view['instance'])}:dead")
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
    moving = [e for e in view["entries"] if not e["finished"]]
    if not moving:
        return "all flowing, nothing in flight"
    transfers = sum(1 for e in view["entries"] for p in e["roles"].values() if "progress" in p)
    return f"all flowing: {in_flight(moving, 'entry')} in flight" + (
        f", {transfers} moving now" if transfers else ""
    )


def in_flight(entries: list[Mapping[str, Any]], noun: str) -> str:
    """How many entries, a bundle's files counted as files: '3 entries', '2 entries and 40 files in
    1 bundle', '40 files in 1 bundle'."""
    bundled = [int(e["bundle"]) for e in entries if e.get("bundle")]
    single = count(len(entries) - len(bundled), noun)
    if not bundled:
        return single
    files = f"{count(sum(bundled), 'file')} in {count(len(bundled), 'bundle')}"
    return files if len(bundled) == len(entries) else f"{single} and {files}"


# the text view -------------------------------------------------------------------------------------


def _clock(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    t = datetime.datetime.fromtimestamp(ts)
    same_day = t.date() == datetime.datetime.fromtimestamp(now).date()
    return t.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M")


def _progress_text(p: Mapping[str, Any]) -> str:
    """A transfer's bytes as they are (its state says it is a push or a pull); an md5's labelled so,
    since upload hashes while its state is already `uploading`."""
    what = str(p.get("what", ""))
    try:
        text = Progress(what, int(p["done"]), int(p["total"]), p.get("rate"), p.get("eta"), 0.0).text()
    except (KeyError, TypeError, ValueError):
        return ""
    return f"md5 {text}" if what == "md5" else text


def _place_text(place: Mapping[str, Any] | None, now: float, *, named: bool = False) -> str:
    """`named`: say which agent (a pool's central that owns the entry)."""
    if place is None:
        return "-"
    parts = [f"{shown(place['agent'])}: {shown(place['state'])}" if named else shown(place["state"])]
    if place["attempt"] > 1:
        parts.append(f"attempt {place['attempt']}")
    if place["tries"]:
        parts.append(f"try {place['tries']}")
    if place.get("retry_at"):
        parts.append(f"retry {_clock(place['retry_at'], now)}")
    if place.get("stored_as"):  # download: placed under another name (versioned, or per upload)
        parts.append(f"as {shown(place['stored_as'])}")
    if place.get("cleanup") in (*RERUN, Cleanup.SKIPPED):
        parts.append(f"cleanup {place['cleanup']}")
    if "progress" in place:
        parts.append(_progress_text(place["progress"]))
    return " ".join(parts[:1]) + (" (" + ", ".join(parts[1:]) + ")" if parts[1:] else "")


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def _figures(a: Mapping[str, Any], now: float) -> str:
    """An agent's figures in a few words: entries by state, outbox, oldest unfinished, central's disk."""
    figures = []
    if a.get("counts"):
        figures.append(" ".join(f"{k} {v}" for k, v in sorted(a["counts"].items())))
    if a.get("outbox"):
        figures.append(f"outbox {a['outbox']}")
    if a.get("oldest"):
        figures.append(f"oldest unfinished {duration_text(now - a['oldest'])}")
    if a.get("room") is not None:
        figures.append(f"room {a['room']}")
    disk = a.get("disk")
    if isinstance(disk, dict) and a["role"] == "central":
        free, reserve = int(disk.get("free", 0)), int(disk.get("reserve", 0))
        figures.append(f"free {size_text(free)} (reserve {size_text(reserve)})")
    return "; ".join(figures)


def _agent_lines(view: Mapping[str, Any], now: float) -> list[str]:
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
                _figures(a, now),
            ]
        )
    return _table(rows)


def _entry_lines(view: Mapping[str, Any], now: float) -> list[str]:
    """The head line of the entries, then one row per entry, each followed by its reasons."""
    unfinished = [e for e in view["entries"] if not e["finished"]]
    finished = [e for e in view["entries"] if e["finished"]]
    left = {a["role"]: a.get("left_out", 0) for a in view["agents"] if a.get("left_out")}
    head = in_flight(unfinished, "unfinished entry")
    if left:
        head += " listed (" + ", ".join(f"{role} has {n} more" for role, n in left.items()) + ")"
    head += f"; {len(finished)} of the {view['finished_listed']} latest finished shown"
    lines = [head]
    if not view["entries"]:
        return lines
    rows = [["NAME", "SIZE", *(r.upper() for r in ROLES)]]
    notes: dict[int, list[str]] = {}
    pool = sum(1 for a in view["agents"] if a["role"] == "central") > 1
    for e in view["entries"]:
        places = (_place_text(e["roles"].get(r), now, named=pool and r == "central") for r in ROLES)
        name = shown(e["name"]) + (f" ({count(int(e['bundle']), 'file')})" if e.get("bundle") else "")
        rows.append([name, size_text(e["size"]), *places])
        notes[len(rows) - 1] = [
            f"    {role}: {shown(place['reason'][:SHOWN_REASON])}"
            for role, place in e["roles"].items()
            if place["reason"] and not e["finished"]
        ]
        if e.get("at") and not e["finished"]:
            notes[len(rows) - 1].insert(0, "    to: " + ", ".join(f"{d} {s}" for d, s in e["at"].items()))
    for i, line in enumerate(_table(rows)):
        lines.append(line.rstrip())
        lines += notes.get(i, [])
    return lines


def render(view: Mapping[str, Any], now: float) -> list[str]:
    """The view as lines of text for a person (names and reasons escaped)."""
    seen_from = view.get("seen_from")
    where = f", seen from {seen_from['role']} '{shown(seen_from['agent'])}'" if seen_from else ""
    lines = [
        f"relay '{shown(view['instance'])}': {view['verdict']}",
        f"({_clock(view['at'], now)}{where})",
        "",
    ]
    lines += _agent_lines(view, now)
    lines += ["", *_entry_lines(view, now)]
    dead = view["broker"]["dead_letters"]
    lines += ["", f"broker: dead letters {'-' if dead is None else dead}"]
    return lines
