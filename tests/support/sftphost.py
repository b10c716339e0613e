"""An SFTP-only central for the tests: a private sshd that serves only OpenSSH's internal-sftp,
chrooted to a directory that holds the relay's work directory (so central's file_dir is inside it),
and the settings that make an end use it (`transport: sftp`)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from synkler.devkit.sshd import LocalSshd

# sshd wants a chroot and every directory above it owned by root and writable by nobody else, so
# not under /tmp (1777): a directory of our own under /srv.
BASE = Path("/srv/synkler-sftp-tests")


def need_root() -> None:
    """sshd chroots only as root: skip without it, fail in CI (CI must not go green by skipping)."""
    if os.geteuid() == 0:
        return
    reason = "an sshd that chroots its SFTP account must run as root"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def chrooted_sshd(workdir: Path) -> Iterator[LocalSshd]:
    """A started sshd serving internal-sftp only, chrooted to a fresh directory (its
    `sftp_chroot`), removed afterwards."""
    BASE.mkdir(mode=0o755, exist_ok=True)
    os.chmod(BASE, 0o755)
    chroot = BASE / uuid.uuid4().hex[:12]
    chroot.mkdir(mode=0o755)
    server = LocalSshd(workdir, sftp_chroot=chroot)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(chroot, ignore_errors=True)


def sftp_settings(server: LocalSshd, **more: Any) -> dict[str, Any]:
    """An end's settings for pushing or pulling over SFTP through `server`."""
    assert server.sftp_chroot is not None
    return {
        "transport": "sftp",
        "central_host": server.target,
        "sftp_port": server.port,
        "sftp_identity": str(server.client_key),
        "known_hosts": str(server.known_hosts),
        "sftp_root": str(server.sftp_chroot),
        # No rsync reaches this server: the ends must not need it.
        "rsync_opts": [],
        **more,
    }
