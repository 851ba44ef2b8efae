"""relay's environments served to stock dm_env_rpc clients.

``relay.serve(env, "grpc://127.0.0.1:0?codec=dm_env_rpc")`` starts a gRPC
server with dm_env_rpc's ``Environment`` service (method
``/dm_env_rpc.v1.Environment/Process``, registered with the package's own
``dm_env_rpc_pb2_grpc``).  Every stream gets a :class:`StreamSession`: it turns
each ``EnvironmentRequest`` into relay/1 requests, answers them with the same
:class:`~relay.server.EnvHost` that serves relay clients, and writes exactly
one ``EnvironmentResponse`` per request, in order.  Failures are a
``google.rpc.Status`` in the response's ``error`` field (with a
``google.rpc.DebugInfo`` detail carrying the server traceback when there is
one); the stream stays usable.  An answer over ``max_message_size`` bytes
becomes a RESOURCE_EXHAUSTED status (the request itself took effect), since
gRPC would otherwise abort the stream.  Status codes: INVALID_ARGUMENT (bad
settings, actions, uids), FAILED_PRECONDITION (wrong state: step before join,
join twice, destroy while joined), NOT_FOUND (world), INTERNAL (the env
raised), UNIMPLEMENTED (extensions).

Protocol mapping (docs/v1/reference.md of dm_env_rpc):

==================  =============================================================
request             what happens
==================  =============================================================
CreateWorld         ``Make``: setting ``env_id`` (string) picks the env when the
                    server serves several, ``seed`` (int) seeds the first
                    reset, every other setting is a keyword argument of the
                    factory (``gymnasium.make`` for an id; ``a.b`` names
                    nest).  Answers a unique ``world_name``.
JoinWorld           joins a world created on this stream.  Its settings are
                    factory keyword arguments too: when they differ from
                    those the world's env was made with, the env is made
                    again with CreateWorld's settings updated by them (the
                    old one is closed; the next Step starts an episode), so
                    ``width``/``height`` at join time reach the env; ``env_id``
                    is CreateWorld's only.  Answers the specs of the joined
                    env: observation tensors (see :mod:`.tensors`) plus a
                    scalar DOUBLE ``reward``
ResetWorld / Reset  ``Reset`` now; settings ``seed`` (int) and any others as
                    ``options``; the next Step returns its observation
Step                from a non-RUNNING state: starts the next episode, actions
                    ignored; RUNNING: every action tensor is checked (uid,
                    dtype, shape, bounds) and the env steps.  State TERMINATED
                    when ``terminated``, INTERRUPTED when only ``truncated``
LeaveWorld          leaves (a no-op when not joined)
DestroyWorld        ``Close``; refused while joined to that world
==================  =============================================================

Worlds belong to the stream that created them: every client gets its own
environments, and a world disappears with its stream.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from dm_env_rpc.v1 import dm_env_rpc_pb2 as pb
from dm_env_rpc.v1 import dm_env_rpc_pb2_grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from relay.compat.dm_env_rpc.tensors import Layout, TensorError, unpack_settings
from relay.core import spaces
from relay.core.config import Settings
from relay.core.errors import CodecError, ConfigError, TransportError
from relay.core.messages import Close, Error, Made, Make, Observation, Reset, Step, Transition
from relay.core.url import URL
from relay.server import EnvFactory, EnvHost
from relay.transports.grpc import tls_file

__all__ = ["DmEnvRpcServer", "StreamSession", "grpc_options"]

log = logging.getLogger("relay.compat.dm_env_rpc")

REWARD = "reward"
"""Name of the reward observation, the one ``DmEnvAdaptor`` reads (dm_env_adaptor.py)."""

_RUNNING = pb.EnvironmentStateType.RUNNING
_TERMINATED = pb.EnvironmentStateType.TERMINATED
_INTERRUPTED = pb.EnvironmentStateType.INTERRUPTED

_ERROR_CODES = {  # relay/1 Error.code -> google.rpc.Code
    "invalid_action": code_pb2.INVALID_ARGUMENT,
    "not_reset": code_pb2.FAILED_PRECONDITION,
    "config": code_pb2.INVALID_ARGUMENT,
    "env": code_pb2.INTERNAL,
}


class _Fail(Exception):
    """A request that fails: becomes the response's ``error`` Status."""

    def __init__(self, code: int, message: str, trace: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.trace = trace

    def status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code, message=str(self))
        if self.trace:
            status.details.add().Pack(error_details_pb2.DebugInfo(
                stack_entries=self.trace.rstrip().splitlines(), detail="server traceback"))
        return status


