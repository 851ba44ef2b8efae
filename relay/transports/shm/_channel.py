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

import atexit
import contextlib
import hashlib
import json
import mmap
import os
import platform
import re
import secrets
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import posix_ipc

from relay.codecs.base import Buffer
from relay.core.config import Settings
from relay.core.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    InvalidURL,
    MessageTooLarge,
    Timeout,
    TransportError,
)
from relay.core.url import URL
from relay.transports.base import HANDSHAKE_LIMIT, over_limit, readable, spin_ns

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "ShmChannel",
    "ShmListener",
    "ShmTransport",
    "socket_path",
    "sweep_orphans",
    "sweep_sockets",
]

DEFAULT_SEGMENT_SIZE = 1 << 20
"""Initial data area of each direction, bytes (grows on demand)."""
# The spin budget is relay's common one (``?spin=``, default 250 µs,
# relay.transports.base.DEFAULT_SPIN_US): it must cover the peer's whole turn
# (decode, ``env.step``, encode: 50-200 µs for relay on a 2-core virtual
# machine), not only the transport.  With 50 µs the spin switches itself off
# and every message pays a 50-100 µs futex wake-up.  Measured, a CartPole step over shm, median
# of 5000: 233/239 µs at 50, 166/173 at 150, 163/150 at 300.
SLICE = 0.05
"""Longest single semaphore wait, seconds: the bound on noticing a dead peer."""
PURE_SPIN_NS = 2_000
"""Nanoseconds of plain polling before the spin starts calling ``sched_yield``."""
HEADER = 4096
SLOTS = 64
ALIGN = 64
KIND_MESSAGE = 0
KIND_GROW = 1
HELLO_LIMIT = 4096
HELLO_TIMEOUT = 2.0
"""Seconds ``accept`` waits for a connected client's hello line (a client sends it
at once; a silent one must not hold up the clients behind it for long)."""
PROTOCOL = "relay-shm/2"

_W_SEQ, _W_CLOSED, _W_TIME, _W_ZERO, _W_ACK = 0, 1, 2, 3, 4
_R_SEQ, _R_CLOSED, _R_WAIT, _SLOT0 = 8, 16, 17, 24
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_OBJECT = re.compile(r"^(?:sem\.)?relay_(\d+)_[0-9a-f]{8}$")
_STRONG_ORDER = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}
_SHM_DIR = Path("/dev/shm")


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


# ---------------------------------------------------------------------------
# Names this process created and that may still be linked: unlinked on close,
# at exit and on SIGTERM/SIGINT.

_linked: dict[str, tuple[str, int]] = {}
"""``"/relay_..."`` or a socket path -> (``"shm"`` | ``"sem"`` | ``"sock"``, creator pid)."""
_linked_lock = threading.Lock()
_hooks_installed = False


def _unlink(name: str, kind: str) -> None:
    with contextlib.suppress(posix_ipc.ExistentialError, OSError):
        if kind == "sock":
            os.unlink(name)
        elif kind == "sem":
            posix_ipc.unlink_semaphore(name)
        else:
            posix_ipc.unlink_shared_memory(name)


def _forget(name: str, *, unlink: bool) -> None:
    with _linked_lock:
        entry = _linked.pop(name, None)
    if unlink and entry is not None and entry[1] == os.getpid():
        _unlink(name, entry[0])


def unlink_all() -> None:
    """Unlink every name this process created that is still linked (exit hook).

    A forked child inherits the table but never unlinks its parent's names.
    """
    with _linked_lock:
        items = list(_linked.items())
        _linked.clear()
    pid = os.getpid()
    for name, (kind, owner) in items:
        if owner == pid:
            _unlink(name, kind)


def _chain_signal(signum: int, previous: Any) -> Any:
    def handler(sig: int, frame: Any) -> None:
        if callable(previous):
            # A Python handler: KeyboardInterrupt for SIGINT.  It may be caught
            # and the program go on serving, so SIGINT unlinks nothing here
            # (the atexit hook does, when the program does end).
            if sig != signal.SIGINT:
                unlink_all()
            previous(sig, frame)
        elif previous == signal.SIG_DFL:  # the process dies now: no atexit
            unlink_all()
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    return handler


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(unlink_all)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit remains
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if previous in (signal.SIG_IGN, None):
            continue
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, _chain_signal(signum, previous))


def _new_name() -> str:
    return f"/relay_{os.getpid()}_{secrets.token_hex(4)}"


def _create_segment(size: int) -> tuple[str, mmap.mmap]:
    _install_hooks()
    for _ in range(8):
        name = _new_name()
        with _linked_lock:
            _linked[name] = ("shm", os.getpid())
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError:
            _forget(name, unlink=False)
            continue
        except (posix_ipc.Error, OSError, ValueError) as exc:
            _forget(name, unlink=False)
            raise TransportError(f"cannot create a shared-memory segment of {size} bytes: "
                                 f"{exc}") from exc
        try:
            return name, mmap.mmap(shm.fd, size)
        except (OSError, ValueError) as exc:
            _forget(name, unlink=True)
            raise TransportError(f"cannot map a shared-memory segment of {size} bytes: "
                                 f"{exc}") from exc
        finally:
            shm.close_fd()
    raise TransportError("cannot find a free shared-memory segment name")


