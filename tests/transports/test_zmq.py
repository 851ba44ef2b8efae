"""The ZeroMQ transport: the compliance suite over tcp and ipc, then real servers."""

from __future__ import annotations

import pytest

from relay.testing import TransportCompliance


class TestZmqTcp(TransportCompliance):
    url = "zmq+tcp://127.0.0.1:0"

    @pytest.fixture(autouse=True)
    def _unreachable(self, free_port: int) -> None:
        self.unreachable_url = f"zmq+tcp://127.0.0.1:{free_port}"


class TestZmqIpc(TransportCompliance):
    @pytest.fixture(autouse=True)
    def _paths(self, tmp_path) -> None:
        self.url = f"zmq+ipc://{tmp_path}/relay.sock"
        self.unreachable_url = f"zmq+ipc://{tmp_path}/nobody.sock"
