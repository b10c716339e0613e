"""A pool of two centrals for the tests (docs/architecture.md, "A pool of centrals"): upload,
download and the centrals central-a (the relay's `central`) and central-b, each cleanup script
recording the names it ran for."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from synkler import receipts
from synkler.devkit.localrelay import LocalRelay
from synkler.hops.checksum import md5_entry

# A cleanup script that appends the name it ran for to a file: exactly once per entry is the check.
RECORDER = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


def recorder(record: Path) -> str:
    return shlex.join([sys.executable, "-c", RECORDER, str(record), "%f"])


def pool_relay(
    make_relay, *, signed: bool = False, more: dict[str, dict] | None = None
) -> tuple[LocalRelay, dict[str, Path]]:
    """Upload, download and the centrals central-a (the relay's `central`) and central-b; `signed`:
    download signs receipts, and upload and the centrals pin its key (a late `delivered` counts).
    `more`: agent key -> more settings of its config."""
    more = more or {}
    relay = make_relay()
    target = relay.sshd.target
    centrals = {"central-a": target, "central-b": target}
    records = {side: relay.workdir / f"{side}-cleanups" for side in ("upload", "download")}
    pinned: dict[str, str] = {}
    keyed: dict[str, str] = {}
    if signed:
        key = receipts.new_key()
        key_file = relay.workdir / "download-receipt.key"
        key_file.write_bytes(receipts.private_bytes(key))
        key_file.chmod(0o600)
        pinned, keyed = {"download_public_key": receipts.public_text(key)}, {"receipt_key": str(key_file)}
    relay.write_config(
        "central", {"name": "central-a", "uploads": ["upload"], **pinned, **more.get("central", {})}
    )
    relay.add_agent(
        "central-b", "central", {"name": "central-b", "uploads": ["upload"], "keep_minutes": 30, **pinned}
    )
    up = {"centrals": centrals, "reown_seconds": 5, "cleanup_script": recorder(records["upload"]), **pinned}
    relay.write_config("upload", {**up, **more.get("upload", {})})
    relay.write_config(
        "download", {"centrals": centrals, "cleanup_script": recorder(records["download"]), **keyed}
    )
    return relay, records


def start_centrals(relay: LocalRelay) -> None:
    relay.start("central", "central-b")
    relay.wait_for(
        "both centrals connected",
        lambda: all(
            relay.log_path(key).exists()
            and "connected to broker" in relay.log_path(key).read_text(errors="replace")
            for key in ("central", "central-b")
        ),
    )


def put(relay: LocalRelay, names: list[str], size: int = 4096) -> dict[str, str]:
    md5s = {}
    for name in names:
        tmp = relay.workdir / f".{name}"
        tmp.write_bytes(name.encode() * (size // len(name)))
        md5s[name] = md5_entry(tmp)
        tmp.rename(relay.dirs["upload"] / name)
    return md5s


def takers(relay: LocalRelay, names: set[str]) -> dict[str, set[str]]:
    """Which central holds each of these entries (by name): central key -> names."""
    return {key: {e.name for e in relay.entries(key) if e.name in names} for key in ("central", "central-b")}


def cleanups(record: Path) -> list[str]:
    return sorted(record.read_text().split()) if record.exists() else []


AUTH_UPLOAD = "lab-a"  # the upload agent's name in an authenticated pool: its broker user is lab-a@<id>
_PASSWORD_LINE = re.compile(
    r"^#\s+(\S+): authenticate: true, broker_username: (\S+), broker_password: (\S+)$"
)


@contextmanager
def authenticated_pool(node: Any, sshd: Any, workdir: Path, instance: str) -> Iterator[LocalRelay]:
    """A pool of two centrals (central-a, the relay's `central`, and central-b), the upload agent
    lab-a and download on a private RabbitMQ node, with `authenticate: true` everywhere and the broker
    users that `synkler broker-setup` makes, run with upload's config, whose commands this runs
    (`relay.logins`: agent name -> (user, password)). Cleanup scripts record as in `pool_relay`.
    The users are deleted afterwards."""
    target = sshd.target
    centrals = {"central-a": target, "central-b": target}
    records = {side: workdir / f"{side}-cleanups" for side in ("upload", "download")}
    settings: dict[str, dict[str, Any]] = {
        "upload": {
            "name": AUTH_UPLOAD,
            "centrals": centrals,
            "reown_seconds": 5,
            "settle_seconds": 0.2,
            "cleanup_script": recorder(records["upload"]),
        },
        "central": {"name": "central-a", "uploads": [AUTH_UPLOAD]},
        "central-b": {"name": "central-b", "uploads": [AUTH_UPLOAD], "keep_minutes": 30},
        "download": {"centrals": centrals, "cleanup_script": recorder(records["download"])},
    }
    relay = LocalRelay(workdir / "relay", sshd, instance, broker_port=node.port, settings=settings)
    relay.add_agent("central-b", "central", settings["central-b"])
    made = subprocess.run(relay.command("upload", "broker-setup"), capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    logins: dict[str, tuple[str, str]] = {}
    try:
        for line in made.stdout.splitlines():
            if line.startswith("rabbitmqctl "):
                node.ctl(*shlex.split(line)[1:])
            elif m := _PASSWORD_LINE.match(line):
                logins[m[1]] = (m[2], m[3])
        assert set(logins) == {"central-a", "central-b", "download", AUTH_UPLOAD}, made.stdout
        for key, extra in settings.items():
            name = extra.get("name", key)
            user, password = logins[name]
            auth = {"authenticate": True, "broker_username": user, "broker_password": password}
            relay.write_config(key, {**extra, **auth})
            relay.configs[key].chmod(0o600)  # it holds a password
        relay.logins = logins  # type: ignore[attr-defined]
        relay.records = records  # type: ignore[attr-defined]
        yield relay
    finally:
        relay.close()
        for user, _password in logins.values():
            node.ctl("delete_user", user)
