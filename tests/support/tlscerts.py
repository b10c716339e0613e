"""A throwaway certificate authority for the TLS tests, made with the `openssl` command: a CA, the
certificates a broker and its clients present (valid, expired, for another name), and a second CA
that signed none of them. Keys are unencrypted and readable by all (a private RabbitMQ node runs as
the rabbitmq user): test material only."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

_CA_CONF = """\
[ca]
default_ca = ca_default
[ca_default]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
default_md = sha256
policy = any_name
copy_extensions = copy
unique_subject = no
[any_name]
commonName = supplied
"""


# EC keys: made in milliseconds, where RSA keys take a noticeable while.
_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def available() -> str | None:
    """Why certificates cannot be made here (None: they can)."""
    return None if shutil.which("openssl") else "the openssl command is not installed"


def _openssl(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))}: {done.stderr.strip()}")


class CertAuthority:
    """A CA in `dir`; `issue` makes a key and a certificate signed by it."""

    def __init__(self, dir: Path, name: str = "synkler test CA"):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "issued").mkdir(exist_ok=True)
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text("1000\n")
        self.conf = self.dir / "ca.cnf"
        self.conf.write_text(_CA_CONF.format(dir=self.dir))
        self.key = self.dir / "ca.key"
        self.cert = self.dir / "ca.pem"
        _openssl(
            "req", "-x509", *_NEW_KEY, "-keyout", self.key, "-out", self.cert, "-days", "2",
            "-subj", f"/CN={name}", cwd=self.dir,
        )  # fmt: skip
        os.chmod(self.key, 0o644)

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        client: bool = False,
        expired: bool = False,
    ) -> tuple[Path, Path]:
        """A key and a certificate (`<stem>.key`, `<stem>.pem`) for `common_name`, with these
        subject alternative names; `expired`: valid for one day in 2020 only."""
        key, csr, cert = (self.dir / f"{stem}{ext}" for ext in (".key", ".csr", ".pem"))
        ext = self.dir / f"{stem}.ext"
        usage = "clientAuth" if client else "serverAuth"
        lines = ["basicConstraints = CA:FALSE", f"extendedKeyUsage = {usage}"]
        names = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        if names:
            lines.append("subjectAltName = " + ",".join(names))
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "req", "-new", *_NEW_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={common_name}", cwd=self.dir
        )  # fmt: skip
        when = ["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"] if expired else ["-days", "2"]
        _openssl(
            "ca", "-batch", "-notext", "-config", self.conf, "-cert", self.cert, "-keyfile", self.key,
            "-in", csr, "-out", cert, "-extfile", ext, *when, cwd=self.dir,
        )  # fmt: skip
        os.chmod(key, 0o644)
        return cert, key