def _create_semaphore() -> tuple[str, posix_ipc.Semaphore]:
    _install_hooks()
    for _ in range(8):
        name = _new_name()
        with _linked_lock:
            _linked[name] = ("sem", os.getpid())
        try:
            return name, posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600,
                                             initial_value=0)
        except posix_ipc.ExistentialError:
            _forget(name, unlink=False)
        except (posix_ipc.Error, OSError, ValueError) as exc:
            _forget(name, unlink=False)
            raise TransportError(f"cannot create a semaphore: {exc}") from exc
    raise TransportError("cannot find a free semaphore name")


def _open_segment(name: str, limit: int) -> mmap.mmap:
    """Map the peer's segment ``name`` and unlink the name (we hold the mapping now)."""
    if not isinstance(name, str) or not _OBJECT.match(name.lstrip("/")):
        raise ConnectionLost(f"peer named an invalid segment {name!r}")
    try:
        shm = posix_ipc.SharedMemory(name)
    except (posix_ipc.Error, OSError, ValueError) as exc:
        raise ConnectionLost(f"cannot open the peer's segment {name}: {exc}") from exc
    try:
        if not HEADER + ALIGN <= shm.size <= limit:
            raise ConnectionLost(f"peer's segment {name} has a bad size {shm.size}")
        return mmap.mmap(shm.fd, shm.size)
    except (OSError, ValueError) as exc:
        raise ConnectionLost(f"cannot map the peer's segment {name}: {exc}") from exc
    finally:
        shm.close_fd()
        _unlink(name, "shm")


def _open_semaphore(name: str) -> posix_ipc.Semaphore:
    if not isinstance(name, str) or not _OBJECT.match(name.lstrip("/")):
        raise ConnectionLost(f"peer named an invalid semaphore {name!r}")
    try:
        return posix_ipc.Semaphore(name)
    except (posix_ipc.Error, OSError, ValueError) as exc:
        raise ConnectionLost(f"cannot open the peer's semaphore {name}: {exc}") from exc
    finally:
        _unlink(name, "sem")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def sweep_orphans(directory: Path = _SHM_DIR) -> list[str]:
    """Unlink relay's segments and semaphores whose creating process is dead.

    Looks at ``directory`` (``/dev/shm``; on systems without it, such as
    macOS, there is nothing to list and nothing is done) for
    ``relay_<pid>_<hex>`` and ``sem.relay_<pid>_<hex>``; an entry is removed
    only if no process ``pid`` exists.  Entries of live processes (and of
    other users, which cannot be removed) are left alone.

    Returns:
        The removed entry names, e.g. ``["relay_4242_0a1b2c3d"]``.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _OBJECT.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    return removed


def sweep_sockets(names: Iterable[str] | None = None) -> list[str]:
    """Remove rendezvous socket files in this user's directory that nobody listens on.

    Args:
        names: only the socket files of these ``shm://`` names (default: all).

    Returns:
        The removed paths.
    """
    removed: list[str] = []
    try:
        paths = (sorted(_runtime_dir().glob("*.sock")) if names is None
                 else [socket_path(name) for name in names])
    except (OSError, TransportError):
        return removed
    for path in paths:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(0.5)
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(str(path))
        except OSError:
            pass
        finally:
            probe.close()
    return removed


# ---------------------------------------------------------------------------
# Rendezvous socket path.


def _runtime_dir() -> Path:
    base = os.environ.get("RELAY_SHM_DIR") or os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base):
        base = tempfile.gettempdir()
    directory = Path(base) / f"relay-{os.getuid()}"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.lstat()
    except OSError as exc:
        raise TransportError(f"cannot create the rendezvous directory {directory}: "
                             f"{exc}") from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise TransportError(f"{directory} is not a directory owned by this user")
    return directory


def socket_path(name: str) -> Path:
    """The UNIX socket a listener of ``shm://name`` binds (hashed if the path is long)."""
    if not _NAME.match(name):
        raise InvalidURL(f"shm://{name}",
                         "the name must be 1-100 characters of letters, digits, '.', '_', '-'")
    directory = _runtime_dir()
    path = directory / f"{name}.sock"
    if len(os.fsencode(path)) > 100:
        path = directory / f"{hashlib.sha256(name.encode()).hexdigest()[:24]}.sock"
    return path


# ---------------------------------------------------------------------------
# Options.


def _options(url: URL) -> tuple[int, int]:
    """``(segment bytes, spin budget in ns)`` from the URL query."""
    try:
        size = int(url.query.get("segment_size", DEFAULT_SEGMENT_SIZE))
    except ValueError as exc:
        raise ConfigError(f"bad shm option in {url.render()}: {exc}") from exc
    if size < 4096:
        raise ConfigError("segment_size must be >= 4096 bytes")
    spin = spin_ns(url)  # ConfigError unless a number of µs >= 0
    return _align(size), (spin if _STRONG_ORDER else 0)


def _max_segment(limit: int) -> int:
    """Largest segment a peer may announce for messages of ``limit`` bytes (a sanity bound)."""
    return HEADER + 4 * limit + (64 << 20)


_SEM_TIMEOUT = bool(posix_ipc.SEMAPHORE_TIMEOUT_SUPPORTED)
_LEARN_CAP = 10_000_000
_monotonic_ns = time.monotonic_ns
_TABLE = HEADER >> 3  # u64 word of a record at offset 0: its frame count
_sched_yield = os.sched_yield


def _frame_view(frame: Buffer) -> memoryview:
    view = memoryview(frame)
    if view.ndim != 1 or view.format not in ("B", "b", "c"):
        try:
            view = view.cast("B")
        except TypeError:
            view = memoryview(view.tobytes())  # not C-contiguous: one extra copy
    elif view.format != "B":
        view = view.cast("B")
    return view


