"""Cleanup scripts: run an entry's script exactly once, through a runner that outlives the agent, and
only on the content that was delivered.

The script is an argument list (never a shell line) with %f and %F substituted. It runs under
`python -m synkler.hops.scriptrunner` in a session of its own, which leaves its pid and then its
result next to the state database; an agent killed meanwhile collects the result at its next start.
Just before a script starts, %F is checked against the delivered content (`Content`): a name that
now holds something else, or nothing, is not the script's to act on, and it is skipped.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from ..config import Config
from ..linux.fs import fsync_dir
from ..linux.process import read_pid
from ..private import child_env, child_umask, private_dir
from .checksum import md5_entry, stat_entry
from .scriptrunner import journal_lines
from .transfer import Result


@dataclass(frozen=True)
class Content:
    """The content an entry's cleanup script may act on: the version that was delivered."""

    kind: str  # 'file', 'dir' or 'symlink'
    md5: str | None  # None: not known (upload: a version central delivered before upload hashed it)
    signature: str | None  # its fingerprint in place (checksum.stat_entry); None: not known
    # Where in `path` the content is: "" for `path` itself; with download's `layout: bagit`, `path` is
    # the bag and the content its payload, `data/NAME` (hops.bagit.payload_of).
    inside: str = ""

    def missing_from(self, path: str) -> str | None:
        """Why `path` (or its part `inside`) does not hold this content now; None if it does.

        An unchanged fingerprint says so from lstat alone. A changed one (a touch, or other content)
        is settled by the md5: a touch keeps the content, and the script may run. The md5 ends with
        Interrupted when the agent stops (checksum.STOPPING).
        """
        if self.inside:
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    return "the name no longer holds a bag (not a directory)"
            except FileNotFoundError:
                return "the name is gone"
            except OSError as e:
                return f"it cannot be read ({_why(e)})"
            path = os.path.join(path, self.inside)
        try:
            before = stat_entry(path)
            if before.kind != self.kind:
                return f"the name now holds a {before.kind}, not the delivered {self.kind}"
            if self.signature is not None and before.signature == self.signature:
                return None
            if self.md5 is None:
                return "it changed, and the md5 of the delivered version is not known"
            md5 = md5_entry(path)
            if stat_entry(path).signature != before.signature:
                return "it changed while it was checked"
        except FileNotFoundError:
            return "the name is gone" if not os.path.lexists(path) else "it changed while it was checked"
        except (OSError, ValueError) as e:
            return f"it cannot be read ({_why(e)})"
        if md5 != self.md5:
            return f"the name now holds other content (md5 {md5}, delivered {self.md5})"
        return None


@dataclass(frozen=True)
class Skipped:
    """The script was not started: the name no longer holds the delivered content (`why`)."""

    why: str


