"""Bundles: many small top-level files of upload's file_dir that travel the relay as one entry.

A bundle is an entry of kind "bundle": a list of files (its *members*) of upload's file_dir, read
where they are and pushed into a directory of its own at central, from where it crosses the
other hops as a directory entry does (one state row, one set of messages, one rsync run, one md5
of the tree with each file's md5 in it, one receipt); download then places each member into its
file_dir as a top-level file of its own, and each end runs the cleanup script once per member.
docs/architecture.md, "Bundles", has the whole story.

This module holds the pure decision of which settled files go into bundles (`plan`) and the
statements on the `members` table of the agent's state database (synkler.state creates it in its
schema and prunes its rows with their bundles).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Sequence
from hashlib import md5
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .state import State

KIND = "bundle"
NOT_PLACED, PLACED, PRESENT = 0, 1, 2  # download: where a member stands (`placed`)
PREFIX = "synkler-bundle-"
# upload: where synkler 0.9 and older made its bundles' hard links, in file_dir (a dot name: never an
# entry of its own); a start removes what an older agent left there.
UPLOAD_DIR = ".synkler-bundles"


SINCE = (0, 8, 0)  # the first synkler whose central and download take bundles


def knows_bundles(version: str) -> bool:
    """Does an agent of this synkler version (its presence report's `version`) know bundles? An
    unreadable one does not."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return found is not None and tuple(int(n or 0) for n in found.groups()) >= SINCE


def name_of(entry_id: str) -> str:
    """The name a bundle travels under (central's staging, status): one no person would choose."""
    return f"{PREFIX}{entry_id}"


def script_key(bundle: str, seq: int) -> str:
    """The key of a member's cleanup script (where its runner leaves its pid and result)."""
    return f"{bundle}.{seq}"


def plan(candidates: Sequence[tuple[str, int]], *, files: int, least: int, max_bytes: int) -> list[list[str]]:
    """Which of the settled small files (name, size), in the order found, go together as bundles.

    Nothing is bundled while fewer than `least` wait: a file that arrives alone (or with a few
    others) crosses at once on its own, with no wait for company. Else they go in bundles of at most
    `files` files and `max_bytes` bytes, in order; a last bundle of one file is no bundle (it goes
    on its own). Pure."""
    if files < 2 or len(candidates) < least:
        return []
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name, n in candidates:
        if current and (len(current) >= files or size + n > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(name)
        size += n
    out.append(current)
    return [b for b in out if len(b) >= 2]


def signature(members: Iterable[tuple[str, str | None]]) -> str:
    """A bundle's fingerprint, from its members' (name, fingerprint) in their order: it changes when
    any member's does (the scan's fingerprint of a file: its size, mtime and ctime). Pure."""
    digest = md5(usedforsecurity=False)
    for name, sig in members:
        digest.update(os.fsencode(name) + b"\0" + (sig or "").encode("ascii") + b"\0")
    return digest.hexdigest()


class Member(NamedTuple):
    """One file of a bundle, as the members table holds it."""

    bundle: str
    seq: int
    name: str
    size: int
    md5: str | None
    signature: str | None
    stored_as: str | None
    placed: int  # download: NOT_PLACED, PLACED (renamed into file_dir) or PRESENT (found there)
    cleanup: str | None
    reason: str | None


_SELECT = "SELECT bundle, seq, name, size, md5, signature, stored_as, placed, cleanup, reason FROM members"


def _member(r: tuple) -> Member:
    return Member(
        r[0], r[1], os.fsdecode(r[2]), r[3], r[4], r[5], None if r[6] is None else os.fsdecode(r[6]),
        r[7], r[8], r[9],
    )  # fmt: skip


def add(state: State, bundle: str, members: Iterable[tuple[str, int, str | None]]) -> None:
    """Record a bundle's members (name, size, fingerprint), numbered in this order from 1."""
    state.many(
        "INSERT INTO members (bundle, seq, name, size, signature) VALUES (?, ?, ?, ?, ?)",
        [(bundle, seq, os.fsencode(n), size, sig) for seq, (n, size, sig) in enumerate(members, 1)],
    )


def add_verified(state: State, bundle: str, members: Iterable[tuple[str, int, str, str, bool]]) -> None:
    """download: record a verified bundle's members (name, size, md5, name chosen, already there)."""
    state.many(
        "INSERT INTO members (bundle, seq, name, size, md5, stored_as, placed) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (bundle, seq) DO NOTHING",
        [
            (bundle, seq, os.fsencode(n), size, md5, os.fsencode(target), PRESENT if present else NOT_PLACED)
            for seq, (n, size, md5, target, present) in enumerate(members, 1)
        ],
    )


def of(state: State, bundle: str, *, placed: int | None = None, cleanup: str | None = None) -> list[Member]:
    """A bundle's members in order; only those with this `placed` and this cleanup, if given."""
    sql, params = f"{_SELECT} WHERE bundle = ?", list[object]([bundle])
    if placed is not None:
        sql, params = f"{sql} AND placed = ?", [*params, placed]
    if cleanup is not None:
        sql, params = f"{sql} AND cleanup = ?", [*params, cleanup]
    return [_member(r) for r in state.rows(f"{sql} ORDER BY seq", tuple(params))]


def count(state: State, bundle: str) -> dict[str, int]:
    """How many members of a bundle have each cleanup state ("" for none)."""
    sql = "SELECT coalesce(cleanup, ''), count(*) FROM members WHERE bundle = ? GROUP BY 1"
    rows = state.rows(sql, (bundle,))
    return dict(rows)


def set_each(state: State, bundle: str, column: str, values: Iterable[tuple[int, object]]) -> None:
    """Set one column of many members: (seq, value) pairs."""
    if column not in ("md5", "signature", "stored_as", "placed", "cleanup", "reason"):
        raise KeyError(column)
    state.many(
        f"UPDATE members SET {column} = ? WHERE bundle = ? AND seq = ?",
        [(_held(column, v), bundle, seq) for seq, v in values],
    )


def _held(column: str, value: object) -> object:
    return os.fsencode(value) if column == "stored_as" and isinstance(value, str) else value


def set_all(state: State, bundle: str, *, cleanup: str | None, where: Sequence[str | None]) -> int:
    """Set the cleanup state of every member whose cleanup is one of `where`; how many."""
    known = [w for w in where if w is not None]
    test = " OR ".join([*(["cleanup IS NULL"] if None in where else []), *(["cleanup = ?"] * len(known))])
    found = state.rows(f"SELECT count(*) FROM members WHERE bundle = ? AND ({test})", (bundle, *known))
    state.rows(f"UPDATE members SET cleanup = ? WHERE bundle = ? AND ({test})", (cleanup, bundle, *known))
    return int(found[0][0]) if found else 0


class Version(NamedTuple):
    """The latest version of a name that went in a bundle: the member, and its bundle's state and
    creation time (a name's latest version is the latest created, single entry or member)."""

    member: Member
    state: str
    created: float


def latest_by_names(state: State, names: Collection[str], ignored: Sequence[str] = ()) -> dict[str, Version]:
    """upload: name -> the latest bundle that holds it, of those of `names` in one (bundles in the
    states `ignored` do not count: a withdrawn bundle carries nothing)."""
    out: dict[str, Version] = {}
    ordered = [os.fsencode(n) for n in names]
    skip = ", ".join("?" * len(ignored))
    for i in range(0, len(ordered), 500):
        chunk = ordered[i : i + 500]
        sql = (
            "SELECT m.bundle, m.seq, m.name, m.size, m.md5, m.signature, m.stored_as, m.placed, m.cleanup,"
            f" m.reason, e.state, e.created FROM members m JOIN entries e ON e.id = m.bundle"
            f" WHERE m.name IN ({', '.join('?' * len(chunk))})"
            + (f" AND e.state NOT IN ({skip})" if ignored else "")
            + " ORDER BY e.created"
        )
        for r in state.rows(sql, (*chunk, *ignored)):
            member = _member(r[:10])
            out[member.name] = Version(member, r[10], r[11])  # oldest first: the latest stays
    return out
