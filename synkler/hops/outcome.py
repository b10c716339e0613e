"""What a run of a hop (rsync, or SFTP in its place) comes to: `Result`, classed the same way for
both (a link that is down, a disk that is full, a refusal that needs a person); and the places both
share. Kept apart from synkler.hops.transfer so that synkler.hops.sftp, to which transfer hands a
hop, does not import transfer back."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SynklerError

PARTIAL_DIR = ".synkler-partial"


@dataclass(frozen=True)
class Result:
    ok: bool
    returncode: int
    output: str
    argv: tuple[str, ...] = ()
    stalled: bool = False  # stopped by the agent: nothing moved for stall_seconds (synkler.hops.stall)

    def summary(self) -> str:
        """The exit status, ssh's own complaints (rsync's lines after them would push them out of
        view), and the last three lines of output."""
        lines = self.output.strip().splitlines()
        shown = [line for line in lines[:-3] if line.startswith("ssh: ") or _NEEDS_PERSON.search(line)]
        shown += lines[-3:]
        return f"exit {self.returncode}" + (f": {' / '.join(shown)}" if shown else "")

    @property
    def needs_person(self) -> bool:
        """Did ssh refuse for a reason that only a person can fix: a key not accepted or not
        readable, a host key unknown or changed, a host name that does not resolve?"""
        return not self.ok and self.returncode in _LINK_CODES and bool(_NEEDS_PERSON.search(self.output))

    @property
    def link_down(self) -> bool:
        """Did the run fail because central could not be reached or the link broke or stalled?

        ssh's own failures (refused, unreachable, host key, closed) are exit 255; a connection that
        broke mid-run is 10 or 12; rsync's --timeout is 30 (35 for a daemon connection), and so is
        a run the agent stopped because nothing moved for stall_seconds (`stalled`).
        """
        return self.stalled or (not self.ok and self.returncode in _LINK_CODES and not self.out_of_space)

    @property
    def out_of_space(self) -> bool:
        """Did the run fail because a disk (or quota) was full, on either side?

        rsync ends such an error line with the errno in parentheses whatever the locale:
        ENOSPC is 28 and EDQUOT 122 on Linux.
        """
        return not self.ok and any(_NO_SPACE.search(line) for line in self.output.splitlines())


_LINK_CODES = frozenset({10, 12, 30, 35, 255})
# rrsync's words for a source file (not a directory: that is a wrong root) that does not exist.
RRSYNC_NO_FILE = r"post-realpath open failed \(race detected\): \S*[^/\s] No such file or directory"
_NEEDS_PERSON = re.compile(
    r"Permission denied \((?:publickey|password|keyboard|gssapi|hostbased)|"
    # The forced command on central (docs/security.md) refused the run: a root or key to fix
    # (but not a single file that is not there, as rsync's own "[sender] ... (2)").
    rf"rrsync error: (?!{RRSYNC_NO_FILE})|is outside rrsync_root|"
    r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|"
    r"Identity file .* not accessible|Could not resolve hostname|Bad configuration option|"
    r"no such identity|Load key .*: "
)
_NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded|: [^:]*\((?:28|122)\)\s*$")


class OutsideRoot(SynklerError):
    """A place on central that this agent's confined key cannot reach (rrsync_root is wrong)."""

    def result(self) -> Result:
        """The run that could not be made, as a failure that needs a person (as rrsync's refusal)."""
        return Result(False, 12, str(self))
