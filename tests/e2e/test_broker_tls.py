"""TLS to the broker (amqps) on a RabbitMQ node of this module's own: a TLS listener with a throwaway CA
made here (tests/tlscerts.py), beside a plain one used only to clean up. A relay delivers over amqps
with password login and with EXTERNAL (certificate) login; `synkler check` and an agent say in one
line why a TLS connection fails: a broker certificate from another CA, expired, or for another name,
and a client certificate the broker refuses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import missing_infrastructure
from support.relay_helpers import deliver, place

from synkler.broker.amqp import BrokerParams
from synkler.devkit.localrelay import ROLES, LocalRelay

# A RabbitMQ node of its own (tls_rabbit): one such module of its group at a time
# (two groups, balanced by their run time: one would hold a worker for most of the run).
pytestmark = pytest.mark.xdist_group("rabbit-nodes-2")

# Broker users of the EXTERNAL relay: the common names of the agents' certificates.
CLIENTS = {role: f"tls-{role}" for role in ROLES}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Any]:
    from support import tlscerts

    why = tlscerts.available()
    if why is not None:
        missing_infrastructure(why)
    ca = tlscerts.CertAuthority(tmp_path_factory.mktemp("ca"))
    other = tlscerts.CertAuthority(tmp_path_factory.mktemp("other-ca"), "a CA nobody here trusts")
    found: dict[str, Any] = {"ca": ca.cert, "other_ca": other.cert}
    found["server"] = ca.issue("server", "localhost", dns=("localhost",))
    found["expired"] = ca.issue("expired", "localhost", dns=("localhost",), expired=True)
    for role, name in CLIENTS.items():
        found[role] = ca.issue(role, name, client=True)
    found["rogue"] = other.issue("rogue", CLIENTS["upload"], client=True)
    found["stranger"] = ca.issue("stranger", "nobody-here", client=True)
    found["server_as_client"] = found["server"]  # a certificate for servers only
    return found


@pytest.fixture(scope="module")
def tls_rabbit(pki) -> Iterator:
    from support.rabbitnode import RabbitNode

    why = RabbitNode.available()
    if why is not None:
        missing_infrastructure(why)
    node = RabbitNode(["loopback_users = none"], tls=(pki["ca"], *pki["server"]), external=True)
    try:
        node.start()
        for name in CLIENTS.values():
            node.ctl("add_user", name, os.urandom(16).hex())
            node.ctl("clear_password", name)  # EXTERNAL only
            node.ctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        yield node
    finally:
        node.stop()


def tls_settings(pki, role: str | None = None) -> dict[str, Any]:
    settings: dict[str, Any] = {"broker_tls": True, "broker_ca_file": str(pki["ca"])}
    if role is not None:
        cert, key = pki[role]
        settings.update(broker_cert_file=str(cert), broker_key_file=str(key), broker_login="external")
    return settings


def tls_relay(tmp_path, sshd, instance_id, node, settings: dict[str, dict[str, Any]]) -> LocalRelay:
    settings["upload"].setdefault("settle_seconds", 0.2)
    return LocalRelay(
        tmp_path / "relay",
        sshd,
        instance_id,
        broker_host="localhost",  # the name the broker's certificate is for
        broker_port=node.tls_port,
        settings=settings,
        admin=BrokerParams("127.0.0.1", node.port),  # the plain listener, to clean up
    )


def connections(node, instance: str) -> list[list[str]]:
    """(ssl, auth mechanism, user) of each connection of the instance's agents, as the broker sees it."""
    rows = node.ctl("list_connections", "client_properties", "ssl", "auth_mechanism", "user")
    return [line.split("\t")[-3:] for line in rows.splitlines() if f"synkler {instance} " in line]


def relay_delivers(relay: LocalRelay, node) -> list[list[str]]:
    relay.start()
    md5s = {
        f"tls-{i}.dat": place(relay.dirs["upload"], f"tls-{i}.dat", os.urandom(3000 + i)) for i in range(3)
    }
    deliver(relay, md5s)
    seen = connections(node, relay.instance)
    for role in ROLES:
        text = relay.log_path(role).read_text()
        assert "connected to broker localhost" in text, role
        assert "TLS:" not in text, role
    return seen


def test_a_relay_delivers_over_amqps_with_password_login(tls_rabbit, pki, sshd, tmp_path, instance_id):
    relay = tls_relay(tmp_path, sshd, instance_id, tls_rabbit, {role: tls_settings(pki) for role in ROLES})
    try:
        seen = relay_delivers(relay, tls_rabbit)
    finally:
        relay.close()
    assert len(seen) >= 3
    assert all(row == ["true", "PLAIN", "guest"] for row in seen), seen


def test_a_relay_delivers_over_amqps_with_external_certificate_login(
    tls_rabbit, pki, sshd, tmp_path, instance_id
):
    settings = {role: {**tls_settings(pki, role), "broker_password": "not used"} for role in ROLES}
    relay = tls_relay(tmp_path, sshd, instance_id, tls_rabbit, settings)
    try:
        seen = relay_delivers(relay, tls_rabbit)
    finally:
        relay.close()
    assert len(seen) >= 3
    assert all(row[:2] == ["true", "EXTERNAL"] for row in seen), seen
    assert {row[2] for row in seen} == set(CLIENTS.values())


# --------------------------------------------------------------------------------------------------
# check, and the agent's warning


def write_config(tmp_path: Path, node, **settings: Any) -> Path:
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    data = {
        "mode": "central",  # no ssh probe: only the broker line matters here
        "id": "tlscheck",
        "file_dir": str(files),
        "synkler_server": "localhost",
        "broker_port": node.tls_port,
        "state_db": str(tmp_path / "state.sqlite"),
        "pidfile": str(tmp_path / "synkler.pid"),
        **settings,
    }
    path = tmp_path / "synkler.conf"
    path.write_text(yaml.safe_dump(data))
    return path


