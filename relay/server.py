"""Serving environments: :class:`Server` (started by :func:`relay.serve`).

A server listens on a URL, accepts any number of clients (one thread each)
and gives every client its own environment instances, created on ``Make``
by an *env factory*.  Anything an environment raises goes back to its client
as an ``Error`` (a :class:`~relay.core.errors.RemoteEnvError` there) and the
server keeps serving.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Self, assert_never, cast

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space, iterate

from relay.access import Access, apply_wrappers, serve_call
from relay.batching import Hosted, SubEnvError, VectorFactory, serve_vector_call
from relay.core import spaces
from relay.core.config import Settings
from relay.core.errors import ConfigError, ConnectionLost, NotAllowed, RelayError, Timeout
from relay.core.messages import (
    Call,
    Close,
    Closed,
    Error,
    Frame,
    Made,
    MadeBatch,
    Make,
    MakeBatch,
    Observation,
    ObservationBatch,
    Render,
    Request,
    Reset,
    ResetBatch,
    Response,
    Step,
    StepBatch,
    Transition,
    TransitionBatch,
)
from relay.core.session import CAPABILITIES
from relay.core.url import URL
from relay.transports.base import Channel, Listener

__all__ = ["EnvFactory", "EnvHost", "Server", "gymnasium_factory", "stop_on_signals"]

log = logging.getLogger("relay.server")

EnvFactory = Callable[..., gym.Env]
"""``factory(env_id, **kwargs) -> gymnasium.Env``; ``env_id`` may be None."""


def _error(code: str, exc: BaseException, env_index: int | None = None, *,
           with_traceback: bool = True) -> Error:
    message = str(exc) if env_index is None else f"sub-environment {env_index}: {exc}"
    return Error(
        code=code,
        message=message,
        remote_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        traceback="".join(traceback.format_exception(exc)) if with_traceback else "",
        env_index=env_index,
    )


def gymnasium_factory(served_id: str | None) -> EnvFactory:
    """A factory that makes Gymnasium envs by id; only ``served_id`` when given."""

    def factory(env_id: str | None, **kwargs: Any) -> gym.Env:
        if served_id is not None and env_id not in (None, served_id):
            raise ConfigError(f"this server serves {served_id!r} only, not {env_id!r}")
        chosen = env_id or served_id
        if chosen is None:
            raise ConfigError("Make needs an env_id: this server serves any registered env")
        return gym.make(chosen, **kwargs)

    return factory


class _Vector:
    """A vector instance of one client, with its batched action space."""

    __slots__ = ("action_space", "env", "hosted", "needs_reset")

    def __init__(self, hosted: Hosted) -> None:
        self.hosted = hosted
        self.env = hosted.env
        self.action_space = batch_space(self.env.single_action_space, self.env.num_envs)
        self.needs_reset = True


class EnvHost:
    """The environments of one client, and the handler of its requests.

    Args:
        factory: makes the env of each ``Make`` (None: ``Make`` is refused).
        vectors: makes the vector instance of each ``MakeBatch`` (None: refused).
        access: the calls, attribute writes and wrappers its client may ask for
            besides the core requests (:mod:`relay.access`; default: the
            built-in ones only).
        tracebacks: the server's setting: put the traceback of an exception
            into its ``Error`` answer (False: leave it empty).
    """

    def __init__(self, factory: EnvFactory | None,
                 vectors: VectorFactory | None = None, access: Access | None = None, *,
                 tracebacks: bool = True) -> None:
        self._factory = factory
        self._vector_factory = vectors
        self._access = access or Access()
        self.tracebacks = tracebacks
        self._envs: dict[int, gym.Env] = {}
        self._vectors: dict[int, _Vector] = {}
        self._needs_reset: set[int] = set()
        self._ids = itertools.count(1)

    def handle(self, request: Request) -> Response:
        """Answer one request; never raises (failures become ``Error``)."""
        try:
            match request:  # Step first: it is the hot path
                case Step():
                    i, action = request.instance, request.action
                    env = self._env(i)
                    if i in self._needs_reset:
                        return Error(code="not_reset",
                                     message="step called before reset; call reset first")
                    if not _contains(env.action_space, action):
                        return Error(code="invalid_action",
                                     message=f"action {action!r} is not in {env.action_space}")
                    result = env.step(action)
                    if type(result) not in (tuple, list) or len(result) != 5 \
                            or not isinstance(result[4], dict):
                        raise _malformed("step", result, env)
                    obs, reward, terminated, truncated, info = result
                    # values keep their exact types (a MiniGrid reward is an int)
                    return Transition(obs=obs, reward=reward, terminated=terminated,
                                      truncated=truncated, info=info)
                case StepBatch():
                    vector = self._vector(request.instance)
                    if vector.needs_reset:
                        return Error(code="not_reset",
                                     message="step_batch called before reset_batch")
                    actions = request.actions
                    if not _contains(vector.action_space, actions):
                        return _invalid_actions(vector, actions)
                    # the env's arrays go to the codec as they are
                    obs, rewards, terminations, truncations, info = vector.env.step(actions)
                    return TransitionBatch(obs=obs, rewards=rewards, terminations=terminations,
                                           truncations=truncations, info=info)
                case Make():
                    return self._make(request)
                case Reset(instance=i, seed=seed, options=options):
                    env = self._env(i)
                    answer = env.reset(seed=seed, options=options)
                    if type(answer) not in (tuple, list) or len(answer) != 2 \
                            or not isinstance(answer[1], dict):
                        raise _malformed("reset", answer, env)
                    self._needs_reset.discard(i)
                    return Observation(obs=answer[0], info=answer[1])
                case ResetBatch(instance=i, seed=seed, options=options):
                    vector = self._vector(i)
                    obs, info = vector.env.reset(seed=seed, options=options)
                    vector.needs_reset = False
                    return ObservationBatch(obs=obs, info=info)
                case MakeBatch():
                    return self._make_batch(request)
                case Render(instance=i):
                    if i in self._vectors:
                        return Frame(frame=self._vectors[i].env.render())
                    return Frame(frame=self._env(i).render())
                case Call(instance=i):
                    if i in self._vectors:
                        return serve_vector_call(self._vectors[i].env, request, self._access)
                    return serve_call(self._env(i), request, self._access)
                case Close(instance=i):
                    closing = self._envs.pop(i, None)
                    self._needs_reset.discard(i)
                    if closing is not None:
                        closing.close()
                    closing_vector = self._vectors.pop(i, None)
                    if closing_vector is not None:
                        closing_vector.hosted.close()
                    return Closed()
                case _:
                    assert_never(request)
        except _UnknownInstance as exc:
            return Error(code="not_reset", message=str(exc))
        except NotAllowed as exc:
            return Error(code=NotAllowed.code, message=str(exc))
        except ConfigError as exc:
            return _error("config", exc, with_traceback=self.tracebacks)
        except SubEnvError as exc:
            cause = exc.__cause__ or exc
            return _error("env", cause, env_index=exc.index, with_traceback=self.tracebacks)
        except Exception as exc:
            return _error("env", exc, with_traceback=self.tracebacks)

    def _make(self, request: Make) -> Made:
        if self._factory is None:
            raise ConfigError("this server serves one vector env: make it with MakeBatch "
                              "(relay.make_vec)")
        kwargs = dict(request.kwargs)
        env = self._factory(request.env_id, **kwargs)
        if request.wrappers:
            try:
                env = apply_wrappers(env, request.wrappers, self._access)
            except BaseException:
                env.close()
                raise
        instance = next(self._ids)
        self._envs[instance] = env
        self._needs_reset.add(instance)
        spec = None
        if env.spec is not None:
            try:
                spec = env.spec.to_json()
            except Exception:  # kwargs that JSON cannot hold: the spec stays local
                spec = None
        # an adapted env (a dm_env) gives exact descriptions of its specs itself
        described = getattr(env, "relay_descriptions", None) or {}
        return Made(
            instance=instance,
            observation_space=(described.get("observation_space")
                               or spaces.describe(env.observation_space)),
            action_space=described.get("action_space") or spaces.describe(env.action_space),
            metadata={**_plain_metadata(env.metadata), **described.get("metadata", {})},
            render_mode=env.render_mode,
            spec=spec,
        )

    def _make_batch(self, request: MakeBatch) -> MadeBatch:
        if self._vector_factory is None:
            raise ConfigError("this server hosts no vector instances: serve it with "
                              "num_envs=N (relay serve --num-envs N) for MakeBatch")
        if request.num_envs is not None and (type(request.num_envs) is not int
                                             or request.num_envs < 1):
            raise ConfigError(f"num_envs must be an int >= 1, not {request.num_envs!r}")
        try:
            mode = (None if request.autoreset_mode is None
                    else AutoresetMode(request.autoreset_mode))
        except ValueError:
            raise ConfigError(f"unknown autoreset_mode {request.autoreset_mode!r}") from None
        hosted = self._vector_factory(request.env_id, request.num_envs, mode,
                                      dict(request.kwargs))
        vector = _Vector(hosted)
        instance = next(self._ids)
        self._vectors[instance] = vector
        env = hosted.env
        spec = None
        if isinstance(env.spec, gym.envs.registration.EnvSpec):
            try:
                spec = env.spec.to_json()
            except Exception:  # kwargs that JSON cannot hold: the spec stays local
                spec = None
        autoreset = AutoresetMode(env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP))
        return MadeBatch(
            instance=instance,
            num_envs=env.num_envs,
            observation_space=spaces.describe(env.single_observation_space),
            action_space=spaces.describe(env.single_action_space),
            metadata={**_plain_metadata(env.metadata), "autoreset_mode": autoreset.value},
            render_mode=getattr(env, "render_mode", None),
            spec=spec,
        )

    def _vector(self, instance: int) -> _Vector:
        vector = self._vectors.get(instance)
        if vector is None:
            raise _UnknownInstance(f"no vector instance {instance} on this connection")
        return vector

    def _env(self, instance: int) -> gym.Env:
        env = self._envs.get(instance)
        if env is None:
            raise _UnknownInstance(f"no environment instance {instance} on this connection")
        return env

    def close(self) -> None:
        """Close every environment of this client (it left)."""
        envs, self._envs = self._envs, {}
        vectors, self._vectors = self._vectors, {}
        closers = [env.close for env in envs.values()]
        closers += [vector.hosted.close for vector in vectors.values()]
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("closing an environment failed")


def _invalid_actions(vector: _Vector, actions: Any) -> Error:
    """The ``invalid_action`` answer to a ``StepBatch``, naming the first bad sub-env."""
    single = vector.env.single_action_space
    try:
        for i, action in enumerate(iterate(vector.action_space, actions)):
            if not _contains(single, action):
                return Error(code="invalid_action", env_index=i,
                             message=f"sub-environment {i}: action {action} is not in "
                                     f"{single}")
    except Exception:  # not even a batch: say so below
        pass
    shape = getattr(actions, "shape", None)
    return Error(code="invalid_action",
                 message=f"actions {type(actions).__name__} of shape {shape} are not a batch "
                         f"of {vector.env.num_envs} actions in {single}")


def _contains(space: gym.Space[Any], action: Any) -> bool:
    """Whether ``action`` can be given to an env with this action space.

    ``action in space``, except for ``Box``: there only the shape and a dtype
    that casts to the space's (``same_kind``: float64 to float32, ints to
    floats) are checked, not the bounds or the exact dtype.  Locally an env
    gets such actions as they are (MountainCarContinuous clips
    ``np.array([2.0])`` itself; a float64 array is what most agents produce),
    so refusing them would make a remote env stricter than the local one.
    Discrete has a fast path (its ``contains`` costs ~3 µs), and so has an
    int array for MultiDiscrete (a batch of Discrete actions: ``contains``
    costs 3-4x the same test written as two array comparisons).
    """
    kind = type(space)  # exact types: a subclass keeps its own contains()
    if kind is gym.spaces.Discrete and type(action) in (int, np.int64, np.int32):
        discrete = cast(gym.spaces.Discrete, space)
        return bool(discrete.start <= action < discrete.start + discrete.n)
    if (kind is gym.spaces.MultiDiscrete and type(action) is np.ndarray
            and action.dtype.kind in "iu"):
        multi = cast(gym.spaces.MultiDiscrete, space)
        return action.shape == multi.shape and bool(
            (action >= multi.start).all() and (action < multi.start + multi.nvec).all())
    if kind is gym.spaces.Box:
        try:
            array = action if type(action) is np.ndarray else np.asarray(action)
        except ValueError:  # a ragged nest of lists
            return False
        return array.shape == space.shape and bool(
            np.can_cast(array.dtype, cast(np.dtype, space.dtype), casting="same_kind"))
    return action in space


class _UnknownInstance(LookupError):
    pass


def _malformed(method: str, result: Any, env: gym.Env) -> ValueError:
    """The error for an env whose ``reset``/``step`` returned the wrong shape of answer."""
    want = ("(obs, info) with info a dict" if method == "reset"
            else "(obs, reward, terminated, truncated, info) with info a dict")
    if type(result) in (tuple, list):
        kinds = ", ".join(type(v).__name__ for v in result)
        got = f"a {type(result).__name__} of {len(result)} ({kinds})"
    else:
        got = f"a {type(result).__name__}"
    return ValueError(f"the environment {env}'s {method}() returned {got}, not the tuple {want} "
                      "of the Gymnasium API")


def _plain_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    plain = {}
    for key, value in metadata.items():
        if isinstance(value, (str, int, float, bool, list, tuple, type(None))):
            plain[key] = list(value) if isinstance(value, tuple) else value
    return plain


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Meanwhile, SIGTERM and SIGINT (Ctrl-C) set ``stop`` instead of ending the
    process, so a server blocked in ``serve_forever`` shuts down gracefully.

    Only the main thread can handle signals: elsewhere nothing changes.  The
    previous handlers come back afterwards, so a second signal during the
    shutdown acts as it did before (ends the process).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be restored
                signal.signal(sig, handler)


class ThreadedServer:
    """The life cycle every relay server shares: one thread accepts, one thread
    serves each connection, :meth:`close` stops both and waits for them.

    A subclass implements :meth:`_accept` (wait for the next connection and
    return the function that serves it) and :meth:`_close_endpoint`, and may
    implement :meth:`_force` (end the connections still open after the grace
    period).
    """

    address: URL
    """The URL clients connect to (real port when port 0 was asked)."""
    shutdown_grace: float = 5.0
    """Seconds :meth:`close` waits for the connections before it forces them."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._shut = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="relay-accept",
                                          daemon=True)

    def _accept(self, timeout: float) -> Callable[[], None] | None:
        """The next connection's serving function; None if none came in ``timeout`` s.

        Raises:
            _StopAccepting: the endpoint is gone; the accept loop ends.
        """
        raise NotImplementedError

    def _close_endpoint(self) -> None:
        raise NotImplementedError

    def _force(self) -> None:
        """End the connections still being served after the grace period."""

    def start(self) -> Self:
        self._acceptor.start()
        return self

    def _accept_loop(self) -> None:
        from relay.connection import IDLE_POLL

        while not self._stop.is_set():
            try:
                serve = self._accept(IDLE_POLL)
            except _StopAccepting:
                return
            if serve is None:
                continue
            thread = threading.Thread(target=self._serve_one, args=(serve,),
                                      name="relay-connection", daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    @property
    def connections(self) -> int:
        """How many clients are being served right now."""
        with self._lock:
            return len(self._threads)

    def _serve_one(self, serve: Callable[[], None]) -> None:
        try:
            serve()
        except Exception:
            log.exception("connection failed")
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def serve_forever(self) -> None:
        """Block until SIGTERM or SIGINT (Ctrl-C, when called in the main thread)
        or :meth:`close` from another thread; then :meth:`close` gracefully."""
        try:
            with stop_on_signals(self._stop):
                while not self._stop.wait(0.5):
                    pass
        finally:
            self.close()

    def close(self, timeout: float | None = None) -> None:
        """Shut down gracefully; idempotent.

        Stops accepting; each connection finishes the request it is answering,
        tells its client so (:class:`~relay.core.errors.ServerClosing` there)
        and closes its envs.  Connections still open after ``timeout`` seconds
        (default :attr:`shutdown_grace`) are closed by force (an env stuck in
        ``step`` is left to the process's exit); then the endpoint is closed
        (its port freed, its socket file removed).
        """
        with self._lock:
            if self._shut:
                return
            self._shut = True
        deadline = time.monotonic() + (self.shutdown_grace if timeout is None else timeout)
        self._stop.set()
        if self._acceptor.is_alive():
            self._acceptor.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        if any(thread.is_alive() for thread in threads):
            log.warning("connections still open after the shutdown grace period: closing them")
            self._force()
        self._close_endpoint()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StopAccepting(Exception):
    pass


class Server(ThreadedServer):
    """A listening relay/1 server; use as a context manager or call :meth:`close`.

    Attributes:
        address: the URL clients connect to (real port when port 0 was asked).
    """

    def __init__(self, factory: EnvFactory | None, listener: Listener, settings: Settings,
                 vectors: VectorFactory | None = None, access: Access | None = None) -> None:
        super().__init__()
        self._factory = factory
        self._vectors = vectors
        self._access = access
        self.capabilities = CAPABILITIES + ("batch",) if vectors is not None else CAPABILITIES
        """What the ``Welcome`` announces: ``"batch"`` when it hosts vector instances."""
        self._listener = listener
        self.settings = settings
        self.address = listener.address
        self.shutdown_grace = settings.shutdown_grace
        self._channels: set[Channel] = set()

    def _accept(self, timeout: float) -> Callable[[], None] | None:
        from relay.connection import serve_channel

        try:
            channel = self._listener.accept(timeout)
        except Timeout:
            return None
        except ConnectionLost as exc:
            raise _StopAccepting from exc
        except RelayError:
            log.exception("accept failed")
            return None
        host = EnvHost(self._factory, self._vectors, self._access,
                       tracebacks=self.settings.tracebacks)
        with self._lock:
            self._channels.add(channel)

        def serve() -> None:
            try:
                serve_channel(channel, host.handle, self.settings, stop=self._stop,
                              on_close=host.close, capabilities=self.capabilities)
            finally:
                with self._lock:
                    self._channels.discard(channel)

        return serve

    def _force(self) -> None:
        with self._lock:
            channels = list(self._channels)
        for channel in channels:
            channel.close()  # the client sees ConnectionLost

    def _close_endpoint(self) -> None:
        self._listener.close()
