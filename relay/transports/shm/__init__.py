"""``shm://NAME``: relay between two processes of one machine through shared memory.

Rendezvous and peer death
    The listener binds a UNIX stream socket at ``DIR/relay-UID/NAME.sock``
    (``DIR`` is ``$RELAY_SHM_DIR``, else ``$XDG_RUNTIME_DIR``, else the temp
    directory; a long NAME is replaced by its hash to stay under the 104-byte
    ``sun_path`` limit of macOS).  A client connects and sends one JSON line
    naming the POSIX objects it created for this connection; the server opens
    them, unlinks their names and answers ``{"ok": true}``.  After that the
    socket carries no data: it stays open only so that either side sees EOF
    when the other one dies (also after SIGKILL).

Segments
    Each connection has two segments (client->server, server->client), each
    with one writer and one reader, named ``/relay_<pid>_<8 hex>`` (at most 23
    characters: macOS allows 31) after the creating process, mode 0600, and
    two POSIX semaphores with the same kind of names (``/dev/shm/sem.relay_*``
    on Linux).  Names are unlinked as soon as the peer has mapped them, so a
    crash after the handshake leaves nothing in ``/dev/shm``; a name still
    linked (a handshake or growth in progress) is unlinked on ``close``, at
    interpreter exit and on SIGTERM; previous handlers are chained.  SIGINT
    only unlinks when it would kill the process outright: with Python's
    default handler it becomes ``KeyboardInterrupt``, which a program may
    catch and go on serving, so the exit hook does it then.  The listener's
    socket file is removed the same way.  Names of SIGKILLed processes are
    swept on the next ``listen`` (:func:`sweep_orphans`; the pid in the name
    must be dead) and by ``relay cleanup``, which also removes socket files
    nobody listens on any more (:func:`sweep_sockets`).

    Layout of a segment (little-endian u64 words)::

        word 0   wseq     records published by the writer
        word 1   wclosed  1 once the writer has closed
        word 2   wtime    CLOCK_MONOTONIC ns of the last post (spin tuning)
        word 3   wzero    1 + the number of the newest record placed at offset 0
                          without a slot descriptor (the usual case, below)
        word 4   wack     records the writer has released, in all its *input*
                          segments (the other direction): its reader's progress
                          told in the cache line the peer reads anyway
        word 8   rseq     records released by the reader (own cache line)
        word 16  rclosed  1 once the reader has closed (a line the writer only reads)
        word 17  rwait    1 while the reader sleeps (or is about to) on the semaphore
        word 24+ SLOTS descriptors of 4 words: data offset, record bytes, kind, 0
        byte 4096 on: the data area, a ring of records

    A record (64-byte aligned) is ``nframes, len_0 .. len_n-1``, then frame
    0 at the next 16-byte boundary (small frames share the table's cache
    line) and each further frame at the next 64-byte boundary, so numpy
    views of the frames are aligned.  A frame is copied once, from the
    sender's buffer straight into the ring.  The writer places a record at
    offset 0 whenever the ring is empty (the usual case for request/answer
    traffic: the same, cache-warm pages every step; it learns so from the
    peer's ``wack``, or else from ``rseq``) and then publishes it with
    ``wzero`` instead of a slot descriptor; otherwise after the newest
    record, wrapping around, with a slot descriptor; it waits (with the
    send deadline) while the reader has not released enough space.  Per
    message the hot path thus touches the same cache lines as a bare
    "sequence word + data" ping-pong (and fewer Python steps than with a
    slot descriptor).

Growth
    A message larger than the ring makes the writer create a bigger segment
    (twice the size or what the message needs) and publish a ``grow`` record
    naming it in the old ring; the reader maps the new segment, unlinks its
    name and continues there.  Messages over ``settings.max_message_size``
    raise :class:`~relay.core.errors.MessageTooLarge` on send and are never
    published (no segment grows; the one-pass fast path may have copied
    frames into free ring space before it knows the total); a received
    record over the receiver's limit (``HANDSHAKE_LIMIT`` until
    ``set_receive_limit``) drops the connection (``ConnectionLost``), checked
    before any frame is copied out of the ring; a new segment is mapped, not
    copied, and bounded by the same limit.

Wake-up (chosen by benchmark: ``benchmarks/relay_bench/cases/shm.py``)
    After publishing, the writer posts the reader's semaphore (``sem_post``:
    an atomic increment, a futex syscall only when someone sleeps) if the
    reader's ``rwait`` word says it may be asleep; the writer reads it after
    a full memory fence, and the reader raises it, fences and checks
    ``wseq`` once more before it sleeps, so one of the two always sees the
    other (see ``ShmChannel._wake``).  A reader that finds its message
    without sleeping (the usual case) costs no semaphore call on either
    side.  The reader checks ``wseq``; then it spins, polling for
    :data:`PURE_SPIN_NS` and calling ``sched_yield`` between checks after
    that (on 2 cores a pure busy-wait starves the peer: measured, a 50 µs
    pure spin made round trips 2-3x *slower* when the peer shared the
    core); then it blocks in ``sem_timedwait`` in slices of :data:`SLICE`
    seconds, checking the socket for EOF between slices.  The spin adapts:
    none at all while the peer's typical answer time is longer than
    ``spin`` (a slow agent or env costs no CPU), learned from our own clock
    while spinning and, after a sleep, from the timestamp the writer stores
    when it posts (so our own wake-up latency is not counted).  A tighter
    budget (twice the typical answer time) was measured and dropped: any
    hiccup past it costs a 100 µs wake-up here.
    The semaphore is only a hint: ``wseq`` is the truth, so a stale count
    (a post that raced with the reader waking up) costs one extra loop.
    Measured here (2 cores shared with other work, so the spread is the
    load; median µs per round trip S/M/L, ``relay bench --only shm``): raw
    ping-pong of relay's bytes with this wake-up 3-18 / 8-19 / 17-27,
    with a UNIX-socket doorbell byte (a send and a recv syscall per
    message) 13-21 / 18-33 / 26-53; ``ShmChannel`` itself 5-20 / 12-23 /
    24-34, 0.6-1.8x / 1.2-1.7x / 1.2-1.5x the raw code in the same run
    (the most when both sides get a core of their own and the raw code's
    3 µs round trip shows relay's own Python steps).  Both ends in one
    process, the CPU per round trip is 4.1 / 6.3 / 12.7 µs against the raw
    code's 2.3 / 3.8 / 9.8 (8.9 / 11.6 / 22.2 with a slot descriptor, a
    semaphore post and trywait per message and bytearray slice copies
    instead).  Waking a blocked peer costs 30-100 µs on a 2-core virtual
    machine (futex + IPI),
    which is what the spin avoids.  Spinning is used only on x86 (total
    store order makes the ``wseq`` check safe without a fence); elsewhere
    every publication is posted and every message fetched after a semaphore
    wait, whose acquire/release semantics order the memory.  Where
    ``sem_timedwait`` is missing (macOS), the blocking wait polls
    ``sem_trywait`` with a short sleep.

Receive modes
    By default ``recv`` returns ``bytearray`` frames that nobody else
    references (one copy out of the ring, writable, so the msgpack codec
    wraps them in numpy without another copy, and consecutive observations
    never share memory).  Large buffers are recycled once the caller has
    dropped every reference to them (:class:`_BufferPool`): a fresh 150 KB
    buffer per step costs ~37 page faults, ~100 µs here.  With
    ``settings.zero_copy`` (``?zero_copy=1``) it returns ``memoryview`` s into
    the ring, valid until the next ``recv`` (their space is released then).

URL options
    ``?segment_size=BYTES`` initial data area per direction (default 1 MiB),
    ``?spin=MICROSECONDS`` spin budget before blocking (default
    :data:`relay.transports.base.DEFAULT_SPIN_US`).

Segments are made with ``posix_ipc`` (shm_open + ``mmap``), not
``multiprocessing.shared_memory``: on Python 3.11 the latter registers every
segment it opens with the ``resource_tracker`` process, which unlinks it
(and warns about a "leak") when the *opening* process exits, breaking the
peer; ``track=False`` only exists from 3.13.  posix_ipc also gives the
semaphores, on Linux and macOS alike.
"""

from __future__ import annotations

from relay.transports.shm._channel import PURE_SPIN_NS, SLICE, ShmChannel
from relay.transports.shm._names import socket_path, sweep_orphans, sweep_sockets
from relay.transports.shm._rendezvous import ShmListener, ShmTransport
from relay.transports.shm._ring import DEFAULT_SEGMENT_SIZE

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "PURE_SPIN_NS",
    "SLICE",
    "ShmChannel",
    "ShmListener",
    "ShmTransport",
    "socket_path",
    "sweep_orphans",
    "sweep_sockets",
]