def _failed(error: Error, doing: str, code: int | None = None) -> _Fail:
    prefix = f"{error.remote_type}: " if error.remote_type else ""
    return _Fail(code if code is not None else _ERROR_CODES.get(error.code, code_pb2.UNKNOWN),
                 f"{doing} failed: {prefix}{error.message}", error.traceback)


class _Episode(enum.Enum):
    NEEDS_RESET = "needs_reset"  # next Step resets the env and ignores actions
    FRESH = "fresh"  # reset done; next Step returns its observation, ignores actions
    RUNNING = "running"  # next Step applies the actions


@dataclass(eq=False)
class _Made:
    """A world's env and its tensor layouts."""

    instance: int
    observations: Layout
    actions: Layout
    reward_uid: int
    specs: pb.ActionObservationSpecs


@dataclass(eq=False)
class _World:
    name: str
    env_id: str | None
    kwargs: dict[str, Any]  # CreateWorld's settings but env_id and seed
    join: dict[str, Any]  # the settings of the JoinWorld that made ``env``
    env: _Made
    seed: int | None  # for the first reset only
    episode: _Episode = _Episode.NEEDS_RESET
    fresh: Any = None  # observation of the last reset


class WorldNames:
    """Server-wide unique world names, and which exist (for clear errors)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._live: set[str] = set()

    def new(self) -> str:
        with self._lock:
            name = f"world-{next(self._counter)}"
            self._live.add(name)
            return name

    def drop(self, name: str) -> None:
        with self._lock:
            self._live.discard(name)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._live


class StreamSession:
    """One dm_env_rpc stream: its worlds, the joined one, and the request handler.

    Not thread-safe: gRPC runs one stream in one thread.
    """

    def __init__(self, host: EnvHost, names: WorldNames, *, max_size: int = 2**31 - 1) -> None:
        self._host = host
        self._names = names
        self._max_size = max_size
        self._worlds: dict[str, _World] = {}
        self._joined: _World | None = None

    def handle(self, request: pb.EnvironmentRequest) -> pb.EnvironmentResponse:
        """The one response to ``request``; never raises."""
        response = pb.EnvironmentResponse()
        kind = request.WhichOneof("payload")
        try:
            match kind:
                case "create_world":
                    self._create(request.create_world, response.create_world)
                case "join_world":
                    self._join(request.join_world, response.join_world)
                case "step":
                    self._step(request.step, response.step)
                case "reset":
                    self._reset(request.reset, response.reset)
                case "reset_world":
                    self._reset_world(request.reset_world)
                    response.reset_world.SetInParent()
                case "leave_world":
                    self._joined = None
                    response.leave_world.SetInParent()
                case "destroy_world":
                    self._destroy(request.destroy_world)
                    response.destroy_world.SetInParent()
                case "extension":
                    raise _Fail(code_pb2.UNIMPLEMENTED, "this server supports no extensions "
                                f"(got {request.extension.type_url!r})")
                case _:
                    raise _Fail(code_pb2.INVALID_ARGUMENT, "empty EnvironmentRequest")
        except _Fail as exc:
            response.Clear()
            response.error.CopyFrom(exc.status())
        except Exception as exc:  # a bug here must not end the stream
            log.exception("dm_env_rpc request failed")
            response.Clear()
            trace = "".join(traceback.format_exception(exc)) if self._host.tracebacks else ""
            response.error.CopyFrom(_Fail(
                code_pb2.INTERNAL, f"{kind} failed: {type(exc).__name__}: {exc}",
                trace).status())
        size = response.ByteSize()
        if size > self._max_size:  # gRPC would abort the stream: answer why instead
            response.Clear()
            response.error.CopyFrom(_Fail(
                code_pb2.RESOURCE_EXHAUSTED, f"{kind}: the response of {size} bytes is over "
                f"max_message_size={self._max_size} bytes (raise it on the server URL)").status())
        return response

    # -- worlds ------------------------------------------------------------------------

    def _create(self, request: pb.CreateWorldRequest, response: pb.CreateWorldResponse) -> None:
        settings = self._settings(request.settings, "CreateWorld")
        env_id = settings.pop("env_id", None)
        seed = settings.pop("seed", None)
        if env_id is not None and not isinstance(env_id, str):
            raise _Fail(code_pb2.INVALID_ARGUMENT, f"setting 'env_id' must be a string, "
                        f"got {env_id!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise _Fail(code_pb2.INVALID_ARGUMENT, f"setting 'seed' must be an int, got {seed!r}")
        name = self._names.new()
        try:
            self._worlds[name] = _World(name, env_id, settings, {},
                                        self._make(env_id, settings, "CreateWorld"), seed)
        except BaseException:
            self._names.drop(name)
            raise
        response.world_name = name

    def _make(self, env_id: str | None, kwargs: dict[str, Any], doing: str) -> _Made:
        made = self._host.handle(Make(env_id=env_id, kwargs=kwargs))
        if isinstance(made, Error):
            raise _failed(made, doing, code_pb2.INVALID_ARGUMENT)
        assert isinstance(made, Made)
        try:
            observations = Layout(spaces.build(made.observation_space), "observation")
            actions = Layout(spaces.build(made.action_space), "action")
            if any(leaf.name == REWARD for leaf in observations.leaves):
                raise CodecError(f"an observation is named {REWARD!r}, the reward's name")
        except CodecError as exc:
            self._host.handle(Close(instance=made.instance))
            raise _Fail(code_pb2.INVALID_ARGUMENT,
                        f"{doing}: the env's spaces cannot travel as dm_env_rpc tensors: "
                        f"{exc}") from exc
        reward_uid = max(observations.by_uid, default=0) + 1
        specs = pb.ActionObservationSpecs()
        for uid, spec in actions.specs.items():
            specs.actions[uid].CopyFrom(spec)
        for uid, spec in observations.specs.items():
            specs.observations[uid].CopyFrom(spec)
        specs.observations[reward_uid].CopyFrom(
            pb.TensorSpec(name=REWARD, dtype=pb.DataType.DOUBLE))
        return _Made(made.instance, observations, actions, reward_uid, specs)

    def _world(self, name: str) -> _World:
        world = self._worlds.get(name)
        if world is None and name == "" and len(self._worlds) == 1:
            world = next(iter(self._worlds.values()))
        if world is None:
            if name in self._names:
                raise _Fail(code_pb2.NOT_FOUND, f"world {name!r} belongs to another connection: "
                            "on this server every connection creates its own worlds")
            raise _Fail(code_pb2.NOT_FOUND, f"no world named {name!r} on this connection "
                        f"(worlds: {sorted(self._worlds)}); create one first")
        return world

    def _join(self, request: pb.JoinWorldRequest, response: pb.JoinWorldResponse) -> None:
        if self._joined is not None:
            raise _Fail(code_pb2.FAILED_PRECONDITION,
                        f"already joined to world {self._joined.name!r}; leave it first")
        world = self._world(request.world_name)
        join = self._settings(request.settings, "JoinWorld")
        if "env_id" in join:
            raise _Fail(code_pb2.INVALID_ARGUMENT,
                        "JoinWorld: setting 'env_id' belongs to CreateWorld")
        if join != world.join:  # the env is made again with these settings
            made = self._make(world.env_id, {**world.kwargs, **join}, "JoinWorld")
            self._host.handle(Close(instance=world.env.instance))
            world.env, world.join, world.episode = made, join, _Episode.NEEDS_RESET
        if world.episode is _Episode.RUNNING:
            world.episode = _Episode.NEEDS_RESET
        self._joined = world
        response.specs.CopyFrom(world.env.specs)

    def _destroy(self, request: pb.DestroyWorldRequest) -> None:
        world = self._world(request.world_name)
        if self._joined is world:
            raise _Fail(code_pb2.FAILED_PRECONDITION,
                        f"cannot destroy world {world.name!r} while joined to it; leave it first")
        del self._worlds[world.name]
        self._names.drop(world.name)
        self._host.handle(Close(instance=world.env.instance))

    # -- episodes ------------------------------------------------------------------------

    def _settings(self, settings: Any, doing: str) -> dict[str, Any]:
        try:
            return unpack_settings(settings)
        except TensorError as exc:
            raise _Fail(code_pb2.INVALID_ARGUMENT, f"{doing}: {exc}") from exc

    def _do_reset(self, world: _World, settings: dict[str, Any], doing: str) -> None:
        seed = settings.pop("seed", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise _Fail(code_pb2.INVALID_ARGUMENT, f"setting 'seed' must be an int, got {seed!r}")
        if seed is None:
            seed, world.seed = world.seed, None
        answer = self._host.handle(Reset(instance=world.env.instance, seed=seed,
                                         options=settings or None))
        if isinstance(answer, Error):
            raise _failed(answer, doing)
        assert isinstance(answer, Observation)
        world.fresh = answer.obs
        world.episode = _Episode.FRESH

    def _joined_world(self, doing: str) -> _World:
        if self._joined is None:
            raise _Fail(code_pb2.FAILED_PRECONDITION,
                        f"cannot {doing} before JoinWorld: join a world first")
        if self._joined.name not in self._worlds:  # pragma: no cover - destroy is refused
            raise _Fail(code_pb2.FAILED_PRECONDITION, "the joined world was destroyed")
        return self._joined

    def _reset(self, request: pb.ResetRequest, response: pb.ResetResponse) -> None:
        world = self._joined_world("Reset")
        self._do_reset(world, self._settings(request.settings, "Reset"), "Reset")
        response.specs.CopyFrom(world.env.specs)

    def _reset_world(self, request: pb.ResetWorldRequest) -> None:
        world = self._world(request.world_name)
        self._do_reset(world, self._settings(request.settings, "ResetWorld"), "ResetWorld")

    def _step(self, request: pb.StepRequest, response: pb.StepResponse) -> None:
        world = self._joined_world("Step")
        requested = list(dict.fromkeys(request.requested_observations))
        for uid in requested:
            if uid not in world.env.observations.by_uid and uid != world.env.reward_uid:
                raise _Fail(code_pb2.INVALID_ARGUMENT, f"unknown observation uid {uid} "
                            f"(known: {sorted(world.env.specs.observations)})")
        reward = 0.0
        state = _RUNNING
        if world.episode is _Episode.NEEDS_RESET:
            self._do_reset(world, {}, "Step (starting an episode)")
        if world.episode is _Episode.FRESH:  # the first step of an episode ignores actions
            obs, world.fresh = world.fresh, None
            world.episode = _Episode.RUNNING
        else:
            action = self._action(world, request.actions)
            answer = self._host.handle(Step(instance=world.env.instance, action=action))
            if isinstance(answer, Error):
                raise _failed(answer, "Step")
            assert isinstance(answer, Transition)
            obs, reward = answer.obs, float(answer.reward)
            if answer.terminated:
                state = _TERMINATED
            elif answer.truncated:
                state = _INTERRUPTED
            if state != _RUNNING:
                world.episode = _Episode.NEEDS_RESET
        response.state = state
        wanted = [uid for uid in requested if uid != world.env.reward_uid]
        if wanted:
            try:
                world.env.observations.pack_into(response.observations,
                                             world.env.observations.flatten(obs), wanted)
            except (CodecError, KeyError, IndexError, TypeError, ValueError) as exc:
                raise _Fail(code_pb2.INTERNAL, f"Step: the observation does not match "
                            f"its space: {exc}") from exc
        if world.env.reward_uid in requested:
            response.observations[world.env.reward_uid].doubles.array.append(reward)

    def _action(self, world: _World, tensors: Any) -> Any:
        values = {}
        try:
            for uid, tensor in tensors.items():
                values[uid] = world.env.actions.unpack_leaf(uid, tensor, check=True)
        except TensorError as exc:
            raise _Fail(code_pb2.INVALID_ARGUMENT, f"Step: bad action: {exc}") from exc
        missing = [leaf.name for leaf in world.env.actions.leaves if leaf.uid not in values]
        if missing:
            raise _Fail(code_pb2.INVALID_ARGUMENT,
                        f"Step: actions {missing} are required in every running step")
        return world.env.actions.assemble(values)

    def close(self) -> None:
        """The stream ended: close its environments and forget its worlds."""
        for name in self._worlds:
            self._names.drop(name)
        self._worlds.clear()
        self._joined = None
        self._host.close()


class _Servicer(dm_env_rpc_pb2_grpc.EnvironmentServicer):
    def __init__(self, factory: EnvFactory, names: WorldNames, active: set[Any],
                 lock: threading.Lock, max_size: int, tracebacks: bool) -> None:
        self._max_size = max_size
        self._tracebacks = tracebacks
        self._factory = factory
        self._names = names
        self._active = active
        self._lock = lock

    def Process(  # noqa: N802 - the gRPC method name
        self, request_iterator: Iterator[pb.EnvironmentRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.EnvironmentResponse]:
        host = EnvHost(self._factory, tracebacks=self._tracebacks)
        session = StreamSession(host, self._names, max_size=self._max_size)
        with self._lock:
            self._active.add(session)
        try:
            for request in request_iterator:
                yield session.handle(request)
        finally:
            with self._lock:
                self._active.discard(session)
            session.close()


def grpc_options(settings: Settings, *, server: bool) -> list[tuple[str, Any]]:
    """gRPC options: message limits from ``settings.max_message_size``, and keepalive.

    The server pings every 10 s so a client that vanished without closing its
    TCP connection is noticed and its envs closed.  The client pings only
    every 5 min, the most a stock gRPC server accepts by default (more often,
    it answers GOAWAY "too_many_pings"); a dead server is noticed sooner by
    each request's deadline.
    """
    limit = min(settings.max_message_size, 2**31 - 1)
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ]
    if server:
        return [*options, ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
                # a connection still handshaking (TLS, HTTP/2) then is closed
                ("grpc.server_handshake_timeout_ms", int(settings.connect_timeout * 1000)),
                ("grpc.so_reuseport", 0)]
    return [*options, ("grpc.keepalive_time_ms", 300_000), ("grpc.keepalive_timeout_ms", 20_000)]


TLS_OPTIONS = ("cert", "key", "client_ca")
"""Server-side TLS URL options, kept out of ``server.address``."""


def grpc_target(url: URL) -> str:
    """``host:port`` of a ``grpc://HOST:PORT`` URL (IPv6 hosts bracketed)."""
    host = url.host or "127.0.0.1"
    port = url.port if url.port is not None else 0
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DmEnvRpcServer:
    """A running dm_env_rpc gRPC server; the same interface as :class:`relay.server.Server`.

    Options of the URL query (besides settings): ``max_clients`` (default 64),
    the number of streams served at once; one more is refused with
    RESOURCE_EXHAUSTED instead of waiting.

    Attributes:
        address: the URL clients connect to (real port when port 0 was asked).

    ``grpcs://`` serves over TLS: URL options ``cert`` and ``key`` (PEM paths,
    required), ``client_ca`` (require client certificates signed by it); see
    :func:`relay.transports.grpc.tls_file`.

    Raises:
        ConfigError: a scheme other than ``grpc``/``grpcs``, a bad ``max_clients``,
            missing TLS files.
        TransportError: the address cannot be bound.
    """

    def __init__(self, factory: EnvFactory, url: URL, settings: Settings) -> None:
        if url.scheme not in ("grpc", "grpcs"):
            raise ConfigError(f"codec dm_env_rpc needs a grpc:// or grpcs:// URL, "
                              f"got {url.scheme}://")
        try:
            max_clients = int(url.query.get("max_clients", "64"))
        except ValueError:
            raise ConfigError(
                f"max_clients must be an int, got {url.query['max_clients']!r}") from None
        if max_clients < 1:
            raise ConfigError("max_clients must be at least 1")
        self.settings = settings
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._shut = False
        self._active: set[StreamSession] = set()
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=max_clients, thread_name_prefix="relay-dm-env-rpc"),
            options=grpc_options(settings, server=True),
            maximum_concurrent_rpcs=max_clients,
        )
        dm_env_rpc_pb2_grpc.add_EnvironmentServicer_to_server(
            _Servicer(factory, WorldNames(), self._active, self._lock,
                      min(settings.max_message_size, 2**31 - 1), settings.tracebacks),
            self._server)
        target = grpc_target(url)
        try:
            if url.scheme == "grpcs":
                client_ca = tls_file(url, "client_ca")
                credentials = grpc.ssl_server_credentials(
                    [(tls_file(url, "key", required=True), tls_file(url, "cert", required=True))],
                    root_certificates=client_ca, require_client_auth=client_ca is not None)
                port = self._server.add_secure_port(target, credentials)
            else:
                port = self._server.add_insecure_port(target)
        except RuntimeError as exc:
            raise TransportError(f"cannot listen on {target}: {exc}") from exc
        if not port:
            raise TransportError(f"cannot listen on {target}")
        host = target.rsplit(":", 1)[0]
        self.address: URL = url.set(address=f"{host}:{port}").with_options(
            **dict.fromkeys(TLS_OPTIONS))
        self._server.start()

    @property
    def clients(self) -> int:
        """Streams being served now."""
        with self._lock:
            return len(self._active)

    def serve_forever(self) -> None:
        """Block until SIGTERM or SIGINT (in the main thread) or :meth:`close` from
        elsewhere; then :meth:`close`."""
        from relay.server import stop_on_signals

        try:
            with stop_on_signals(self._stop):
                while not self._stop.wait(0.5):
                    pass
        finally:
            self.close()

    def close(self, timeout: float | None = None) -> None:
        """Stop serving: end every stream (their envs are closed) and free the port;
        ``timeout`` (default ``settings.shutdown_grace``) bounds the wait."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
        self._stop.set()
        timeout = self.settings.shutdown_grace if timeout is None else timeout
        self._server.stop(grace=min(timeout, 1.0)).wait(timeout)

    def __enter__(self) -> DmEnvRpcServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

