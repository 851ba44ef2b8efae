"""A ``gymnasium.vector.VectorEnv`` over served *vector instances*: one message per batch.

:func:`relay.make_vec` returns a :class:`RemoteBatchVectorEnv` when the
servers host vector instances (``relay.serve(env, url, num_envs=N)``; their
``Welcome`` announces ``"batch"``).  Each server holds one vector instance,
a contiguous block of the sub-environments; a vector ``step`` sends one
``StepBatch`` (the block's ``(n, ...)`` actions) to every server and then
reads every ``TransitionBatch``, so the servers step at the same time.  With
one server the arrays the server's vector env returned are handed out as
decoded, with several they are concatenated along axis 0.

Autoreset is the served vector env's own (``metadata["autoreset_mode"]``):
the client adds nothing, so a seeded remote run equals the same vector env
run locally, step for step.

Asynchronous use follows EnvPool: :meth:`RemoteBatchVectorEnv.send` starts
steps, :meth:`RemoteBatchVectorEnv.recv` returns the first servers' blocks
to finish, with ``info["env_id"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from copy import deepcopy
from typing import Any, cast

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from relay.adapters.gymnasium import ENV_ID
from relay.adapters.vector import _check_reset_mask, prefixed
from relay.connection import ClientConnection, Pending
from relay.core import spaces
from relay.core.errors import ConfigError, EnvClosed, RelayError, SpaceMismatch
from relay.core.messages import (
    Call,
    Close,
    Frame,
    MadeBatch,
    MakeBatch,
    ObservationBatch,
    Render,
    Request,
    ResetBatch,
    Response,
    Returned,
    StepBatch,
    TransitionBatch,
)
from relay.core.url import URL, make_url

__all__ = ["RemoteBatchVectorEnv"]

Step5 = tuple[Any, np.ndarray, npt.NDArray[np.bool_], npt.NDArray[np.bool_], dict[str, Any]]


class _Part:
    """One server's vector instance: sub-envs ``offset .. offset + num_envs - 1``."""

    __slots__ = ("connection", "future", "instance", "num_envs", "obs", "offset", "url")

    def __init__(self, connection: ClientConnection, url: str) -> None:
        self.connection = connection
        self.url = url
        self.instance = 0
        self.offset = 0
        self.num_envs = 0
        self.obs: Any = None  # its last observations (kept for a reset_mask that skips it)
        self.future: Future[Response] | None = None  # a send() awaiting its recv()

    def error(self, exc: RelayError) -> RelayError:
        """``exc`` renamed for the whole vector env: the global index of a failing sub-env."""
        local = getattr(exc, "env_index", None)
        if local is None:
            last = self.offset + self.num_envs - 1
            return prefixed(exc, f"sub-environments {self.offset}..{last} ({self.url})",
                            env_index=None)
        index = self.offset + local
        return prefixed(exc, f"sub-environment {index} ({self.url})", env_index=index,
                        strip=f"sub-environment {local}: ")


