"""A private RabbitMQ node for the tests that need a broker set up differently from the shared one
(users and permissions, TLS): its own node name, ports, configuration and data directory, started
for the test module and stopped after it. The shared broker on 5672 is never touched."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RabbitNode:
    """`tls`: (CA, certificate, key) files of a TLS listener on `tls_port` beside the plain one on
    `port`; it asks clients for a certificate and refuses one its CA did not sign, but takes a
    client without one (`fail_if_no_peer_cert`). `external`: EXTERNAL login too (the user is the
    certificate's common name)."""

    def __init__(
        self,
        conf_lines: list[str] | None = None,
        *,
        tls: tuple[Path, Path, Path] | None = None,
        fail_if_no_peer_cert: bool = False,
        external: bool = False,
    ):
        self.name = f"synkler-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="synkler-rabbit-"))
        self.conf_lines = [f"listeners.tcp.local = 127.0.0.1:{self.port}", *(conf_lines or [])]
        self.plugins: list[str] = []
        self.tls_port: int | None = None
        if tls is not None:
            # Copies the node owns: the rabbitmq user may not reach the test's own directories.
            (self.dir / "tls").mkdir()
            for src, dest in zip(tls, ("ca.pem", "cert.pem", "key.pem")):
                shutil.copyfile(src, self.dir / "tls" / dest)
            self.tls_port = free_port()
            self.conf_lines += [
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
                f"ssl_options.cacertfile = {self.dir / 'tls' / 'ca.pem'}",
                f"ssl_options.certfile = {self.dir / 'tls' / 'cert.pem'}",
                f"ssl_options.keyfile = {self.dir / 'tls' / 'key.pem'}",
                "ssl_options.verify = verify_peer",
                f"ssl_options.fail_if_no_peer_cert = {str(fail_if_no_peer_cert).lower()}",
            ]
        if external:
            self.plugins.append("rabbitmq_auth_mechanism_ssl")
            self.conf_lines += [
                "auth_mechanisms.1 = PLAIN",
                "auth_mechanisms.2 = AMQPLAIN",
                "auth_mechanisms.3 = EXTERNAL",
                "ssl_cert_login_from = common_name",
            ]
        self.started = False

    @staticmethod
    def available() -> str | None:
        """Why a private node cannot be started here (None: it can)."""
        if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
            return "rabbitmq-server and rabbitmqctl are not installed (scripts/setup.sh installs them)"
        if os.geteuid() != 0:
            return "starting a private RabbitMQ node needs root (it runs as the rabbitmq user)"
        try:
            pwd.getpwnam("rabbitmq")
        except KeyError:
            return "there is no rabbitmq user to run a private node as"
        return None

    def start(self, timeout: float = 90) -> RabbitNode:
        (self.dir / "rabbitmq.conf").write_text("\n".join(self.conf_lines) + "\n")
        # No management plugin: no port 15672 clash.
        (self.dir / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        user = pwd.getpwnam("rabbitmq")
        for path in (self.dir, *self.dir.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self.dir, 0o755)
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }
        subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, capture_output=True)
        self.started = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(
                ["rabbitmqctl", "-n", self.name, "await_startup", "--timeout", "10"],
                capture_output=True,
                text=True,
            )
            if done.returncode == 0:
                return self
            time.sleep(0.5)
        raise RuntimeError(f"private RabbitMQ node {self.name} did not start: {self.log_tail()}")

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.name, *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def serve_certificate(self, cert: Path, key: Path) -> None:
        """Make the TLS listener present another certificate from the next connection on."""
        for src, dest in ((cert, "cert.pem"), (key, "key.pem")):
            shutil.copyfile(src, self.dir / "tls" / dest)
        self.ctl("eval", "ssl:clear_pem_cache().")

    def log_tail(self, lines: int = 30) -> str:
        logs = list((self.dir / "log").glob("*.log")) if (self.dir / "log").exists() else []
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:] for p in logs)

    def stop(self) -> None:
        if self.started:
            subprocess.run(["rabbitmqctl", "-n", self.name, "stop"], capture_output=True, timeout=60)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)