# ---------------------------------------------------------------------------
# Received buffers.

POOL_MIN = 32 << 10
"""Frames of at least this many bytes are received into recycled buffers."""
POOL_SIZE = 4


class _BufferPool:
    """Recycles large receive buffers that nobody references any more.

    A fresh 150 KB ``bytearray`` per message costs ~37 page faults (~100 µs
    measured here: glibc maps buffers over 128 KiB afresh).  The pool keeps
    the last :data:`POOL_SIZE` buffers it handed out and reuses one of the
    right size only when its reference count shows that the pool holds the
    only reference (the caller and every numpy array over it are gone), so a
    buffer still in use is never overwritten: each ``recv`` still returns
    memory that no one else can see.
    """

    __slots__ = ("_buffers",)

    def __init__(self) -> None:
        self._buffers: deque[bytearray] = deque(maxlen=POOL_SIZE)

    def fill(self, source: memoryview) -> bytearray:
        """A buffer holding a copy of ``source`` (recycled if one is free)."""
        n = source.nbytes
        getrefcount = sys.getrefcount
        for buffer in self._buffers:
            # references: the deque, the loop variable, getrefcount's argument
            if len(buffer) == n and getrefcount(buffer) == 3:
                # through a memoryview: bytearray's own slice assignment is 2x slower
                memoryview(buffer)[:] = source
                return buffer
        buffer = bytearray(source)
        self._buffers.append(buffer)
        return buffer


# ---------------------------------------------------------------------------
# One direction of a channel.


class _Segment:
    """A mapped segment: the mmap, a byte view and a u64 view of the header."""

    __slots__ = ("map", "view", "ctl", "capacity")

    def __init__(self, mapping: mmap.mmap) -> None:
        self.map = mapping
        self.view = memoryview(mapping)
        self.ctl = self.view[:len(mapping) & ~7].cast("Q")  # header and frame tables
        self.capacity = len(mapping) - HEADER

    def close(self) -> None:
        self.ctl.release()
        self.view.release()
        try:
            self.map.close()
        except BufferError:
            pass  # zero-copy frames still view it: unmapped when they are freed


