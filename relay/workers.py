"""Several server processes behind one URL: ``relay serve ENV --workers K``.

The parent process opens the URL's listener, then forks K worker processes
that all accept on that one listening socket (the kernel hands each new
connection to one waiting worker, as a pre-forking web server does).  Each
worker is a full :class:`~relay.server.Server` in its own process with its
own GIL: clients are spread over the workers and their envs step on every
core.  A worker accepts only while no other worker serves fewer clients
(each publishes its count in memory shared by the pool), so clients are
spread evenly.  The parent only watches: a worker that dies is replaced by a new
fork of the same listener (its clients get ``ConnectionLost`` when their
channel breaks), and SIGTERM (or :meth:`WorkerPool.close`) stops every
worker gracefully (each closes its clients' envs) before the listener is
closed.

Transports: those whose listener is one plain socket that outlives a fork,
``shm://`` (a UNIX socket) and ``tcp://`` (the relay-tcp plugin).  ZeroMQ,
gRPC and WebSocket listeners run threads or library contexts that a fork
does not carry over; they are refused with :class:`~relay.core.errors.ConfigError`.
POSIX only (``os.fork``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, Self

import numpy as np

from relay.core.errors import ConfigError, Timeout
from relay.core.url import URL
from relay.transports.base import Listener

__all__ = ["FORK_SCHEMES", "WorkerPool"]

FORK_SCHEMES = ("shm", "tcp")
"""URL schemes whose listener can be shared by forked workers."""

WATCH_INTERVAL = 0.1
"""Seconds between the parent's checks for dead workers."""

STOP_TIMEOUT = 10.0
"""Seconds a worker gets to stop after SIGTERM before it is killed."""

ACCEPT_SLICE = 0.05
"""Seconds a worker waits for a client (or for its turn) before looking at the loads again."""


class _Served(Protocol):
    """What a worker runs: a started server."""

    @property
    def connections(self) -> int: ...

    def close(self) -> None: ...


class _Borrowed:
    """A worker's view of the shared listener.

    It accepts only while this worker serves no more clients than the
    least loaded one (``loads``: every worker's count, shared memory).
    Closing it is the parent's job (a worker's close would unlink the shm
    socket or shut the port for every worker).
    """

    def __init__(self, listener: Listener, loads: np.ndarray, slot: int) -> None:
        self._listener = listener
        self._loads = loads
        self._slot = slot
        self.address = listener.address
        self.served: _Served | None = None

    def accept(self, timeout: float | None = None) -> Any:
        load = 0 if self.served is None else self.served.connections
        self._loads[self._slot] = load
        wait = ACCEPT_SLICE if timeout is None else min(timeout, ACCEPT_SLICE)
        if load > int(self._loads.min()):  # a less busy worker takes the next client
            time.sleep(wait)
            raise Timeout("another worker's turn")
        return self._listener.accept(wait)

    def close(self) -> None:
        pass


class WorkerPool:
    """K forked processes serving one listener; same ``address``/``close``/
    ``serve_forever`` as :class:`~relay.server.Server`.

    Args:
        listener: the open listener, shared by every worker.
        serve: run in each worker: builds, starts and returns that worker's
            server (its ``connections`` and ``close`` are used).
        workers: number of processes (>= 1).

    Raises:
        ConfigError: ``workers < 1`` or a transport that cannot be shared (see the module).
    """

    def __init__(self, listener: Listener, serve: Callable[[Listener], _Served],
                 workers: int) -> None:
        if not isinstance(workers, int) or workers < 1:
            listener.close()
            raise ConfigError(f"workers must be an int >= 1, not {workers!r}")
        if listener.address.scheme not in FORK_SCHEMES:
            listener.close()
            self.refuse(listener.address.scheme)
        self._listener = listener
        self._serve = serve
        self.address: URL = listener.address
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pids: list[int] = []
        self._shared = mmap.mmap(-1, 8 * workers)  # MAP_SHARED: the workers' loads
        self._loads = np.frombuffer(self._shared, dtype=np.int64)
        self.replaced = 0
        """How many dead workers were replaced."""
        for slot in range(workers):
            self._pids.append(self._fork(slot))
        self._watcher = threading.Thread(target=self._watch, name="relay-workers", daemon=True)
        self._watcher.start()

    @staticmethod
    def refuse(scheme: str) -> None:
        """Raise the ConfigError for a transport that workers cannot share."""
        raise ConfigError(f"workers need a transport whose listening socket worker processes "
                          f"can share ({', '.join(s + '://' for s in FORK_SCHEMES)}), not "
                          f"{scheme}://")

    @property
    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        with self._lock:
            return list(self._pids)

    def _fork(self, slot: int) -> int:
        self._loads[slot] = 0
        pid = os.fork()
        if pid:
            return pid
        code = 0  # the worker: serve until SIGTERM, then stop gracefully
        try:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent
            borrowed = _Borrowed(self._listener, self._loads, slot)
            served = borrowed.served = self._serve(borrowed)
            try:
                while not stop.wait(0.5):
                    pass
            finally:
                served.close()
        except BaseException:
            code = 1
        finally:
            os._exit(code)  # never return into the parent's code

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            with self._lock:
                for slot, pid in enumerate(self._pids):
                    try:
                        done, _ = os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        done = pid
                    if done and not self._stop.is_set():
                        self._pids[slot] = self._fork(slot)
                        self.replaced += 1

    def serve_forever(self) -> None:
        """Block until SIGTERM, SIGINT or :meth:`close` from another thread; then stop
        every worker."""
        from relay.server import stop_on_signals

        try:
            with stop_on_signals(self._stop):
                while not self._stop.wait(0.5):
                    pass
        finally:
            self.close()

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every worker, wait up to ``timeout`` s for each (then SIGKILL),
        and close the listener; idempotent."""
        self._stop.set()
        if self._watcher.is_alive() and self._watcher is not threading.current_thread():
            self._watcher.join()
        with self._lock:
            pids, self._pids = self._pids, []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for pid in pids:
            while True:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.02)
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