class RemoteBatchVectorEnv(VectorEnv[Any, Any, Any]):
    """The served vector instances of one or more servers as one ``VectorEnv``.

    Use :func:`relay.make_vec` (it picks this class when every server
    announces ``"batch"``); ``connections`` are open, handshaken connections,
    one per server, closed with this env.

    Batches are the served vector env's: observations ``(N, *obs_shape)``
    (per leaf for Dict/Tuple spaces), rewards, terminations, truncations
    ``(N,)`` with the served env's dtypes (CartPole's vector env: float32
    rewards; a ``SyncVectorEnv``: float64), infos as Gymnasium's vector infos
    (arrays over the sub-envs with ``_key`` masks; ``final_obs``/``final_info``
    in ``SAME_STEP`` mode).  ``N`` is the sum of the servers' sizes.

    Args:
        connections: one per server, in the order of the sub-env blocks.
        env_id: the env each server makes (None: the one it serves).
        num_envs: total number of sub-envs, split into near-equal contiguous
            blocks over the servers (None: each server's own size).
        autoreset_mode: None (the served env's), or the mode the served env
            must have (the server refuses a vector env with another one).
        batch_size: how many sub-envs :meth:`recv` returns at least (None: all).
        copy: copy zero-copy observations (``?zero_copy=1``) before handing
            them out; without ``zero_copy`` every answer is fresh anyway.
        render_mode: each served env's render mode (not ``"human"``).
        env_kwargs: keyword arguments of each server's ``gymnasium.make_vec``
            (or of its factory), e.g. ``vectorization_mode="sync"``.
        resolve_url: ``resolve_url(offset) -> URL`` of the server of the block
            starting at sub-env ``offset``, asked when :meth:`reset` reconnects
            a server whose connection was lost (a restarted server may listen
            elsewhere); None: the same URL.

    Raises:
        ConfigError: a bad size or mode, or the servers' sizes cannot give ``num_envs``.
        RemoteError: a server refused (its message and URL in the text).
        SpaceMismatch: the servers' single spaces differ (a RuntimeError, as
            Gymnasium raises).  RelayError: their autoreset modes differ.
        Timeout, ConnectionLost.
    """

    def __init__(
        self,
        connections: Sequence[ClientConnection],
        urls: Sequence[str],
        env_id: str | None = None,
        *,
        num_envs: int | None = None,
        autoreset_mode: str | AutoresetMode | None = None,
        batch_size: int | None = None,
        copy: bool = True,
        render_mode: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        resolve_url: Callable[[int], str | URL] | None = None,
    ) -> None:
        self._parts = [_Part(c, u) for c, u in zip(connections, urls, strict=True)]
        self._resolve_url = resolve_url
        self._pool: ThreadPoolExecutor | None = None
        try:
            self._make(env_id, num_envs, autoreset_mode, render_mode, dict(env_kwargs or {}))
        except BaseException:
            self._close_parts()
            raise
        self.copy = copy
        if batch_size is not None and not 1 <= batch_size <= self.num_envs:
            self._close_parts()
            raise ConfigError(f"batch_size must be in 1..{self.num_envs}, not {batch_size!r}")
        self.batch_size = self.num_envs if batch_size is None else batch_size

    def _make(self, env_id: str | None, num_envs: int | None,
              autoreset_mode: str | AutoresetMode | None, render_mode: str | None,
              kwargs: dict[str, Any]) -> None:
        parts = self._parts
        if num_envs is not None:
            if not isinstance(num_envs, int) or num_envs < len(parts):
                raise ConfigError(f"num_envs must be an int >= the number of servers "
                                  f"({len(parts)}), not {num_envs!r}")
            sizes: list[int | None] = [num_envs // len(parts) + (k < num_envs % len(parts))
                                       for k in range(len(parts))]
        else:
            sizes = [None] * len(parts)
        try:
            mode = None if autoreset_mode is None else AutoresetMode(autoreset_mode).value
        except ValueError:
            raise ConfigError(f"unknown autoreset_mode {autoreset_mode!r} (known: "
                              f"{', '.join(m.value for m in AutoresetMode)})") from None
        if render_mode == "human":
            raise ConfigError("a remote vector env cannot render in 'human' mode; use "
                              "'rgb_array' and show the frames of render()")
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        self._remake = (env_id, kwargs, mode)
        made = self._exchange([
            MakeBatch(env_id=env_id, kwargs=kwargs, num_envs=size, autoreset_mode=mode)
            for size in sizes], make=True)
        first: MadeBatch = made[0]  # type: ignore[assignment]
        single = [spaces.build(first.observation_space), spaces.build(first.action_space)]
        offset = 0
        for part, answer in zip(parts, made, strict=True):
            assert isinstance(answer, MadeBatch)
            part.instance, part.offset, part.num_envs = answer.instance, offset, answer.num_envs
            offset += answer.num_envs
            for name, space in zip(("observation_space", "action_space"), single, strict=True):
                if spaces.build(getattr(answer, name)) != space:
                    raise SpaceMismatch(f"the vector env on {part.url} has another {name} "
                                        f"than the one on {parts[0].url}: the sub-envs of a "
                                        "vector env must have equal spaces")
            if answer.metadata.get("autoreset_mode") != first.metadata.get("autoreset_mode"):
                raise RelayError(f"the vector envs on {part.url} and {parts[0].url} have "
                                 "different autoreset modes")
        self.num_envs = offset
        self.single_observation_space, self.single_action_space = single
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = dict(first.metadata)
        self.autoreset_mode = AutoresetMode(first.metadata.get("autoreset_mode", "NextStep"))
        self.metadata["autoreset_mode"] = self.autoreset_mode
        self.render_mode = first.render_mode
        self.urls = [part.url for part in parts]
        """The URL of each server, in the order of the sub-env blocks."""
        self.spec = gym.envs.registration.EnvSpec(
            id=ENV_ID, entry_point="relay.adapters.gymnasium:RemoteEnv",
            vector_entry_point="relay.adapters.vector:make_vec",
            kwargs={"url": self.urls if len(parts) > 1 else self.urls[0], "env_id": env_id,
                    "num_envs": self.num_envs, **kwargs},
        )

    # -- the vector API ---------------------------------------------------------------

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the served vector envs (or the sub-envs of ``options["reset_mask"]``).

        Args:
            seed: None, an int (the block at offset ``o`` gets ``seed + o``,
                so one server gets ``seed`` itself), or one int/None per sub-env.
            options: passed to each served ``reset``; ``reset_mask``, a bool
                array ``(num_envs,)``, is split over the servers (a server
                none of whose sub-envs is masked is not asked).

        Returns:
            ``(observations, infos)`` as the served vector env's ``reset``.

        Raises:
            ValueError, TypeError: a seed list of the wrong length, a bad reset_mask.
            RemoteError, Timeout, ConnectionLost: the first failing server's,
                naming its sub-envs (after every server answered).
            ConnectError: a server whose connection was lost cannot be reached
                (yet); nothing is reset, the next ``reset`` tries again.

        A server whose connection was lost (a ``ConnectionLost`` earlier) is
        first connected anew (at ``resolve_url``, see the class) and makes
        its block of sub-envs again.
        """
        self._check_idle()
        parts = self._parts
        for part in parts:
            if part.connection.closed:
                self._reconnect(part)
        if isinstance(seed, (int, np.integer)):
            super().reset(seed=int(seed))
            seeds: list[Any] = [int(seed) + part.offset for part in parts]
        elif seed is None:
            seeds = [None] * len(parts)
        else:
            seed = list(seed)
            if len(seed) != self.num_envs:
                raise ValueError(f"If seeds are passed as a list the length must match "
                                 f"num_envs={self.num_envs} but got length={len(seed)}.")
            seeds = [seed[p.offset:p.offset + p.num_envs] for p in parts]
        masks: list[Any] = [None] * len(parts)
        if options is not None and "reset_mask" in options:
            mask = _check_reset_mask(options["reset_mask"], self.num_envs)
            masks = [mask[p.offset:p.offset + p.num_envs] for p in parts]
        chosen, requests = [], []
        for k, part in enumerate(parts):
            part_options = options
            if masks[k] is not None:
                if not masks[k].any():
                    continue
                part_options = {**options, "reset_mask": masks[k]}  # type: ignore[dict-item]
            chosen.append(part)
            requests.append(ResetBatch(instance=part.instance, seed=seeds[k],
                                       options=part_options))
        answers = self._exchange(requests, chosen)
        results = dict(zip((id(p) for p in chosen), answers, strict=True))
        obs, infos = [], []
        for part in parts:
            answer = results.get(id(part))
            if answer is not None:
                assert isinstance(answer, ObservationBatch)
                part.obs = answer.obs
                infos.append(answer.info)
            else:
                infos.append({})
            obs.append(part.obs)
        if len(parts) == 1:
            return self._out(obs[0]), infos[0]
        return _concat(obs), _merge_infos(infos, [p.num_envs for p in parts])

    def step(self, actions: Any) -> Step5:
        """Step every sub-env: one ``StepBatch`` per server, sent before any answer is read.

        Args:
            actions: a batch in :attr:`action_space` (int array ``(N,)`` for
                Discrete sub-envs, ``(N, *shape)`` for Box ones).

        Returns:
            ``(observations, rewards, terminations, truncations, infos)``, as the
            served vector env's ``step``.

        Raises:
            InvalidAction, RemoteEnvError: with ``env_index`` (the global
                index of the failing sub-env) when the server knows it; after
                an env error, reset the vector env.
            Timeout, ConnectionLost: naming the server's sub-envs.
        """
        self._check_idle()
        parts = self._parts
        if len(parts) == 1:  # the hot path of one server: no lists
            part = parts[0]
            connection = part.connection
            try:
                answer = connection.receive(connection.submit(
                    StepBatch(instance=part.instance, actions=actions)))
            except RelayError as exc:
                error = part.error(exc)
                raise error from exc
            assert isinstance(answer, TransitionBatch)
            part.obs = answer.obs
            return (self._out(answer.obs), answer.rewards, answer.terminations,
                    answer.truncations, answer.info)
        answers = self._exchange([StepBatch(instance=p.instance,
                                            actions=_take(actions, p.offset, p.num_envs))
                                  for p in parts])
        return self._stacked(parts, answers)

    def send(self, actions: Any, env_ids: Any = None) -> None:
        """Start stepping the sub-envs ``env_ids`` with ``actions``; :meth:`recv` takes the result.

        EnvPool's ``send``: ``actions[j]`` is for sub-env ``env_ids[j]``.  A
        served vector env steps all its sub-envs at once, so ``env_ids``
        must cover whole servers' blocks (as :meth:`recv` returns them).

        Args:
            actions: ``(len(env_ids), ...)`` actions.
            env_ids: int array of sub-env indices (None: every sub-env).

        Raises:
            ValueError: ``env_ids`` do not cover whole blocks, or a block is
                still in flight (``recv`` it first).
            ConnectionLost, MessageTooLarge, CodecError: nothing sent for that block.
        """
        ids = np.arange(self.num_envs) if env_ids is None else np.asarray(env_ids).reshape(-1)
        todo = []
        for part in self._parts:
            inside = np.flatnonzero((ids >= part.offset) & (ids < part.offset + part.num_envs))
            if inside.size == 0:
                continue
            if inside.size != part.num_envs or set(ids[inside].tolist()) != set(
                    range(part.offset, part.offset + part.num_envs)):
                raise ValueError(
                    f"env_ids must cover whole servers: sub-envs {part.offset}.."
                    f"{part.offset + part.num_envs - 1} ({part.url}) are stepped together")
            if part.future is not None:
                raise ValueError(f"sub-envs {part.offset}..{part.offset + part.num_envs - 1} "
                                 "are still in flight: recv() them first")
            order = inside[np.argsort(ids[inside], kind="stable")]
            todo.append((part, order))
        if len(ids) != sum(p.num_envs for p, _ in todo):
            raise ValueError(f"env_ids must be indices 0..{self.num_envs - 1}, each once")
        whole = len(todo) == 1 and np.array_equal(ids, np.arange(self.num_envs))
        for part, order in todo:
            block = actions if whole else _take(actions, order, None)
            self._start(part, StepBatch(instance=part.instance, actions=block))

    def async_reset(self) -> None:
        """Reset every sub-env without waiting (EnvPool's ``async_reset``): the
        observations come from the next :meth:`recv` calls, with zero rewards."""
        self._check_idle()
        for part in self._parts:
            self._start(part, ResetBatch(instance=part.instance))

    def recv(self) -> Step5:
        """The first blocks to finish, at least :attr:`batch_size` sub-envs (EnvPool's ``recv``).

        Waits until the servers whose blocks came back first hold
        ``batch_size`` sub-envs (or nothing more is in flight) and returns
        them stacked, in the order they finished, with ``info["env_id"]``
        (int32, the global index of each row).  A reset's block has rewards 0
        and no termination.

        Raises:
            ValueError: nothing in flight.
            RemoteError, Timeout, ConnectionLost: of a finished block.
        """
        flying = {part.future: part for part in self._parts if part.future is not None}
        if not flying:
            raise ValueError("nothing in flight: send() or async_reset() first")
        done: list[_Part] = []
        count = 0
        while count < self.batch_size and flying:
            finished, _ = wait(list(flying), return_when=FIRST_COMPLETED)  # type: ignore[arg-type]
            for future in finished:
                part = flying.pop(future)
                done.append(part)
                count += part.num_envs
        answers: list[Response] = []
        failure: RelayError | None = None
        for part in done:
            finished_future, part.future = part.future, None
            assert finished_future is not None
            try:
                answers.append(finished_future.result())
            except RelayError as exc:
                failure = failure or part.error(exc)
        if failure is not None:
            raise failure from failure.__cause__
        obs, rewards, terminations, truncations, info = self._stacked(done, answers)
        info["env_id"] = np.concatenate([np.arange(p.offset, p.offset + p.num_envs,
                                                   dtype=np.int32) for p in done])
        return obs, rewards, terminations, truncations, info

    def render(self) -> tuple[Any, ...] | None:
        """Each served vector env's ``render()``, concatenated (a tuple of frames), or None."""
        self._check_idle()
        frames = self._exchange([Render(instance=p.instance) for p in self._parts])
        if all(isinstance(f, Frame) and f.frame is None for f in frames):
            return None
        out: list[Any] = []
        for frame in frames:
            assert isinstance(frame, Frame)
            out.extend(frame.frame or ())
        return tuple(out)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Each sub-env's ``name``: called with the arguments if it is a method, as is
        otherwise (as ``SyncVectorEnv.call``).

        ``observation_space``, ``action_space``, ``metadata`` and
        ``render_mode`` are answered here; any other name is asked of every
        sub-env of the served ``SyncVectorEnv``s (one ``Call`` each, all sent
        before the first answer is read), for the names the servers allow.

        Raises:
            NotAllowed: a server does not allow ``name`` (its ``allow_calls``).
            ConfigError: a server lacks the ``call`` capability; RemoteError: a
                served vector env without sub-env objects (CartPole's, EnvPool).
            RemoteEnvError, Timeout, ConnectionLost: as :meth:`step`.
        """
        local = {"observation_space": self.single_observation_space,
                 "action_space": self.single_action_space, "metadata": self.metadata,
                 "render_mode": self.render_mode}
        if name in local:
            return (local[name],) * self.num_envs
        return self._call_remote(name, "call", [list(args)] * self.num_envs, kwargs)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Each sub-env's attribute ``name``: :meth:`call` without arguments."""
        return self.call(name)

    def set_attr(self, name: str, values: Any) -> None:
        """Set ``name`` on every sub-env: one value each (a list or tuple of
        ``num_envs``) or one value for all.

        Raises:
            ValueError: not ``num_envs`` values.
            NotAllowed: a server does not allow setting ``name`` (its ``allow_set``).
        """
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"Values must be a list or tuple with length equal to the number "
                             f"of environments. Got `{len(values)}` values for {self.num_envs} "
                             "environments.")
        self._call_remote(name, "set", [[value] for value in values], {})

    def _call_remote(self, name: str, kind: str, args: list[list[Any]],
                     kwargs: dict[str, Any]) -> tuple[Any, ...]:
        self._check_idle()
        parts, requests = [], []
        for part in self._parts:
            if "call" not in part.connection.session.capabilities:
                raise ConfigError(f"the server at {part.url} offers no env method calls (its "
                                  "protocol lacks the 'call' capability)")
            for j in range(part.num_envs):
                parts.append(part)
                requests.append(Call(instance=part.instance, name=name, kind=kind,
                                     args=args[part.offset + j], kwargs=kwargs, index=j))
        answers = self._exchange(requests, parts)
        return tuple(cast(Returned, answer).value for answer in answers)

    def close_extras(self, **kwargs: Any) -> None:
        """Close each served vector env (requests overlapped) and every connection."""
        self._close_parts()

    def __repr__(self) -> str:
        return f"RemoteBatchVectorEnv({', '.join(self.urls)}, num_envs={self.num_envs})"

    # -- helpers ----------------------------------------------------------------------

    def _reconnect(self, part: _Part) -> None:
        """Connect ``part`` anew and make its vector instance again (same size and spaces).

        Raises:
            ConnectError, Timeout, RemoteError, RelayError: named by the part's
                sub-envs; the part keeps a closed connection (the next reset retries).
        """
        env_id, kwargs, mode = self._remake
        url = part.url if self._resolve_url is None else self._resolve_url(part.offset)
        lost = part.connection
        try:
            part.connection = ClientConnection.open(make_url(url), lost.settings)
        except RelayError as exc:
            raise part.error(exc) from exc
        try:
            answer = self._exchange([MakeBatch(env_id=env_id, kwargs=kwargs,
                                               num_envs=part.num_envs, autoreset_mode=mode)],
                                    [part], make=True)[0]  # (errors named by the part)
            assert isinstance(answer, MadeBatch)
            if (answer.num_envs != part.num_envs
                    or spaces.build(answer.observation_space) != self.single_observation_space
                    or spaces.build(answer.action_space) != self.single_action_space):
                raise part.error(SpaceMismatch(
                    f"the vector env on {make_url(url).render()} is not the one the lost server "
                    "hosted "
                    f"({answer.num_envs} envs, or other spaces)"))
        except BaseException:
            part.connection.close()
            raise
        lost.close()
        part.instance, part.url = answer.instance, make_url(url).render()
        self.urls = [p.url for p in self._parts]

    def _out(self, obs: Any) -> Any:
        zero_copy = self._parts[0].connection.settings.zero_copy
        return deepcopy(obs) if self.copy and zero_copy else obs

    def _stacked(self, parts: Sequence[_Part], answers: Sequence[Response]) -> Step5:
        obs, rewards, terminations, truncations, infos = [], [], [], [], []
        for part, answer in zip(parts, answers, strict=True):
            if isinstance(answer, ObservationBatch):  # async_reset
                n = part.num_envs
                answer = TransitionBatch(obs=answer.obs, rewards=np.zeros(n),
                                         terminations=np.zeros(n, np.bool_),
                                         truncations=np.zeros(n, np.bool_), info=answer.info)
            assert isinstance(answer, TransitionBatch)
            part.obs = answer.obs
            obs.append(answer.obs)
            rewards.append(answer.rewards)
            terminations.append(answer.terminations)
            truncations.append(answer.truncations)
            infos.append(answer.info)
        if len(parts) == 1:
            return self._out(obs[0]), rewards[0], terminations[0], truncations[0], infos[0]
        return (_concat(obs), np.concatenate(rewards), np.concatenate(terminations),
                np.concatenate(truncations), _merge_infos(infos, [p.num_envs for p in parts]))

    def _check_idle(self) -> None:
        if self.closed:
            raise EnvClosed("the vector environment is closed")
        if any(part.future is not None for part in self._parts):
            raise ValueError("sub-envs are in flight after send(): recv() them first")

    def _start(self, part: _Part, request: Request) -> None:
        pending = part.connection.submit(request)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(self._parts), thread_name_prefix="relay-recv")
        part.future = self._pool.submit(part.connection.receive, pending)

    def _exchange(self, requests: Sequence[Request], parts: Sequence[_Part] | None = None,
                  *, make: bool = False) -> list[Response]:
        """Send ``requests[k]`` to ``parts[k]`` (default: every part), then read every answer.

        Every answer is read, also after a failure; the first failure (by
        part) is raised, renamed by :meth:`_Part.error`.  ``make``: at least
        60 s each (making thousands of envs takes a while).
        """
        parts = self._parts if parts is None else parts
        sent: list[Pending | RelayError] = []
        for part, request in zip(parts, requests, strict=True):
            timeout = part.connection.settings.timeout
            wait_s = max(timeout, 60.0) if make else None
            try:
                sent.append(part.connection.submit(request, wait_s))
            except RelayError as exc:
                sent.append(exc)
        answers: list[Response] = []
        failure: RelayError | None = None
        for part, pending in zip(parts, sent, strict=True):
            try:
                if isinstance(pending, RelayError):
                    raise pending
                answers.append(part.connection.receive(pending))
            except RelayError as exc:
                failure = failure or part.error(exc)
        if failure is not None:
            raise failure from failure.__cause__
        return answers

    def _close_parts(self) -> None:
        parts = [p for p in getattr(self, "_parts", []) if not p.connection.closed]
        pendings = []
        for part in parts:
            if part.instance and part.future is None:
                try:
                    pendings.append((part, part.connection.submit(
                        Close(instance=part.instance), min(part.connection.settings.timeout,
                                                           5.0))))
                except RelayError:
                    pass
        for part, pending in pendings:
            try:
                part.connection.receive(pending)
            except RelayError:
                pass
        for part in getattr(self, "_parts", []):
            part.connection.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# -- batches as value trees -------------------------------------------------------------


def _take(tree: Any, start: Any, count: int | None) -> Any:
    """Rows ``start:start + count`` (or the rows of index array ``start``) of every leaf."""
    if isinstance(tree, dict):
        return {k: _take(v, start, count) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_take(v, start, count) for v in tree)
    array = np.asarray(tree)
    return array[start] if count is None else array[start:start + count]


def _concat(trees: Sequence[Any]) -> Any:
    """The leaves of ``trees`` concatenated along axis 0."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: _concat([t[k] for t in trees]) for k in first}
    if isinstance(first, tuple):
        return tuple(_concat([t[i] for t in trees]) for i in range(len(first)))
    return np.concatenate(trees)


def _merge_infos(infos: Sequence[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """One vector info dict from the blocks' (each key an array over its block).

    A key a block lacks is filled for it as Gymnasium's ``_add_info`` fills
    sub-envs without it: zeros (None for object arrays, False for masks).
    """
    merged: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for info in infos for k in info))
    for key in keys:
        values = [info.get(key) for info in infos]
        if any(isinstance(v, dict) for v in values):
            merged[key] = _merge_infos([v if isinstance(v, dict) else {} for v in values], sizes)
            continue
        model = next(np.asarray(v) for v in values if v is not None)
        blocks = []
        for value, n in zip(values, sizes, strict=True):
            if value is not None:
                blocks.append(np.asarray(value))
            elif model.dtype.hasobject:
                blocks.append(np.full((n, *model.shape[1:]), None, dtype=object))
            else:
                blocks.append(np.zeros((n, *model.shape[1:]), dtype=model.dtype))
        merged[key] = np.concatenate(blocks)
    return merged
