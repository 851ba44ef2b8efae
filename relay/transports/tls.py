"""Telling a TLS failure from "nobody answers" (``grpcs://``, ``wss://``, and plain
URLs that reach a TLS server).

gRPC reports a failed TLS handshake only as a connection that never becomes
ready, so a wrong CA looked like a missing server for the whole connect
timeout.  :func:`diagnose` opens one TCP connection of its own and tries the
handshake with Python's :mod:`ssl`, which names the cause (an untrusted
certificate and why, a server that does not speak TLS, a TLS server reached
with a plain URL); the transports raise it as :class:`~relay.core.errors.TLSError`
at once.
"""

from __future__ import annotations

import socket
import ssl

__all__ = ["diagnose"]

ALERT_WAIT = 0.3
"""Seconds to wait after a TLS handshake for the server's alert (a refused client
certificate) or its first bytes."""
_PLAIN_PEER = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
               "UNEXPECTED_RECORD", "HTTP_REQUEST")


def diagnose(host: str, port: int, context: ssl.SSLContext | None, *,
             server_hostname: str | None = None, timeout: float = 2.0,
             tls_scheme: str = "a TLS URL") -> str | None:
    """Why connecting to ``host:port`` fails at the TLS level, or None when it does not.

    Args:
        context: the client's TLS context (for a TLS URL: CA, client certificate,
            ALPN); None for a plain URL, to find out whether the server speaks TLS.
        server_hostname: the name the certificate must carry (default ``host``).
        timeout: seconds for the TCP connection and the handshake.
        tls_scheme: what to suggest when a plain URL reaches a TLS server
            (e.g. ``"grpcs://"``).

    Returns:
        A sentence naming the cause, or None: nobody listens (yet), the
        handshake succeeds, or the peer is silent.
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None  # nobody listens (yet): not a TLS problem
    with sock:
        if context is None:
            probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            probe.check_hostname = False
            probe.verify_mode = ssl.CERT_NONE
            try:
                with probe.wrap_socket(sock, server_hostname=server_hostname or host):
                    return f"the server speaks TLS: connect with {tls_scheme}"
            except (ssl.SSLError, OSError):
                return None
        try:
            with context.wrap_socket(sock, server_hostname=server_hostname or host) as tls:
                # TLS 1.3: a server refuses our certificate (or its absence) after
                # the handshake, with an alert that comes with its first bytes
                tls.settimeout(ALERT_WAIT)
                if tls.recv(1) == b"":
                    return ("the server hung up right after the TLS handshake: it wants a "
                            "client certificate, or refuses this one")
                return None
        except ssl.SSLCertVerificationError as exc:
            return f"the server's certificate is not trusted: {exc.verify_message}"
        except ssl.SSLError as exc:
            reason = exc.reason or ""
            if any(name in reason for name in _PLAIN_PEER) or isinstance(exc, ssl.SSLEOFError):
                return "the server does not speak TLS (a plain URL would reach it)"
            return f"the TLS handshake failed: {reason or exc}"
        except TimeoutError:
            return None
        except OSError as exc:  # the server hung up on our ClientHello
            return f"the server does not speak TLS (it hung up on the TLS handshake: {exc})"
