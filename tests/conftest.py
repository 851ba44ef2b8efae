import os
import socket

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every transport the Gymnasium end-to-end tests run over.  `{tmp}` is replaced
# by a short temporary directory.  relay's own transports are never skipped (a
# broken one fails); tcp:// is the relay-tcp plugin (plugins/), skipped when it
# is not installed.
TRANSPORT_URLS = [
    "memory://0",
    "shm://0",
    "zmq+tcp://127.0.0.1:0",
    "zmq+ipc://{tmp}/relay.sock",
    "tcp://127.0.0.1:0",
    "ws://127.0.0.1:0/relay",
    "grpc://127.0.0.1:0",
]


@pytest.fixture(params=TRANSPORT_URLS)
def listen_url(request, tmp_path_factory) -> str:
    """A URL to serve on, one per transport."""
    url = request.param
    if url.startswith("tcp://"):
        pytest.importorskip("relay_tcp", reason="the relay-tcp plugin is not installed")
    if "{tmp}" in url:
        # pytest's own temporary directory (it keeps the last few runs' only), with a
        # short name: an ipc path must stay under ~107 bytes
        url = url.replace("{tmp}", str(tmp_path_factory.mktemp("ipc")))
    return url


@pytest.fixture(params=["shm://0", "zmq+tcp://127.0.0.1:0"])
def serve_shm_zmq(request):
    """``start(env, **settings)`` serves on shm, then (second run) on zmq; closed after."""
    import relay

    servers = []

    def start(env, **settings):
        server = relay.serve(env, request.param, **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
