"""relay's clients driving a stock dm_env_rpc server.

``relay.make("grpc://HOST:PORT?codec=dm_env_rpc", **kwargs)`` (and the dm_env
client) get a :class:`DmEnvRpcConnection` instead of a relay/1 connection; it
answers the same relay/1 requests by speaking dm_env_rpc on one gRPC stream:

===========  ===============================================================
relay/1      dm_env_rpc
===========  ===============================================================
``Make``     CreateWorld with the kwargs as settings (nested dicts flattened
             with ``.``; ``env_id``, when given, is the setting ``env_id``),
             then JoinWorld with the kwarg ``join_settings`` (a dict).  The
             kwarg ``world_name`` joins an existing world instead of
             creating one.  The spaces come from the specs: observations
             minus ``reward``/``discount``, a single tensor named
             ``observation``/``action`` unwrapped, others a ``Dict``.
``Reset``    Reset (settings ``seed`` and the options, when given), then a
             Step with no actions that starts the episode (RUNNING)
``Step``     Step with the action tensors; TERMINATED -> ``terminated``,
             INTERRUPTED -> ``truncated``; the reward is the ``reward``
             observation (0.0 without one), ``discount`` goes to ``info``
``Close``    LeaveWorld, then DestroyWorld of a world it created
``Render``   refused: dm_env_rpc has no rendering
===========  ===============================================================

Every call has a deadline (``Timeout``; a late answer is dropped, the stream
stays usable); an error ``Status`` from the server raises a ``RemoteError``
(``InvalidAction`` for INVALID_ARGUMENT on Step) with the server traceback
when it sent a ``google.rpc.DebugInfo``.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import grpc
from dm_env_rpc.v1 import dm_env_rpc_pb2 as pb
from dm_env_rpc.v1 import message_utils, tensor_utils
from google.rpc import code_pb2, error_details_pb2, status_pb2

from relay.compat.dm_env_rpc.server import REWARD, grpc_options, grpc_target
from relay.compat.dm_env_rpc.tensors import Layout, TensorError, pack_settings, space_from_specs
from relay.core import spaces
from relay.core.config import Settings
from relay.core.errors import (
    CodecError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    InvalidAction,
    NotReset,
    RemoteEnvError,
    RemoteError,
    Timeout,
)
from relay.core.messages import (
    Close,
    Closed,
    Made,
    Make,
    Observation,
    Render,
    Request,
    Reset,
    Response,
    Step,
    Transition,
)
from relay.core.plugins import get_codec
from relay.core.url import URL
from relay.transports.grpc import tls_file

__all__ = ["DmEnvRpcConnection", "METHOD", "remote_error"]

METHOD = "/dm_env_rpc.v1.Environment/Process"
"""The one gRPC method of dm_env_rpc (``service Environment { rpc Process }``)."""
DISCOUNT = "discount"
_END = object()


def remote_error(status: status_pb2.Status, doing: str) -> RemoteError:
    """The exception for an error ``Status`` (the one place they are unpacked)."""
    trace = ""
    for detail in status.details:
        info = error_details_pb2.DebugInfo()
        if detail.Unpack(info):
            trace = "\n".join(info.stack_entries)
    name = code_pb2.Code.Name(status.code) if status.code in code_pb2.Code.values() else "?"
    cls: type[RemoteError] = RemoteError
    if doing == "Step" and status.code == code_pb2.INVALID_ARGUMENT:
        cls = InvalidAction
    elif status.code == code_pb2.INTERNAL:
        cls = RemoteEnvError
    return cls(status.message, remote_type=f"dm_env_rpc {doing} error {name} ({status.code})",
               remote_traceback=trace)


class DmEnvRpcConnection:
    """One dm_env_rpc stream to ``url``, driven with relay/1 requests (see the module doc).

    ``grpcs://`` uses TLS: URL options ``ca`` (roots signing the server's
    certificate; default the system roots), ``cert``/``key`` (a client
    certificate), ``server_name`` (the name to check, when not HOST).

    Raises:
        ConfigError: not a ``grpc://``/``grpcs://`` URL, an unreadable TLS file.
        ConnectError: no server within ``settings.connect_timeout`` seconds.
    """

    def __init__(self, url: URL, settings: Settings) -> None:
        if url.scheme not in ("grpc", "grpcs"):
            raise ConfigError(f"codec dm_env_rpc needs a grpc:// or grpcs:// URL, "
                              f"got {url.scheme}://")
        self.url = url
        self.settings = settings
        self.codec = get_codec(settings.codec)  # the DmEnvRpcCodec (for introspection)
        target = grpc_target(url)
        options = grpc_options(settings, server=False)
        if url.scheme == "grpcs":
            if url.query.get("server_name"):
                options.append(("grpc.ssl_target_name_override", url.query["server_name"]))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls_file(url, "ca"), private_key=tls_file(url, "key"),
                certificate_chain=tls_file(url, "cert"))
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=settings.connect_timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise ConnectError(f"no dm_env_rpc server at {target} within "
                               f"{settings.connect_timeout} s") from None
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._responses: queue.SimpleQueue[Any] = queue.SimpleQueue()
        process = self._channel.stream_stream(
            METHOD, request_serializer=pb.EnvironmentRequest.SerializeToString,
            response_deserializer=pb.EnvironmentResponse.FromString)
        self._call = process(iter(self._requests.get, _END))
        self._reader = threading.Thread(target=self._read, name="relay-dm-env-rpc-reader",
                                        daemon=True)
        self._reader.start()
        self._late = 0  # answers of timed-out requests still to come (dropped)
        self._lost: BaseException | None = None
        self._closed = False
        self._world: str | None = None  # the world this connection created
        self._joined = False
        self._observations: Layout | None = None
        self._actions: Layout | None = None
        self._uids: dict[str, int] = {}
        self._running = False

    def _read(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
            self._responses.put(ConnectionLost("the dm_env_rpc server ended the stream"))
        except grpc.RpcError as exc:
            self._responses.put(exc)
        except Exception as exc:  # a response that cannot be parsed
            self._responses.put(exc)

    # -- one round trip ------------------------------------------------------------------

    def send(self, message: Any, timeout: float | None = None) -> Any:
        """Send one dm_env_rpc request message and return its response message.

        Raises:
            Timeout, ConnectionLost, RemoteError (an error Status).
        """
        if self._closed:
            raise ConnectionLost("the connection is closed")
        if self._lost is not None:
            raise ConnectionLost(f"the dm_env_rpc stream is gone ({self._lost})")
        timeout = self.settings.timeout if timeout is None else timeout
        request, field = message_utils.pack_environment_request(message)
        deadline = time.monotonic() + timeout
        self._requests.put(request)
        doing = type(message).__name__.removesuffix("Request")
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise queue.Empty
                answer = self._responses.get(timeout=remaining)
                if self._late and isinstance(answer, pb.EnvironmentResponse):
                    self._late -= 1
                    continue
                break
        except queue.Empty:
            self._late += 1
            raise Timeout(f"dm_env_rpc {doing} got no answer within {timeout} s") from None
        if isinstance(answer, BaseException):
            self._lost = answer
            if isinstance(answer, ConnectionLost):
                raise answer
            if isinstance(answer, grpc.RpcError) and hasattr(answer, "code"):
                text = f"{answer.code().name}: {answer.details()}"
            else:
                text = f"{type(answer).__name__}: {answer}"
            raise ConnectionLost(f"the dm_env_rpc stream is gone ({text})") from answer
        if answer.WhichOneof("payload") == "error":
            raise remote_error(answer.error, doing)
        try:
            return message_utils.unpack_environment_response(answer, field)
        except ValueError as exc:
            raise RemoteError(f"{doing}: {exc}", remote_type="dm_env_rpc") from exc

    # -- relay/1 ---------------------------------------------------------------------------

    def call(self, request: Request, timeout: float | None = None) -> Response:
        """Answer a relay/1 request by dm_env_rpc round trips (see the module doc).

        Raises:
            Timeout, ConnectionLost, RemoteError (InvalidAction, NotReset,
            RemoteEnvError), CodecError (kwargs that cannot be settings).
        """
        match request:
            case Make():
                return self._make(request, timeout)
            case Reset(seed=seed, options=options):
                settings = dict(options or {})
                if seed is not None:
                    settings["seed"] = seed
                self._require_joined()
                self.send(pb.ResetRequest(settings=pack_settings(settings)), timeout)
                obs, _, state = self._step({}, timeout)
                if state != pb.EnvironmentStateType.RUNNING:
                    raise RemoteError("the episode did not start after Reset (state "
                                      f"{pb.EnvironmentStateType.Name(state)})")
                self._running = True
                return Observation(obs=obs, info={})
            case Step(action=action):
                self._require_joined()
                if not self._running:
                    raise NotReset("step called before reset or after the episode ended; "
                                   "call reset first")
                assert self._actions is not None
                try:
                    flat = self._actions.flatten(action)
                except (KeyError, IndexError, TypeError) as exc:
                    raise InvalidAction(f"action {action!r} does not fit the action space "
                                        f"{self._actions.space}: {exc!r}") from exc
                obs, info, state = self._step(flat, timeout)
                reward = info.pop(REWARD, 0.0)
                terminated = state == pb.EnvironmentStateType.TERMINATED
                truncated = state == pb.EnvironmentStateType.INTERRUPTED
                self._running = not (terminated or truncated)
                return Transition(obs=obs, reward=reward, terminated=terminated,
                                  truncated=truncated, info=info)
            case Render():
                raise RemoteError("dm_env_rpc has no rendering", remote_type="dm_env_rpc")
            case Close():
                self._close_world(timeout)
                return Closed()
        raise CodecError(f"unsupported request {request!r}")  # pragma: no cover

    def _require_joined(self) -> None:
        if not self._joined:
            raise NotReset("no world joined on this dm_env_rpc connection")

    def _make(self, request: Make, timeout: float | None) -> Made:
        kwargs = dict(request.kwargs)
        join_settings = kwargs.pop("join_settings", None) or {}
        world_name = kwargs.pop("world_name", None)
        if request.env_id is not None:
            kwargs["env_id"] = request.env_id
        if world_name is None:
            created = self.send(pb.CreateWorldRequest(settings=pack_settings(kwargs)), timeout)
            self._world = world_name = created.world_name
        elif kwargs:
            raise ConfigError(f"with world_name, only join_settings may be given, "
                              f"not {sorted(kwargs)}")
        try:
            joined = self.send(pb.JoinWorldRequest(
                world_name=world_name, settings=pack_settings(join_settings)), timeout)
            self._joined = True
            obs_space, self._observations = space_from_specs(
                joined.specs.observations, "observation", exclude=(REWARD, DISCOUNT))
            act_space, self._actions = space_from_specs(joined.specs.actions, "action")
        except BaseException:
            self._close_world(timeout)
            raise
        self._uids = {spec.name: uid for uid, spec in joined.specs.observations.items()}
        self._specs = joined.specs
        return Made(instance=1, observation_space=spaces.describe(obs_space),
                    action_space=spaces.describe(act_space), metadata={}, render_mode=None,
                    spec=None)

    def _step(self, actions: dict[int, Any], timeout: float | None) -> tuple[Any, dict, int]:
        assert self._observations is not None and self._actions is not None
        request = pb.StepRequest(requested_observations=list(self._uids.values()))
        if actions:
            try:
                self._actions.pack_into(request.actions, actions, actions.keys())
            except (CodecError, ValueError, TypeError, OverflowError) as exc:
                raise InvalidAction(f"the action does not fit the action space "
                                    f"{self._actions.space}: {exc}") from exc
        response = self.send(request, timeout)
        info: dict[str, Any] = {}
        values = {}
        try:
            for uid, tensor in response.observations.items():
                leaf = self._observations.by_uid.get(uid)
                if leaf is not None:
                    values[uid] = self._observations.unpack_leaf(uid, tensor, check=False)
                    continue
                name = self._specs.observations[uid].name
                if name in (REWARD, DISCOUNT):
                    info[name] = tensor_utils.unpack_tensor(tensor).item()
        except (TensorError, KeyError, ValueError, TypeError) as exc:
            raise CodecError(f"the server's observation does not match its spec: {exc}") from exc
        missing = [leaf.name for leaf in self._observations.leaves if leaf.uid not in values]
        if missing:
            raise CodecError(f"the server sent no value for observations {missing}")
        return self._observations.assemble(values), info, response.state

    def _close_world(self, timeout: float | None) -> None:
        timeout = min(self.settings.timeout if timeout is None else timeout, 5.0)
        try:
            if self._joined:
                self._joined = False
                self.send(pb.LeaveWorldRequest(), timeout)
            if self._world is not None:
                world, self._world = self._world, None
                self.send(pb.DestroyWorldRequest(world_name=world), timeout)
        except (ConnectionLost, Timeout):
            pass

    @property
    def closed(self) -> bool:
        return self._closed or self._lost is not None

    def close(self) -> None:
        """End the stream and close the gRPC channel; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._requests.put(_END)
        self._call.cancel()
        self._channel.close()
        self._reader.join(1.0)

    def __repr__(self) -> str:
        return f"<DmEnvRpcConnection {self.url.render()} world={self._world!r}>"

