"""The Ray actor of a pool: relay servers of one environment, on the actor's node.

An :class:`EnvServer` starts its servers in ``__init__`` (so a restarted actor,
which Ray builds anew with the same arguments, serves again by itself) and
answers :meth:`EnvServer.info` with the URLs they listen on.  It never takes a
step itself: the learner's steps travel over relay's transports, not through
Ray calls.
"""

from __future__ import annotations

import os
from typing import Any

import relay
from relay.core.url import URL

__all__ = ["EnvServer"]


class EnvServer:
    """Serve ``env`` on the node's IP (a network transport) and, on the learner's
    node, on ``shm://shm_name`` as well.

    Args:
        env: a Gymnasium id or a relay env factory, as :func:`relay.serve` takes.
        meta: the pool's description, returned by :meth:`info` (name, index,
            num_actors, num_envs_per_actor, transport, network).
        network: URL scheme of the network listener (``"tcp"``, ``"zmq+tcp"``,
            ``"grpcs"``, ...); it binds the node's IP, port 0.
        listen_options: query options of the network listen URL (a TLS
            ``certfile``/``keyfile`` present on every node, ...).
        shm_name: the ``shm://`` name to listen on too, or None.
        learner_node: the Ray node id of the pool's creator: ``shm://`` is
            served only there.
        num_envs: host one vector instance of this many envs per client
            (``relay.serve(..., num_envs=)``: one message steps them all), or
            None (single envs).
        settings: :class:`relay.Settings` overrides of the servers (``token``, ...).

    Raises:
        ConfigError: ``env`` is an id Gymnasium does not know, or a bad option.
        TransportError: a listener cannot bind.
    """

    def __init__(self, env: Any, *, meta: dict[str, Any], network: str,
                 listen_options: dict[str, str], shm_name: str | None,
                 learner_node: str | None, num_envs: int | None,
                 settings: dict[str, Any]) -> None:
        import gymnasium as gym
        import ray

        if isinstance(env, str):
            try:
                gym.spec(env)
            except gym.error.Error as exc:
                raise relay.ConfigError(f"cannot serve {env!r}: {exc}") from exc
        self._node_id = ray.get_runtime_context().get_node_id()
        ip = ray.util.get_node_ip_address()
        host = f"[{ip}]" if ":" in ip else ip
        self._servers: list[Any] = []
        try:
            listen = URL(network, f"{host}:0").with_options(**listen_options)
            self._network = relay.serve(env, listen, num_envs=num_envs, **settings)
            self._servers.append(self._network)
            self._shm = None
            if shm_name is not None and self._node_id == learner_node:
                self._shm = relay.serve(env, f"shm://{shm_name}", num_envs=num_envs,
                                        **settings)
                self._servers.append(self._shm)
        except BaseException:
            self.close()
            raise
        self._info = {
            **meta,
            "node_id": self._node_id,
            "node_ip": ip,
            "pid": os.getpid(),
            "network_url": str(self._network.address.without_options()),
            "shm_url": None if self._shm is None else str(self._shm.address),
            "shm_socket": None if self._shm is None else _socket_path(shm_name),
        }

    def info(self) -> dict[str, Any]:
        """Where this actor serves: ``network_url`` (``SCHEME://NODE_IP:PORT``),
        ``shm_url`` and its socket file (or None), ``node_id``, ``node_ip``,
        ``pid``, and the pool's description."""
        return self._info

    def placement_group(self) -> Any:
        """The Ray placement group this actor was scheduled in, or None."""
        import ray

        return ray.util.get_current_placement_group()

    def close(self) -> None:
        """Close every server: their connections end and their envs are closed, and
        the ``shm://`` socket file is removed; idempotent."""
        for server in self._servers:
            server.close()
        self._servers = []


def _socket_path(name: str | None) -> str:
    from relay.transports.shm import socket_path

    return str(socket_path(name or ""))
