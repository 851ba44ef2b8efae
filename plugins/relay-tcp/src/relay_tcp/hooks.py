"""relay-tcp's plugin hooks, named by the entry point ``[project.entry-points.relay] tcp``.

Only a ``"module:Class"`` string is registered, so loading the plugin imports
nothing but relay itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import relay

if TYPE_CHECKING:
    from relay.core.plugins import Register


@relay.hookimpl
def relay_register_transports(register: Register) -> None:
    register("tcp", "relay_tcp.transport:TcpTransport", extra="relay-tcp")