class ShmChannel:
    """One end of an ``shm://`` connection (see the module docstring for the layout).

    Use from one thread at a time (``close`` may come from any thread).
    """

    def __init__(self, sock: socket.socket, out_map: mmap.mmap, in_map: mmap.mmap,
                 out_sem: posix_ipc.Semaphore, in_sem: posix_ipc.Semaphore,
                 settings: Settings, *, spin: int, own_names: Sequence[str] = ()) -> None:
        self._sock = sock
        self._out = out = _Segment(out_map)
        self._in = inn = _Segment(in_map)
        # the hot path's views of the current segments (see _use_out, _use_in)
        self._octl, self._oview, self._oend = out.ctl, out.view, HEADER + out.capacity
        self._ictl, self._iview, self._iend = inn.ctl, inn.view, HEADER + inn.capacity
        self._out_sem = out_sem
        self._in_sem = in_sem
        self._limit = settings.max_message_size
        self._receive_limit = HANDSHAKE_LIMIT
        self._send_timeout = settings.timeout
        self._zero_copy = settings.zero_copy
        self._spin = spin
        self._own_names = list(own_names)
        self._wseq = 0
        self._inflight: deque[tuple[int, int, int]] = deque()  # (seq, start, end)
        self._rseq = 0
        self._sent = 0  # records published, all segments (grow records too)
        self._fast: tuple[int, int] | None = None  # (seq, end): see send
        self._acks_base = 0  # records released from earlier input segments (for ``wack``)
        self._unreleased = False
        self._closed = False
        self._released = False
        self._active = 0  # send/recv calls in progress (close may come from another thread)
        self._lost: str | None = None
        self._drain = False  # lost, but the peer's published records may be received
        fence = threading.Lock()  # this channel's memory fence, see _wake
        self._fence_acquire = fence.acquire
        self._fence_release = fence.release
        self._typical = spin // 2  # running typical wait for a message, ns
        self._pool = _BufferPool()

    def _use_out(self, seg: _Segment) -> None:
        """Make ``seg`` the output segment (its views cached for the hot path)."""
        self._out = seg
        self._octl, self._oview, self._oend = seg.ctl, seg.view, HEADER + seg.capacity

    def _use_in(self, seg: _Segment) -> None:
        """Make ``seg`` the input segment (its views cached for the hot path)."""
        self._in = seg
        self._ictl, self._iview, self._iend = seg.ctl, seg.view, HEADER + seg.capacity

    # -- sending ----------------------------------------------------------

    def send(self, frames: Sequence[Buffer]) -> None:
        """Copy ``frames`` into the ring and wake the peer.

        Raises:
            MessageTooLarge: over ``settings.max_message_size`` (nothing sent).
            ConnectionLost: the channel or the peer is closed.
            Timeout: the peer has not released ring space within ``settings.timeout``.
        """
        if self._closed or self._lost is not None:
            self._check_usable()
        # The fast path is not counted in ``_active``: it makes no call that
        # releases the GIL, so a concurrent close() can only come between two
        # steps, and then the next one fails (a released memoryview raises
        # ValueError, a closed semaphore ExistentialError).
        try:
            ctl = self._octl
            wseq = self._wseq
            if ((self._ictl[_W_ACK] >= self._sent or ctl[_R_SEQ] >= wseq)
                    and not ctl[_R_CLOSED]):
                # The reader has released the whole ring (request/answer traffic
                # always; its answer said so in ``wack``, a cache line we have just
                # read): the record goes at offset 0, written in one pass.  A frame
                # past the ring's end falls back to _send_any.
                pos = HEADER + ((8 * (1 + len(frames)) + 15) & -16)
                end = self._oend
                view = self._oview
                w = _TABLE
                for frame in frames:
                    if isinstance(frame, (bytes, bytearray)):
                        n = len(frame)
                    elif (isinstance(frame, memoryview) and frame.format == "B"
                          and frame.c_contiguous):
                        n = frame.nbytes
                    else:
                        frame = _frame_view(frame)
                        n = frame.nbytes
                    stop = pos + n
                    if stop > end:
                        break
                    w += 1
                    ctl[w] = n
                    view[pos:stop] = frame
                    pos = (stop + ALIGN - 1) & -ALIGN
                else:
                    if pos - HEADER > self._limit:  # the record is; the frames may not be
                        total = sum(ctl[_TABLE + 1:w + 1])
                        if total > self._limit:  # never published (nor the ring grown)
                            raise MessageTooLarge(total, self._limit)
                    ctl[_TABLE] = w - _TABLE
                    # Publish (as _publish, inlined: this is the hot path), with no
                    # slot: ``wzero`` says the record is at offset 0, in the cache
                    # line of ``wseq``, which the reader reads anyway.
                    ctl[_W_ZERO] = wseq + 1
                    ctl[_W_SEQ] = wseq + 1  # the store that makes the record visible
                    # Bookkeeping after it, off the peer's critical path (a late
                    # ``wack`` only sends the peer to ``rseq``).  It is the only
                    # record in flight: _fast stands for _inflight until _send_any.
                    ctl[_W_ACK] = self._acks_base + self._rseq - self._unreleased
                    self._wseq = wseq + 1
                    self._sent += 1
                    self._fast = (wseq, pos - HEADER)
                    if _STRONG_ORDER:  # post only to a reader that sleeps (see _wake)
                        self._fence_acquire()
                        self._fence_release()
                        if not ctl[_R_WAIT]:
                            return
                    ctl[_W_TIME] = _monotonic_ns()
                    self._out_sem.release()
                    return
            self._active += 1
            try:
                self._send_any(frames)
            finally:
                self._active -= 1
                if self._closed and not self._active:
                    self._release()
        except ValueError:  # a view released by a concurrent close()
            if self._closed:
                raise ConnectionLost("the shm channel was closed") from None
            raise
        except TransportError:  # ours (ConnectionLost is an OSError too): as it is
            raise
        except (posix_ipc.Error, OSError) as exc:
            if self._closed:
                raise ConnectionLost("the shm channel was closed") from None
            raise self._lose(f"cannot wake the shm peer: {exc}") from exc

    def _send_any(self, frames: Sequence[Buffer]) -> None:
        """``send`` when the ring is not empty, the message needs growth or is too large."""
        inflight = self._inflight
        if self._fast is not None:  # the record the fast path left in flight
            inflight.clear()
            inflight.append((self._fast[0], 0, self._fast[1]))
            self._fast = None
        views: list[Buffer] = []
        sizes: list[int] = []
        size = 0
        count = len(frames)
        record = (8 * (1 + count) + 15) & -16  # the frame table, then frame 0
        for frame in frames:
            if isinstance(frame, (bytes, bytearray)):
                n = len(frame)
            elif (isinstance(frame, memoryview) and frame.format == "B"
                  and frame.c_contiguous):
                n = frame.nbytes
            else:
                frame = _frame_view(frame)
                n = frame.nbytes
            views.append(frame)
            sizes.append(n)
            size += n
            record = (record + n + ALIGN - 1) & -ALIGN
        if size > self._limit:
            raise MessageTooLarge(size, self._limit)
        if self._out.ctl[_R_CLOSED]:
            raise self._peer_closed()
        if record > self._out.capacity:
            self._grow(record)
        out = self._out
        ctl = out.ctl
        if inflight and ctl[_R_SEQ] >= self._wseq:
            inflight.clear()  # the reader has released everything: start at 0
        start = self._place(record) if inflight else 0
        w = (HEADER + start) >> 3
        ctl[w] = count
        pos = HEADER + start + ((8 * (1 + count) + 15) & -16)
        view = out.view
        for i in range(count):
            n = sizes[i]
            ctl[w + 1 + i] = n
            view[pos:pos + n] = views[i]
            pos = (pos + n + ALIGN - 1) & -ALIGN
        self._publish(start, record, KIND_MESSAGE)

    def _publish(self, start: int, record: int, kind: int) -> None:
        ctl = self._out.ctl
        slot = _SLOT0 + 4 * (self._wseq % SLOTS)
        ctl[slot] = start
        ctl[slot + 1] = record
        ctl[slot + 2] = kind
        self._inflight.append((self._wseq, start, start + record))
        self._sent += 1
        ctl[_W_ACK] = self._acks_base + self._rseq - self._unreleased
        self._wseq += 1
        ctl[_W_SEQ] = self._wseq  # the store that makes the record visible
        self._wake(ctl)

    def _wake(self, ctl: memoryview) -> None:
        """Post the reader's semaphore after a publication, if it may be asleep.

        On x86 only a reader that has raised its ``rwait`` word sleeps; the
        flag is read after a full fence (the locked instructions of a
        ``threading.Lock``), as the reader reads ``wseq`` again after a fence
        once it has raised the flag: one of the two sees the other's store
        (Dekker), so a sleeping reader is always posted.  Elsewhere every
        publication is posted (the reader always waits on the semaphore).
        """
        if _STRONG_ORDER:
            self._fence_acquire()
            self._fence_release()
            if not ctl[_R_WAIT]:
                return
        ctl[_W_TIME] = _monotonic_ns()  # for the reader's _learn
        self._out_sem.release()

    def _place(self, record: int) -> int:
        """Offset in the data area where ``record`` bytes fit now (waits for space)."""
        delay = 0.0
        deadline: float | None = None
        while True:
            released = self._out.ctl[_R_SEQ]
            inflight = self._inflight
            while inflight and inflight[0][0] < released:
                inflight.popleft()
            cap = self._out.capacity
            if not inflight:
                return 0
            if self._wseq - released < SLOTS:
                first, last = inflight[0][1], inflight[-1][2]
                if last > first:  # one run [first, last): room after it, or before it
                    if cap - last >= record:
                        return last
                    if first >= record:
                        return 0
                elif first - last >= record:  # wrapped: the gap [last, first)
                    return last
            if deadline is None:
                deadline = time.monotonic() + self._send_timeout
            delay = self._wait_for_reader(deadline, delay)

    def _wait_for_reader(self, deadline: float, delay: float) -> float:
        """Back off while the reader frees ring space; check for peer death."""
        if self._out.ctl[_R_CLOSED]:
            raise self._peer_closed()
        now = time.monotonic()
        if now >= deadline:
            raise Timeout(f"the shm peer released no ring space within {self._send_timeout} s")
        if delay == 0.0:
            os.sched_yield()
            return 1e-5
        self._check_peer_alive()
        time.sleep(min(delay, max(deadline - now, 0.0)))
        return min(delay * 2, 0.005)

    def _grow(self, record: int) -> None:
        """Move the writer to a new segment big enough for ``record`` bytes."""
        capacity = max(2 * self._out.capacity, _align(record))
        name, mapping = _create_segment(HEADER + capacity)
        self._own_names.append(name)
        payload = name.encode()
        words = struct.pack("<2Q", HEADER + capacity, len(payload)) + payload
        grow_record = _align(len(words))
        try:
            start = self._place(grow_record)
        except BaseException:
            mapping.close()
            _forget(name, unlink=True)
            raise
        self._out.view[HEADER + start:HEADER + start + len(words)] = words
        self._publish(start, grow_record, KIND_GROW)
        self._out.close()
        self._use_out(_Segment(mapping))
        self._wseq = 0
        self._inflight.clear()

    # -- receiving --------------------------------------------------------

    def recv(self, timeout: float | None = None) -> list[Buffer]:
        """Wait up to ``timeout`` seconds (None: forever) for the next message.

        Returns fresh ``bytearray`` frames, or ``memoryview`` s into the ring
        valid until the next ``recv`` when the channel has ``zero_copy``.

        Raises:
            Timeout: nothing arrived in time (the channel stays usable).
            ConnectionLost: the peer closed or died, or sent a malformed or
                oversized record (the connection is dropped then).  What the
                peer published before it closed is still received, also after
                a ``send`` found it closed.
        """
        if self._closed or self._lost is not None and not (
                self._drain and self._ictl[_W_SEQ] > self._rseq):
            self._check_usable()
        # As in send, only the calls that may release the GIL (_block, _locate)
        # are counted in ``_active``.
        try:
            ctl = self._ictl
            rseq = self._rseq
            if self._unreleased:
                self._unreleased = False
                ctl[_R_SEQ] = rseq
            if not _STRONG_ORDER or ctl[_W_SEQ] <= rseq:
                # Not there yet: spin (inlined, the hot path), then block (_block).
                began = now = _monotonic_ns()
                if self._typical <= self._spin:  # (a spin of 0 ends at once)
                    end = began + self._spin
                    polite = began + PURE_SPIN_NS
                    while now < end:
                        if ctl[_W_SEQ] > rseq:
                            # learn (as _learn) from our own clock: the spin sees the
                            # publication within one check
                            self._typical += (now - began - self._typical) // 8
                            break
                        if now >= polite:
                            _sched_yield()  # let the peer (or anyone) have this core
                        now = _monotonic_ns()
                    else:
                        self._block(self._in, timeout, began)
                else:
                    self._block(self._in, timeout, began)
            if ctl[_W_ZERO] == rseq + 1:  # a message at offset 0, no slot
                w = _TABLE
                end = self._iend
            else:  # from its slot, after any grow records
                w, end = self._locate(timeout)
                ctl = self._ictl
                rseq = self._rseq
            # Read the record (see the module docstring for its layout); the
            # bounds are checked once, after the loop (slices never overrun).
            count = ctl[w]
            pos = (w << 3) + ((8 * (1 + count) + 15) & -16)
            if pos > end:
                raise self._lose("malformed shm record: frame table larger than the record")
            view = self._iview
            frames: list[Buffer] = []
            if self._zero_copy:
                for n in ctl[w + 1:w + 1 + count]:
                    stop = pos + n
                    frames.append(view[pos:stop])
                    pos = (stop + ALIGN - 1) & -ALIGN
                self._unreleased = True  # released by the next recv
            else:
                # checked before copying: the peer's lengths may claim its whole
                # (possibly sparse, so free to make) segment
                bound = min(end, (w << 3) + self._receive_limit)
                for n in ctl[w + 1:w + 1 + count]:
                    stop = pos + n
                    if stop > bound:
                        self._check_record(ctl, w, count, end)
                        bound = end  # in the limit: the record's padding went past it
                    frames.append(bytearray(view[pos:stop]) if n < POOL_MIN
                                  else self._pool.fill(view[pos:stop]))
                    pos = (stop + ALIGN - 1) & -ALIGN
                ctl[_R_SEQ] = rseq + 1
            self._rseq = rseq + 1
            if pos > end or pos - (w << 3) > self._receive_limit:
                self._check_record(ctl, w, count, end)
            return frames
        except ValueError:  # a view released by a concurrent close()
            if self._closed:
                raise ConnectionLost("the shm channel was closed") from None
            raise

    def _check_record(self, ctl: memoryview, w: int, count: int, end: int) -> None:
        """Raise ConnectionLost for a record past ``end`` or over the size limit."""
        sizes = list(ctl[w + 1:w + 1 + count])
        total = sum(sizes)
        if total > self._receive_limit:
            raise self._lose(f"the peer sent {over_limit(total, self._receive_limit, self._limit)}"
                             "; connection dropped")
        pos = (w << 3) + ((8 * (1 + count) + 15) & -16)
        for n in sizes:
            if pos + n > end:
                raise self._lose("malformed shm record: frames larger than the record")
            pos = (pos + n + ALIGN - 1) & -ALIGN

    def _locate(self, timeout: float | None) -> tuple[int, int]:
        """Find the published record ``self._rseq`` from its slot, following grow records.

        Returns:
            (w, end): the record's first u64 word and its end (byte offset) in
            the (possibly new) input segment.
        """
        self._active += 1
        try:
            seg = self._in
            while True:
                ctl = seg.ctl
                rseq = self._rseq
                if ctl[_W_ZERO] == rseq + 1:
                    return _TABLE, HEADER + seg.capacity
                slot = _SLOT0 + 4 * (rseq % SLOTS)
                kind = ctl[slot + 2]
                if kind == KIND_MESSAGE:
                    start = ctl[slot]
                    length = ctl[slot + 1]
                    if start + length > seg.capacity or length < 8:
                        raise self._lose("malformed shm record: outside the segment")
                    return (HEADER + start) >> 3, HEADER + start + length
                if kind != KIND_GROW:
                    raise self._lose(f"malformed shm record kind {kind}")
                seg = self._switch(seg, ctl[slot], ctl[slot + 1])
                if not (_STRONG_ORDER and seg.ctl[_W_SEQ] > 0):
                    self._block(seg, timeout, _monotonic_ns())  # its message follows at once
        finally:
            self._active -= 1
            if self._closed and not self._active:
                self._release()

    def _block(self, seg: _Segment, timeout: float | None, began: int) -> None:
        """Return once message ``self._rseq`` is published.

        Raises the ``rwait`` flag and blocks on the semaphore in slices of
        :data:`SLICE` seconds, checking for a dead peer in between.  ``began``
        (monotonic ns) is when ``recv`` started waiting, for :meth:`_learn`.

        Raises:
            Timeout: not within ``timeout`` seconds.  ConnectionLost: closed.
        """
        ctl = seg.ctl
        want = self._rseq
        deadline = None if timeout is None else time.monotonic() + timeout
        sem = self._in_sem
        looked = False
        self._active += 1
        try:
            while True:
                if self._closed:  # close() from another thread posted our semaphore
                    raise ConnectionLost("the shm channel was closed")
                if _STRONG_ORDER:
                    if ctl[_W_SEQ] > want:
                        self._learn(ctl, began)
                        return
                    # Raise the flag, fence, look again, and only then sleep: the
                    # writer fences between publishing and reading the flag (_wake).
                    if not ctl[_R_WAIT]:
                        ctl[_R_WAIT] = 1
                        self._fence_acquire()
                        self._fence_release()
                        continue
                if ctl[_W_CLOSED]:
                    if ctl[_W_SEQ] > want:
                        return
                    raise self._lose("the peer closed the shm channel")
                if deadline is None:
                    wait = SLICE
                else:
                    wait = min(deadline - time.monotonic(), SLICE)
                    if wait <= 0:
                        if looked:
                            self._check_peer_alive()
                            self._learn(ctl, began)
                            raise Timeout(f"no shm message within {timeout} s")
                        looked = True  # one non-blocking try (recv(0) takes a posted message)
                        wait = 0.0
                try:
                    if _SEM_TIMEOUT:
                        sem.acquire(wait)
                    else:  # acquire(timeout) would wait forever: poll
                        sem.acquire(0)
                except posix_ipc.BusyError:
                    if not _SEM_TIMEOUT:
                        time.sleep(min(wait, 0.0002))
                    self._check_peer_alive()
                    continue
                except posix_ipc.SignalError:
                    continue  # the Python-level handler runs at the next bytecode
                except (posix_ipc.Error, OSError) as exc:
                    raise self._lose(f"waiting on the semaphore failed: {exc}") from exc
                if not _STRONG_ORDER and ctl[_W_SEQ] > want:
                    self._learn(ctl, began)
                    return
        finally:
            if _STRONG_ORDER:
                with contextlib.suppress(ValueError):  # released by a concurrent close()
                    ctl[_R_WAIT] = 0
            self._active -= 1
            if self._closed and not self._active:
                self._release()

    def _learn(self, ctl: memoryview, began: int) -> None:
        """Fold how long the peer took into the running typical wait (EWMA, weight
        1/8, each sample capped at 10 ms).

        Measured from the time the writer stamps when it posts (``wtime``), so
        the cost of our own wake-up is not counted; from our own clock when
        the stamp is older than ``began`` (no post was needed, or a slice
        ended first).
        """
        now = _monotonic_ns()
        stamp = ctl[_W_TIME]
        waited = (stamp if began <= stamp <= now else now) - began
        self._typical += (min(waited, _LEARN_CAP) - self._typical) // 8

    def _switch(self, seg: _Segment, start: int, length: int) -> _Segment:
        if start + length > seg.capacity or length < 16:
            raise self._lose("malformed shm grow record")
        size, n = struct.unpack_from("<2Q", seg.map, HEADER + start)
        if n > length - 16:
            raise self._lose("malformed shm grow record")
        name = bytes(seg.view[HEADER + start + 16:HEADER + start + 16 + n]).decode(
            "ascii", "replace")
        if size > _max_segment(self._receive_limit):
            raise self._lose(f"the peer's new segment of {size} bytes is over the limit")
        try:
            new = _Segment(_open_segment(name, _max_segment(self._receive_limit)))
        except ConnectionLost as exc:
            raise self._lose(str(exc)) from exc
        self._rseq += 1
        seg.ctl[_R_SEQ] = self._rseq
        self._acks_base += self._rseq
        # The writer has left the old segment.  Zero-copy frames of the previous
        # message may still view it (they expired with this recv): then the
        # mapping lives on until they are freed, as _Segment.close allows.
        seg.close()
        self._use_in(new)
        self._rseq = 0
        return new

    # -- state ------------------------------------------------------------

    def set_receive_limit(self, nbytes: int) -> None:
        """Receive messages of up to ``nbytes`` bytes from now on (``HANDSHAKE_LIMIT``
        until then)."""
        self._receive_limit = nbytes

    def _check_usable(self) -> None:
        if self._closed:
            raise ConnectionLost("the shm channel is closed")
        if self._lost is not None:
            raise ConnectionLost(self._lost)

    def _check_peer_alive(self) -> None:
        """Raise ConnectionLost if the rendezvous socket shows EOF or an error."""
        try:
            data = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, ValueError) as exc:
            raise self._lose(f"the shm peer went away: {exc}") from exc
        if not data:
            raise self._lose("the shm peer went away (its socket closed)")

    def _lose(self, reason: str) -> ConnectionLost:
        self._lost = reason
        return ConnectionLost(reason)

    def _peer_closed(self) -> ConnectionLost:
        """``_lose`` for a send that found the peer closed: the records it
        published before (its last answer, an ``Error``) can still be received."""
        self._drain = True
        return self._lose("the peer closed the shm channel")

    def close(self) -> None:
        """Tell the peer, release the mappings, semaphores and socket; idempotent.

        From another thread while a ``send``/``recv`` runs, that call raises
        ``ConnectionLost`` promptly and the resources are released when it
        returns (never under its feet).
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError, IndexError, TypeError):
            self._out.ctl[_W_CLOSED] = 1
            self._in.ctl[_R_CLOSED] = 1
        for sem in (self._out_sem, self._in_sem):  # wake the peer, and our own waiter
            with contextlib.suppress(posix_ipc.Error, OSError):
                sem.release()
        for name in self._own_names:
            _forget(name, unlink=True)
        if not self._active:
            self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        for sem in (self._out_sem, self._in_sem):
            with contextlib.suppress(posix_ipc.Error, OSError):
                sem.close()
        with contextlib.suppress(OSError):
            self._sock.close()
        for seg in (self._out, self._in):
            seg.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "lost" if self._lost else "open"
        return f"<ShmChannel {state} out={self._out.capacity} in={self._in.capacity}>"


# ---------------------------------------------------------------------------
# Handshake helpers.


def _recv_line(sock: socket.socket, deadline: float) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("shm handshake timed out")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(HELLO_LIMIT)
        except TimeoutError:
            raise Timeout("shm handshake timed out") from None
        if not chunk:
            raise ConnectionLost("the shm peer closed during the handshake")
        data += chunk
        if len(data) > HELLO_LIMIT:
            raise ConnectionLost("shm handshake line too long")
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise ConnectionLost(f"bad shm handshake: {exc}") from exc
    if not isinstance(message, dict):
        raise ConnectionLost("bad shm handshake: not an object")
    return message


def _send_line(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


@contextlib.contextmanager
def _native(what: str, error: type[TransportError] = ConnectionLost) -> Iterator[None]:
    try:
        yield
    except TransportError:
        raise
    except (OSError, posix_ipc.Error) as exc:
        raise error(f"{what}: {exc}") from exc


class ShmListener:
    """Accepts ``shm://NAME`` clients on a UNIX socket; each gets its own segments."""

    def __init__(self, name: str, settings: Settings, spin: int) -> None:
        self._name = name
        self._settings = settings
        self._spin = spin
        self._path = socket_path(name)
        _install_hooks()
        sweep_orphans()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._bind()
        except BaseException:
            self._sock.close()
            raise
        self._inode = os.stat(self._path).st_ino
        self._readable = readable(self._sock)
        with _linked_lock:
            _linked[str(self._path)] = ("sock", os.getpid())
        self._closed = False

    def _bind(self) -> None:
        path = str(self._path)
        try:
            self._sock.bind(path)
        except OSError as exc:
            if not os.path.exists(path):
                raise TransportError(f"cannot bind {path}: {exc}") from exc
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(path)
            except OSError:  # nobody there: the socket of a dead process
                with contextlib.suppress(OSError):
                    os.unlink(path)
                with _native(f"cannot bind {path}", TransportError):
                    self._sock.bind(path)
            else:
                raise InvalidURL(f"shm://{self._name}",
                                 "already listened on by another process") from None
            finally:
                probe.close()
        os.chmod(path, 0o600)
        self._sock.listen(64)
        self._sock.setblocking(False)

    @property
    def address(self) -> URL:
        return URL("shm", self._name)

    def accept(self, timeout: float | None = None) -> ShmChannel:
        """Wait up to ``timeout`` seconds for a client and finish its handshake.

        A client that fails its handshake is dropped and waiting goes on.

        Raises:
            Timeout: no client in time.  ConnectionLost: the listener is closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise ConnectionLost("the shm listener is closed")
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                ready = self._readable(wait)
            except (OSError, ValueError) as exc:
                raise ConnectionLost(f"the shm listener is closed: {exc}") from exc
            if not ready:
                raise Timeout(f"no shm client within {timeout} s")
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if self._closed:
                    raise ConnectionLost("the shm listener is closed") from exc
                continue
            try:
                return self._handshake(conn)
            except (TransportError, OSError, posix_ipc.Error):
                conn.close()

    def _handshake(self, conn: socket.socket) -> ShmChannel:
        hello = _recv_line(conn, time.monotonic() + min(self._settings.connect_timeout,
                                                        HELLO_TIMEOUT))
        if hello.get("protocol") != PROTOCOL:
            _send_line(conn, {"error": f"expected {PROTOCOL}"})
            raise ConnectionLost("shm client speaks another protocol")
        # The client's c2s ring is our input, its s2c ring our output.
        limit = _max_segment(self._settings.max_message_size)
        opened: list[Any] = []
        try:
            in_map = _open_segment(str(hello.get("c2s")), limit)
            opened.append(in_map)
            out_map = _open_segment(str(hello.get("s2c")), limit)
            opened.append(out_map)
            in_sem = _open_semaphore(str(hello.get("sem_c2s")))
            opened.append(in_sem)
            out_sem = _open_semaphore(str(hello.get("sem_s2c")))
            opened.append(out_sem)
            _send_line(conn, {"ok": True, "pid": os.getpid()})
        except BaseException as exc:
            with contextlib.suppress(OSError):
                _send_line(conn, {"error": str(exc)})
            for item in opened:
                item.close()
            raise
        conn.settimeout(None)
        return ShmChannel(conn, out_map, in_map, out_sem, in_sem, self._settings,
                          spin=self._spin)

    def close(self) -> None:
        """Stop listening and remove the socket file (if it is still ours); idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()
        _forget(str(self._path), unlink=False)
        with contextlib.suppress(OSError):
            if os.stat(self._path).st_ino == self._inode:
                os.unlink(self._path)


