"""The round-trip benchmark's harness: ``relay bench`` / ``python benchmarks/run.py``.

Measures the median (and p90) time of one ``env.step`` round trip, in µs, for
three payloads, over every registered relay transport and against baselines:

=======  ===========================================================
payload  observation per step
=======  ===========================================================
S        real ``CartPole-v1`` (4 float32)
M        84x84x4 uint8 (:class:`FixedObsEnv`: a fixed array, free to make)
L        3x224x224 uint8 (:class:`FixedObsEnv`)
=======  ===========================================================

Rows ("cases"): ``in-process`` (``env.step`` in this process); ``relay
SCHEME://`` for every registered transport (env served by ``relay.serve`` in a
*separate process*, except ``memory://`` which is in-process and so measures
relay's own overhead); ``raw pyzmq ipc|tcp`` (a DEALER/ROUTER ping-pong, in a
separate process, of the very bytes relay's msgpack codec puts on the wire for
that step, no relay on the hot path); ``gymnasium AsyncVectorEnv`` (one env,
``shared_memory=True``).  Each row shows its ratio to its *baseline* row
(the raw library under the same transport) and to ``in-process``.  Results go
to a table on stdout and to ``bench-<time>.{csv,md}`` in ``--out`` (default:
:data:`DEFAULT_OUT`, the user's cache directory).

How to add a row
----------------
*A relay transport* gets its row by being registered (built-in or plugin).
If ``SCHEME://127.0.0.1:0`` is not a valid listen URL for it, add a template
to :data:`LISTEN_URLS` (``{tmp}`` is a fresh temporary directory, ``{uid}`` a
unique token); name its raw baseline in :data:`BASELINES`.

*Anything else* (a raw library, another framework) is a generator decorated
with :func:`bench_case`.  It gets the selected payloads and the number of
steps, does its set-up once (e.g. spawns a server process), and yields
``(payload_name, seconds_per_step)`` for each payload it supports::

    @bench_case("raw grpcio bidi", group="raw")
    def raw_grpc(payloads: Sequence[Payload], steps: int) -> CaseResult:
        with spawn_server([...]) as address:          # helpers below
            for payload in payloads:
                request, reply = payload.wire_frames()   # relay's bytes for this step
                ...
                yield payload.name, time_calls(one_round_trip, steps)

Put it in a module of :mod:`relay_bench.cases`, or in your own module, and
list it in :data:`CASE_MODULES` (imported when the benchmark starts).  Then
``BASELINES["grpc"] = "raw grpcio bidi"`` makes it the baseline of the
``relay grpc://`` row.  A case that needs something missing raises
:class:`Unavailable` (the row is skipped with the reason).

Noise: compare rows inside one run, and run twice (or use ``--rounds``): a
busy machine slows every row of a round alike.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import gc
import importlib
import itertools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from platformdirs import user_cache_path

from relay.transports.base import readable
from relay_bench.envs import FIXED_OBS_ID, FixedObsEnv

__all__ = [
    "BASELINES",
    "CASES",
    "CASE_MODULES",
    "DEFAULT_OUT",
    "FIXED_OBS_ID",
    "IN_PROCESS",
    "LISTEN_URLS",
    "PAYLOADS",
    "Case",
    "CaseResult",
    "FixedObsEnv",
    "Payload",
    "Result",
    "Unavailable",
    "bench_case",
    "channel_case",
    "main",
    "relay_case",
    "relay_server",
    "run",
    "spawn_server",
    "time_calls",
    "time_env",
    "tls_files",
]

IN_PROCESS = "in-process"

CaseResult = Iterator[tuple[str, Sequence[float]]]
"""What a case yields: ``(payload name, round-trip seconds of each step)``."""


class Unavailable(Exception):
    """Raised by a case that cannot run here (missing package, plugin...)."""


# -- payloads -------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """One workload: which env the server makes (``env_id``, ``env_kwargs``)."""

    name: str
    description: str
    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def make_env(self) -> gym.Env:
        """The env, made in this process (picklable: a vector env's worker can call it)."""
        return gym.make(self.env_id, **self.env_kwargs)

    def sample_obs(self) -> np.ndarray:
        env = self.make_env()
        try:
            return env.observation_space.sample() * 0
        finally:
            env.close()

    def wire_frames(self) -> tuple[list[bytes], list[bytes]]:
        """The frames relay's msgpack codec sends for one step: (request, reply)."""
        from relay.codecs.msgpack import MsgpackCodec
        from relay.core.messages import Envelope, Step, Transition

        codec = MsgpackCodec()
        request = codec.encode(Envelope(7, Step(instance=1, action=1)))
        reply = codec.encode(Envelope(7, Transition(
            obs=self.sample_obs(), reward=1.0, terminated=False, truncated=False, info={})))
        return [bytes(f) for f in request], [bytes(f) for f in reply]


PAYLOADS: dict[str, Payload] = {
    "S": Payload("S", "CartPole-v1, 4 float32", "CartPole-v1"),
    "M": Payload("M", "84x84x4 uint8", FIXED_OBS_ID, {"shape": [84, 84, 4], "dtype": "uint8"}),
    "L": Payload("L", "3x224x224 uint8", FIXED_OBS_ID,
                 {"shape": [3, 224, 224], "dtype": "uint8"}),
    # not in the default S,M,L: large floats, where msgpack and dm_env_rpc's packing differ
    "F": Payload("F", "3x224x224 float32", FIXED_OBS_ID,
                 {"shape": [3, 224, 224], "dtype": "float32"}),
}


# -- timing helpers -------------------------------------------------------------------

WARMUP = 200
"""Untimed steps before timing starts."""


TIME_BUDGET = 4.0
"""Seconds of timed steps per row and payload at most (then fewer steps are kept,
at least :data:`MIN_STEPS`); warm-up gets a quarter of it.  Keeps slow rows short."""

MIN_STEPS = 20


def time_calls(fn: Callable[[], Any], steps: int, warmup: int = WARMUP) -> list[float]:
    """Seconds taken by each of ``steps`` calls of ``fn`` (after ``warmup`` calls).

    Stops early after :data:`TIME_BUDGET` seconds (keeping at least :data:`MIN_STEPS`).
    """
    clock = time.perf_counter
    stop_warmup = clock() + TIME_BUDGET / 4
    for _ in range(warmup):
        fn()
        if clock() > stop_warmup:
            break
    out: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        stop = clock() + TIME_BUDGET
        for i in range(steps):
            start = clock()
            fn()
            end = clock()
            out.append(end - start)
            if end > stop and i >= MIN_STEPS:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def time_env(env: gym.Env, steps: int, warmup: int = WARMUP) -> list[float]:
    """Seconds per ``env.step`` (actions 1, 0, 1, ...; resets when done are not timed).

    Stops early after :data:`TIME_BUDGET` seconds (keeping at least :data:`MIN_STEPS`).
    """
    env.reset(seed=0)
    clock = time.perf_counter
    out: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        stop = clock() + (TIME_BUDGET / 4 if warmup else TIME_BUDGET)
        i = 0
        while len(out) < steps:
            start = clock()
            _, _, terminated, truncated, _ = env.step(i & 1)
            end = clock()
            if i < warmup:
                if i + 1 == warmup or end > stop:  # warm-up done (or over its budget)
                    warmup = i + 1
                    stop = end + TIME_BUDGET
            else:
                out.append(end - start)
                if end > stop and len(out) >= MIN_STEPS:
                    break
            i += 1
            if terminated or truncated:
                env.reset()
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


@contextlib.contextmanager
def spawn_server(argv: Sequence[str], *, ready_timeout: float = 60.0,
                 env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``argv`` as a server process; yield the first line it prints on stdout.

    The process must print one line (usually its address) once it serves; it is
    terminated (then killed) on exit.

    The directory holding :mod:`relay_bench` leads the process's ``PYTHONPATH``,
    so ``python -m relay_bench...`` works there whether the harness is installed
    or run from a checkout (``python benchmarks/run.py``).

    Raises:
        Unavailable: it exited or printed nothing within ``ready_timeout`` seconds.
    """
    path = os.pathsep.join(p for p in (_HOME, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path,
                                 **(env or {})})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready = readable(proc.stdout)(ready_timeout)
        line = proc.stdout.readline().strip() if ready else ""
        if not line:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise Unavailable(f"server {' '.join(argv[-2:])} did not start: {err.strip()[-500:]}")
        yield line
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


_HOME = str(Path(__file__).resolve().parents[1])
"""The directory holding the ``relay_bench`` package."""


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay_bench", *args]


# -- the case registry ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A row of the table: ``run(payloads, steps)`` yields per-payload timings."""

    name: str
    run: Callable[[Sequence[Payload], int], CaseResult]
    group: str = "other"
    baseline: str | None = None
    """Name of the case this row is compared with (the raw library underneath)."""
    batch: int = 1
    """Env steps per timed call (a vector env's size), for the ``env-steps/s`` column."""


CASES: dict[str, Case] = {}
"""Registered cases by name, in registration order."""

CASE_MODULES: list[str] = [f"relay_bench.cases.{name}" for name in
                           ("gymie", "ws", "dm_env_rpc", "shm", "grpc", "vector", "batched")]
"""Modules imported before a run so that their ``@bench_case`` functions register."""

LISTEN_URLS: dict[str, str] = {
    "memory": "memory://relay-bench-{uid}",
    "zmq+ipc": "zmq+ipc://{tmp}/relay-bench.sock",
    "zmq+tcp": "zmq+tcp://127.0.0.1:0",
}
"""Listen URL template per relay scheme (default ``SCHEME://127.0.0.1:0``)."""

BASELINES: dict[str, str] = {
    "zmq+ipc": "raw pyzmq ipc",
    "zmq+tcp": "raw pyzmq tcp",
    "tcp": "raw pyzmq tcp",
}
"""Baseline case of each relay scheme's row."""

_TLS_FILES: list[tuple[Path, Path] | None] = []


def tls_files() -> tuple[Path, Path] | None:
    """``(certfile, keyfile)`` of a self-signed certificate for 127.0.0.1, made
    once per run (:func:`relay.testing.make_certificate`), for the listen URLs
    of the TLS rows; None without the ``cryptography`` package."""
    if not _TLS_FILES:
        try:
            import cryptography  # noqa: F401

            from relay.testing import make_certificate
        except ImportError:
            _TLS_FILES.append(None)
        else:
            _TLS_FILES.append(make_certificate(Path(tempfile.mkdtemp(prefix="relay-bench-tls-"))))
    return _TLS_FILES[0]


IN_PROCESS_SCHEMES = frozenset({"memory"})
"""Schemes whose server must run in the benchmark process itself."""


def bench_case(name: str, *, group: str = "other", baseline: str | None = None, batch: int = 1
               ) -> Callable[[Callable[[Sequence[Payload], int], CaseResult]],
                             Callable[[Sequence[Payload], int], CaseResult]]:
    """Register a generator ``fn(payloads, steps)`` as the row ``name`` (``batch``:
    env steps per timed call)."""

    def register(fn: Callable[[Sequence[Payload], int], CaseResult]
                 ) -> Callable[[Sequence[Payload], int], CaseResult]:
        CASES[name] = Case(name, fn, group=group, baseline=baseline, batch=batch)
        return fn

    return register


@bench_case(IN_PROCESS, group="reference")
def in_process(payloads: Sequence[Payload], steps: int) -> CaseResult:
    for payload in payloads:
        env = payload.make_env()
        try:
            yield payload.name, time_env(env, steps)
        finally:
            env.close()


class _LayersOnly(gym.Env):
    """relay's per-step work without a transport, in one thread: the client's
    session and codec, the server's codec, session and :class:`EnvHost`, and
    back (what ``ClientConnection.call`` and ``serve_channel`` do around
    ``channel.send``/``recv``).  Its row is relay's own CPU cost of a step."""

    def __init__(self, payload: Payload) -> None:
        from relay.codecs.msgpack import MsgpackCodec
        from relay.core.messages import Make
        from relay.core.session import ClientSession, ServerSession
        from relay.server import EnvHost, gymnasium_factory

        self.codec = MsgpackCodec()
        self.client = ClientSession()
        self.server = ServerSession([self.codec.name])
        self.client.welcome(self.server.hello(self.client.hello()))
        self.host = EnvHost(gymnasium_factory(None))
        made = self.host.handle(Make(env_id=payload.env_id, kwargs=dict(payload.env_kwargs)))
        self.instance = made.instance  # type: ignore[union-attr]

    def _call(self, request: Any) -> Any:
        codec = self.codec
        envelope = self.client.request(request, now=0.0, timeout=1e9)
        received = codec.decode(codec.encode(envelope))
        answer = self.server.answer(received.id,
                                    self.host.handle(self.server.request(received)))
        return self.client.receive(codec.decode(codec.encode(answer)))[1]  # type: ignore[index]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
        from relay.core.messages import Reset

        answer = self._call(Reset(instance=self.instance, seed=seed, options=options))
        return answer.obs, answer.info

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        from relay.core.messages import Step

        answer = self._call(Step(instance=self.instance, action=action))
        return answer.obs, answer.reward, answer.terminated, answer.truncated, answer.info


@bench_case("relay layers, no transport", group="reference")
def layers_only(payloads: Sequence[Payload], steps: int) -> CaseResult:
    for payload in payloads:
        env = _LayersOnly(payload)
        try:
            yield payload.name, time_env(env, steps)
        finally:
            env.host.close()


@contextlib.contextmanager
def relay_server(url_template: str) -> Iterator[str]:
    """``relay.serve(None, url)`` listening on ``url_template`` (``{tmp}``, ``{uid}``
    as in :data:`LISTEN_URLS`) in a server process, or in this process for
    :data:`IN_PROCESS_SCHEMES`; yields its address."""
    import relay
    from relay.core.url import make_url

    tmp = tempfile.mkdtemp(prefix="rb-")
    try:
        url = url_template.format(tmp=tmp, uid=secrets.token_hex(4))
        if make_url(url).scheme in IN_PROCESS_SCHEMES:
            with relay.serve(None, url) as server:
                yield str(server.address)
        else:
            with spawn_server(_python("_serve-relay", url)) as address:
                yield address
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def relay_case(url_template: str) -> Callable[[Sequence[Payload], int], CaseResult]:
    """A relay row: ``env.step`` of :func:`relay.make` against
    :func:`relay_server` ``(url_template)``."""

    def run_case(payloads: Sequence[Payload], steps: int) -> CaseResult:
        import relay

        with relay_server(url_template) as address:
            for payload in payloads:
                env = relay.make(address, payload.env_id, **payload.env_kwargs)
                try:
                    yield payload.name, time_env(env, steps)
                finally:
                    env.close()

    return run_case


def _relay_case(scheme: str) -> Case:
    """The row ``relay SCHEME://`` of a registered transport."""
    template = LISTEN_URLS.get(scheme, f"{scheme}://127.0.0.1:0")
    return Case(f"relay {scheme}://", relay_case(template), group="relay",
                baseline=BASELINES.get(scheme))


def _raw_zmq_case(kind: str) -> Callable[[Sequence[Payload], int], CaseResult]:
    def run_case(payloads: Sequence[Payload], steps: int) -> CaseResult:
        import zmq

        from relay.transports.zmq import ZERO_COPY_MIN

        tmp = tempfile.mkdtemp(prefix="rb-")
        ctx = zmq.Context()
        try:
            endpoint = f"ipc://{tmp}/raw.sock" if kind == "ipc" else "tcp://127.0.0.1:*"
            with spawn_server(_python("_serve-raw-zmq", endpoint)) as address:
                for payload in payloads:
                    request, _ = payload.wire_frames()
                    sock = ctx.socket(zmq.DEALER)
                    sock.linger = 0
                    sock.copy_threshold = ZERO_COPY_MIN  # as relay.transports.zmq
                    sock.connect(address)
                    try:
                        sock.send_multipart([b"payload", payload.name.encode()])
                        if not sock.poll(30_000):
                            raise Unavailable("raw pyzmq server did not answer")
                        sock.recv_multipart()

                        def round_trip(sock: Any = sock, request: list[bytes] = request) -> None:
                            sock.send_multipart(request, copy=False)
                            sock.recv_multipart(copy=False)

                        yield payload.name, time_calls(round_trip, steps)
                    finally:
                        sock.close(0)
        finally:
            ctx.term()
            shutil.rmtree(tmp, ignore_errors=True)

    return run_case


bench_case("raw pyzmq ipc", group="raw")(_raw_zmq_case("ipc"))
bench_case("raw pyzmq tcp", group="raw")(_raw_zmq_case("tcp"))


def channel_case(url_template: str) -> Callable[[Sequence[Payload], int], CaseResult]:
    """A "relay ... channel only" row: relay's channel of one transport alone (no
    codec, session or env) moving the bytes of a relay step: the transport's own
    share of a step, to tell it from that of relay's upper layers.

    ``url_template`` is the server's listen URL (``{tmp}``: a fresh temporary
    directory, ``{uid}``: a random hex string).  The server process
    (``python -m relay_bench _serve-channel URL``) answers every message with
    the reply frames of the payload named last (see :func:`_serve_channel`).
    """

    def run_case(payloads: Sequence[Payload], steps: int) -> CaseResult:
        from relay.core.config import Settings
        from relay.core.plugins import get_transport
        from relay.core.url import make_url

        tmp = tempfile.mkdtemp(prefix="rb-")
        try:
            url = url_template.format(tmp=tmp, uid=secrets.token_hex(4))
            with spawn_server(_python("_serve-channel", url)) as address:
                target = make_url(address)
                settings = Settings()
                channel = get_transport(target.scheme).connect(target, settings, timeout=30)
                channel.set_receive_limit(settings.max_message_size)  # no session handshake
                try:
                    for payload in payloads:
                        request = payload.wire_frames()[0]
                        channel.send([payload.name.encode()])
                        if bytes(channel.recv(30)[0]) != b"ok":
                            raise Unavailable(f"the {target.scheme} channel server did not answer")

                        def round_trip(channel: Any = channel, request: list[bytes] = request
                                       ) -> None:
                            channel.send(request)
                            channel.recv(30)

                        yield payload.name, time_calls(round_trip, steps)
                finally:
                    channel.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return run_case


bench_case("relay zmq+ipc channel only", group="transport",
           baseline="raw pyzmq ipc")(channel_case("zmq+ipc://{tmp}/chan.sock"))
bench_case("relay zmq+tcp channel only", group="transport",
           baseline="raw pyzmq tcp")(channel_case("zmq+tcp://127.0.0.1:0"))


def _step_vector(venv: gym.vector.VectorEnv, actions: Iterator[np.ndarray]) -> None:
    venv.step(next(actions))


@bench_case("gymnasium AsyncVectorEnv shm", group="reference")
def async_vector_env(payloads: Sequence[Payload], steps: int) -> CaseResult:
    for payload in payloads:
        venv = gym.vector.AsyncVectorEnv(
            [payload.make_env],
            shared_memory=True)
        try:
            venv.reset(seed=0)
            actions = itertools.cycle([np.array([1]), np.array([0])])
            yield payload.name, time_calls(
                functools.partial(_step_vector, venv, actions), steps)
        finally:
            venv.close()


# -- server processes -----------------------------------------------------------------


def _serve_relay(url: str) -> None:
    import relay

    server = relay.serve(None, url)
    print(server.address, flush=True)
    server.serve_forever()


def _serve_channel(url: str) -> None:
    """Listen on ``url`` with relay's transport; on each channel (a thread each),
    answer a one-letter message naming a payload with ``ok`` and every other
    message with relay's reply frames for the payload named last."""
    import threading

    from relay.core.config import Settings
    from relay.core.errors import RelayError
    from relay.core.plugins import get_transport
    from relay.core.url import make_url

    replies = {name.encode(): p.wire_frames()[1] for name, p in PAYLOADS.items()}
    target = make_url(url)
    settings = Settings()
    listener = get_transport(target.scheme).listen(target, settings)
    print(listener.address, flush=True)

    def answer(channel: Any) -> None:
        channel.set_receive_limit(settings.max_message_size)  # no session handshake
        reply: list[bytes] = []
        try:
            while True:
                frames = channel.recv(None)
                if len(frames) == 1 and len(frames[0]) == 1 and bytes(frames[0]) in replies:
                    reply = replies[bytes(frames[0])]
                    channel.send([b"ok"])
                else:
                    channel.send(reply)
        except RelayError:
            channel.close()

    try:
        while True:
            threading.Thread(target=answer, args=(listener.accept(None),), daemon=True).start()
    finally:
        listener.close()


def _serve_raw_zmq(endpoint: str) -> None:
    """A ROUTER that answers each step with relay's reply bytes for the client's payload."""
    import zmq

    from relay.transports.zmq import ZERO_COPY_MIN

    replies = {name.encode(): p.wire_frames()[1] for name, p in PAYLOADS.items()}
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.copy_threshold = ZERO_COPY_MIN
    sock.bind(endpoint)
    print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    chosen: dict[bytes, list[bytes]] = {}
    while True:
        message = sock.recv_multipart(copy=False)
        identity = message[0].bytes
        reply = chosen.get(identity)
        if reply is None:
            chosen[identity] = replies[message[2].bytes]
            sock.send_multipart([identity, b"ok"])
        else:
            sock.send_multipart([identity, *reply], copy=False)


# -- running and reporting ------------------------------------------------------------


@dataclass
class Result:
    case: str
    group: str
    payload: str
    steps: int
    median_us: float
    p90_us: float
    baseline: str | None = None
    vs_baseline: float | None = None
    vs_in_process: float | None = None
    env_steps_per_s: float = 0.0
    """Env steps per second: the case's batch over the median call."""


def _all_cases(log: Callable[[str], None] = print) -> list[Case]:
    for module in CASE_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # one broken case module must not stop the others
            log(f"cannot load the cases of {module}: {type(exc).__name__}: {exc}")
    from relay.core import plugins

    cases = dict(CASES)
    relay_cases = [_relay_case(scheme) for scheme in sorted(plugins.transports())]
    ordered = [cases.pop(IN_PROCESS), *relay_cases]
    ordered += [c for c in cases.values() if c.group == "raw"]
    ordered += [c for c in cases.values() if c.group != "raw"]
    return ordered


def run(*, steps: int = 2000, only: Sequence[str] = (), payloads: Sequence[str] = "SML",
        rounds: int = 1, log: Callable[[str], None] = print) -> list[Result]:
    """Run the selected cases (plus their baselines and in-process) and return results.

    Args:
        only: substrings; a case runs if its name contains one (empty: all).
        rounds: run every selected case this many times, one round after the
            other (so slow phases of a shared machine hit every row alike); a
            row's median and p90 are over the steps of all rounds.
    """
    chosen_payloads = [PAYLOADS[p] for p in payloads]
    cases = _all_cases(log)
    by_name = {c.name: c for c in cases}
    wanted = {c.name for c in cases if not only or any(s in c.name for s in only)}
    for name in list(wanted):
        baseline = by_name[name].baseline
        if baseline is not None and baseline in by_name:
            wanted.add(baseline)
    wanted.add(IN_PROCESS)
    samples: dict[tuple[str, str], list[float]] = {}
    for round_number in range(1, rounds + 1):
        for case in cases:
            if case.name not in wanted:
                continue
            started = time.monotonic()
            prefix = f"round {round_number}/{rounds}: " if rounds > 1 else ""
            log(f"{prefix}running {case.name} ...")
            try:
                for payload_name, times in case.run(chosen_payloads, steps):
                    samples.setdefault((case.name, payload_name), []).extend(times)
            except Unavailable as exc:
                log(f"  skipped: {exc}")
            except Exception as exc:  # one broken row must not lose the others
                log(f"  failed: {type(exc).__name__}: {exc}")
            log(f"  {time.monotonic() - started:.1f} s")
    results: list[Result] = []
    for case in cases:
        for payload in chosen_payloads:
            timed = samples.get((case.name, payload.name))
            if timed:
                us = np.asarray(timed) * 1e6
                median = float(np.median(us))
                results.append(Result(case.name, case.group, payload.name, len(us),
                                      median, float(np.percentile(us, 90)),
                                      baseline=case.baseline,
                                      env_steps_per_s=case.batch * 1e6 / median))
    medians = {(r.case, r.payload): r.median_us for r in results}
    for r in results:
        if r.baseline and (r.baseline, r.payload) in medians:
            r.vs_baseline = r.median_us / medians[(r.baseline, r.payload)]
        if (IN_PROCESS, r.payload) in medians:
            r.vs_in_process = r.median_us / medians[(IN_PROCESS, r.payload)]
    return results


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def _rows(results: Sequence[Result], payloads: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    header = ["payload", "case", "median µs", "p90 µs", "x baseline", "x in-process",
              "env-steps/s", "baseline"]
    rows: list[list[str]] = []
    for p in payloads:
        for r in results:
            if r.payload == p:
                rows.append([p, r.case, f"{r.median_us:,.1f}", f"{r.p90_us:,.1f}",
                             _ratio(r.vs_baseline), _ratio(r.vs_in_process),
                             f"{r.env_steps_per_s:,.0f}", r.baseline or ""])
    return header, rows


def report(results: Sequence[Result], payloads: Sequence[str], out_dir: Path | None,
           *, steps: int, rounds: int = 1) -> tuple[Path, Path] | None:
    """Print the table; write ``bench-<UTC time>.csv`` and ``.md`` into ``out_dir``."""
    header, rows = _rows(results, payloads)
    title = (f"relay round trip per env.step, {steps} steps"
             f"{f' x {rounds} rounds' if rounds > 1 else ''} "
             f"({', '.join(f'{p}: {PAYLOADS[p].description}' for p in payloads)})")
    markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    markdown += ["| " + " | ".join(row) + " |" for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is in the test extra; plain Markdown without it
        print(title, *markdown, sep="\n")
    else:
        table = Table(title=title)
        for i, name in enumerate(header):
            table.add_column(name, justify="right" if 2 <= i < 7 else "left")
        for i, row in enumerate(rows):
            table.add_row(*row, end_section=i + 1 < len(rows) and rows[i + 1][0] != row[0])
        Console(width=max(Console().width, 120)).print(table)
    if out_dir is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    csv_path, md_path = out_dir / f"bench-{stamp}.csv", out_dir / f"bench-{stamp}.md"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        names = [f.name for f in dataclasses.fields(Result)]
        writer.writerow(["time_utc", "host_cpus", *names])
        for r in results:
            writer.writerow([stamp, os.cpu_count(), *dataclasses.astuple(r)])
    lines = [f"# {title}", "", f"run {stamp} UTC, {os.cpu_count()} CPUs, Python "
             f"{sys.version.split()[0]}", "", *markdown]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


DEFAULT_OUT = user_cache_path("relay") / "bench"
"""Where results go unless ``--out`` says otherwise (``~/.cache/relay/bench`` on Linux)."""


def main(argv: Sequence[str] | None = None) -> int:
    """``relay bench`` and ``python benchmarks/run.py``: parse ``argv``, run, report.

    Returns the exit code (2 for unknown payloads)."""
    parser = argparse.ArgumentParser(
        prog="relay bench",
        description="Median round trip per env.step over every transport vs raw libraries.")
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per row and payload")
    parser.add_argument("--only", default="",
                        help="comma-separated substrings of case names (baselines are added)")
    parser.add_argument("--payloads", default="S,M,L", help="comma-separated subset of S,M,L")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every row this many times, round after round (noise)")
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="directory for the CSV and Markdown results ('' for none; "
                        "default: %(default)s)")
    parser.add_argument("--plot", default="",
                        help="also draw the results as a PNG chart at this path (needs matplotlib)")
    parser.add_argument("--from", dest="from_csv", default="",
                        help="with --plot: draw a saved bench-<time>.csv instead of running")
    args = parser.parse_args(argv)
    if args.from_csv:
        if not args.plot:
            parser.error("--from needs --plot")
        from relay_bench.plot import load_csv, plot

        print(f"wrote {plot(load_csv(Path(args.from_csv)), Path(args.plot))}", file=sys.stderr)
        return 0
    return bench(steps=args.steps, only=args.only, payloads=args.payloads, out=args.out,
                 rounds=args.rounds, plot_to=args.plot)


def bench(*, steps: int, only: str, payloads: str, out: str, rounds: int = 1,
          plot_to: str = "") -> int:
    """Run and report (the body of :func:`main`); returns an exit code.

    ``plot_to``: also draw the results as a PNG there (:mod:`relay_bench.plot`)."""
    chosen = [p.strip().upper() for p in payloads.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PAYLOADS]
    if unknown or not chosen:
        print(f"unknown payloads {unknown}: choose from {', '.join(PAYLOADS)}", file=sys.stderr)
        return 2
    substrings = [s.strip() for s in only.split(",") if s.strip()]
    start = time.monotonic()
    results = run(steps=steps, only=substrings, payloads=chosen, rounds=max(rounds, 1),
                  log=lambda text: print(text, file=sys.stderr, flush=True))
    paths = report(results, chosen, Path(out) if out else None, steps=steps,
                   rounds=max(rounds, 1))
    print(f"{time.monotonic() - start:.0f} s", file=sys.stderr)
    if paths:
        print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)
    if plot_to:
        from relay_bench.plot import plot

        print(f"wrote {plot(results, Path(plot_to), title=f'{steps} steps')}", file=sys.stderr)
    return 0


def internal(command: str, arg: str) -> None:
    """Run a server process of a row: ``python -m relay_bench _serve-... ARG``."""
    from relay_bench.cases.batched import serve_batch

    servers = {"_serve-relay": _serve_relay, "_serve-raw-zmq": _serve_raw_zmq,
               "_serve-channel": _serve_channel, "_serve-batch": serve_batch}
    if command not in servers:
        raise SystemExit(f"unknown command {command}")
    try:
        servers[command](arg)
    except KeyboardInterrupt:
        pass
