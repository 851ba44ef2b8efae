"""The portable reader: a thread per channel, for any grpcio version."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from relay.core.errors import (
    Timeout,
)
from relay.transports.base import (
    spin_until,
)


def _spin(arrived: Callable[[], bool], budget_ns: int, timeout: float | None) -> float | None:
    """Poll ``arrived`` for up to ``budget_ns`` (within ``timeout``); the timeout left."""
    if not budget_ns or timeout == 0 or arrived():
        return timeout
    if timeout is None:
        spin_until(arrived, budget_ns)
        return None
    start = time.perf_counter_ns()
    spin_until(arrived, min(budget_ns, int(timeout * 1e9)))
    return max(0.0, timeout - (time.perf_counter_ns() - start) / 1e9)


class _ThreadReader:
    """Timed reads of a blocking message iterator through a helper thread.

    The portable fallback of :class:`_CallReader` and :class:`_RequestReader`
    (used when grpcio's internals differ from those they rely on): one thread
    pulls the iterator into a queue, which ``next`` waits on.  Costs one
    thread wake-up per message.
    """

    def __init__(self, messages: Iterator[bytes]) -> None:
        self._messages = messages
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            for data in self._messages:
                self._inbox.put(data)
            self._inbox.put(None)
        except BaseException as exc:  # handed to the reader: grpc.RpcError or a torn-down call
            self._inbox.put(exc)

    def next(self, timeout: float | None) -> bytes | None:
        """The next message, None once the stream ended.  Raises Timeout, the iterator's error."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="relay-grpc-read", daemon=True)
            self._thread.start()
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"no message within {timeout} s") from None
        if isinstance(item, BaseException):
            self._inbox.put(item)  # every later call fails alike
            raise item
        if item is None:
            self._inbox.put(None)
        return item

    def wake(self) -> None:
        self._inbox.put(None)
