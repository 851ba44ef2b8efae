"""A ``gymnasium.vector.VectorEnv`` whose sub-environments live behind relay URLs.

``relay.make_vec(url, env_id, num_envs=N)`` (or ``gymnasium.make_vec(
"relay/Remote-v0", num_envs=N, url=..., env_id=...)``) spreads N sub-environments
round-robin over the URLs given and creates one environment instance per
sub-environment.  The sub-environments on one URL share one relay connection
(``share_connections=False``: a connection each).  It behaves like
Gymnasium's :class:`~gymnasium.vector.SyncVectorEnv` over those envs (same
batching, infos and autoreset modes), except that a vector
``step``/``reset``/``render`` overlaps the round trips: every request is sent
(:meth:`~relay.connection.ClientConnection.submit`) before the first answer is
awaited (:meth:`~relay.connection.ClientConnection.receive`).  Envs on one
connection are stepped one after the other by one server thread, their
requests back to back; several URLs spread them over several server
processes or machines, which step at the same time.  ``call``/``get_attr``/
``set_attr`` reach the served envs' own methods and attributes (the names
their servers allow, :mod:`relay.access`), ``np_random_seed``/``np_random``
are tuples of the served envs', and ``observation_mode`` and the errors are
those of ``SyncVectorEnv``.

Peer-protocol connections (codec ``dm_env_rpc`` or ``gymie``) offer only
``ClientConnection.call``: their sub-environments are driven one after the
other, and the served envs' own methods are out of reach.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from typing import Any, TypeVar, cast

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from gymnasium.spaces.utils import is_space_dtype_shape_equiv
from gymnasium.vector.utils import (
    batch_differing_spaces,
    batch_space,
    concatenate,
    create_empty_array,
    iterate,
)
from gymnasium.vector.vector_env import AutoresetMode, VectorEnv

from relay.adapters.config import load_settings
from relay.adapters.gymnasium import ENV_ID, RemoteEnv
from relay.connection import ClientConnection
from relay.core.errors import ConfigError, EnvClosed, NotReset, RelayError, SpaceMismatch
from relay.core.messages import (
    Call,
    Close,
    Frame,
    Observation,
    Render,
    Request,
    Reset,
    Response,
    Returned,
    Step,
    Transition,
)
from relay.core.url import URL, make_url, mask_secrets

__all__ = ["RemoteVectorEnv", "make_vec"]

T = TypeVar("T")
R = TypeVar("R")

MAX_CONNECT_THREADS = 16
"""At most this many sub-environments are connected and made at the same time."""


class RemoteVectorEnv(VectorEnv[Any, Any, np.ndarray]):
    """``num_envs`` remote environments as one ``gymnasium.vector.VectorEnv``.

    Sub-environment ``i`` is a :class:`~relay.adapters.gymnasium.RemoteEnv`
    (in :attr:`envs`) on ``url[i % len(url)]``, with its own env instance on
    that server, sharing the connection of the other sub-envs on that URL
    (see ``share_connections``).

    Batches (``N = num_envs``), as :class:`~gymnasium.vector.SyncVectorEnv`:

    * observations: ``batch_space(single_observation_space, N)``, e.g. a Box
      of shape ``(N, *obs_shape)`` with the sub-env's dtype (float32 for
      CartPole: ``(N, 4)``); Dict/Tuple spaces batch per leaf;
    * actions: ``batch_space(single_action_space, N)``: ``MultiDiscrete``
      (shape ``(N,)``, int64) for a ``Discrete`` env, a Box ``(N, *shape)``
      for a Box env;
    * rewards: float64 ``(N,)``; terminations, truncations: bool ``(N,)``;
    * infos: one dict, each key an array over the sub-envs plus a bool mask
      ``_key`` (``VectorEnv._add_info``).

    Args:
        url: one URL (every sub-env on that server) or a sequence of URLs
            (sub-envs assigned round-robin), e.g. ``"zmq+tcp://127.0.0.1:5555"``.
        env_id: the env to create on each server (None: the one it serves).
        num_envs: number of sub-environments (>= 1).
        autoreset_mode: ``AutoresetMode`` or its value: ``NEXT_STEP`` (default:
            the step after an episode ends resets that sub-env and returns its
            first observation with reward 0), ``SAME_STEP`` (the step that ends
            it resets at once; the last observation and info are in
            ``infos["final_obs"]``/``infos["final_info"]``) or ``DISABLED``
            (reset ended sub-envs with ``reset(options={"reset_mask": ...})``).
        copy: return a copy of the observation batch (else the same buffer,
            overwritten by the next step).
        observation_mode: as :class:`~gymnasium.vector.SyncVectorEnv`'s:
            ``"same"`` (default: equal sub-env observation spaces),
            ``"different"`` (spaces of one shape and dtype, bounds may differ:
            ``batch_differing_spaces``), or a tuple ``(observation_space,
            single_observation_space)``.
        share_connections: True (default): the sub-envs on one URL share one
            connection, so one server thread steps them in turn with no
            thread wake-up in between (CartPole x4 over ``shm://``, median of
            a vector step: 160-200 µs shared against 250-310 µs with a
            connection each, measured here).  False: a connection, and so a
            server thread, each: for envs whose ``step`` releases the GIL on a
            server with cores to spare.
        render_mode: each sub-env's render mode (``"rgb_array"``, ``"ansi"``,
            ...; not ``"human"``).
        resolve_url: ``resolve_url(i) -> URL`` of sub-env ``i``'s server, asked
            when :meth:`reset` reconnects a sub-env whose connection was lost
            (a restarted server may listen elsewhere); None: the same URL.
        codec, timeout, connect_timeout, max_message_size, token, zero_copy:
            settings of every connection, see :class:`relay.core.config.Settings`.
        **env_kwargs: keyword arguments of each remote ``gymnasium.make``.

    Raises:
        ConfigError: no URL, ``num_envs < 1``, ``render_mode="human"``, an
            unknown autoreset mode or observation mode (also a ValueError).
        TypeError: an ``observation_mode`` tuple that does not hold two spaces.
        SpaceMismatch: the sub-environments' spaces differ (also a RuntimeError,
            as Gymnasium raises).
        ConnectError, Timeout, RemoteError, UnknownScheme, InvalidURL: as
            :class:`~relay.adapters.gymnasium.RemoteEnv`, for the first failing
            sub-environment (its index and URL in the message, ``env_index``
            attribute).  Sub-environments already made are closed.
    """

    def __init__(
        self,
        url: str | URL | Sequence[str | URL],
        env_id: str | None = None,
        *,
        num_envs: int = 1,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        copy: bool = True,
        observation_mode: str | tuple[gym.Space[Any], gym.Space[Any]] = "same",
        render_mode: str | None = None,
        share_connections: bool = True,
        resolve_url: Callable[[int], str | URL] | None = None,
        **settings_and_env_kwargs: Any,
    ) -> None:
        urls = [url] if isinstance(url, (str, URL)) else list(url)
        if not urls:
            raise ConfigError("make_vec needs at least one URL")
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ConfigError(f"num_envs must be an int >= 1, not {num_envs!r}")
        if render_mode == "human":
            raise ConfigError("a RemoteVectorEnv cannot render in 'human' mode; "
                              "use 'rgb_array' and show the frames of render()")
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ConfigError(
                f"unknown autoreset_mode {autoreset_mode!r} (known: "
                f"{', '.join(m.value for m in AutoresetMode)})") from None
        if isinstance(observation_mode, tuple) and len(observation_mode) == 2:
            if not all(isinstance(space, gym.Space) for space in observation_mode):
                raise TypeError(f"Expected both elements of observation_mode to be Spaces, got "
                                f"{type(observation_mode[0])} and {type(observation_mode[1])}")
        elif observation_mode not in ("same", "different"):
            raise ConfigError(f"Invalid `observation_mode`, expected: 'same' or 'different' or "
                              f"tuple of single and batch observation space, actual got "
                              f"{observation_mode!r}")
        self.observation_mode = observation_mode
        self.num_envs = num_envs
        self.copy = copy
        self.urls = [urls[i % len(urls)] for i in range(num_envs)]
        """The URL of each sub-environment."""
        self.spec = gym.envs.registration.EnvSpec(
            id=ENV_ID, entry_point="relay.adapters.gymnasium:RemoteEnv",
            vector_entry_point=f"{__name__}:RemoteVectorEnv",
            kwargs={"url": [str(u) for u in urls] if len(urls) > 1 else str(urls[0]),
                    "env_id": env_id, "num_envs": num_envs, **settings_and_env_kwargs},
        )
        self._remake = (env_id, render_mode, settings_and_env_kwargs, share_connections,
                        resolve_url)
        self.envs: list[RemoteEnv] = _make_all(self.urls, env_id, render_mode,
                                               settings_and_env_kwargs,
                                               share=share_connections)
        """The sub-environments (each usable on its own, e.g. ``envs[0].render()``)."""
        first = self.envs[0]
        try:
            if isinstance(observation_mode, tuple):
                self.observation_space, self.single_observation_space = observation_mode
            elif observation_mode == "same":
                self.single_observation_space = first.observation_space
                self.observation_space = batch_space(self.single_observation_space, num_envs)
            else:
                self.single_observation_space = first.observation_space
                self.observation_space = batch_differing_spaces(
                    [env.observation_space for env in self.envs])
            _check_spaces(self.envs, self.single_observation_space, observation_mode)
        except BaseException:
            _close_all(self.envs)
            raise
        self.metadata = dict(first.metadata)
        self.metadata["autoreset_mode"] = self.autoreset_mode
        self.render_mode = first.render_mode
        self.single_action_space = first.action_space
        self.action_space = batch_space(self.single_action_space, num_envs)

        self._env_obs: list[Any] = [None] * num_envs
        self._observations: Any = create_empty_array(self.single_observation_space, n=num_envs,
                                                fn=np.zeros)
        self._rewards = np.zeros((num_envs,), dtype=np.float64)
        self._terminations = np.zeros((num_envs,), dtype=np.bool_)
        self._truncations = np.zeros((num_envs,), dtype=np.bool_)
        self._autoreset_envs = np.zeros((num_envs,), dtype=np.bool_)

    # -- the vector API -------------------------------------------------------------------

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every sub-environment (or those of ``options["reset_mask"]``).

        Args:
            seed: None (unseeded), an int ``s`` (sub-env ``i`` gets ``s + i``) or
                one seed (int or None) per sub-env.
            options: passed to every sub-env's ``reset``, except the key
                ``"reset_mask"``: a bool array of shape ``(num_envs,)``; only
                the sub-envs where it is True are reset (the others keep their
                observation in the batch).

        Returns:
            ``(observations, infos)``: the batch (see the class) and merged infos.

        Raises:
            ValueError, TypeError: a seed list of the wrong length, a bad reset_mask.
            RemoteError, Timeout, ConnectionLost: from the first failing
                sub-env, after every sub-env answered (``env_index`` attribute).
            ConnectError: a lost sub-env's server cannot be reached (yet): the
                others are reset; the next ``reset`` tries again.
        """
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"If seeds are passed as a list the length must match "
                             f"num_envs={self.num_envs} but got length={len(seeds)}.")
        mask = np.ones((self.num_envs,), dtype=np.bool_)
        if options is not None and "reset_mask" in options:
            options = dict(options)
            mask = _check_reset_mask(options.pop("reset_mask"), self.num_envs)
        self._terminations[mask] = False
        self._truncations[mask] = False
        self._autoreset_envs[mask] = False

        lost = self._reconnect([i for i in range(self.num_envs)
                                if mask[i] and self.envs[i].connection.closed])
        chosen = [i for i in range(self.num_envs) if mask[i] and i not in lost]
        self._autoreset_envs[list(lost)] = True  # (NEXT_STEP: the next step resets it)
        answers, error = self._exchange(
            [(i, Reset(instance=self.envs[i].instance, seed=seeds[i], options=options))
             for i in chosen])
        infos: dict[str, Any] = {}
        for i, answer in zip(chosen, answers, strict=True):
            if answer is None:  # failed: in NEXT_STEP mode the next step resets it
                self._autoreset_envs[i] = True
                continue
            assert isinstance(answer, Observation)
            self._env_obs[i] = answer.obs
            infos = self._add_info(infos, answer.info, i)
        error = lost[min(lost)] if lost else error
        if error is not None:
            raise error from error.__cause__
        self._observations = concatenate(self.single_observation_space, self._env_obs,
                                         self._observations)
        return (deepcopy(self._observations) if self.copy else self._observations), infos

    def _reconnect(self, indices: list[int]) -> dict[int, RelayError]:
        """Make the sub-envs ``indices`` (their connection lost) anew on their server.

        Those that shared a connection share the new one.  Returns the
        failures by sub-env index (:func:`_indexed`); those sub-envs keep
        their lost connection, for the next ``reset`` to try again.
        """
        env_id, render_mode, kwargs, share, resolve_url = self._remake
        groups: dict[Any, list[int]] = {}
        for i in indices:
            groups.setdefault(id(self.envs[i].connection) if share else i, []).append(i)
        failures: dict[int, RelayError] = {}
        for group in groups.values():
            url: str | URL = self.urls[group[0]]
            made: list[RemoteEnv] = []
            try:
                url = url if resolve_url is None else resolve_url(group[0])
                for _ in group:
                    made.append(RemoteEnv(url, env_id, render_mode=render_mode,
                                          connection=made[0].connection if made else None,
                                          **kwargs))
                    for name in ("observation_space", "action_space"):
                        if getattr(made[-1], name) != getattr(self, f"single_{name}"):
                            raise SpaceMismatch(f"the new server at {mask_secrets(str(url))} "
                                                f"has the {name} "
                                                f"{getattr(made[-1], name)}, not "
                                                f"{getattr(self, f'single_{name}')}")
            except RelayError as exc:
                _close_all(made)
                failures.update((i, _indexed(exc, i, url)) for i in group)
                continue
            for i, env in zip(group, made, strict=True):
                self.envs[i].close()  # its connection is lost: this only lets it go
                self.envs[i], self.urls[i] = env, url
        return failures

    def step(
        self, actions: Any
    ) -> tuple[Any, npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.bool_],
               dict[str, Any]]:
        """Step every sub-environment with its action (autoresetting per the mode).

        Args:
            actions: a batch in :attr:`action_space` (e.g. int array ``(N,)``
                for Discrete sub-envs, float32 ``(N, *shape)`` for Box ones).

        Returns:
            ``(observations, rewards, terminations, truncations, infos)``,
            shapes and dtypes as in the class docstring.

        Raises:
            ValueError: not ``num_envs`` actions.
            NotReset: ``DISABLED`` mode and a sub-env whose episode ended was
                not reset (nothing is sent).
            InvalidAction, RemoteEnvError, Timeout, ConnectionLost: from the
                first failing sub-env (message and ``env_index`` name it), raised
                once every other sub-env has answered.  The others have stepped
                (and autoreset) and their results are kept for the next step;
                the failing one keeps its last observation (an ``InvalidAction``
                leaves its env unchanged; after a ``Timeout`` its state on the
                server is unknown: ``reset`` it).
        """
        per_env = list(iterate(self.action_space, actions))
        if len(per_env) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions, got {len(per_env)}")
        mode = self.autoreset_mode
        requests: list[tuple[int, Request]] = []
        for i, action in enumerate(per_env):
            instance = self.envs[i].instance
            if self._autoreset_envs[i]:
                if mode is AutoresetMode.NEXT_STEP:
                    requests.append((i, Reset(instance=instance)))
                    continue
                if mode is AutoresetMode.DISABLED:
                    raise NotReset(f"sub-environment {i}'s episode ended: reset it with "
                                   "reset(options={'reset_mask': ...}) before stepping "
                                   "(autoreset_mode DISABLED)")
            requests.append((i, Step(instance=instance, action=action)))
        answers, error = self._exchange(requests)

        env_infos: list[dict[str, Any]] = []
        for i, answer in enumerate(answers):
            if answer is None:  # failed: no reward, last observation kept
                self._rewards[i] = 0.0
                if isinstance(requests[i][1], Step):  # (a failed autoreset stays due)
                    self._terminations[i] = self._truncations[i] = False
                env_infos.append({})
                continue
            if isinstance(answer, Observation):  # NEXT_STEP autoreset
                self._env_obs[i] = answer.obs
                self._rewards[i] = 0.0
                self._terminations[i] = False
                self._truncations[i] = False
            else:
                assert isinstance(answer, Transition)
                self._env_obs[i] = answer.obs
                self._rewards[i] = answer.reward
                self._terminations[i] = answer.terminated
                self._truncations[i] = answer.truncated
            env_infos.append(answer.info)

        finals: dict[int, tuple[Any, dict[str, Any]]] = {}
        if mode is AutoresetMode.SAME_STEP:
            ended = np.flatnonzero(self._terminations | self._truncations).tolist()
            if ended:
                resets, reset_error = self._exchange(
                    [(i, Reset(instance=self.envs[i].instance)) for i in ended])
                error = error or reset_error
                for i, answer in zip(ended, resets, strict=True):
                    if answer is None:  # failed: leave it ended (reset it explicitly)
                        continue
                    assert isinstance(answer, Observation)
                    finals[i] = (self._env_obs[i], env_infos[i])
                    self._env_obs[i], env_infos[i] = answer.obs, answer.info

        infos: dict[str, Any] = {}
        for i, info in enumerate(env_infos):
            if i in finals:  # the order of SyncVectorEnv's keys: final_* first
                final_obs, final_info = finals[i]
                infos = self._add_info(infos, {"final_obs": final_obs,
                                               "final_info": final_info}, i)
            infos = self._add_info(infos, info, i)
        self._autoreset_envs = np.logical_or(self._terminations, self._truncations)
        if error is not None:
            raise error from error.__cause__
        self._observations = concatenate(self.single_observation_space, self._env_obs,
                                         self._observations)
        return (
            deepcopy(self._observations) if self.copy else self._observations,
            np.copy(self._rewards),
            np.copy(self._terminations),
            np.copy(self._truncations),
            infos,
        )

    def render(self) -> tuple[Any, ...]:
        """Each sub-env's ``render()``: a tuple of (H, W, 3) uint8 arrays, texts or None.

        Raises:
            RemoteEnvError, Timeout, ConnectionLost: as :meth:`step`.
        """
        answers, error = self._exchange([(i, Render(instance=env.instance))
                                         for i, env in enumerate(self.envs)])
        if error is not None:
            raise error from error.__cause__
        return tuple(cast(Frame, answer).frame for answer in answers)

    # -- the sub-envs' own methods and attributes -----------------------------------------

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Each sub-env's ``name``: called with the arguments if it is a method, as is
        otherwise (as :meth:`SyncVectorEnv.call <gymnasium.vector.SyncVectorEnv.call>`).

        A name each :class:`~relay.adapters.gymnasium.RemoteEnv` has itself
        (``observation_space``, ``spec``, ``render``, ``np_random``...) is
        answered by it; any other is the served env's, asked of every server at
        once (``Call`` requests, the names the servers allow, value trees only).

        Raises:
            NotAllowed: a server does not allow ``name`` (its ``allow_calls``).
            RemoteEnvError, Timeout, ConnectionLost: as :meth:`step`.
        """
        if _is_local(self.envs[0], name):
            results = []
            for env in self.envs:
                attribute = getattr(env, name)
                results.append(attribute(*args, **kwargs) if callable(attribute) else attribute)
            return tuple(results)
        return self._call_remote(name, "call", [list(args)] * self.num_envs, kwargs)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Each sub-env's attribute ``name``: :meth:`call` without arguments (as
        Gymnasium's vector envs do)."""
        return self.call(name)

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        """Set ``name`` on every sub-env: ``values`` one per sub-env (a list or tuple
        of ``num_envs``), or one value for all.  A name the sub-env objects have
        is set on them (``np_random`` sets the served envs'), any other on the
        served envs.

        Raises:
            ValueError: not ``num_envs`` values.
            NotAllowed: a server does not allow setting ``name`` (its ``allow_set``).
        """
        if not isinstance(values, (list, tuple)):
            values = [values for _ in range(self.num_envs)]
        if len(values) != self.num_envs:
            raise ValueError("Values must be a list or tuple with length equal to the number of "
                             f"environments. Got `{len(values)}` values for {self.num_envs} "
                             "environments.")
        if _is_local(self.envs[0], name):
            for env, value in zip(self.envs, values, strict=True):
                env.set_wrapper_attr(name, value)
            return
        self._call_remote(name, "set", [[value] for value in values], {})

    def _call_remote(self, name: str, kind: str, args: list[list[Any]],
                     kwargs: dict[str, Any]) -> tuple[Any, ...]:
        for env in self.envs:
            env._require("call", "env method calls")  # same package, same contract
        answers, error = self._exchange(
            [(i, Call(instance=env.instance, name=name, kind=kind, args=args[i],
                      kwargs=kwargs)) for i, env in enumerate(self.envs)])
        if error is not None:
            raise error from error.__cause__
        return tuple(cast(Returned, answer).value for answer in answers)

    @property
    def np_random_seed(self) -> tuple[int, ...]:  # type: ignore[override]
        """Each sub-env's ``np_random_seed`` (the served envs', read now)."""
        return self.get_attr("np_random_seed")

    @property  # type: ignore[misc]
    def np_random(self) -> tuple[np.random.Generator, ...]:  # type: ignore[override]
        """Each sub-env's ``np_random``: copies of the served envs' generators (see
        :attr:`RemoteEnv.np_random <relay.adapters.gymnasium.RemoteEnv.np_random>`)."""
        return self.get_attr("np_random")

    def close_extras(self, **kwargs: Any) -> None:
        """Close every remote env and every connection, even if some fail.

        The ``Close`` requests overlap; a sub-env whose server is gone or does
        not answer within ``min(timeout, 5)`` s is just disconnected.
        Idempotent (:meth:`close` runs this once).
        """
        _close_all(getattr(self, "envs", []))

    def __repr__(self) -> str:
        urls = sorted({u if isinstance(u, str) else u.render() for u in self.urls})
        return f"RemoteVectorEnv({', '.join(urls)}, num_envs={self.num_envs})"

    # -- overlapping round trips ----------------------------------------------------------

    def _exchange(self, requests: Sequence[tuple[int, Request]]
                  ) -> tuple[list[Response | None], RelayError | None]:
        """Send each ``(sub-env index, request)``, then collect the answers in order.

        Every request is submitted before any answer is awaited; then every
        answer is received, also after a failure, so that no answer stays in
        flight.  Returns the answers (None for a failed request) and the first
        failure (by position) naming its sub-env (see :func:`_indexed`; its
        ``__cause__`` is the original), for the caller to raise once it has
        kept the other answers.
        """
        if self.closed:
            raise EnvClosed("the vector environment is closed")
        sent: list[tuple[int, Any, Request]] = []
        for i, request in requests:
            connection = self.envs[i].connection
            submit = getattr(connection, "submit", None)  # peer protocols: call only
            if submit is None:
                sent.append((i, None, request))
                continue
            try:
                sent.append((i, submit(request), request))
            except RelayError as exc:  # nothing was sent for this one
                sent.append((i, exc, request))
        answers: list[Response | None] = []
        failure: tuple[int, RelayError] | None = None
        done = 0
        try:
            for i, pending, request in sent:
                connection = self.envs[i].connection
                try:
                    if isinstance(pending, RelayError):
                        raise pending
                    answer = (connection.call(request) if pending is None
                              else connection.receive(pending))
                    if self.envs[i].settings.zero_copy:
                        # its arrays view buffers that the next sub-env's receive reuses
                        answer = deepcopy(answer)
                    answers.append(answer)
                except RelayError as exc:
                    failure = failure or (i, exc)
                    answers.append(None)
                done += 1
        except BaseException:  # KeyboardInterrupt...: drop the answers still in flight
            for i, pending, _ in sent[done:]:
                if pending is not None and not isinstance(pending, RelayError):
                    self.envs[i].connection.session.cancel(pending.id)
            raise
        if failure is None:
            return answers, None
        index, error = failure
        return answers, _indexed(error, index, self.urls[index])


