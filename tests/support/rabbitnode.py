"""A private RabbitMQ node for the tests that need a broker set up differently from the shared one
(users and permissions, TLS), or a cluster of them: its own node name, ports, configuration and data
directory, started for the test module and stopped after it. The shared broker on 5672 is never
touched."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
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

    def _env(self) -> dict[str, str]:
        return {
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

    def launch(self) -> None:
        """Start the node's process (detached); `await_started` waits for it."""
        if not (self.dir / "rabbitmq.conf").exists():
            (self.dir / "rabbitmq.conf").write_text("\n".join(self.conf_lines) + "\n")
            # No management plugin: no port 15672 clash.
            (self.dir / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
            user = pwd.getpwnam("rabbitmq")
            for path in (self.dir, *self.dir.rglob("*")):
                os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(self.dir, 0o755)
        subprocess.run(["rabbitmq-server", "-detached"], env=self._env(), check=True, capture_output=True)
        self.started = True

    def await_started(self, timeout: float = 90) -> RabbitNode:
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

    def start(self, timeout: float = 90) -> RabbitNode:
        self.launch()
        return self.await_started(timeout)

    def pid(self) -> int | None:
        """The node's (Erlang VM's) process id, None if it is not running."""
        try:
            pid = int((self.dir / "pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the node, as a crash or a power cut would end it (its data directory stays)."""
        pid = self.pid()
        assert pid is not None, f"{self.name} is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while self.pid() is not None:
            assert time.monotonic() < deadline, f"{self.name} (pid {pid}) survived SIGKILL"
            time.sleep(0.05)
        (self.dir / "pid").unlink(missing_ok=True)

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
        return "\n".join("\n".join(p.read_text(errors="replace").splitlines()[-lines:]) for p in logs)

    def stop(self) -> None:
        if self.started:
            subprocess.run(["rabbitmqctl", "-n", self.name, "stop"], capture_output=True, timeout=60)
            pid = self.pid()  # `stop` failed (the node hung, or is half started): no survivor
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


class RabbitCluster:
    """`size` private nodes joined in one RabbitMQ cluster on this machine, as RabbitMQ's clustering
    guide does it on a single machine: each its own node name, ports and data directory, the same
    Erlang cookie (the rabbitmq user's, as every node here runs as that user); the others join the
    first (`stop_app; join_cluster; start_app`). `stop` stops every node, also after a failed start."""

    def __init__(self, size: int = 3, conf_lines: list[str] | None = None):
        self.nodes = [RabbitNode(conf_lines) for _ in range(size)]

    def start(self, timeout: float = 180) -> RabbitCluster:
        try:
            for node in self.nodes:  # all at once: they boot in parallel
                node.launch()
            for node in self.nodes:
                node.await_started(timeout)
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.name)
                node.ctl("start_app")
            running = first.ctl("eval", "length(rabbit_nodes:all_running()).").strip()
            if running != str(len(self.nodes)):
                raise RuntimeError(f"cluster of {running} running nodes, not {len(self.nodes)}")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def node_on(self, port: int) -> RabbitNode:
        return next(node for node in self.nodes if node.port == port)

    def restart(self, node: RabbitNode, timeout: float = 120) -> None:
        """Start a node again after `kill`: it rejoins the cluster from its data directory."""
        node.launch()
        node.await_started(timeout)

    def heal(self, timeout: float = 120) -> None:
        """Start again every node that is down (a test that failed between a kill and its restart),
        so that the next test begins with the whole cluster."""
        for node in self.nodes:
            if node.pid() is None:
                self.restart(node, timeout)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
