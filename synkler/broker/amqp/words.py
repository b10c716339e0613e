"""pika's exceptions as one line a person reads (synkler.broker.amqp): what happened in words, the
broker's reply code and text, or the socket's error, never pika's nested reprs."""

from __future__ import annotations

import re
import socket
import ssl

import pika.exceptions


def _causes(e: BaseException) -> list[BaseException]:
    """`e` and what it wraps: causes, contexts, exceptions among its args (pika's way)."""
    seen: list[BaseException] = []
    todo = [e]
    while todo:
        x = todo.pop(0)
        if any(x is s for s in seen):
            continue
        seen.append(x)
        wrapped = (x.__cause__, x.__context__, getattr(x, "exception", None), *x.args)
        todo += [a for a in wrapped if isinstance(a, BaseException)]
        todo += [a for a in getattr(x, "exceptions", None) or () if isinstance(a, BaseException)]
    return seen


def ssl_error(e: BaseException) -> ssl.SSLError | None:
    return next((x for x in _causes(e) if isinstance(x, ssl.SSLError)), None)


def chain_text(e: BaseException) -> str:
    return " ".join(f"{x!r} {x}" for x in _causes(e))


def describe(e: BaseException) -> str:
    """A pika exception as one line a person reads: what happened in words, the broker's reply code
    and text, or the socket's error, never pika's nested reprs."""
    x = pika.exceptions
    if isinstance(e, x.ProbableAuthenticationError):
        return f"login refused by the broker: {_plain(str(e))}"
    if isinstance(e, x.ProbableAccessDeniedError):
        return f"access denied by the broker: {_plain(str(e))}"
    if isinstance(e, (x.ConnectionClosedByBroker, x.ChannelClosedByBroker)):
        what = "channel" if isinstance(e, x.ChannelClosedByBroker) else "connection"
        return f"the broker closed the {what}: {e.reply_code} {e.reply_text}"
    if isinstance(e, x.StreamLostError):
        return f"connection to the broker lost: {_plain(str(e))}"
    inner = next((c for c in reversed(_causes(e)) if isinstance(c, OSError)), None)
    if inner is not None:
        return _os_text(inner)
    text = _plain(str(e))
    if isinstance(e, x.AMQPConnectionError) and not text:
        return "cannot connect"
    return text or type(e).__name__


# pika wraps the broker's reply and socket errors in reprs: "ConnectionClosedByBroker: (403) 'X'",
# "(404, 'X')", "ConnectionResetError(104, 'Connection reset by peer')".
_REPLY = re.compile(r"""^(?:\w+: )?\((\d+)\)?,? ?['"](.*)['"]\)?$""")
_OS_REPR = re.compile(r"""\b\w*(?:Error|Exception)\((?:-?\d+, )?['"]([^'"]*)['"]\)""")


def _plain(text: str) -> str:
    text = _OS_REPR.sub(r"\1", text.strip())
    m = _REPLY.match(text)
    return f"{m.group(1)} {m.group(2)}" if m else text


def _os_text(e: OSError) -> str:
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the broker's host name ({e.strerror})"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "timed out"
    return _plain(e.strerror or str(e)) or type(e).__name__