SETTING_NAMES = ("codec", "timeout", "connect_timeout", "max_message_size", "token",
                 "zero_copy")
"""The keyword arguments of :func:`make_vec` that are connection settings."""


def make_vec(
    url: str | URL | Sequence[str | URL], env_id: str | None = None, *,
    num_envs: int | None = None, **kwargs: Any,
) -> VectorEnv[Any, Any, Any]:
    """Connect to the servers at ``url`` and return their environments as one ``VectorEnv``.

    Servers that host vector instances (``relay.serve(env, url,
    num_envs=N)``: their ``Welcome`` announces ``"batch"``) give a
    :class:`relay.adapters.batch.RemoteBatchVectorEnv`: one message steps a
    whole server's batch; ``num_envs`` None takes each server's size, an int
    is split over the servers; ``autoreset_mode``, ``batch_size``, ``copy``
    and ``render_mode`` are its options, the other keywords go to the
    server's ``make_vec`` (``share_connections`` is ignored).  Other servers
    give ``RemoteVectorEnv(url, env_id, num_envs=num_envs or 1, **kwargs)``:
    one env instance per sub-environment; see :class:`RemoteVectorEnv` for
    the arguments.  The settings (``codec``, ``timeout``...) apply to every
    connection.

    Raises:
        ConfigError: some servers host vector instances and others do not.
        ConnectError, Timeout, RemoteError, UnknownScheme, InvalidURL: as
            :func:`relay.make`.
    """
    from relay.adapters.batch import RemoteBatchVectorEnv

    urls = [make_url(url)] if isinstance(url, (str, URL)) else [make_url(u) for u in url]
    if not urls:
        raise ConfigError("make_vec needs at least one URL")
    settings = {k: kwargs[k] for k in SETTING_NAMES if k in kwargs}

    def connect(target: URL) -> ClientConnection:
        return ClientConnection.open(target, load_settings(target, **settings))

    connections, failure = _all_at_once(connect, urls)
    try:
        if failure is not None:
            raise failure
        batched = ["batch" in getattr(getattr(c, "session", None), "capabilities", ())
                   for c in connections]
        if all(batched):
            options = {k: kwargs.pop(k) for k in ("autoreset_mode", "batch_size", "copy",
                                                  "render_mode", "resolve_url") if k in kwargs}
            env_kwargs = {k: v for k, v in kwargs.items()
                          if k not in SETTING_NAMES and k != "share_connections"}
            return RemoteBatchVectorEnv(connections, [u.render() for u in urls], env_id,
                                        num_envs=num_envs, env_kwargs=env_kwargs, **options)
        if any(batched):
            raise ConfigError(
                "some servers host vector instances (served with num_envs) and others do "
                "not: " + ", ".join(f"{u.render()}: {'batch' if b else 'single envs'}"
                                    for u, b in zip(urls, batched, strict=True)))
    except BaseException:
        for connection in connections:
            connection.close()
        raise
    for connection in connections:  # single-env servers: one instance per sub-env
        connection.close()
    return RemoteVectorEnv(url, env_id, num_envs=1 if num_envs is None else num_envs, **kwargs)


