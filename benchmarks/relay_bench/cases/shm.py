"""Benchmark rows for the shared-memory transport.

* ``raw shm + semaphore``: the raw reference: two processes,
  two ``multiprocessing.shared_memory`` segments (one per direction) and two
  ``posix_ipc`` semaphores, with the *same* wake-up as ``shm://`` (poll for
  :data:`~relay.transports.shm.PURE_SPIN_NS`, then poll with ``sched_yield`` up
  to :data:`~relay.transports.base.DEFAULT_SPIN_US`, then raise a "waiting"
  word, fence, look again and ``sem_timedwait``; the writer fences after
  publishing and posts only when that word is up).
  Each step copies relay's own wire bytes for that step (the msgpack frames
  of ``Step`` and ``Transition``) into the segment and out again into a
  fresh buffer, as ``shm://`` does by default.  No relay code on the hot path.
  It is the baseline of every ``relay shm://`` row.
* ``raw shm + socket doorbell``: the same with a byte on a UNIX socket pair
  as the wake-up (blocking ``recv`` after the same spin), the alternative
  that was measured and not chosen.
* ``relay shm channel only``: the same bytes through relay's ``ShmChannel``
  (no codec, session or env): the transport's own share of a relay step
  (:func:`relay_bench.harness.channel_case`).
* ``relay shm:// spin=0`` and ``relay shm:// zero_copy``: relay over shm
  with spinning off (semaphore only) and with ``zero_copy=True``.

Server process: ``python -m relay_bench.cases.shm raw sem|sock`` prints a
JSON line with the names of the objects it created, then answers every
request with the reply bytes of the payload named by the first request.

Python 3.11 note: ``SharedMemory(name)`` in the attaching process registers
the segment with its ``resource_tracker``, which would unlink it at exit and
warn of a leak; the client unregisters it (``track=False`` exists from 3.13).
This is why ``shm://`` itself uses ``posix_ipc`` + ``mmap``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import posix_ipc

from relay.transports.base import DEFAULT_SPIN_US
from relay.transports.shm import PURE_SPIN_NS
from relay_bench.harness import (
    BASELINES,
    LISTEN_URLS,
    CaseResult,
    Payload,
    Unavailable,
    bench_case,
    channel_case,
    relay_case,
    spawn_server,
    time_calls,
)

RAW_SEM = "raw shm + semaphore"
RAW_SOCK = "raw shm + socket doorbell"
SIZE = 1 << 20
_HEAD = struct.Struct("<QQ")  # seq, length; the reader's "waiting" word at 64; data from 128
_U64 = struct.Struct("<Q")  # no cast view: it would pin the mapping
_DATA = 128


class _RawEnd:
    """One end of the raw ping-pong: ``send(bytes)`` / ``recv() -> bytearray``."""

    def __init__(self, out_buf: memoryview, in_buf: memoryview, wake: Any, waiter: Any,
                 kind: str) -> None:
        self.out, self.inn = out_buf, in_buf
        self.wake, self.waiter, self.kind = wake, waiter, kind
        self.wseq = self.rseq = 0
        self.spin = DEFAULT_SPIN_US * 1e-6
        fence = threading.Lock()
        self.fence_acquire, self.fence_release = fence.acquire, fence.release

    def send(self, data: bytes) -> None:
        n = len(data)
        self.out[_DATA:_DATA + n] = data
        self.wseq += 1
        # the length first, then the sequence word: packed at once, the reader
        # could see the new sequence with the old length (an empty request ends
        # the server, and the client would wait for ever)
        _U64.pack_into(self.out, 8, n)
        _U64.pack_into(self.out, 0, self.wseq)
        if self.kind == "sem":
            self.fence_acquire()  # a full fence, as ShmChannel._wake
            self.fence_release()
            if _U64.unpack_from(self.out, 64)[0]:
                self.wake.release()
        else:
            self.wake.send(b"\0")

    def recv(self) -> bytearray:
        want = self.rseq + 1
        inn = self.inn
        began = time.perf_counter()
        end, polite = began + self.spin, began + PURE_SPIN_NS * 1e-9
        caught = False
        while True:
            if _HEAD.unpack_from(inn, 0)[0] >= want:
                caught = True
                break
            now = time.perf_counter()
            if now >= end:
                break
            if now >= polite:
                os.sched_yield()
        if self.kind == "sem":
            if not caught:
                _U64.pack_into(inn, 64, 1)
                self.fence_acquire()
                self.fence_release()
                while _HEAD.unpack_from(inn, 0)[0] < want:
                    try:
                        self.waiter.acquire(1.0)
                    except posix_ipc.BusyError:
                        pass
                _U64.pack_into(inn, 64, 0)
        else:
            self.waiter.recv(1)  # every message rings once: consume it
            while _HEAD.unpack_from(inn, 0)[0] < want:
                pass
        self.rseq = want
        n = _HEAD.unpack_from(inn, 0)[1]
        return bytearray(inn[_DATA:_DATA + n])


def _raw_case(kind: str) -> Any:
    def run_case(payloads: Sequence[Payload], steps: int) -> CaseResult:
        argv = [sys.executable, "-m", "relay_bench.cases.shm", "raw", kind]
        with spawn_server(argv) as line:
            names = json.loads(line)
            c2s = shared_memory.SharedMemory(names["c2s"])
            s2c = shared_memory.SharedMemory(names["s2c"])
            for seg in (c2s, s2c):  # see the module docstring (Python < 3.13)
                resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
            if kind == "sem":
                wake, waiter = (posix_ipc.Semaphore(names["sem_c2s"]),
                                posix_ipc.Semaphore(names["sem_s2c"]))
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(names["sock"])
                wake = waiter = sock
            assert c2s.buf is not None and s2c.buf is not None
            end = _RawEnd(c2s.buf, s2c.buf, wake, waiter, kind)
            try:
                for payload in payloads:
                    request = b"".join(payload.wire_frames()[0])
                    end.send(payload.name.encode())
                    if bytes(end.recv()) != b"ok":
                        raise Unavailable("raw shm server did not answer")

                    def round_trip(end: _RawEnd = end, request: bytes = request) -> None:
                        end.send(request)
                        end.recv()

                    yield payload.name, time_calls(round_trip, steps)
                end.send(b"")  # ends the server
            finally:
                del end
                for seg in (c2s, s2c):
                    seg.close()
                if kind == "sem":
                    wake.close()
                    waiter.close()
                else:
                    sock.close()

    return run_case


bench_case(RAW_SEM, group="raw")(_raw_case("sem"))
bench_case(RAW_SOCK, group="raw")(_raw_case("sock"))


# relay's ShmChannel alone (no codec, session or env): the transport's share
bench_case("relay shm channel only", group="relay", baseline=RAW_SEM)(
    channel_case("shm://relay-bench-{uid}"))
bench_case("relay shm:// spin=0", group="relay", baseline=RAW_SEM)(
    relay_case("shm://relay-bench-{uid}?spin=0"))
bench_case("relay shm:// zero_copy", group="relay", baseline=RAW_SEM)(
    relay_case("shm://relay-bench-{uid}?zero_copy=1"))

BASELINES.setdefault("shm", RAW_SEM)
LISTEN_URLS.setdefault("shm", "shm://relay-bench-{uid}")


def _serve_raw(kind: str) -> None:
    import signal

    from relay_bench.harness import PAYLOADS

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally: unlink all

    replies = {name.encode(): b"".join(p.wire_frames()[1]) for name, p in PAYLOADS.items()}
    tag = f"{os.getpid()}_{secrets.token_hex(3)}"
    c2s = shared_memory.SharedMemory(f"rawbench_c2s_{tag}", create=True, size=SIZE)
    s2c = shared_memory.SharedMemory(f"rawbench_s2c_{tag}", create=True, size=SIZE)
    names: dict[str, str] = {"c2s": c2s.name, "s2c": s2c.name}
    listener = None
    try:
        if kind == "sem":
            sem_c2s = posix_ipc.Semaphore(f"/rawbench_c_{tag}", posix_ipc.O_CREX, mode=0o600)
            sem_s2c = posix_ipc.Semaphore(f"/rawbench_s_{tag}", posix_ipc.O_CREX, mode=0o600)
            names |= {"sem_c2s": sem_c2s.name, "sem_s2c": sem_s2c.name}
            wake, waiter = sem_s2c, sem_c2s
        else:
            path = f"/tmp/rawb-{tag}.sock"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(1)
            names["sock"] = path
        print(json.dumps(names), flush=True)
        if listener is not None:
            conn, _ = listener.accept()
            wake = waiter = conn
        assert c2s.buf is not None and s2c.buf is not None
        end = _RawEnd(s2c.buf, c2s.buf, wake, waiter, kind)
        reply = b""
        while True:
            request = end.recv()
            if not request:
                return
            if bytes(request) in replies:
                reply = replies[bytes(request)]
                end.send(b"ok")
            else:
                end.send(reply)
    finally:  # names first: nothing below may stop them from being unlinked
        # the client terminates us as soon as it is done: a SIGTERM now would cut
        # this cleanup short and leave /tmp/rawb-*.sock behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if kind == "sem":
            for sem_name in ("sem_c2s", "sem_s2c"):
                if sem_name in names:
                    with contextlib.suppress(posix_ipc.ExistentialError):
                        posix_ipc.unlink_semaphore(names[sem_name])
        for seg in (c2s, s2c):
            with contextlib.suppress(FileNotFoundError):
                seg.unlink()
        if listener is not None:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(names["sock"])
        for seg in (c2s, s2c):
            with contextlib.suppress(BufferError):
                seg.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["raw"]:
        _serve_raw(sys.argv[2])
