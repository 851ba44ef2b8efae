"""One simulated Ray cluster for the relay-ray tests: a head and two worker nodes.

Every node of it is this machine, and all traffic stays on loopback: with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (set before Ray is imported) the node
IP is 127.0.0.1.  ``RAY_AUTH_MODE=disabled``: no token file.  The cluster is
shut down at the end even when a test fails.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402


@dataclass
class Nodes:
    cluster: Any
    head: str
    """Node ids: the head (the driver's node), worker ``a`` and worker ``b``."""
    a: str
    b: str


@pytest.fixture(scope="session")
def nodes() -> Iterator[Nodes]:
    """Head {"head": 8}, worker a {"a": 8, "worker": 8}, worker b {"b": 8, "worker": 8};
    4 logical CPUs each; the driver connected (namespace ``relay-ray-tests``)."""
    cluster = Cluster()
    try:
        head = cluster.add_node(num_cpus=4, resources={"head": 8})
        a = cluster.add_node(num_cpus=4, resources={"a": 8, "worker": 8})
        b = cluster.add_node(num_cpus=4, resources={"b": 8, "worker": 8})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="relay-ray-tests", log_to_driver=False)
        yield Nodes(cluster, head.node_id, a.node_id, b.node_id)
    finally:
        ray.shutdown()
        cluster.shutdown()