# -- helpers ------------------------------------------------------------------------------


def _indexed(exc: RelayError, index: int, url: str | URL) -> RelayError:
    """A copy of ``exc`` (same type and attributes) whose message names the sub-env.

    The copy has an ``env_index`` attribute; raise it ``from exc``.
    """
    return prefixed(exc, f"sub-environment {index} ({mask_secrets(str(url))})", env_index=index)


def prefixed(exc: RelayError, where: str, *, env_index: int | None,
             strip: str = "") -> RelayError:
    """A copy of ``exc`` (same type and attributes) whose message starts with ``where: ``.

    ``strip`` is taken off the start of a remote message first; the copy's
    ``env_index`` attribute is ``env_index`` and its ``__cause__`` is ``exc``.
    """
    cls = type(exc)
    named = cls.__new__(cls)
    named.__dict__.update(exc.__dict__)
    # RemoteError.__str__ appends the remote traceback: take the message without it
    if hasattr(exc, "remote_traceback"):
        remote = exc.remote_message  # type: ignore[attr-defined]
        if strip and remote.startswith(strip):
            remote = remote[len(strip):]
            named.remote_message = remote  # type: ignore[attr-defined]
        kind = exc.remote_type  # type: ignore[attr-defined]
        text = f"{kind}: {remote}" if kind else remote
    else:
        text = str(exc)
    named.args = (f"{where}: {text}",)
    named.env_index = env_index  # type: ignore[attr-defined]
    named.__cause__ = exc
    return named


