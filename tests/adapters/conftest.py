"""Fixtures of the adapter tests: servers that are closed after each test."""

import pytest

import relay


@pytest.fixture
def serve(listen_url):
    """``serve(env, url=listen_url, **settings)``: a server on each transport in turn."""
    servers = []

    def start(env, url=listen_url, **settings):
        server = relay.serve(env, url, **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def serve_tcp():
    """Servers on zmq+tcp (several may run at once: each gets its own port)."""
    servers = []

    def start(env, **settings):
        server = relay.serve(env, "zmq+tcp://127.0.0.1:0", **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
