"""dm_env_rpc wire compatibility: the codec ``dm_env_rpc`` (``?codec=dm_env_rpc``).

dm_env_rpc (github.com/google-deepmind/dm_env_rpc) is DeepMind's protocol for
remote environments: one gRPC bidirectional stream at
``/dm_env_rpc.v1.Environment/Process`` carrying ``EnvironmentRequest`` /
``EnvironmentResponse`` protobuf messages.  Its messages come from the
dm-env-rpc package's own generated modules (``dm_env_rpc.v1.dm_env_rpc_pb2``).

It is a whole protocol, not a relay/1 serialization, so the codec does not
encode envelopes: choosing it makes

* ``relay.serve(env, "grpc://HOST:PORT?codec=dm_env_rpc")`` start a
  dm_env_rpc server (:mod:`.server`) that stock dm_env_rpc clients
  (``dm_env_rpc.v1.connection`` + ``dm_env_adaptor``) use, its environments
  hosted by the same :class:`~relay.server.EnvHost` as for relay clients;
* ``relay.make("grpc://HOST:PORT?codec=dm_env_rpc", ...)`` (and the dm_env
  client) drive a stock dm_env_rpc server (:mod:`.client`).

Spaces and values map to TensorSpecs and Tensors as :mod:`.tensors` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from relay.core.errors import CodecError

if TYPE_CHECKING:
    from relay.codecs.base import Buffer
    from relay.compat.dm_env_rpc.client import DmEnvRpcConnection
    from relay.compat.dm_env_rpc.server import DmEnvRpcServer
    from relay.core.config import Settings
    from relay.core.messages import Envelope
    from relay.core.url import URL
    from relay.server import EnvFactory

__all__ = ["DmEnvRpcCodec"]


class DmEnvRpcCodec:
    """The peer protocol dm_env_rpc, registered as codec ``dm_env_rpc``.

    A *peer protocol* codec owns both ends of the conversation instead of
    serializing relay/1 envelopes: :meth:`serve` replaces relay's server and
    :meth:`open_client` replaces relay's client connection (both hooks are
    looked up by :func:`relay.serve` and :meth:`relay.connection.ClientConnection.open`).
    """

    name = "dm_env_rpc"
    content_type = "application/grpc+proto; proto=dm_env_rpc.v1.EnvironmentRequest"
    peer_protocol = True

    def encode(self, envelope: Envelope) -> list[Buffer]:
        raise CodecError("dm_env_rpc is a peer protocol over grpc://, not a relay/1 codec")

    def decode(self, frames: Sequence[Buffer], *, zero_copy: bool = False) -> Envelope:
        raise CodecError("dm_env_rpc is a peer protocol over grpc://, not a relay/1 codec")

    def serve(self, factory: EnvFactory, url: URL, settings: Settings) -> DmEnvRpcServer:
        """Start a dm_env_rpc server on ``url`` (``grpc://HOST:PORT``) for ``factory``'s envs."""
        from relay.compat.dm_env_rpc.server import DmEnvRpcServer

        return DmEnvRpcServer(factory, url, settings)

    def open_client(self, url: URL, settings: Settings) -> DmEnvRpcConnection:
        """Connect to the dm_env_rpc server at ``url``; answers relay/1 requests."""
        from relay.compat.dm_env_rpc.client import DmEnvRpcConnection

        return DmEnvRpcConnection(url, settings)

    def __repr__(self) -> str:
        return "<DmEnvRpcCodec>"