def _is_local(env: RemoteEnv, name: str) -> bool:
    """Whether ``name`` is an attribute of the RemoteEnv object itself (not the served env's)."""
    return hasattr(type(env), name) or name in vars(env)


def _check_spaces(envs: Sequence[RemoteEnv], single: gym.Space[Any],
                  mode: str | tuple[gym.Space[Any], gym.Space[Any]]) -> None:
    """The checks of SyncVectorEnv: equal observation spaces (``"same"``) or of one
    shape and dtype (otherwise), equal action spaces.

    Raises:
        SpaceMismatch: naming the sub-env and its URL.
    """
    for i, env in enumerate(envs):
        where = f"sub-environment {i} ({env.url.render()})"
        if mode == "same" and env.observation_space != single:
            raise SpaceMismatch(
                f"{where} has the observation_space {env.observation_space}, the vector env "
                f"{single} (observation_mode='same'; if this is intentional, use "
                "observation_mode='different')")
        if mode != "same" and not is_space_dtype_shape_equiv(env.observation_space, single):
            raise SpaceMismatch(
                f"{where} has the observation_space {env.observation_space}, of another shape "
                f"or dtype than {single} (observation_mode={mode!r})")
        if env.action_space != envs[0].action_space:
            raise SpaceMismatch(
                f"{where} has the action_space {env.action_space}, sub-environment 0 has "
                f"{envs[0].action_space}: the sub-environments of a vector env must have "
                "equal action spaces")


