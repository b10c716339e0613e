"""TLS to the broker (amqps): the SSL context synkler connects with, and a failed handshake told in one
line a person can act on.

The broker's certificate is always verified, against `broker_ca_file` or the system's trusted CAs,
and it must be for the host synkler connects to (or `broker_tls_server_name`). There is no switch to
turn that off: the broker decides what every agent does (what to send, fetch, delete), so a broker
that is not proven to be the right one may as well be anybody's (docs/installing.md, "TLS to the
broker").

Kept apart from synkler.broker.amqp (which owns pika) so that the configuration can check the files with
the same code the connection uses, and so that `explain` is a pure function that tests feed errors.
"""

from __future__ import annotations

import calendar
import re
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .text import shown


@dataclass(frozen=True)
class TlsSettings:
    """What the TLS connection to the broker uses (all paths absolute)."""

    ca_file: str | None  # None: the system's trusted CAs
    cert_file: str | None = None  # a client certificate, with its key
    key_file: str | None = None
    server_name: str | None = None  # the name the broker's certificate must be for; None: the host

    @classmethod
    def of(
        cls, ca_file: Path | None, cert_file: Path | None, key_file: Path | None, server_name: str | None
    ) -> TlsSettings:
        def text(path: Path | None) -> str | None:
            return None if path is None else str(path)

        return cls(text(ca_file), text(cert_file), text(key_file), server_name)


class TlsFileError(Exception):
    """A file named in the configuration cannot be used; `key` is the setting that names it."""

    def __init__(self, key: str, problem: str):
        super().__init__(problem)
        self.key = key
        self.problem = problem


class _Encrypted(Exception):
    pass


def _refuse_passphrase() -> str:
    # Called only for an encrypted key: an agent runs unattended, nobody could type a passphrase.
    raise _Encrypted


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """The client context: the broker's certificate verified (CA and host name), at least TLS 1.2,
    the client certificate loaded if there is one. TlsFileError names the file that will not do."""
    if tls.ca_file is None:
        ctx = ssl.create_default_context()  # CERT_REQUIRED, check_hostname, TLS >= 1.2
    else:
        # Only this CA: a private CA's broker must not also pass with any public CA's certificate.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(cafile=tls.ca_file)
        except ssl.SSLError:  # an OSError too: first
            raise TlsFileError("broker_ca_file", f"no PEM certificate in {tls.ca_file}") from None
        except OSError as e:
            raise TlsFileError("broker_ca_file", f"cannot read {tls.ca_file}: {e.strerror or e}") from None
    if tls.cert_file is not None and tls.key_file is not None:
        _load_client_certificate(ctx, tls.cert_file, tls.key_file)
    return ctx


def _load_client_certificate(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    for setting, path, marker in (
        ("broker_cert_file", cert, b"CERTIFICATE-----"),
        ("broker_key_file", key, b"KEY-----"),
    ):
        try:
            text = Path(path).read_bytes()
        except OSError as e:
            raise TlsFileError(setting, f"cannot read {path}: {e.strerror or e}") from None
        if b"-----BEGIN " not in text or marker not in text:
            what = "certificate" if setting == "broker_cert_file" else "private key"
            raise TlsFileError(setting, f"no PEM {what} in {path}")
    try:
        ctx.load_cert_chain(cert, key, password=_refuse_passphrase)
    except _Encrypted:
        raise TlsFileError(
            "broker_key_file", f"{key} is encrypted: synkler needs a key without a passphrase"
        ) from None
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError("broker_key_file", f"{key} is not the key of the certificate {cert}") from None
        raise TlsFileError("broker_key_file", f"cannot use {key} with {cert}: {e.reason or e}") from None


# --------------------------------------------------------------------------------------------------
# A failed handshake, explained.

_UNTRUSTED = {
    2,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
}
_EXPIRED, _NOT_YET_VALID = 10, 9
_NAME_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
# What the broker says about our client certificate, as OpenSSL names its alerts.
_CLIENT_REFUSED = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "it asks for one and none is configured",
    "TLSV1_ALERT_UNKNOWN_CA": "it is not signed by a CA the broker trusts",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "it has expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the broker calls it bad",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the broker does not accept it",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "it has been revoked",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the broker does not support it",
    "TLSV1_ALERT_ACCESS_DENIED": "the broker denies it access",
}
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_EOF")
_REASON_RE = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")


def _time(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%b %d %H:%M:%S %Y GMT"))


def _date(text: str) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(_time(text)))


def _names(cert: dict) -> list[str]:
    """The names a decoded certificate is for: its subject alternative names, else its CN."""
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
    if names:
        return names
    return [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]


