"""Fuzzing in CI: ~20,000 random, mutated, deeply nested and huge-length frames
into both codecs' decode and the server handshake (fuzz_peer.py), in a child
process so that a crash fails this test instead of killing pytest."""

import subprocess
import sys
from pathlib import Path

import pytest

PEER = Path(__file__).with_name("fuzz_peer.py")


@pytest.mark.timeout(300)
def test_codecs_and_handshake_survive_fuzzing():
    child = subprocess.run([sys.executable, str(PEER)], capture_output=True, text=True,
                           timeout=290)
    assert child.returncode == 0, (child.returncode, child.stdout[-3000:], child.stderr[-5000:])
    inputs = int(child.stdout.split("fuzzed ")[-1].split()[0])
    assert inputs >= 20_000
