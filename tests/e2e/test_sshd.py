"""LocalSshd must carry real rsync transfers and clean up after itself.

Every other end-to-end test relies on this server, so its guarantees are checked here
directly: awkward file names survive, host-key checking is really on, failures explain
themselves, and stop() leaves no process or listening port behind. Tests that start their
own LocalSshd still request the session ``sshd`` fixture: it is the skip-or-fail gate for
a machine without openssh/rsync.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

import synkler.devkit.sshd as sshd_module
from synkler.devkit.sshd import LocalSshd


def _port_refuses(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_rsync_awkward_name_through_sshd(sshd: LocalSshd, tmp_path: Path) -> None:
    """Quotes, spaces and non-ASCII in a name must reach the far side byte for byte."""
    src_dir = tmp_path / "src"
    dst_dir = tmp_path / "dst"
    src_dir.mkdir()
    dst_dir.mkdir()
    name = 'it\'s a "test" ü.txt'
    payload = os.urandom(200_000) + "ünïcödé\n".encode()
    (src_dir / name).write_bytes(payload)

    result = subprocess.run(
        ["rsync", "-a", *sshd.rsync_opts(), str(src_dir / name), f"{sshd.target}:{dst_dir}/"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert (dst_dir / name).read_bytes() == payload


def test_ssh_command_shape(sshd: LocalSshd) -> None:
    """The pieces other modules rely on: strict checking, our key, our pinned host key."""
    cmd = sshd.ssh_command()
    assert cmd[:5] == ["ssh", "-p", str(sshd.port), "-i", str(sshd.client_key)]
    assert "StrictHostKeyChecking=yes" in cmd
    assert "BatchMode=yes" in cmd
    assert sshd.rsync_opts() == [f"--rsh={sshd.rsh()}"]
    assert sshd.target == f"{sshd.user}@127.0.0.1"
    line = sshd.known_hosts.read_text().strip()
    assert line.startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")


def test_stop_leaves_nothing_running(tmp_path: Path, sshd: LocalSshd) -> None:
    """After stop() the process is reaped and the port is closed; stop() twice is harmless."""
    server = LocalSshd(tmp_path / "own").start()
    pid, port = server.pid, server.port
    assert pid is not None and server.running
    server.stop()
    assert not server.running and server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _port_refuses(port)
    server.stop()


def test_context_manager_and_host_key_pinning(tmp_path: Path, sshd: LocalSshd) -> None:
    """A host key that does not match the pin must be refused: checking really is on."""
    with LocalSshd(tmp_path / "own") as server:
        ok = subprocess.run(
            [*server.ssh_command(), server.target, "true"], capture_output=True, timeout=30, check=False
        )
        assert ok.returncode == 0, ok.stderr
        # Pin some other key for the same [host]:port and try again.
        other = tmp_path / "other_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(other)], check=True, timeout=30
        )
        blob = (tmp_path / "other_key.pub").read_text().split()[1]
        server.known_hosts.write_text(f"[127.0.0.1]:{server.port} ssh-ed25519 {blob}\n")
        bad = subprocess.run(
            [*server.ssh_command(), server.target, "true"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert bad.returncode == 255
        assert "host key" in bad.stderr.lower()
    assert not server.running


def test_failed_login_raises_with_log_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd: LocalSshd
) -> None:
    """If the proving `ssh true` fails, start() says so and does not leave sshd behind."""
    server = LocalSshd(tmp_path / "own")
    server.user = "synkler-no-such-user"
    launched: list[int] = []
    real_launch = server._launch

    def spy(binary: str) -> None:
        real_launch(binary)
        assert server._proc is not None
        launched.append(server._proc.pid)

    monkeypatch.setattr(server, "_launch", spy)
    with pytest.raises(RuntimeError, match="key login as synkler-no-such-user failed"):
        server.start(timeout=15)
    assert launched and not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(launched[-1], 0)


def test_missing_sshd_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No sshd installed: the error names the package instead of a bare FileNotFoundError."""
    monkeypatch.setattr(sshd_module.shutil, "which", lambda *_a, **_k: None)
    with pytest.raises(RuntimeError, match="openssh-server"):
        LocalSshd(tmp_path / "own").start()
