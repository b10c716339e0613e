"""Entries that wait for a retry, and the end of those waits when their cause clears.

An endpoint's entry waits in its transfer state (upload: uploading, download: fetching) with a `due`
in the future and a reason that says why (`Endpoint.retry_later`): the link to central is down or ssh
refused (`link`), a disk is full (`disk`), or a try failed and the next is due later (`failure`; a
cleanup script's failed run waits the same way). A wait need not run out: it ends at once

- when the agent sees its cause clear: an rsync run that reached central (`reached_central`) ends
  every wait for the link; at download, free space that grows on the staging file system ends
  the waits for disk space;
- when an operator asks: `synkler retry ENTRY` on a waiting entry, or `synkler retry --waiting
  [CAUSE]` for every entry that waits (for that cause).

The operator's request for all waiting entries is a row of the requests table like any other, with
`waiting:<cause>` where the entry id goes (`selector`), so the agent picks the entries itself when
it takes the request.
"""

from __future__ import annotations

from ..hops.transfer import Result
from .facts import DISK_WAIT, LINK_DOWN, NEEDS_PERSON

LINK, DISK, FAILURE = "link", "disk", "failure"
CAUSES = (LINK, DISK, FAILURE)
ANY = "any"  # every waiting entry, whatever it waits for
_SELECTOR = "waiting:"


def cause_of(reason: str | None, hop: str) -> str:
    """What an entry of `hop` that waits for a retry waits for, from its reason."""
    reason = reason or ""
    if reason.startswith((f"{hop}: {LINK_DOWN}: ", f"{hop}: {NEEDS_PERSON}: ")):
        return LINK
    if reason.startswith(f"{hop}: {DISK_WAIT}: "):
        return DISK
    return FAILURE


PARTIAL = (23, 24)  # rsync's "some files were not transferred" or "vanished": it talked to the other end


def reached_central(result: Result | None) -> bool:
    """Did an rsync run get through to central (so the link works), whatever became of it? It ended
    well, or failed after ssh logged in: a disk full, some files not transferred. (Not any failure
    that is not the link's: rsync may fail here before it connects.)"""
    return result is not None and (result.ok or result.out_of_space or result.returncode in PARTIAL)


def selector(cause: str) -> str:
    """What the requests table holds instead of an entry id for `retry --waiting CAUSE`."""
    if cause not in (*CAUSES, ANY):
        raise ValueError(f"{cause!r} is not a cause of waiting ({', '.join((*CAUSES, ANY))})")
    return _SELECTOR + cause


def selected(entry: str) -> str | None:
    """The cause a request's entry column selects (`selector`), or None if it names one entry."""
    return entry[len(_SELECTOR) :] if entry.startswith(_SELECTOR) else None


def what(cause: str) -> str:
    """The cause as a person reads it after "waiting for"."""
    return {
        LINK: "the link to central",
        DISK: "disk space",
        FAILURE: "their next try after a failure",
        ANY: "a retry",
    }.get(cause, cause)