def _check_reset_mask(mask: Any, num_envs: int) -> npt.NDArray[np.bool_]:
    """``options["reset_mask"]`` checked as SyncVectorEnv checks it."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"`options['reset_mask']` must be a numpy array, got {type(mask)}")
    if mask.shape != (num_envs,):
        raise ValueError(f"`options['reset_mask']` must have shape `({num_envs},)`, "
                         f"got {mask.shape}")
    if mask.dtype != np.bool_:
        raise TypeError(f"`options['reset_mask']` must have `dtype=np.bool_`, got {mask.dtype}")
    if not np.any(mask):
        raise ValueError("`options['reset_mask']` must contain a boolean array with at "
                         f"least one True value, got reset_mask={mask}")
    return mask


def _make_all(urls: Sequence[str | URL], env_id: str | None, render_mode: str | None,
              kwargs: dict[str, Any], *, share: bool) -> list[RemoteEnv]:
    """One RemoteEnv per URL in ``urls``; those on one URL share a connection if ``share``.

    A group (the sub-envs of one connection) is made in turn, groups at the
    same time after the first, which is made alone (it loads the plugins and
    fails fast on a wrong URL, codec or env id).  On any failure every env
    made is closed.
    """
    def make_one(i: int, connection: ClientConnection | None) -> RemoteEnv:
        try:
            return RemoteEnv(urls[i], env_id, render_mode=render_mode, connection=connection,
                             **kwargs)
        except RelayError as exc:
            raise _indexed(exc, i, urls[i]) from exc

    def make_group(indices: list[int]) -> list[RemoteEnv]:
        # the first env owns the connection, the others share it
        made = [make_one(indices[0], None)]
        try:
            for i in indices[1:]:
                made.append(make_one(i, made[0].connection))
        except BaseException:
            _close_all(made)
            raise
        return made

    groups: dict[str, list[int]] = {}
    for i, url in enumerate(urls):
        key = str(url) if share else str(i)
        groups.setdefault(key, []).append(i)
    order = [i for indices in groups.values() for i in indices]
    first, *others = groups.values()
    envs = make_group(first)
    made, failure = _all_at_once(make_group, others)
    envs.extend(env for group in made for env in group)
    if failure is not None:
        _close_all(envs)
        raise failure
    by_index = dict(zip(order, envs, strict=True))
    return [by_index[i] for i in range(len(urls))]


def _all_at_once(fn: Callable[[T], R], items: Sequence[T]) -> tuple[list[R], BaseException | None]:
    """``fn(item)`` for every item in threads (at most ``MAX_CONNECT_THREADS``).

    Waits for all, so that none is left connecting behind the caller's back;
    returns the results of those that succeeded (in order) and the first failure.
    """
    results: list[R] = []
    failure: BaseException | None = None
    if not items:
        return results, None
    with ThreadPoolExecutor(min(len(items), MAX_CONNECT_THREADS),
                            thread_name_prefix="relay-make-vec") as pool:
        for future in [pool.submit(fn, item) for item in items]:
            try:
                results.append(future.result())
            except BaseException as exc:
                failure = failure or exc
    return results, failure


def _close_all(envs: Sequence[RemoteEnv]) -> None:
    """Close the remote envs (``Close`` requests overlapped) and every connection.

    Every connection is closed even if closing one fails; the first non-relay
    error (e.g. from a render window) is raised afterwards.
    """
    pendings = []
    for env in envs:
        # the env's own close() would send Close again, one at a time: take its
        # instance so that it only disconnects (same package, same contract)
        instance, env._instance = env._instance, None
        connection = env.connection
        submit = getattr(connection, "submit", None)
        if instance is None or connection.closed:
            continue
        close = Close(instance=instance)
        timeout = min(env.settings.timeout, 5.0)
        try:
            pendings.append((env, submit(close, timeout) if submit else None, close, timeout))
        except RelayError:
            pass
    for env, pending, close, timeout in pendings:
        try:
            if pending is None:
                env.connection.call(close, timeout=timeout)
            else:
                env.connection.receive(pending)
        except RelayError:
            pass
    first: BaseException | None = None
    for env in envs:
        try:
            env.close()
        except BaseException as exc:
            first = first or exc
    if first is not None:
        raise first
