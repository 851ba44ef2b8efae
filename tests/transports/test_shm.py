"""The ``shm://`` transport: the shared compliance suite plus shm-specific behaviour."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from relay.core.config import Settings
from relay.core.errors import ConnectionLost
from relay.core.plugins import get_transport
from relay.core.url import make_url
from relay.testing import TransportCompliance

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")


def relay_entries() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if "relay_" in n}


class TestShm(TransportCompliance):
    url = "shm://0"
    unreachable_url = "shm://nobody-listens-here"


class TestShmSmallSegments(TransportCompliance):
    """Every message over 4 KiB grows the ring: exercises the grow path."""

    url = "shm://0?segment_size=4096"
    unreachable_url = None


class TestShmNoSpin(TransportCompliance):
    """The pure semaphore path (no spinning)."""

    url = "shm://0?spin=0"
