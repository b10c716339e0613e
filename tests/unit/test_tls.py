"""A failed TLS handshake with the broker, told in one line (synkler.tls.explain), from the errors
pika hands over (synkler.broker.amqp digs the ssl error out of its wrappers)."""

from __future__ import annotations

import ssl

import pika.exceptions
import pytest

from synkler.broker.amqp import Broker, BrokerParams
from synkler.broker.amqp.words import ssl_error as _ssl_error
from synkler.tls import TlsSettings, explain

CA = "/etc/synkler/ca.pem"
TLS = TlsSettings(CA)
NOW = 1_700_000_000.0  # 2023-11-14


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    e = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}"
    )
    e.verify_code, e.verify_message = code, message
    return e


def peer(**fields: object) -> dict:
    return {
        "subject": ((("commonName", "rabbit.example"),),),
        "issuer": ((("commonName", "Other CA"),),),
        "notBefore": "Jan  1 00:00:00 2020 GMT",
        "notAfter": "Jan  2 00:00:00 2020 GMT",
        **fields,
    }


def test_a_certificate_signed_by_another_ca_names_the_ca_file_and_the_issuer() -> None:
    e = verify_error(19, "self-signed certificate in certificate chain")
    assert explain(e, TLS, "rabbit.example", 5671, peer()) == (
        f"TLS: the broker's certificate is not signed by {CA} (it is signed by 'Other CA')"
    )
    assert explain(
        verify_error(20, "unable to get local issuer certificate"), TlsSettings(None), "h", 5671
    ) == ("TLS: the broker's certificate is not signed by a CA this system trusts (set broker_ca_file)")


def test_an_expired_certificate_says_when_it_expired() -> None:
    e = verify_error(10, "certificate has expired")
    assert (
        explain(e, TLS, "h", 5671, peer(), now=NOW)
        == "TLS: the broker's certificate expired on 2020-01-02 00:00 UTC"
    )
    assert explain(e, TLS, "h", 5671, None) == "TLS: the broker's certificate has expired"
    fresh = peer(notAfter="Jan  2 00:00:00 2030 GMT")
    assert "a certificate in the broker's chain has expired" in explain(e, TLS, "h", 5671, fresh, now=NOW)


def test_a_certificate_for_another_name_lists_its_names() -> None:
    e = verify_error(62, "Hostname mismatch, certificate is not valid for 'broker.lan'.")
    names = peer(subjectAltName=(("DNS", "rabbit.example"), ("IP Address", "10.0.0.5")))
    assert explain(e, TLS, "broker.lan", 5671, names) == (
        "TLS: the broker's certificate is for rabbit.example, 10.0.0.5, not broker.lan; "
        "set broker_tls_server_name if one of those is right"
    )
    assert "is for rabbit.example, not broker.lan" in explain(e, TLS, "broker.lan", 5671, peer())  # its CN
    shown = TlsSettings(CA, server_name="mq.example")
    assert "not mq.example" in explain(e, shown, "10.0.0.5", 5671, peer())


def test_a_name_from_the_certificate_cannot_break_the_line() -> None:
    e = verify_error(62, "Hostname mismatch")
    line = explain(e, TLS, "h", 5671, peer(subjectAltName=(("DNS", "evil\nFAKE line"),)))
    assert line is not None and "\n" not in line
    assert "for evil\\nFAKE line, not h" in line  # escaped as every name shown to people (text.shown)


def test_a_client_certificate_the_broker_refuses_is_named() -> None:
    mine = TlsSettings(CA, "/etc/synkler/upload.pem", "/etc/synkler/upload.key")
    wrapped = (  # pika keeps only the text of the ssl error here
        "StreamLostError: (\"Stream connection lost: SSLError(1, '[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert "
        "unknown ca')\",)"
    )
    assert explain(wrapped, mine, "h", 5671) == (
        "TLS: the broker refused our client certificate /etc/synkler/upload.pem: "
        "it is not signed by a CA the broker trusts"
    )
    required = "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"
    assert explain(required, TLS, "h", 5671) == (
        "TLS: the broker requires a client certificate: set broker_cert_file and broker_key_file"
    )


def test_a_plain_amqp_port_is_told_apart() -> None:
    e = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    assert (
        explain(e, TLS, "h", 5672)
        == "TLS: h:5672 does not answer in TLS (a plain AMQP port? amqps is usually 5671)"
    )


def test_what_is_not_about_tls_is_left_alone() -> None:
    assert explain(ConnectionRefusedError(111, "Connection refused"), TLS, "h", 5671) is None
    assert explain("ConnectionClosedByBroker: (403) 'ACCESS_REFUSED'", TLS, "h", 5671) is None


def test_the_ssl_error_is_dug_out_of_pikas_wrappers() -> None:
    inner = verify_error(10, "certificate has expired")
    wrapped = pika.exceptions.AMQPConnectionError(inner)
    assert _ssl_error(wrapped) is inner
    try:
        try:
            raise inner
        except ssl.SSLError as e:
            raise pika.exceptions.StreamLostError("lost") from e
    except pika.exceptions.StreamLostError as outer:
        assert _ssl_error(outer) is inner


@pytest.mark.parametrize(
    "error, expected",
    [
        (pika.exceptions.AuthenticationError("EXTERNAL"), "the broker does not offer EXTERNAL login"),
        (
            pika.exceptions.ProbableAuthenticationError(
                "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused using authentication "
                "mechanism EXTERNAL. For details see the broker logfile.'"
            ),
            "the broker refused EXTERNAL login with the certificate /c.pem",
        ),
    ],
)
def test_an_external_login_the_broker_refuses_is_explained(error, expected) -> None:
    broker = Broker(BrokerParams("h", 5671, tls=TlsSettings(CA, "/c.pem", "/c.key"), external=True), "i", "a")
    why = broker._explain_failure(error, ("h", 5671))
    assert why is not None and why.startswith(expected)
