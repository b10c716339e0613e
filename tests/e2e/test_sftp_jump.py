"""`transport: sftp` reaches central through the jump host that ~/.ssh/config's ProxyJump names, as
ssh -J does: a real jump sshd and a real chrooted internal-sftp central, on loopback."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from support.relay_helpers import write_random
from support.sftphost import chrooted_sshd, need_root, sftp_settings

from synkler.config import load_config
from synkler.devkit.sshd import LocalSshd
from synkler.hops import sftp, transfer


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(central, jump host): the jump host accepts central's client key too."""
    need_root()
    with chrooted_sshd(tmp_path_factory.mktemp("sftp-central")) as central:
        with LocalSshd(tmp_path_factory.mktemp("sftp-jump")) as jump:
            key = central.client_key.with_name(central.client_key.name + ".pub").read_text()
            with open(jump.authorized_keys, "a") as f:
                f.write(key)
            yield central, jump
    sftp.close_all()


def test_a_pull_goes_through_the_proxyjump_host_of_ssh_config_and_fails_without_it(
    servers, tmp_path, monkeypatch
):
    central, jump = servers
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host central-via-jump\n    HostName 127.0.0.1\n    Port {central.port}\n    ProxyJump relay-jump\n"
        f"Host relay-jump\n    HostName 127.0.0.1\n    Port {jump.port}\n"
    )
    monkeypatch.setenv("HOME", str(home))
    known = tmp_path / "known_hosts"  # both hosts' keys: each is checked
    known.write_text(central.known_hosts.read_text() + jump.known_hosts.read_text())
    assert central.sftp_chroot is not None
    there = central.sftp_chroot / f"jump-{tmp_path.name}"
    there.mkdir()
    write_random(there / "big.bin", 3 << 20)
    local = tmp_path / "local"
    conf = tmp_path / "download.conf"
    settings = sftp_settings(central, central_host=f"{central.user}@central-via-jump", known_hosts=str(known))
    del settings["sftp_port"]  # from ~/.ssh/config, as the jump host's
    conf.write_text(
        yaml.safe_dump(
            {
                "mode": "download",
                "file_dir": str(local),
                "synkler_server": "127.0.0.1",
                "state_db": str(tmp_path / "download.db"),
                "pidfile": str(tmp_path / "download.pid"),
                "ssh_control_persist": 0,
                **settings,
            }
        )
    )
    cfg = load_config(conf, check_dirs=False)
    assert [hop[:2] for hop in sftp.jump_hosts(sftp.target(cfg)[3])] == [("127.0.0.1", jump.port)]

    result = transfer.pull(cfg, str(there), ["big.bin"], str(local / "in"))
    assert result.ok, result.summary()
    pulled = (local / "in" / "big.bin").read_bytes()
    assert hashlib.md5(pulled).digest() == hashlib.md5((there / "big.bin").read_bytes()).digest()

    jump.stop()  # central is still up: only the route through the jump host is gone
    again = transfer.pull(cfg, str(there), ["big.bin"], str(local / "again"))
    assert not again.ok and again.link_down, again.summary()