def check(config: Path) -> tuple[int, list[str], list[str]]:
    """Exit status, FAIL lines and ok lines of `synkler check`."""
    done = subprocess.run(
        [sys.executable, "-m", "synkler", "-c", str(config), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    return (
        done.returncode,
        [x for x in lines if x.startswith("FAIL")],
        [x for x in lines if x.startswith("ok")],
    )


def test_check_says_the_connection_is_tls_and_verified(tls_rabbit, pki, tmp_path):
    status, fails, oks = check(write_config(tmp_path, tls_rabbit, **tls_settings(pki)))
    assert (status, fails) == (0, [])
    assert (
        f"ok    broker localhost:{tls_rabbit.tls_port} vhost / (TLS: certificate for localhost verified "
        in ("\n".join(oks))
    )


def test_check_explains_a_broker_certificate_from_another_ca(tls_rabbit, pki, tmp_path):
    config = write_config(tmp_path, tls_rabbit, broker_tls=True, broker_ca_file=str(pki["other_ca"]))
    status, fails, _ = check(config)
    assert status == 1
    assert fails == [
        f"FAIL  broker: cannot use broker localhost:{tls_rabbit.tls_port}: TLS: the broker's certificate is "
        f"not signed by {pki['other_ca']} (it is signed by 'synkler test CA')"
    ]


def test_check_explains_a_broker_certificate_for_another_name(tls_rabbit, pki, tmp_path):
    config = write_config(tmp_path, tls_rabbit, **tls_settings(pki), synkler_server="127.0.0.1")
    _, fails, _ = check(config)
    assert fails == [
        f"FAIL  broker: cannot use broker 127.0.0.1:{tls_rabbit.tls_port}: TLS: the broker's certificate is "
        "for localhost, not 127.0.0.1; set broker_tls_server_name if one of those is right"
    ]
    # ... and the way out it names works.
    config = write_config(
        tmp_path,
        tls_rabbit,
        **tls_settings(pki),
        synkler_server="127.0.0.1",
        broker_tls_server_name="localhost",
    )
    assert check(config)[:2] == (0, [])


def test_check_explains_an_expired_broker_certificate(tls_rabbit, pki, tmp_path):
    tls_rabbit.serve_certificate(*pki["expired"])
    try:
        _, fails, _ = check(write_config(tmp_path, tls_rabbit, **tls_settings(pki)))
    finally:
        tls_rabbit.serve_certificate(*pki["server"])
    assert fails == [
        f"FAIL  broker: cannot use broker localhost:{tls_rabbit.tls_port}: TLS: the broker's certificate "
        "expired on 2020-01-02 00:00 UTC"
    ]


def test_check_explains_a_client_certificate_the_broker_refuses(tls_rabbit, pki, tmp_path):
    cert, key = pki["rogue"]
    config = write_config(
        tmp_path, tls_rabbit, **tls_settings(pki), broker_cert_file=str(cert), broker_key_file=str(key)
    )
    _, fails, _ = check(config)
    head = f"FAIL  broker: cannot use broker localhost:{tls_rabbit.tls_port}: TLS: "
    # The broker's alert, or (TLS 1.3, a race) only the end of the stream the alert was lost to.
    assert fails in (
        [
            f"{head}the broker refused our client certificate {cert}: it is not signed by a CA the broker "
            "trusts"
        ],
        [f"{head}{closed_on(cert)}"],
    ), fails


def test_check_explains_an_external_login_without_a_broker_user(tls_rabbit, pki, tmp_path):
    # Signed by the broker's CA, but there is no broker user of its name.
    cert, key = pki["stranger"]
    settings = {**tls_settings(pki), "broker_cert_file": str(cert), "broker_key_file": str(key)}
    _, fails, _ = check(write_config(tmp_path, tls_rabbit, **settings, broker_login="external"))
    assert len(fails) == 1
    assert f"the broker refused EXTERNAL login with the certificate {cert}: it has no user" in fails[0]


def test_check_explains_a_client_certificate_made_for_servers_only(tls_rabbit, pki, tmp_path):
    cert, key = pki["server_as_client"]
    settings = {**tls_settings(pki), "broker_cert_file": str(cert), "broker_key_file": str(key)}
    _, fails, _ = check(write_config(tmp_path, tls_rabbit, **settings))
    head = f"FAIL  broker: cannot use broker localhost:{tls_rabbit.tls_port}: TLS: "
    assert fails in (
        [
            f"{head}the broker refused the handshake (SSLV3_ALERT_HANDSHAKE_FAILURE): no TLS version or "
            f"cipher in common, or it does not take our client certificate {cert} (is it made for client "
            "authentication?)"
        ],
        [f"{head}{closed_on(cert)}"],
    ), fails


def test_an_agent_that_cannot_verify_the_broker_says_why_in_its_warning(tls_rabbit, pki, tmp_path):
    config = write_config(tmp_path, tls_rabbit, broker_tls=True, broker_ca_file=str(pki["other_ca"]))
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "synkler", "-c", str(config), "run"], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while "retrying in" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        agent.terminate()
        agent.wait(30)
    warnings = [line for line in log.read_text().splitlines() if "retrying in" in line]
    assert warnings, log.read_text()
    assert f"TLS: the broker's certificate is not signed by {pki['other_ca']}" in warnings[0]


def closed_on(cert) -> str:
    return (
        f"the broker closed the connection during the handshake: it does not take our client certificate "
        f"{cert} (is it signed by a CA the broker trusts, and made for client authentication?)"
    )
