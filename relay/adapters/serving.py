"""``relay.serve``: serve a Gymnasium or dm_env environment, a vector env, or
a factory of any of them, on a URL with relay's :class:`~relay.server.Server`
(or several worker processes, or a peer protocol's server)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from relay.access import Access
from relay.adapters.config import load_settings
from relay.batching import VectorFactory, vector_factory
from relay.core.errors import ConfigError
from relay.core.plugins import get_codec, get_transport
from relay.core.url import URL, make_url
from relay.server import EnvFactory, Server, gymnasium_factory
from relay.transports.base import Listener

if TYPE_CHECKING:
    from relay.workers import WorkerPool

__all__ = ["serve"]


def serve(
    env: str | EnvFactory | Any | None,
    url: str | URL,
    *,
    num_envs: int | None = None,
    workers: int | None = None,
    block: bool = False,
    allow_calls: Iterable[str] = (),
    allow_set: Iterable[str] = (),
    allow_wrappers: Iterable[str] = (),
    **settings: Any,
) -> Server | WorkerPool:
    """Serve an environment (or a batch of them) on ``url``.

    Args:
        env: a Gymnasium env id (``"CartPole-v1"``: only that id is served;
            None: any registered id the client names;
            ``Make`` kwargs go to ``gymnasium.make``), or a factory
            ``factory(env_id, **kwargs) -> gymnasium.Env | dm_env.Environment``
            called once per ``Make``, or a ``dm_env.Environment`` instance
            (one client at a time); see
            :func:`relay.adapters.dm_env.serving_factory`; or a
            ``gymnasium.vector.VectorEnv`` instance (one client at a time),
            or a factory returning one, served as a vector instance.
        url: where to listen, e.g. ``"zmq+tcp://127.0.0.1:0"`` (port 0 picks a
            free port: read it from ``server.address``).
        num_envs: host one *vector instance* of this many envs per client
            (``MakeBatch``; :func:`relay.make_vec` then steps them all with one
            message, see :mod:`relay.batching`): ``gymnasium.make_vec`` with
            the env's ``vector_entry_point`` when it has one, otherwise
            ``num_envs`` envs stepped by the server.  Single-env clients are
            still served.  None: single envs only, unless ``env`` is a
            ``VectorEnv``.
        workers: serve from this many processes behind the one URL (see
            :mod:`relay.workers`: ``shm://`` and ``tcp://`` only); None or 1:
            this process.
        block: serve until interrupted instead of returning at once.
        allow_calls: names of env methods and attributes a client may call or
            read (``RemoteEnv.call``, ``get_wrapper_attr``, a vector env's
            ``call``/``get_attr``), besides ``get_action_meanings``,
            ``np_random`` and ``np_random_seed``; see :mod:`relay.access`.
        allow_set: names of env attributes a client may write (``set_attr``),
            besides ``np_random``.
        allow_wrappers: wrapper entry points (``"module:Class"``) a client may
            have applied on the server (``relay.make(..., wrappers=[...])``),
            besides those of ``gymnasium.wrappers``.
        **settings: overrides of :class:`~relay.core.config.Settings`.

    Returns:
        The running :class:`Server` (already accepting clients); with
        ``workers`` > 1 a :class:`~relay.workers.WorkerPool`; for a peer
        protocol codec (``?codec=dm_env_rpc``) that protocol's server; all
        with the same ``address``/``close``/``serve_forever``.

    Raises:
        UnknownScheme, InvalidURL, MissingDependency, ConfigError, TransportError.
    """
    parsed = make_url(url)
    resolved = load_settings(parsed, **settings)
    access = Access.of(allow_calls, allow_set, allow_wrappers)
    factory: EnvFactory | None
    vectors: VectorFactory | None = None
    if isinstance(env, gym.vector.VectorEnv):
        factory = None
        vectors = vector_factory(env, num_envs)
    elif env is None or isinstance(env, str):
        factory = gymnasium_factory(env)
    else:  # a factory, or a dm_env instance (its factory wraps dm_envs as Gymnasium envs)
        from relay.adapters.dm_env import serving_factory

        factory = serving_factory(env)
    if num_envs is not None and vectors is None:
        vectors = vector_factory(env if env is None or isinstance(env, str) else factory,
                                 num_envs)
    serve_peer = getattr(get_codec(resolved.codec), "serve", None)
    if serve_peer is not None:  # a peer protocol (dm_env_rpc) runs its own server
        if factory is None:
            raise ConfigError(f"the {resolved.codec} protocol serves single envs, "
                              "not a vector env")
        server = serve_peer(factory, parsed, resolved)
    elif workers is not None and workers != 1:
        from relay.workers import FORK_SCHEMES, WorkerPool

        if parsed.scheme not in FORK_SCHEMES:  # before listening
            WorkerPool.refuse(parsed.scheme)
        listener = get_transport(parsed.scheme).listen(parsed, resolved)

        def run(shared: Listener) -> Server:
            return Server(factory, shared, resolved, vectors, access).start()

        server = WorkerPool(listener, run, workers)
    else:
        listener = get_transport(parsed.scheme).listen(parsed, resolved)
        server = Server(factory, listener, resolved, vectors, access).start()
    if block:
        server.serve_forever()
    return server
