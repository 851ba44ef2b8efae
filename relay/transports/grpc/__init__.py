"""``grpc://HOST:PORT`` and ``grpcs://HOST:PORT``: relay frames over one gRPC stream.

A channel is one bidirectional streaming call of the method
``/relay.v1.Relay/Channel``, defined with grpcio's generic handlers and raw
bytes (no ``.proto``).  Each gRPC message carries one whole relay message::

    u32 n | n x u64 frame lengths | frame 0 bytes | frame 1 bytes | ...

(all little-endian).  The receiver slices the frames out of the received
``bytes`` without copying, so returned frames stay valid.  One gRPC message
per relay message (instead of one per frame) keeps the per-message gRPC
overhead constant whatever the number of frames.

Server side, every incoming call becomes a :class:`GrpcChannel` returned by
:meth:`GrpcListener.accept`; the server sends its initial metadata at once,
and :meth:`GrpcTransport.connect` returns only when it has arrived, so a
connected channel is an accepted one.

Threads and wake-ups (each thread hand-off costs 50-100 µs on a loaded VM,
more than relay's own work per step, so the hot path has none of ours):

* ``recv`` waits in the calling thread on the call's own condition variable,
  which grpcio's completion-queue thread notifies when a message arrives, as
  grpcio's blocking iterators do but with a deadline (``_CallReader``,
  ``_RequestReader``); it first polls for up to ``?spin=`` microseconds
  (default :data:`~relay.transports.base.DEFAULT_SPIN_US`) so the wake-up is
  usually not a sleep;
* a server serves each call through grpcio's non-blocking stream handler (the
  ``experimental_non_blocking`` mechanism of grpcio's health service): no
  pool thread is held per client, and ``send`` starts the send operation in
  the calling thread without waiting for the write to finish
  (``_ResponseSender``);
* a client's ``send`` also starts the send operation in the calling thread
  (``_RequestSender``) instead of queueing it for the request thread grpcio
  runs per call, which then only ends the stream on close.

``send`` never waits: gRPC allows one send in flight per call, so a message
sent while the previous one is still being written (a peer not reading) waits
in a queue that the completion of each send drains.  These readers and
senders use grpcio internals (``_state`` of a call, cygrpc operations),
checked at import and when a call starts; with a grpcio whose internals
differ, a helper thread per channel reads, a client's messages go through
grpcio's request thread and a server's through a response generator (or a
thread feeding grpcio's blocking send callback): the same behaviour, slower.

Measured (relay bench, relay grpc:// over raw grpcio bidi, median of the
per-round ratios of 8 interleaved rounds, S/M/L): 0.95/0.94/0.93; with reader
threads and queues instead 1.52/1.40/1.16; without the spin 1.56/1.00/1.20.

Limits and liveness:

* gRPC's 4 MiB message limit is raised to ``settings.max_message_size`` plus
  the frame header (``grpc.max_send_message_length`` and
  ``grpc.max_receive_message_length``, on both sides);
* a server closes a connection that has not finished its TLS and HTTP/2
  handshake within ``settings.connect_timeout`` seconds
  (``grpc.server_handshake_timeout_ms``; gRPC's default is 120 s);
* HTTP/2 keepalive pings every ``keepalive`` seconds (default 10) and a
  ``keepalive_timeout`` (default 5) make a silently dead peer (host gone,
  cable cut) surface as :class:`~relay.core.errors.ConnectionLost`; a peer
  process that dies is noticed at once through its closed socket;
* no gRPC object exists before ``listen``/``connect`` is called (a process
  may fork freely before).

URL options (query) of this transport, besides relay's settings:

``keepalive``            seconds between keepalive pings (default 10).
``keepalive_timeout``    seconds to wait for a ping's answer (default 5).
``max_clients``          server: most simultaneous channels (default 64); the
                         next client gets ``ConnectError``.  Counted by the
                         listener until each call ends (grpcio's
                         ``maximum_concurrent_rpcs`` counts busy handler
                         threads, and handlers return at once here).
``spin``                 microseconds ``recv`` polls before it sleeps (default
                         250; 0: never poll, no CPU spent while idle).

``grpcs://`` adds TLS (paths to PEM files; each option may also come from the
environment variable ``RELAY_TLS_<NAME>``, e.g. ``RELAY_TLS_CA``):

``cert``, ``key``        server: its certificate chain and private key
                         (required).  Client: a client certificate for mutual
                         TLS (optional).
``client_ca``            server: require client certificates signed by these
                         roots (mutual TLS).
``ca``                   client: the root certificates that sign the server's
                         certificate (default: the system roots).  On a listen
                         URL it is unused by the server but kept in
                         ``listener.address`` for the clients of that address.
``server_name``          client: the name to check the server certificate
                         against, when it differs from HOST.

``listener.address`` keeps every query option except ``cert``, ``key`` and
``client_ca``.

Errors: every ``grpc.RpcError`` becomes a :class:`~relay.core.errors.RelayError`
(kept as ``__cause__``): no server at connect -> ``ConnectError`` after the
timeout; a TLS failure (untrusted certificate, a plain server for
``grpcs://``, a TLS server for ``grpc://``) -> :class:`~relay.core.errors.TLSError`
at once, naming the cause (gRPC itself only retries: while waiting, connect
tries the handshake with :mod:`ssl`, see :mod:`relay.transports.tls`);
``RESOURCE_EXHAUSTED`` (an oversized message received) and any end of the
call -> ``ConnectionLost``.

Modules: ``_config`` (URL options, TLS files, channel arguments), ``_portable``
(the threaded reader any grpcio runs), ``_internals`` (the fast path on
grpcio's private modules, alone in one file), ``_channel`` (GrpcChannel),
``_listener`` (GrpcListener), ``_transport`` (GrpcTransport).
"""

from relay.transports.framing import pack, unpack
from relay.transports.grpc._channel import GrpcChannel
from relay.transports.grpc._config import METHOD, tls_file
from relay.transports.grpc._internals import _INTERNALS as _INTERNALS  # for the benchmark
from relay.transports.grpc._listener import GrpcListener
from relay.transports.grpc._transport import GrpcTransport

__all__ = ["METHOD", "GrpcChannel", "GrpcListener", "GrpcTransport", "pack", "tls_file", "unpack"]
