"""pika's exceptions leave synkler.broker.amqp as one line a person reads, not as pika's reprs."""

from __future__ import annotations

import socket

import pika.exceptions as pe
from pika.adapters.utils.connection_workflow import AMQPConnectorSocketConnectError

from synkler.broker.amqp.words import describe as _describe

LOGIN = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN."


def test_a_refused_connection_reads_as_the_sockets_error():
    refused = AMQPConnectorSocketConnectError(ConnectionRefusedError(111, "Connection refused"))
    assert _describe(pe.AMQPConnectionError(refused)) == "Connection refused"
    unknown = pe.AMQPConnectionError(socket.gaierror(-2, "Name or service not known"))
    assert _describe(unknown) == "cannot resolve the broker's host name (Name or service not known)"


def test_the_brokers_refusals_read_as_its_reply_code_and_text():
    login = pe.ProbableAuthenticationError(f"ConnectionClosedByBroker: (403) '{LOGIN}'")
    assert _describe(login) == f"login refused by the broker: 403 {LOGIN}"
    vhost = pe.ProbableAccessDeniedError("ConnectionClosedByBroker: (530) 'NOT_ALLOWED - vhost x not found'")
    assert _describe(vhost) == "access denied by the broker: 530 NOT_ALLOWED - vhost x not found"
    closed = pe.ChannelClosedByBroker(404, "NOT_FOUND - no queue 'q' in vhost '/'")
    assert _describe(closed) == "the broker closed the channel: 404 NOT_FOUND - no queue 'q' in vhost '/'"
    forced = pe.ConnectionClosedByBroker(320, "CONNECTION_FORCED - shutdown")
    assert _describe(forced) == "the broker closed the connection: 320 CONNECTION_FORCED - shutdown"


def test_a_lost_stream_and_the_rest_carry_no_repr():
    lost = pe.StreamLostError("Stream connection lost: ConnectionResetError(104, 'Connection reset by peer')")
    said = "connection to the broker lost: Stream connection lost: Connection reset by peer"
    assert _describe(lost) == said
    for e in (lost, pe.AMQPConnectionError(), pe.ConnectionWrongStateError(), pe.NackError([])):
        text = _describe(e)
        assert text and "Error(" not in text and "Error:" not in text, text
