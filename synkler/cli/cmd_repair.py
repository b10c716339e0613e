"""`synkler retry`, `forget` and `resend`: the repairs an operator asks of the running agent, written
into its state database (no broker credentials needed: who may write the state database is the
operator), with the agent's answer printed."""

from __future__ import annotations

import argparse
import sys
import time

from .. import bundles
from .. import destinations as dests
from ..agents import AGENTS, waits
from ..agents.agent import Agent
from ..agents.base import RETRY, request_for
from ..config import Config
from ..errors import ExitStatus, Refused
from ..service.pidfile import holder
from ..state import Entry, State
from ..text import shown
from .entries import agent_state, newest, present, short_ids

POLL = 0.1  # seconds between looks for the agent's answer


def cmd_request(cfg: Config, args: argparse.Namespace) -> int:
    """retry, forget or resend: write the request for the running agent to take in its main loop,
    and print its answer."""
    to = getattr(args, "to", None)
    action = request_for(cfg.mode, cfg.name, args.command, to)  # `--to DEST`: that destination only
    cfg = agent_state(cfg)
    cause = getattr(args, "waiting_for", None)
    if cause is not None and to:
        raise Refused("--to takes one entry, not --waiting (central retries an entry's destinations)")
    if cause is not None:  # (the parser makes sure it comes without an entry)
        return _request_waiting(cfg, args, cause)
    state = State(cfg.state_db)
    try:
        entries = state.all()
        agent = AGENTS[cfg.mode]
        entry = resolve(agent, action, args.entry, entries, member_of(state, cfg, args.entry))
        what = f"{shown(entry.name)} (entry {entry.id})"
        latest = newest(entries)[entry.name] == entry.id
        why = agent.refusal(action, entry, latest, present=present(cfg, entry))
        if why is None and ":" in action:  # an entry's destinations: a clear error before asking
            why = _not_there(state, cfg, entry, args.command, to)
        if why is not None:
            raise Refused(f"{what}: cannot {args.command}{f' at {to}' if to else ''}: {why}")
        with state.transaction():
            seq = state.add_request(entry.id, action)
        pid = holder(cfg.pidfile)
        if pid is None:
            print(f"the {cfg.mode} agent is not running: it will {action} {what} when it starts")
            return ExitStatus.OK
        return _await_answer(state, seq, cfg, args, f"{action} {what}", pid)
    finally:
        state.close()


def _not_there(state: State, cfg: Config, entry: Entry, action: str, to: str | None) -> str | None:
    """Why the entry cannot take `action --to`: not one of its destinations, or not failed there."""
    try:
        dests.acted_on(action, dests.of(state, entry.id, cfg.download_name), to)
    except ValueError as e:
        return str(e)
    return None


def cmd_drain(cfg: Config, args: argparse.Namespace) -> int:
    """`synkler drain CENTRAL [--undo]`: the central stops (or starts again) taking offers; written for
    the running agent as the repairs are, with its answer printed."""
    if cfg.mode != "central" or cfg.name != args.central:
        raise Refused(
            f"this configuration ({cfg.path}) is of {cfg.mode} agent {cfg.name!r}, not of central "
            f"{args.central!r}: run `synkler drain` with that central's configuration, on its host"
        )
    if not cfg.uploads:
        raise Refused(f"central {cfg.name!r} is not in a pool (its configuration sets no `uploads`)")
    cfg = agent_state(cfg)
    action = "undrain" if args.undo else "drain"
    state = State(cfg.state_db)
    try:
        with state.transaction():
            seq = state.add_request("", action)
        asked = "take offers again" if args.undo else "drain"
        pid = holder(cfg.pidfile)
        if pid is None:
            print(f"the central agent is not running: it will {asked} when it starts")
            return ExitStatus.OK
        return _await_answer(state, seq, cfg, args, asked, pid)
    finally:
        state.close()


def _request_waiting(cfg: Config, args: argparse.Namespace, cause: str) -> int:
    """retry --waiting [CAUSE]: the agent tries every entry that waits (for CAUSE) now; it picks them
    when it takes the request (synkler.agents.waits)."""
    asked = f"retry the entries waiting for {waits.what(cause)}"
    state = State(cfg.state_db)
    try:
        with state.transaction():
            seq = state.add_request(waits.selector(cause), RETRY)
        pid = holder(cfg.pidfile)
        if pid is None:
            print(f"the {cfg.mode} agent is not running: it will {asked} when it starts")
            return ExitStatus.OK
        return _await_answer(state, seq, cfg, args, asked, pid)
    finally:
        state.close()


def _await_answer(state: State, seq: int, cfg: Config, args: argparse.Namespace, asked: str, pid: int) -> int:
    """Print the agent's answer to request `seq` (`asked`: its action and entry) when it comes within
    --wait seconds."""
    deadline = time.monotonic() + args.wait
    while True:
        request = state.get_request(seq)
        if request is not None and request.answered is not None:
            with state.transaction():
                state.drop_request(seq)
            if not request.ok:
                raise Refused(request.answer or f"the agent refused to {asked}")
            print(request.answer)
            return ExitStatus.OK
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    if args.wait <= 0:
        print(f"asked the {cfg.mode} agent (pid {pid}) to {asked}; see `synkler status`")
        return ExitStatus.OK
    print(
        f"synkler: no answer from the {cfg.mode} agent (pid {pid}) within {args.wait:g} s; it will "
        f"{asked} when it gets to it: `synkler status` shows the outcome",
        file=sys.stderr,
    )
    return ExitStatus.FAILURE


def member_of(state: State, cfg: Config, name: str) -> bundles.Version | None:
    """Upload: the latest bundle that holds a file of this name, if one does (what `ref` names when
    it names no entry)."""
    if cfg.mode != "upload":
        return None
    return bundles.latest_by_names(state, [name]).get(name)


def resolve(
    agent: type[Agent], action: str, ref: str, entries: list[Entry], member: bundles.Version | None = None
) -> Entry:
    """The entry `ref` names: its id, a start of its id (at least 4 digits), or its name. Where a name
    or a start fits several, the one the action applies to, if only one does. A name that is only a
    file of a bundle (`member`) is refused with the bundle to act on."""
    key = ref.lower()
    found = [
        e
        for e in entries
        if (len(key) >= 4 and e.id.startswith(key)) or e.name == ref or shown(e.name) == ref
    ]
    if len(found) > 1:
        latest = newest(entries)
        # (Whether the file is there does not tell versions of one name apart: not asked here.)
        fitting = [e for e in found if agent.refusal(action, e, latest[e.name] == e.id) is None]
        if len(fitting) == 1:
            return fitting[0]
        short = short_ids([e.id for e in entries])
        listed = "; ".join(f"{short[e.id]} {shown(e.name)} ({e.state})" for e in found[-5:])
        raise Refused(f"{ref!r} fits {len(found)} entries, give the id: {listed}")
    if not found and member is not None:
        verb, bundle = action.partition(":")[0], member.member.bundle
        raise Refused(
            f"{shown(ref)} went in a bundle, which is the entry: `synkler {verb} {bundle}` acts on the "
            f"bundle ({member.state}) and so on every file in it"
        )
    if not found:
        raise Refused(f"no entry {ref!r} at this {agent.mode} agent (`synkler status` lists them)")
    return found[0]