def _issuer(cert: dict) -> str | None:
    for rdn in cert.get("issuer", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def explain(
    error: BaseException | str,
    tls: TlsSettings,
    host: str,
    port: int,
    peer: dict | None = None,
    now: float | None = None,
) -> str | None:
    """One line on why the TLS handshake with the broker failed, or None if `error` is no TLS
    failure. `error` is the ssl error, or its text where pika kept only that; `peer`, the broker's
    certificate as `ssl` decodes it, where it could be read (dates and names come from it)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        now = time.time() if now is None else now
        return _not_verified(error, tls, tls.server_name or host, peer, now)
    text = error if isinstance(error, str) else f"{error!r} {error}"
    reasons = _REASON_RE.findall(text)
    reason = getattr(error, "reason", None)  # set by OpenSSL, not on an SSLError made by hand
    if isinstance(error, ssl.SSLError) and reason:
        reasons.insert(0, reason)
    for reason in reasons:
        refused = _refused(reason, tls, host, port)
        if refused is not None:
            return refused
    if reasons:
        return f"TLS: the handshake with the broker failed ({reasons[0]})"
    if "SSLEOFError" in text or "EOF occurred in violation of protocol" in text:
        return _closed(tls)
    if isinstance(error, ssl.SSLError):
        return f"TLS: the handshake with the broker failed: {error}"
    return None


def _not_verified(
    error: ssl.SSLCertVerificationError, tls: TlsSettings, expected: str, peer: dict | None, now: float
) -> str:
    """Why we did not accept the broker's certificate."""
    code, message = error.verify_code, str(error.verify_message)
    if code in _UNTRUSTED:
        by = tls.ca_file or "a CA this system trusts (set broker_ca_file)"
        issuer = _issuer(peer) if peer else None
        issued = f" (it is signed by {shown(issuer)!r})" if issuer else ""
        return f"TLS: the broker's certificate is not signed by {by}{issued}"
    if code == _EXPIRED:
        if peer and "notAfter" in peer:
            if _time(peer["notAfter"]) < now:
                return f"TLS: the broker's certificate expired on {_date(peer['notAfter'])}"
            return f"TLS: a certificate in the broker's chain has expired ({message})"
        return "TLS: the broker's certificate has expired"
    if code == _NOT_YET_VALID:
        since = f" before {_date(peer['notBefore'])}" if peer and "notBefore" in peer else " yet"
        return f"TLS: the broker's certificate is not valid{since} (is a clock wrong?)"
    if code in _NAME_MISMATCH:
        # Names from a certificate nobody vouched for: escaped, so they cannot forge a log line.
        names = ", ".join(shown(n) for n in _names(peer)) if peer else ""
        hint = "; set broker_tls_server_name if one of those is right" if names else ""
        return f"TLS: the broker's certificate is for {names or 'another name'}, not {expected}{hint}"
    return f"TLS: the broker's certificate was not accepted: {message}"


def _refused(reason: str, tls: TlsSettings, host: str, port: int) -> str | None:
    """What OpenSSL's `reason` says of the broker's answer, if it tells anything."""
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and tls.cert_file is not None:
        return (
            f"TLS: the broker refused the handshake ({reason}): no TLS version or cipher in common, "
            f"or it does not take our client certificate {tls.cert_file} "
            "(is it made for client authentication?)"
        )
    if reason in _CLIENT_REFUSED:
        if tls.cert_file is None:
            if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
                return (
                    "TLS: the broker requires a client certificate: set broker_cert_file and broker_key_file"
                )
            return f"TLS: the broker refused the handshake ({reason})"
        return f"TLS: the broker refused our client certificate {tls.cert_file}: {_CLIENT_REFUSED[reason]}"
    if reason in _NOT_TLS:
        return f"TLS: {host}:{port} does not answer in TLS (a plain AMQP port? amqps is usually 5671)"
    return None


def _closed(tls: TlsSettings) -> str:
    # TLS 1.3: the broker checks our certificate after we think the handshake is done, and its
    # alert may be lost to the closing connection: we see only the end of the stream.
    if tls.cert_file is not None:
        return (
            f"TLS: the broker closed the connection during the handshake: it does not take our "
            f"client certificate {tls.cert_file} (is it signed by a CA the broker trusts, and made "
            "for client authentication?)"
        )
    return "TLS: the broker closed the connection during the handshake"


def peer_certificate(host: str, port: int, tls: TlsSettings, timeout: float = 5) -> dict | None:
    """The certificate the broker presents, decoded, read by a handshake that does not verify it
    (after a verified one failed, to say why), then closed: nothing is sent. None if it cannot be
    read. Its contents are not trusted, only shown."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=tls.server_name or host) as conn:
                der = conn.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    return decode_certificate(ssl.DER_cert_to_PEM_cert(der)) if der else None


def decode_certificate(pem: str) -> dict | None:
    """A PEM certificate as `ssl` decodes a verified peer's (subject, issuer, dates, names).

    The standard library decodes certificates only from a file, and only through a helper of its
    own tests (`_ssl._test_decode_cert`); without it there is no detail, not a failure."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
        f.write(pem)
        f.flush()
        try:
            return dict(decode(f.name))
        except (ssl.SSLError, OSError, ValueError):
            return None
