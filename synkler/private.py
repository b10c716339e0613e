"""Owner-only files and directories, the agent's umask, and secrets that others can read.

What an agent keeps for itself (state database, pidfile, cleanup scripts' records, central's spool
and download's staging, where data in transit lies) is made for its owner alone: files 0600,
directories 0700, whatever the umask. One made readable by others by an older synkler is
tightened when the agent opens it, if the agent's user owns it. The agent itself runs with umask
077 (`restrict_umask`), so anything else it creates is private as well. The programs that write
the user's data (rsync, cleanup scripts) run with the umask the agent was started with
(`child_umask`): their files are the user's, and arrive as they did before.

A file holding the broker password that its group or others can read is reported, not refused
(docs/installing.md, "Secrets and file modes"): refusing would stop, at an upgrade, relays whose
config has been root-owned 0644 for years.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import shlex
import stat
from collections.abc import Iterable, Sequence
from typing import Union

log = logging.getLogger("synkler")

PathLike = Union[str, "os.PathLike[str]"]

AGENT_UMASK = 0o077
_started_umask: int | None = None  # the umask the agent was started with, once it restricted it


def remember_umask() -> None:
    """Note the umask synkler was started with, for `child_umask` (only the first call counts: a
    daemon's detaching sets another one)."""
    global _started_umask
    current = os.umask(AGENT_UMASK)
    os.umask(current)
    if _started_umask is None:
        _started_umask = current


def restrict_umask() -> None:
    """Give the agent umask 077, remembering first (if not yet done) the umask it was started with."""
    remember_umask()
    os.umask(AGENT_UMASK)


def child_umask() -> int:
    """The umask for programs that write the user's data: the one the agent was started with.

    -1 (subprocess's "leave it") when the umask was never restricted (status, check, tests).
    """
    return -1 if _started_umask is None else _started_umask


# Secrets an agent may be given in its environment (synkler.config reads them). Programs it runs
# (rsync, ssh, cleanup scripts, notice commands) do not need them and do not get them: a cleanup
# script is the user's, and anything it starts would otherwise hold the agent's broker login.
SECRET_ENV = ("SYNKLER_BROKER_PASSWORD",)


def child_env() -> dict[str, str]:
    """The environment for the programs an agent runs: its own, without its secrets."""
    return {k: v for k, v in os.environ.items() if k not in SECRET_ENV}


def make_dirs(path: PathLike) -> None:
    """Create `path` and its missing parents, each 0700; existing ones are left as they are.

    (os.makedirs gives the parents it creates the umask's mode, 0755 under the usual one.) A parent
    may be shared (/var/lib, /run), so only what is created here is made private.
    """
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise


def private_dir(path: PathLike) -> None:
    """Make `path` a directory only its owner can enter: created 0700 (parents too) if missing,
    tightened if we own it and others may enter. A symlink is followed but its target left as it
    is: where it points is someone's choice (another disk), and a chmod through a link planted
    by someone else would change what they chose."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileNotFoundError:
        make_dirs(path)
        return
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            return
        raise
    try:
        tighten(fd, path)
    finally:
        os.close(fd)


def private_file(path: PathLike, companions: Sequence[str] = ()) -> None:
    """Make sure `path` exists (created empty, 0600, in 0700 parents if missing) and only its owner
    can read it; so must its `companions` (suffixes, e.g. SQLite's "-wal") where they exist."""
    make_dirs(os.path.dirname(os.path.abspath(path)))
    if os.path.islink(path):  # as in private_dir: a link's target is left as it is
        return
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW, 0o600)
    try:
        tighten(fd, path)
    finally:
        os.close(fd)
    for suffix in companions:
        try:
            fd = os.open(
                f"{os.fspath(path)}{suffix}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW
            )
        except OSError:  # missing, or a symlink (ELOOP): left alone
            continue
        try:
            tighten(fd, f"{os.fspath(path)}{suffix}")
        finally:
            os.close(fd)


def tighten(fd: int, path: PathLike) -> None:
    """Take group's and others' rights from the open file or directory `fd`, if we own it (made by
    an older synkler, or under a looser umask)."""
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077 or st.st_uid != os.geteuid():
        return
    os.fchmod(fd, mode & ~0o077)
    log.warning(
        "%s was open to others (mode %04o): now mode %04o, its owner's only", path, mode, mode & ~0o077
    )


def exposed_secrets(paths: Iterable[PathLike]) -> list[str]:
    """A problem line for each of `paths` (files holding the broker password) that its group or
    others can read, with the command that fixes it. Files that cannot be looked at are skipped:
    they were read when the configuration was loaded."""
    problems = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        readers = {0o040: "its group", 0o004: "others", 0o044: "its group and others"}.get(mode & 0o044)
        if readers is None:
            continue
        quoted = shlex.quote(os.fspath(path))
        fix = f"chmod 600 {quoted}"
        if st.st_uid != os.geteuid():  # 600 would lock the agent out: the file must be its user's
            fix = f"chown {_user()} {quoted} && {fix}"
        problems.append(
            f"{os.fspath(path)} holds the broker password and can be read by {readers} "
            f"(mode {mode:04o}); make it private: {fix}"
        )
    return problems


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