def _why(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror  # no path in it, so nothing of a name that is not UTF-8
    return str(error)


def cleanup_argv(template: Sequence[str], name: str, full_path: str) -> list[str]:
    """Substitute %f (name) and %F (full path) in each argument; %% is a literal %."""
    subst = {"%%": "%", "%f": name, "%F": full_path}
    # One pass, so a '%f' inside the substituted path is never substituted again.
    return [re.sub(r"%[%fF]", lambda m: subst[m.group()], arg) for arg in template]


def script_status(cfg: Config, entry_id: str) -> str:
    """Where the runner of an entry's cleanup script leaves its pid and its result (a directory only
    the agent's user can enter, like the state database beside it)."""
    directory = os.path.join(os.path.dirname(cfg.state_db), os.path.basename(cfg.state_db) + ".scripts")
    private_dir(directory)
    return os.path.join(directory, f"{entry_id}.json")


def run_cleanup(
    cfg: Config,
    entry_id: str,
    name: str,
    full_path: str,
    *,
    resume: bool = False,
    content: Content | None = None,
) -> Result | Skipped | None:
    """Run an entry's cleanup script (once) through synkler.hops.scriptrunner, and return its result.

    The runner is a session of its own that outlives the agent. With `resume` (the agent restarted
    while the script was marked running) an existing result is collected, a runner still going is
    waited for, and a script that never started is started. None: the runner died while the
    script ran, so whether it finished is unknown; it is not run again.

    `content`: what was delivered. Right before the script would start (and only then: a script
    that ran or runs is collected as it is), `full_path` is checked to still hold it; if not, the
    script is not started and Skipped says why.
    """
    status = script_status(cfg, entry_id)
    if resume and not os.path.exists(status) and os.path.exists(status + ".pid") and _runner_died(status):
        return None
    if not os.path.exists(status):
        why = content.missing_from(full_path) if content is not None else None
        if why is not None:
            return Skipped(why)
        _start_runner(cfg, status, name, full_path)
    return _collect(status)


Outcome = Union[Result, Skipped, None, Exception]


def journal_of(cfg: Config, bundle: str) -> str:
    """Where the runners of a bundle's members' scripts record them (scriptrunner --each)."""
    return script_status(cfg, bundle)[: -len(".json")] + ".journal"


def run_members(cfg: Config, bundle: str, scripts: Sequence[tuple[int, str, str, Content]]) -> list[Outcome]:
    """The cleanup scripts of members of a bundle, (number, name, full path, content) each, each
    exactly once: one runner (scriptrunner --each) runs them one after another and records each in
    the bundle's journal. A member the journal already has (an agent killed meanwhile) is collected,
    not run again: its result, or None if it started and never ended (the runner died). Right
    before the runner starts, each target is checked to hold the delivered content (Skipped if not)."""
    journal = journal_of(cfg, bundle)
    lock = journal + ".lock"
    while _locked(lock):  # a runner of an earlier run of the agent still going: wait for it
        time.sleep(0.2)
    found = _journal(journal)
    todo: list[tuple[int, list[str]]] = []
    skipped: dict[int, Skipped] = {}
    for number, name, full_path, content in scripts:
        if number not in found:
            why = content.missing_from(full_path)
            if why is not None:
                skipped[number] = Skipped(why)
            else:
                todo.append((number, cleanup_argv(cfg.cleanup_argv, name, full_path)))
    if todo:
        manifest = journal[: -len(".journal")] + ".manifest"
        with open(os.open(manifest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "w") as f:
            json.dump(todo, f)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            argv = [sys.executable, "-m", "synkler.hops.scriptrunner", "--each", journal, manifest]
            argv += ["--timeout", str(cfg.cleanup_timeout)]
            subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(fd,),
                umask=child_umask(),
                env=child_env(),
            )
        finally:
            os.close(fd)
        found = _journal(journal)
    out: list[Outcome] = []
    for number, *_ in scripts:
        if number in skipped:
            out.append(skipped[number])
        elif number not in found:
            out.append(Result(False, -1, "the script runner left no result", ()))
        else:
            out.append(found[number])
    return out


def _journal(path: str) -> dict[int, Result | None]:
    """What a bundle's journal says of each member's script: its result, or None (started, never
    ended: interrupted)."""
    out: dict[int, Result | None] = {}
    for item in journal_lines(path):
        if "start" in item:
            out.setdefault(item["start"], None)
        elif "end" in item:
            rc = item.get("returncode", -1)
            out[item["end"]] = Result(rc == 0, rc, str(item.get("output", "")), ())
    return out


def forget_journal(cfg: Config, bundle: str) -> None:
    """A bundle's journal and its companions go once every member's script is recorded."""
    journal = journal_of(cfg, bundle)
    for path in (journal, journal + ".lock", journal[: -len(".journal")] + ".manifest"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _runner_died(status: str) -> bool:
    """After a restart, wait for the runner that has the script, if one runs. True: it died while
    the script ran, leaving no result (whether the script finished is unknown). False: a result is
    there to collect, or the script never started."""
    while _locked(status + ".pid") and not os.path.exists(status):
        time.sleep(0.2)  # a runner has it: one still starting has written no pid yet
    pid = read_pid(status + ".pid")
    while pid is not None and _runs(pid, status) and not os.path.exists(status):
        time.sleep(0.2)
    if not os.path.exists(status):
        os.unlink(status + ".pid")
        if pid is not None:
            return True
        # No pid: the agent died before its runner started, so the script never ran.
    return False


def _start_runner(cfg: Config, status: str, name: str, full_path: str) -> None:
    """Run the script through a runner of its own session, which writes its result to `status`."""
    argv = [
        sys.executable,
        "-m",
        "synkler.hops.scriptrunner",
        status,
        "--timeout",
        str(cfg.cleanup_timeout),
    ]
    # The pid file exists, locked, before the runner does; the runner inherits the lock.
    fd = os.open(status + ".pid", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        fsync_dir(os.path.dirname(status))
        argv += ["--lock-fd", str(fd), "--", *cleanup_argv(cfg.cleanup_argv, name, full_path)]
        # The script's files are the user's: it gets the umask the agent was started with, not
        # the agent's own 077 (the runner makes its records 0600 itself).
        subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(fd,),
            umask=child_umask(),
            env=child_env(),  # the runner's, and so the script's
        )
    finally:
        os.close(fd)


def _collect(status: str) -> Result:
    """The result the runner wrote, once read gone (a failure if it left none)."""
    try:
        with open(status, "rb") as f:
            outcome = json.load(f)
    except (OSError, ValueError) as e:
        return Result(False, -1, f"the script runner left no result: {e}", ())
    os.unlink(status)
    return Result(outcome["returncode"] == 0, outcome["returncode"], outcome["output"], ())


def _locked(path: str) -> bool:
    """Does a script runner (or the agent starting one) hold the lock on this pid file?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _runs(pid: int, status: str) -> bool:
    """Is `pid` still the runner for `status` (and not a recycled pid)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.fsencode(status) in f.read()
    except OSError:
        return False