class ShmTransport:
    """``shm://NAME``: shared memory between processes of one machine.

    ``shm://0`` listens on a fresh unique name (read it from ``address``).
    Options: ``?segment_size=BYTES`` and ``?spin=MICROSECONDS``.
    """

    schemes = ("shm",)

    def listen(self, url: URL, settings: Settings) -> ShmListener:
        _, spin = _options(url)
        name = url.address
        if name == "0":
            name = f"anon-{os.getpid()}-{secrets.token_hex(4)}"
        return ShmListener(name, settings, spin)

    def connect(self, url: URL, settings: Settings, *, timeout: float) -> ShmChannel:
        """Connect to the listener of ``url`` and create this connection's segments.

        Retries until ``timeout`` seconds while nobody listens yet.

        Raises:
            ConnectError: nobody listens within ``timeout``, or the handshake failed.
        """
        size, spin = _options(url)
        path = str(socket_path(url.address))
        deadline = time.monotonic() + timeout
        sock = self._dial(path, url, deadline)
        names: list[str] = []
        maps: list[mmap.mmap] = []
        sems: list[posix_ipc.Semaphore] = []
        try:
            for _ in range(2):
                name, mapping = _create_segment(HEADER + size)
                names.append(name)
                maps.append(mapping)
            for _ in range(2):
                name, sem = _create_semaphore()
                names.append(name)
                sems.append(sem)
            with _native("shm handshake failed", ConnectError):
                _send_line(sock, {"protocol": PROTOCOL, "pid": os.getpid(), "size": size,
                                  "c2s": names[0], "s2c": names[1],
                                  "sem_c2s": names[2], "sem_s2c": names[3]})
                try:
                    answer = _recv_line(sock, deadline)
                except Timeout:
                    raise ConnectError(f"no shm handshake answer from {url.render()} "
                                       f"within {timeout} s") from None
                except ConnectionLost as exc:
                    raise ConnectError(f"shm handshake with {url.render()} failed: "
                                       f"{exc}") from exc
            if not answer.get("ok"):
                raise ConnectError(f"shm server refused: {answer.get('error', answer)}")
            sock.settimeout(None)
        except BaseException:
            for name in names:
                _forget(name, unlink=True)
            for mapping in maps:
                mapping.close()
            for sem in sems:
                sem.close()
            sock.close()
            raise
        for name in names:
            _forget(name, unlink=True)  # the server has mapped them; unlinking is harmless
        return ShmChannel(sock, maps[0], maps[1], sems[0], sems[1], settings, spin=spin)

    @staticmethod
    def _dial(path: str, url: URL, deadline: float) -> socket.socket:
        delay = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.connect(path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise ConnectError(f"nobody listens on {url.render()} ({path})") from exc
            except OSError as exc:
                sock.close()
                raise ConnectError(f"cannot connect to {url.render()}: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
