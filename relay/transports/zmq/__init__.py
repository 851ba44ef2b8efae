"""``zmq+tcp://HOST:PORT`` and ``zmq+ipc://PATH``: relay over ZeroMQ (pyzmq).

Design (one port or ipc path per server, one server thread per channel):

* The :class:`ZmqListener` binds one ROUTER socket and nothing else; every
  client connects one DEALER to it.  A client's first message is the hello
  ``[b"relay-zmq/2", LIMIT]`` (LIMIT: its ``max_message_size``, 8 bytes
  little-endian); ``accept`` answers ``[b"relay-zmq/2", LIMIT]`` with the
  server's own and returns the channel of that client (its ROUTER routing
  id).  A first message that is not a hello is ignored.  ``connect`` returns
  once the answer came (ZeroMQ retries a refused connection meanwhile, so a
  server still starting is waited for until the deadline).
  Both sides then know the other's limit: ``send`` refuses a message over
  either with ``MessageTooLarge`` naming it, where ZeroMQ itself would drop
  the connection without a word (``MAXMSGSIZE``).
* A relay message is one ZeroMQ multipart message (frames kept as is; frames
  of :data:`ZERO_COPY_MIN` bytes and more are sent without a copy, received
  frames are writable ``memoryview`` s over ZeroMQ's buffer, no copy either).
  A message of one empty frame is the *close notice*: the server closed the
  channel.  It travels behind every message sent before it, so a refused
  client always reads the server's error frame first (a message whose first
  frame is empty is sent with one more empty frame in front).
* Server side, the ROUTER socket is shared by the listener's ``accept`` and
  all its channels, used under one lock (ZeroMQ sockets are not thread-safe;
  a lock that orders every use makes them safe to share).  Whichever thread
  reads the socket sorts the messages into per-channel queues.  A waiting
  ``recv`` first polls for up to ``?spin=`` microseconds
  (:data:`relay.transports.base.DEFAULT_SPIN_US`), reading the socket itself
  and yielding the core (a sleep plus wake-up costs 50-100 µs);
  then it blocks.  Of the blocked threads, one (the *watcher*, a channel
  rather than ``accept``) waits on the socket's file descriptor and wakes
  those whose messages it reads; the others wait on their own condition.  A
  lone client's round trip costs a few µs more than on a socket of its own
  (a routing-id frame, a lock, the sorting); with several clients waiting at
  once, a message for a non-watcher costs one more wake-up, and spinning
  threads read each other's messages.  Measured (relay bench, median µs
  S/M/L, interleaved rounds against the design with one extra socket and
  port per client that this replaced): zmq+ipc 169/165/196 vs 165/162/188,
  zmq+tcp 195/189/257 vs 187/191/230; four clients stepping CartPole at
  once over one zmq+tcp server: 508 vs 669 µs per step.  ``?spin=0`` turns
  spinning off (an idle agent or env then costs no CPU at all).
* Client side, the channel is its DEALER: ``send`` is one ``zmq_msg_send``
  per frame (non-blocking); ``recv`` one blocking ``zmq_msg_recv`` per frame
  with ``RCVTIMEO`` of at most :data:`CHECK_INTERVAL`, after the same spin.
* Peer death.  Each socket has a monitor socket on a unique inproc address,
  read only when a wait expires or (server) when its descriptor wakes the
  watcher.
  A client's ``EVENT_DISCONNECTED`` (or a failed handshake) turns into
  ``ConnectionLost`` once no data is left.  The server learns which client
  left from the file descriptor in the event: each client's descriptor is
  taken from its hello (``ZMQ_SRCFD``), after reading the monitor, so a
  reused descriptor number is never mistaken for an earlier client's (a
  hello arriving on a descriptor ends the client that had it).  ZMTP
  heartbeats (:data:`HEARTBEAT_IVL_MS`, :data:`HEARTBEAT_TIMEOUT_MS`) drop a
  peer that stopped answering (a frozen process, a lost machine), so a dead
  peer is noticed within :data:`CHECK_INTERVAL` seconds of its connection
  closing.  A client's DEALER keeps ZeroMQ's reconnection on although its
  channel is lost at the first disconnect: with reconnection off, libzmq
  drops the messages that arrived but were not read yet as soon as it
  processes the disconnect (any ``poll`` or ``send`` does), and an idle
  client would lose the server's last words (``ServerClosing``).  The
  socket is closed once those are read.

Safety settings: ``LINGER 0`` on every client socket (closing never blocks)
and :data:`CLOSE_LINGER_MS` on the listener (so close notices and final error
frames still leave), ``MAXMSGSIZE`` = ``settings.max_message_size`` (a
larger frame from a foreign peer drops that peer's connection; a message is
also checked against the channel's receive limit,
:data:`~relay.transports.base.HANDSHAKE_LIMIT` until the handshake),
``ROUTER_MANDATORY`` (a send to a client that left fails instead of
vanishing), one context per process (re-created after ``fork``), and every
``zmq.ZMQError`` translated to the :class:`~relay.core.errors.RelayError`
tree with the original as ``__cause__``.

Zero-copy note: a frame sent without a copy is read by ZeroMQ's I/O thread
after ``send`` returns; do not mutate it until the peer has answered (the
request/reply pattern of relay guarantees this).

Source of the socket semantics: the libzmq API docs (zmq_socket, zmq_setsockopt,
zmq_getsockopt ``ZMQ_FD``/``ZMQ_EVENTS``, zmq_msg_get ``ZMQ_SRCFD``,
zmq_socket_monitor), libzmq 4.3.
"""

from __future__ import annotations

from relay.transports.zmq._client import ZmqChannel
from relay.transports.zmq._listener import ZmqListener, ZmqServerChannel, ZmqTransport
from relay.transports.zmq._socket import (
    CHECK_INTERVAL,
    CLOSE_LINGER_MS,
    HANDSHAKE_MS,
    HEARTBEAT_IVL_MS,
    HEARTBEAT_TIMEOUT_MS,
    MAGIC,
    ZERO_COPY_MIN,
    context,
)

__all__ = ["CHECK_INTERVAL", "CLOSE_LINGER_MS", "HANDSHAKE_MS", "HEARTBEAT_IVL_MS",
           "HEARTBEAT_TIMEOUT_MS", "MAGIC", "ZERO_COPY_MIN", "ZmqChannel", "ZmqListener",
           "ZmqServerChannel", "ZmqTransport", "context"]
