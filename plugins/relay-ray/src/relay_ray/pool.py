"""relay environment servers as Ray actors: :class:`ActorPool` and :func:`lookup`.

Ray places, restarts and tears down the actors; relay moves the steps: each
actor runs relay servers (:class:`relay_ray.actor.EnvServer`) and the learner
reaches them over relay's transports, ``shm://`` on its own node and a network
transport (``tcp://`` by default) elsewhere, never through per-step Ray calls.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

import ray
from gymnasium.vector import VectorEnv
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

import relay
from relay.core.plugins import get_transport
from relay_ray.actor import EnvServer

__all__ = ["PLACEMENTS", "ActorPool", "PoolNotFound", "lookup"]

PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
"""Placement-group strategies (Ray's names) a pool accepts for ``placement``."""

_NAME_PREFIX = "relay-ray:"
_RemoteEnvServer = ray.remote(EnvServer)


class PoolNotFound(relay.ConnectError):
    """No pool of that name in that Ray namespace (or its first actor is dead)."""


class ActorPool:
    """``num_actors`` Ray actors, each serving ``env`` with relay, and the URLs to reach them.

    The constructor returns once every actor serves (its :attr:`urls` answer).

    Args:
        env: a Gymnasium id (``"CartPole-v1"``, ``"ale_py:ALE/Pong-v5"``) or a
            relay env factory ``factory(env_id, **kwargs) -> gymnasium.Env |
            dm_env.Environment`` (shipped to the actors with cloudpickle: define
            it in an importable module).
        num_actors: number of actors (>= 1).
        num_envs_per_actor: environments each actor hosts (>= 1): the default
            ``num_envs`` of :meth:`make_vec` is ``num_actors * num_envs_per_actor``.
        batched: True: each actor serves one vector instance of
            ``num_envs_per_actor`` envs (``relay.serve(..., num_envs=)``: one
            message steps an actor's envs, contiguous blocks of sub-envs);
            False: single envs (one request per sub-env, sub-env ``i`` on actor
            ``i % num_actors``).  None (default): batched when
            ``num_envs_per_actor > 1``.
        num_cpus, num_gpus, resources: Ray resources of each actor (``resources``:
            custom ones, e.g. ``{"zone_a": 1}``).
        placement: None (Ray's default scheduling) or a placement-group strategy
            of :data:`PLACEMENTS`: one bundle of the actor's resources per
            actor, ``SPREAD`` over nodes or ``PACK`` onto few.
        name, namespace: a Ray actor name for the pool (actors are named
            ``relay-ray:NAME:I``) so that :func:`lookup` finds it from another
            driver, and its Ray namespace (None: the driver's).
        lifetime: None (the actors die with this driver) or ``"detached"``
            (they outlive it; needs ``name``; end them with :meth:`close`).
        max_restarts: how often Ray restarts a dead actor (-1: always).  After
            a restart the vector env's next ``reset`` of that actor's
            sub-envs reconnects to it (see :meth:`make_vec`).
        transport: ``"auto"`` (``shm://`` for actors on this driver's Ray node,
            ``network`` for the others), ``"shm"`` (all on this node, else
            ``ConfigError``) or a network scheme for all (``"tcp"``,
            ``"zmq+tcp"``, ``"grpc"``, ``"grpcs"``, ``"ws"``, ``"wss"``).
        network: the network scheme of ``"auto"`` and ``"shm"`` (default
            ``"tcp"``, the relay-tcp plugin).  Every actor listens on the
            node's IP (never ``0.0.0.0``) on one port of this scheme.
        listen_options: query options of each actor's listen URL, e.g. TLS
            ``{"certfile": PEM, "keyfile": PEM}`` for ``grpcs``/``wss`` (the
            files must exist on every node).
        connect_options: query options of the URLs handed to clients, e.g.
            ``{"cafile": PEM}``.
        token, codec: relay settings of the servers and of :meth:`make_vec`.
        start_timeout: seconds to wait for the placement group and for every
            actor to serve (Ray waits silently for resources that never come).

    Raises:
        ConfigError: a bad argument, an env id the actors do not know, a name
            already taken, or ``transport="shm"`` with an actor on another node.
        UnknownScheme: ``transport``/``network`` names no installed transport.
        Timeout: the cluster did not give the resources within ``start_timeout``
            (the message names them).  Nothing is left running.
    """

    _infos: list[dict[str, Any]]
    _placement_group: Any

    def __init__(
        self,
        env: Any,
        num_actors: int,
        num_envs_per_actor: int = 1,
        *,
        batched: bool | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: Mapping[str, float] | None = None,
        placement: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        lifetime: str | None = None,
        max_restarts: int = 0,
        transport: str = "auto",
        network: str = "tcp",
        listen_options: Mapping[str, str] | None = None,
        connect_options: Mapping[str, str] | None = None,
        token: str | None = None,
        codec: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        for label, count in (("num_actors", num_actors), ("num_envs_per_actor",
                                                          num_envs_per_actor)):
            if not isinstance(count, int) or count < 1:
                raise relay.ConfigError(f"{label} must be an int >= 1, not {count!r}")
        if placement is not None and placement not in PLACEMENTS:
            raise relay.ConfigError(f"unknown placement {placement!r} (known: "
                                    f"{', '.join(PLACEMENTS)}, or None)")
        if lifetime not in (None, "detached"):
            raise relay.ConfigError(f"lifetime must be None or 'detached', not {lifetime!r}")
        if lifetime == "detached" and not name:
            raise relay.ConfigError("a detached pool needs a name (to find and close it later)")
        if transport not in ("auto", "shm"):
            network = transport
        get_transport(network)  # UnknownScheme / MissingDependency before any actor starts
        if not ray.is_initialized():
            ray.init()
        bundle = {key: float(value) for key, value in
                  {"CPU": num_cpus, "GPU": num_gpus, **(resources or {})}.items() if value}
        pool_id = secrets.token_hex(4)
        here = ray.get_runtime_context().get_node_id()
        if batched is None:
            batched = num_envs_per_actor > 1
        meta = {"name": name, "namespace": namespace, "pool_id": pool_id,
                "num_actors": num_actors, "num_envs_per_actor": num_envs_per_actor,
                "batched": batched, "transport": transport, "learner_node": here}
        self._setup([], meta, token=token, codec=codec, connect_options=connect_options)
        try:
            if placement is not None:
                if not bundle:
                    raise relay.ConfigError("a placement group needs resources per actor "
                                            "(num_cpus, num_gpus or resources)")
                self._placement_group = placement_group(
                    [dict(bundle) for _ in range(num_actors)], strategy=placement,
                    lifetime=lifetime)
                try:
                    ray.get(self._placement_group.ready(), timeout=start_timeout)
                except GetTimeoutError:
                    raise relay.Timeout(
                        f"the cluster did not give {num_actors} x {bundle} ({placement}) "
                        f"within {start_timeout} s: see `ray status`") from None
            for index in range(num_actors):
                options: dict[str, Any] = {
                    "num_cpus": num_cpus, "num_gpus": num_gpus, "resources": dict(resources or {}),
                    "max_restarts": max_restarts, "lifetime": lifetime, "namespace": namespace}
                if name:
                    options["name"] = f"{_NAME_PREFIX}{name}:{index}"
                if self._placement_group is not None:
                    options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                        self._placement_group, placement_group_bundle_index=index)
                try:
                    actor = _RemoteEnvServer.options(**options).remote(
                        env, meta={**meta, "index": index}, network=network,
                        listen_options=dict(listen_options or {}),
                        shm_name=(f"relay-ray-{pool_id}-{index}"
                                  if transport in ("auto", "shm") else None),
                        learner_node=here, num_envs=num_envs_per_actor if batched else None,
                        settings={"token": token, "codec": codec})
                except ValueError as exc:  # a name taken
                    raise relay.ConfigError(f"cannot create actor {index} of pool {name!r}: "
                                            f"{exc}") from exc
                self._actors.append(actor)
            self._infos = _wait(self._actors, start_timeout, bundle)
            _ = self.urls  # transport="shm": ConfigError unless every actor is on this node
        except BaseException:
            self.close(timeout=1.0)
            raise

    def _setup(self, actors: list[Any], meta: dict[str, Any], *, token: str | None,
               codec: str | None, connect_options: Mapping[str, str] | None) -> None:
        self._actors = actors
        self._meta = meta
        self._client = {"token": token, "codec": codec}
        self._connect_options = dict(connect_options or {})
        self._infos = []
        self._placement_group = None
        self._closed = False

    # -- what the learner uses ------------------------------------------------------------

    @property
    def num_actors(self) -> int:
        return int(self._meta["num_actors"])

    @property
    def num_envs_per_actor(self) -> int:
        return int(self._meta["num_envs_per_actor"])

    @property
    def actors(self) -> list[Any]:
        """The Ray actor handles (:class:`relay_ray.actor.EnvServer`), by index."""
        return list(self._actors)

    @property
    def infos(self) -> list[dict[str, Any]]:
        """What each actor reported when last asked (at start, or by :meth:`url`):
        ``node_id`` and ``node_ip`` of its Ray node, ``pid``, ``network_url``,
        ``shm_url`` (None off the creator's node), ``index`` and the pool's
        settings."""
        return [dict(info) for info in self._infos]

    @property
    def urls(self) -> list[str]:
        """One URL per actor, as last reported by the actors (see :meth:`url`)."""
        return [self._url_of(info) for info in self._infos]

    def url(self, index: int, timeout: float = 60.0) -> str:
        """The URL of actor ``index`` now (asked again: a restarted actor may
        listen elsewhere).  ``shm://NAME`` if it serves shared memory on this
        driver's node, else ``SCHEME://NODE_IP:PORT`` (plus ``connect_options``).

        Raises:
            ConnectError: the actor is dead for good, or still restarting after
                ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = ray.get(self._actors[index].info.remote(),
                               timeout=max(deadline - time.monotonic(), 0.01))
                break
            except ActorUnavailableError:  # restarting: ask again
                if time.monotonic() > deadline:
                    raise relay.ConnectError(f"actor {index} is still restarting after "
                                             f"{timeout} s") from None
                time.sleep(0.05)
            except GetTimeoutError:
                raise relay.ConnectError(f"actor {index} did not answer within {timeout} s "
                                         "(restarting, or no resources for it)") from None
            except RayActorError as exc:
                raise relay.ConnectError(f"actor {index} is dead: {exc}") from exc
        self._infos[index] = info
        return self._url_of(info)

    def _url_of(self, info: dict[str, Any]) -> str:
        from relay.transports.shm import socket_path

        transport = self._meta["transport"]
        if (transport in ("auto", "shm") and info["shm_url"] is not None
                and info["node_id"] == ray.get_runtime_context().get_node_id()
                and info["shm_socket"] == str(socket_path(info["shm_url"][len("shm://"):]))):
            return str(info["shm_url"])
        if transport == "shm":
            raise relay.ConfigError(
                f"actor {info['index']} runs on node {info['node_ip']} ({info['node_id']}), "
                "not on this driver's node: shm:// cannot reach it (use transport='auto')")
        url = relay.make_url(info["network_url"])
        return str(url.with_options(**self._connect_options))

    def make_vec(self, num_envs: int | None = None, **kwargs: Any) -> VectorEnv[Any, Any, Any]:
        """``relay.make_vec`` over the actors.

        Single-env actors give a :class:`relay.RemoteVectorEnv`: sub-env ``i``
        on actor ``i % num_actors``.  A sub-env whose actor died raises
        ``ConnectionLost`` naming it (``env_index``) at the next step; once
        Ray has restarted the actor (``max_restarts``), ``reset`` (or a
        ``reset_mask`` reset of those sub-envs) reconnects to it at its new
        URL (:meth:`url`).

        Batched actors give a :class:`relay.adapters.batch.RemoteBatchVectorEnv`:
        actor ``a`` steps a contiguous block of sub-envs in one message
        (``num_envs_per_actor`` each by default, else near-equal shares of
        ``num_envs``).  A dead actor's block raises ``ConnectionLost`` naming
        those sub-envs; after Ray's restart, ``reset`` makes the block again
        on the restarted actor.

        Args:
            num_envs: sub-environments (default ``num_actors * num_envs_per_actor``).
            **kwargs: of :func:`relay.make_vec` (``env_id``, ``autoreset_mode``,
                settings, env kwargs); the pool's ``token`` and ``codec`` by default.
        """
        settings = {key: value for key, value in self._client.items() if value is not None}
        if self._meta.get("batched"):
            n = self.num_actors
            sizes = ([self.num_envs_per_actor] * n if num_envs is None
                     else [num_envs // n + (k < num_envs % n) for k in range(n)])
            actor_at = {sum(sizes[:a]): a for a in range(n)}  # a block's first sub-env
            return relay.make_vec(self.urls, num_envs=num_envs,
                                  resolve_url=lambda offset: self.url(actor_at[offset]),
                                  **{**settings, **kwargs})
        return relay.make_vec(
            self.urls, num_envs=num_envs or self.num_actors * self.num_envs_per_actor,
            resolve_url=lambda i: self.url(i % self.num_actors), **{**settings, **kwargs})

    # -- the end --------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Close every actor's servers (their envs close), kill the actors, remove the
        placement group and any ``shm://`` socket file a killed actor left on this
        node; idempotent.  Closes a detached pool too.

        Args:
            timeout: seconds for the servers to close before the actors are killed.
        """
        if self._closed:
            return
        self._closed = True
        refs = []
        for actor in self._actors:
            with contextlib.suppress(RayActorError):
                refs.append(actor.close.remote())
        with contextlib.suppress(ray.exceptions.RayError):
            ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for actor in self._actors:
            with contextlib.suppress(ray.exceptions.RayError, ValueError):
                ray.kill(actor, no_restart=True)
        if self._placement_group is not None:
            with contextlib.suppress(ray.exceptions.RayError, ValueError):
                remove_placement_group(self._placement_group)
        if self._meta["learner_node"] == ray.get_runtime_context().get_node_id():
            from relay.transports.shm import sweep_sockets

            sweep_sockets(f"relay-ray-{self._meta['pool_id']}-{index}"
                          for index in range(self.num_actors))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = f" {self._meta['name']!r}" if self._meta["name"] else ""
        return f"<ActorPool{name} {self.num_actors} actors, {self.num_envs_per_actor} env(s) each>"


def lookup(name: str, namespace: str | None = None, *, token: str | None = None,
           codec: str | None = None, connect_options: Mapping[str, str] | None = None,
           timeout: float = 60.0) -> ActorPool:
    """The named pool (``ActorPool(..., name=name)``) made by any driver of this cluster.

    Its :attr:`~ActorPool.urls` are chosen for this driver (``shm://`` only on
    the node of the pool's creator).  :meth:`~ActorPool.close` ends it.

    Raises:
        PoolNotFound: no actor ``relay-ray:NAME:0`` in ``namespace``, or it is dead.
    """
    if not ray.is_initialized():
        ray.init()
    try:
        first = ray.get_actor(f"{_NAME_PREFIX}{name}:0", namespace=namespace)
        meta: Any = ray.get(first.info.remote(), timeout=timeout)
    except ValueError:
        raise PoolNotFound(f"no relay-ray pool {name!r} in namespace {namespace!r}") from None
    except (RayActorError, GetTimeoutError) as exc:
        raise PoolNotFound(f"relay-ray pool {name!r} does not answer: {exc}") from exc
    actors = [first]
    try:
        for index in range(1, int(meta["num_actors"])):
            actors.append(ray.get_actor(f"{_NAME_PREFIX}{name}:{index}", namespace=namespace))
    except ValueError as exc:
        raise PoolNotFound(f"relay-ray pool {name!r} has lost actor {len(actors)}") from exc
    pool = ActorPool.__new__(ActorPool)
    pool._setup(actors, {key: meta[key] for key in (
        "name", "namespace", "pool_id", "num_actors", "num_envs_per_actor", "batched",
        "transport", "learner_node")}, token=token, codec=codec, connect_options=connect_options)
    pool._infos = _wait(actors, timeout, {})
    pool._placement_group = ray.get(first.placement_group.remote(), timeout=timeout)
    return pool


# -- helpers ------------------------------------------------------------------------------


def _wait(actors: Sequence[Any], timeout: float, bundle: Mapping[str, float]
          ) -> list[dict[str, Any]]:
    """Every actor's ``info()``, once all serve.

    Raises:
        Timeout: not all within ``timeout`` (Ray waits silently for resources).
        ConfigError: an actor's ``__init__`` raised (an unknown env id, ...).
        ConnectError: an actor died.
    """
    refs = [actor.info.remote() for actor in actors]
    try:
        return list(ray.get(refs, timeout=timeout))
    except GetTimeoutError:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        raise relay.Timeout(
            f"{len(refs) - len(ready)} of {len(refs)} actors did not start within {timeout} s: "
            f"does the cluster have {dict(bundle) or 'the resources'} free for each? "
            "(see `ray status`)") from None
    except RayActorError as exc:
        if exc.actor_init_failed:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise relay.ConfigError(f"an actor failed to start: {lines[-1]}") from exc
        raise relay.ConnectError(f"an actor died while starting: {exc}") from exc
