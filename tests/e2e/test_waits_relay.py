"""A fix takes effect at once: entries that wait for a retry (download's ssh key was missing, so they
wait for "the link", with a backoff that grows to retry_max_seconds) are delivered soon after the
key is back, not when their backoff runs out: when a transfer over the same link succeeds, or when
an operator runs `synkler retry` on one of them or `synkler retry --waiting link`.

Three real agents, RabbitMQ, sshd and rsync. What is checked is what the state says: each waiting
entry is done at download before the time its wait would have ended (its `due` when the key came
back).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time

import pytest
from support.relay_helpers import assert_clean, place

from synkler.hops.checksum import md5_entry

WAIT_AT_LEAST = 6.0  # seconds left of the backoff when the key comes back: plenty for one delivery


# "As soon as it is back", well before the backoff, is timed.
pytestmark = pytest.mark.alone


@pytest.mark.parametrize("how", ["a new entry", "retry --waiting link", "retry of the entry"])
def test_entries_waiting_for_a_missing_key_go_as_soon_as_it_is_back(make_relay, sshd, how):
    relay = make_relay()
    # Download's own copy of the key, to take away; no shared ssh connection, so each pull logs in.
    key = relay.workdir / "download-key"
    ssh = sshd.ssh_command()
    ssh[ssh.index("-i") + 1] = str(key)
    relay.write_config("download", {"rsync_opts": ["-e", shlex.join(ssh)], "ssh_control_persist": 0})
    relay.start()
    md5s = {name: place(relay.dirs["upload"], name, os.urandom(50_000)) for name in ("a.dat", "b.dat")}

    def backed_off() -> bool:
        entries = relay.entries("download")
        return len(entries) == 2 and all(
            "needs a person" in (e.reason or "") and e.due > time.time() + WAIT_AT_LEAST for e in entries
        )

    relay.wait_for("download to back off far from a missing key", backed_off, 90)
    key.write_bytes(sshd.client_key.read_bytes())
    key.chmod(0o600)
    back = time.time()
    due = {e.name: e.due for e in relay.entries("download")}

    if how == "a new entry":  # pulled at once: it finds the link working, and the others go too
        md5s["c.dat"] = place(relay.dirs["upload"], "c.dat", b"a new entry, due at once")
    else:
        which = ["--waiting", "link"] if how == "retry --waiting link" else ["a.dat"]
        result = subprocess.run(
            relay.command("download", "retry", *which), capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "tried again now" in result.stdout, result.stdout

    relay.wait_for("every entry delivered", lambda: relay.all_done(set(md5s)), 30)
    done = {e.name: e.updated for e in relay.entries("download")}
    for name in ("a.dat", "b.dat"):
        after = done[name] - back
        assert done[name] < due[name], f"{name} waited its backoff out ({after:.1f} s after the key)"
    for name, md5 in md5s.items():
        assert md5_entry(relay.dirs["download"] / name) == md5
    if how == "a new entry":
        assert "the link to central works again" in relay.log_path("download").read_text()
    assert_clean(relay)
