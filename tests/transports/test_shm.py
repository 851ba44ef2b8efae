"""The ``shm://`` transport: the shared compliance suite plus shm-specific behaviour."""

from __future__ import annotations

import mmap
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import shm_peer
from gymnasium.utils.env_match import check_environments_match

import relay
from relay.core.config import Settings
from relay.core.errors import ConnectionLost, InvalidURL, RemoteEnvError
from relay.core.plugins import get_transport
from relay.core.url import URL, make_url
from relay.testing import TransportCompliance, check_env_as_local
from relay.transports.shm import ShmChannel, socket_path, sweep_orphans
from relay.transports.shm._ring import _TABLE, _W_SEQ, _W_ZERO

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")


def relay_entries() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if "relay_" in n}


NOBODY = "shm://nobody-listens-here"


class TestShm(TransportCompliance):
    url = "shm://0"
    unreachable_url = NOBODY

    def declare(self, address: URL, nbytes: int) -> ShmChannel:
        """A real client whose (sparse) ring of ``nbytes`` holds one record that
        declares a frame of ``nbytes``: more than the ring holds after the table."""
        client = get_transport("shm").connect(
            address.set(query={"segment_size": str(nbytes), "spin": "0"}), Settings(),
            timeout=5.0)
        ctl = client._octl
        ctl[_TABLE], ctl[_TABLE + 1] = 1, nbytes
        ctl[_W_ZERO] = ctl[_W_SEQ] = 1
        client._out_sem.release()
        return client


class TestShmSmallSegments(TransportCompliance):
    """Every message over 4 KiB grows the ring: exercises the grow path."""

    url = "shm://0?segment_size=4096"
    unreachable_url = f"{NOBODY}?segment_size=4096"


class TestShmNoSpin(TransportCompliance):
    """The pure semaphore path (no spinning)."""

    url = "shm://0?spin=0"
    unreachable_url = f"{NOBODY}?spin=0"


class TestShmWithoutTimedWait(TransportCompliance):
    """The wait used where sem_timedwait is missing (macOS): trywait and sleep."""

    url = "shm://0?spin=0"
    unreachable_url = f"{NOBODY}?spin=0"

    @pytest.fixture(autouse=True)
    def no_timed_wait(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from relay.transports.shm import _channel

        monkeypatch.setattr(_channel, "_SEM_TIMEOUT", False)


class TestShmWeakOrder(TransportCompliance):
    """The path of CPUs without total store order (not x86): no spinning, every
    publication posted, every message fetched after a semaphore wait."""

    url = "shm://0?segment_size=4096"  # also the grow path, posted twice per grow
    unreachable_url = f"{NOBODY}?segment_size=4096"

    @pytest.fixture(autouse=True)
    def weak_order(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from relay.transports.shm import _channel, _rendezvous, _send

        for module in (_send, _channel, _rendezvous):  # posts, waits, the spin option
            monkeypatch.setattr(module, "_STRONG_ORDER", False)


# ---------------------------------------------------------------------------
# Helpers

PEER = Path(__file__).with_name("shm_peer.py")


def entries_of(*pids: int) -> set[str]:
    """relay's /dev/shm entries created by these pids (other test runs may share /dev/shm)."""
    wanted = {str(p) for p in pids}
    found = set()
    for name in relay_entries():
        parts = name.removeprefix("sem.").split("_")
        if len(parts) == 3 and parts[1] in wanted:
            found.add(name)
    return found


def start_peer(*args: str) -> tuple[subprocess.Popen, str]:
    """Start shm_peer.py with ``args``; return it and its first stdout line."""
    proc = subprocess.Popen([sys.executable, str(PEER), *args], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    ready = select.select([proc.stdout], [], [], 30)[0]
    if not ready:
        proc.kill()
        pytest.fail(f"shm_peer {args} did not start")
    return proc, proc.stdout.readline().strip()


def unique_name() -> str:
    return f"test-{os.getpid()}-{secrets.token_hex(3)}"


def pair(url: str = "shm://0", **settings) -> tuple:
    transport = get_transport("shm")
    settings = Settings(**settings)
    listener = transport.listen(make_url(url), settings)
    accepted: list = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept(5.0)))
    thread.start()
    client = transport.connect(listener.address.set(query=make_url(url).query), settings,
                               timeout=5.0)
    thread.join(10)
    for channel in (client, accepted[0]):  # as after relay's handshake
        channel.set_receive_limit(settings.max_message_size)
    return listener, client, accepted[0]


# ---------------------------------------------------------------------------
# The ring and the segments


@pytest.mark.parametrize("zero_copy", [False, True])
def test_ring_wraps_and_grows_under_a_lagging_reader(zero_copy: bool) -> None:
    """Random sizes (up to 3x the ring) sent ahead of the reader: all arrive intact."""
    listener, client, server = pair("shm://0?segment_size=65536", zero_copy=zero_copy)
    rng = np.random.default_rng(1)
    sizes = [int(s) for s in rng.integers(0, 40_000, 300)] + [200_000, 5, 150_000]
    payloads = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i, p in enumerate(payloads):
                client.send([i.to_bytes(4, "little"), memoryview(p)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        for i, p in enumerate(payloads):
            if i % 50 == 0:
                time.sleep(0.02)  # let the writer fill the ring
            head, body = server.recv(5.0)
            assert int.from_bytes(head, "little") == i
            assert bytes(body) == p.tobytes()
            assert isinstance(body, memoryview if zero_copy else bytearray)
        thread.join(10)
        assert not errors
    finally:
        client.close()
        server.close()
        listener.close()


@pytest.mark.parametrize("zero_copy", [False, True])
def test_pipelined_traffic_both_ways_never_overwrites_unread_or_held_records(
        zero_copy: bool) -> None:
    """Bursts each way through small, growing rings: the writer trusts the peer's
    ``wack`` (releases told along with its answers) and must never reuse space
    still unread, or still viewed by a zero-copy caller until its next recv."""
    listener, client, server = pair("shm://0?segment_size=4096", zero_copy=zero_copy)
    rng = np.random.default_rng(7)
    rounds = [[int(n) for n in rng.integers(0, 9000, int(k))]
              for k in rng.integers(1, 5, 60)]
    errors: list[BaseException] = []

    def body(tag: int, i: int, n: int) -> bytes:
        return bytes([(tag * 131 + i * 7 + j) % 251 for j in range(min(n, 600))]) + \
            bytes([tag]) * max(n - 600, 0)

    def serve() -> None:
        try:
            for r, sizes in enumerate(rounds):
                for i, n in enumerate(sizes):  # (a zero-copy view lasts until the next recv)
                    head, data = server.recv(5.0)
                    assert bytes(head) == f"{r}:{i}".encode()
                    assert bytes(data) == body(1, i, n)
                for i, n in enumerate(sizes):
                    server.send([f"{r}:{i}".encode(), body(2, i, n)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        held = None
        for r, sizes in enumerate(rounds):
            for i, n in enumerate(sizes):
                client.send([f"{r}:{i}".encode(), body(1, i, n)])
            if held is not None:  # the server answers meanwhile: the view must stay intact
                time.sleep(0.002)
                assert bytes(held[1]) == held[0]
            for i, n in enumerate(sizes):
                head, data = client.recv(5.0)
                assert bytes(head) == f"{r}:{i}".encode()
                assert bytes(data) == body(2, i, n)
                held = (bytes(data), data)
        thread.join(10)
        assert not errors
    finally:
        client.close()
        server.close()
        listener.close()


def test_copies_are_fresh_and_zero_copy_views_the_segment() -> None:
    listener, client, server = pair()
    try:
        client.send([b"a" * 4096])
        first = server.recv(1.0)[0]
        client.send([b"b" * 4096])
        second = server.recv(1.0)[0]
        assert isinstance(first, bytearray) and not np.shares_memory(
            np.frombuffer(first, np.uint8), np.frombuffer(second, np.uint8))
        assert bytes(first) == b"a" * 4096
    finally:
        client.close(), server.close(), listener.close()
    listener, client, server = pair(zero_copy=True)
    try:
        client.send([b"c" * 4096])
        view = server.recv(1.0)[0]
        assert isinstance(view, memoryview) and isinstance(view.obj, mmap.mmap)
        assert bytes(view) == b"c" * 4096
    finally:
        client.close(), server.close(), listener.close()


def test_no_names_remain_once_connected() -> None:
    listener, client, server = pair()
    try:
        assert entries_of(os.getpid()) == set()
        client.send([b"x" * 3_000_000])  # grows the ring: a new segment, unlinked once mapped
        assert len(server.recv(5.0)[0]) == 3_000_000
        assert entries_of(os.getpid()) == set()
    finally:
        client.close(), server.close(), listener.close()


def mapped_relay_objects() -> set[str]:
    """Shared memory this process has mapped (/proc/self/maps): relay's segments
    and semaphores (glibc maps a semaphore it creates under a temporary name)."""
    found = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
                found.add(fields[5].strip().removesuffix(" (deleted)"))
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
@pytest.mark.parametrize("reader", ["server", "client"])
def test_close_releases_grown_rings_and_the_socket_file(
    reader: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rings grown both ways, and one grown ring the peer never read (its name still
    linked): after close nothing of them is linked in /dev/shm, mapped in this
    process, or left in the rendezvous directory."""
    monkeypatch.setenv("RELAY_SHM_DIR", str(tmp_path))
    before = mapped_relay_objects()
    listener, client, server = pair("shm://0?segment_size=4096")
    sockets = list(tmp_path.iterdir())
    assert [p.name for p in sockets] == [f"relay-{os.getuid()}"]
    assert [p.name for p in sockets[0].iterdir()] == [f"{listener.address.address}.sock"]
    try:
        client.send([b"c" * 100_000])  # grows client -> server
        assert len(server.recv(5.0)[0]) == 100_000
        server.send([b"s" * 100_000])  # grows server -> client
        assert len(client.recv(5.0)[0]) == 100_000
        writer = server if reader == "client" else client
        writer.send([b"g" * 1_000_000])  # grows again; the reader never maps it
        assert len(entries_of(os.getpid())) == 1  # that segment's name is still linked
        mapped = mapped_relay_objects() - before
        # the rings in use (one grown twice, one once, one still read), 2 semaphores
        # (both ends of a channel share the mapping glibc keeps per name)
        assert len([m for m in mapped if "/relay_" in m]) == 3 and len(mapped) == 3 + 2
    finally:
        client.close(), server.close(), listener.close()
    assert entries_of(os.getpid()) == set()
    assert mapped_relay_objects() <= before
    assert list(sockets[0].iterdir()) == []


ECHO = """
import random
import sys
import time
from relay.core.config import Settings
from relay.core.url import make_url
from relay.transports import shm
from relay.transports.shm import _channel
_channel.SLICE = 60.0  # a lost wake-up would hang, not cost 50 ms
channel = shm.ShmTransport().connect(make_url(sys.argv[1]), Settings(), timeout=10.0)
rng = random.Random(0)
while True:
    frames = channel.recv(None)
    until = time.perf_counter() + rng.random() * 2e-5  # answer at varied moments
    while time.perf_counter() < until:
        pass
    channel.send(frames)
"""


@pytest.mark.parametrize("spin", [0, 3])
def test_no_wake_up_is_lost_between_processes(spin: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader's ``rwait`` flag against the writer's post-only-if-waiting.

    Slices of 60 s: a sleeping reader that missed its post would time out.  With a
    3 µs spin the reader keeps going to sleep just as the answer arrives: the race.
    """
    from relay.transports.shm import _channel

    monkeypatch.setattr(_channel, "SLICE", 60.0)
    listener = get_transport("shm").listen(make_url(f"shm://0?spin={spin}"), Settings())
    proc = subprocess.Popen([sys.executable, "-c", ECHO,
                             listener.address.render() + f"?spin={spin}"])
    try:
        channel = listener.accept(10.0)
        for i in range(2000):
            channel.send([i.to_bytes(4, "little"), b"x" * (i % 7)])
            head, body = channel.recv(10.0)
            assert int.from_bytes(head, "little") == i and len(body) == i % 7
        channel.close()
    finally:
        proc.kill()
        proc.wait()
        listener.close()


def test_close_from_another_thread_ends_a_blocked_recv() -> None:
    listener, client, server = pair("shm://0?spin=0")
    try:
        threading.Timer(0.2, client.close).start()
        start = time.monotonic()
        with pytest.raises(ConnectionLost):
            client.recv(10.0)
        assert time.monotonic() - start < 2.0
        with pytest.raises(ConnectionLost):
            server.recv(5.0)  # and the peer hears of it
    finally:
        client.close(), server.close(), listener.close()


def test_received_message_over_the_receivers_limit_drops_the_connection() -> None:
    transport = get_transport("shm")
    listener = transport.listen(make_url("shm://0"), Settings(max_message_size=1000))
    accepted: list = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept(5.0)))
    thread.start()
    client = transport.connect(listener.address, Settings(max_message_size=10_000), timeout=5)
    thread.join(10)
    server = accepted[0]
    server.set_receive_limit(1000)
    try:
        client.send([b"x" * 5000])
        with pytest.raises(ConnectionLost, match="max_message_size=1000"):
            server.recv(5.0)
        with pytest.raises(ConnectionLost):
            server.recv(0.1)
    finally:
        client.close(), server.close(), listener.close()


def test_listen_twice_on_one_name_is_refused() -> None:
    name = unique_name()
    first = get_transport("shm").listen(make_url(f"shm://{name}"), Settings())
    try:
        with pytest.raises(InvalidURL, match="already listened"):
            get_transport("shm").listen(make_url(f"shm://{name}"), Settings())
    finally:
        first.close()
    get_transport("shm").listen(make_url(f"shm://{name}"), Settings()).close()


@pytest.mark.parametrize("name", ["", "a/b", "../x", "x" * 200])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidURL):
        get_transport("shm").listen(URL("shm", name), Settings())


# ---------------------------------------------------------------------------
# Peer death and cleanup


def test_client_killed_while_server_waits_is_connection_lost() -> None:
    name = unique_name()
    listener = get_transport("shm").listen(make_url(f"shm://{name}"), Settings())
    accepted: list = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept(20.0)))
    thread.start()
    proc, line = start_peer("channel", name)
    try:
        thread.join(20)
        channel = accepted[0]
        assert line == "sent" and bytes(channel.recv(5.0)[0]) == b"hello"
        threading.Timer(0.2, proc.kill).start()
        start = time.monotonic()
        with pytest.raises(ConnectionLost):
            channel.recv(10.0)  # the deadline: lost must come long before it
        assert time.monotonic() - start < 2.0
        channel.close()
        proc.wait(10)
        assert entries_of(os.getpid(), proc.pid) == set()
    finally:
        proc.kill()
        listener.close()


def test_server_killed_mid_step_then_a_new_server_serves() -> None:
    name = unique_name()
    server, _ = start_peer("serve", name)
    env = relay.make(f"shm://{name}", delay=5.0, timeout=30.0)
    try:
        env.reset(seed=0)
        threading.Timer(0.3, server.kill).start()
        start = time.monotonic()
        with pytest.raises(ConnectionLost):
            env.step(0)
        assert time.monotonic() - start < 3.0
    finally:
        env.close()
        server.wait(10)
    assert entries_of(os.getpid(), server.pid) == set()
    server2, line = start_peer("serve", name)  # binds over the dead server's socket file
    try:
        env = relay.make(f"shm://{name}", delay=0.0)
        env.reset(seed=0)
        assert env.step(1)[0].shape == (4,)
        env.close()
    finally:
        server2.terminate()
        server2.wait(10)
    assert server2.returncode == 0  # serve_forever stops gracefully on SIGTERM
    assert entries_of(server2.pid) == set()
    assert not socket_path(name).exists()  # and removes the rendezvous socket too


def test_relay_cleanup_removes_the_socket_of_a_killed_listener() -> None:
    name = unique_name()
    server, _ = start_peer("serve", name)
    server.kill()
    server.wait(10)
    assert socket_path(name).exists()
    result = subprocess.run([sys.executable, "-m", "relay", "cleanup"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"removed {socket_path(name)}" in result.stdout
    assert not socket_path(name).exists()


def test_sweep_sockets_of_given_names_removes_only_their_stale_files() -> None:
    from relay.transports.shm import sweep_sockets

    stale = [unique_name(), unique_name()]
    for name in stale:  # a socket file nobody listens on (a killed server's)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(socket_path(name)))
        sock.close()
    with relay.serve("CartPole-v1", f"shm://{unique_name()}") as live:
        try:
            removed = sweep_sockets([stale[0], live.address.address])
            assert removed == [str(socket_path(stale[0]))]
            assert socket_path(live.address.address).exists()
            assert socket_path(stale[1]).exists()  # not named: left alone
        finally:
            socket_path(stale[1]).unlink()


def test_client_killed_mid_step_server_keeps_serving() -> None:
    server = relay.serve(shm_peer.factory, "shm://0")
    try:
        name = server.address.address
        client, line = start_peer("client", name)
        assert line == "stepping"
        time.sleep(0.2)
        client.kill()
        client.wait(10)
        deadline = time.monotonic() + 10
        while server._threads and time.monotonic() < deadline:  # the connection ends
            time.sleep(0.05)
        assert not server._threads
        env = relay.make(server.address, delay=0.0)
        env.reset(seed=1)
        env.step(0)
        env.close()
        assert entries_of(os.getpid(), client.pid) == set()
    finally:
        server.close()


def test_sigterm_unlinks_pending_names_and_still_terminates() -> None:
    proc, line = start_peer("pending")
    segment, semaphore = (n.lstrip("/") for n in line.split())
    assert entries_of(proc.pid) == {segment, f"sem.{semaphore}"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM
    assert entries_of(proc.pid) == set()


def test_sigint_unlinks_and_keyboard_interrupt_still_happens() -> None:
    proc, line = start_peer("pending")
    assert len(entries_of(proc.pid)) == 2
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert out.strip() == "interrupted" and proc.returncode == 0
    assert entries_of(proc.pid) == set()


def test_sigkill_orphans_are_swept_by_listen_and_by_relay_cleanup() -> None:
    # Other processes (a parallel test run) may sweep /dev/shm too, so only the end
    # state is asserted here; the reporting is checked in the next test.
    proc, _ = start_peer("pending")
    proc.kill()
    proc.wait(10)
    get_transport("shm").listen(make_url("shm://0"), Settings()).close()
    assert entries_of(proc.pid) == set()

    proc, _ = start_peer("pending")
    proc.kill()
    proc.wait(10)
    result = subprocess.run([sys.executable, "-m", "relay", "cleanup"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "relay cleanup:" in result.stdout
    assert entries_of(proc.pid) == set()


def test_sweep_removes_exactly_the_entries_of_dead_pids(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    names = {
        f"relay_{dead_pid}_0123abcd": True,
        f"sem.relay_{dead_pid}_89abcdef": True,
        f"relay_{os.getpid()}_0123abcd": False,  # alive: kept
        f"relay_{dead_pid}_xyz": False,  # not relay's pattern: kept
        "other_file": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"")
    removed = sweep_orphans(tmp_path)
    assert sorted(removed) == sorted(n for n, gone in names.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for n, gone in names.items() if not gone)


def test_live_processes_segments_are_not_swept() -> None:
    proc, _ = start_peer("pending")
    try:
        assert len(entries_of(proc.pid)) == 2
        assert not set(sweep_orphans()) & entries_of(proc.pid)
        assert len(entries_of(proc.pid)) == 2
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------------------
# End to end with Gymnasium


def test_200_connect_step_close_cycles_leave_nothing() -> None:
    # relay's names carry the creator's pid: ours (client and server are in this
    # process) must all be gone; other test runs may share /dev/shm meanwhile
    with relay.serve("CartPole-v1", "shm://0") as server:
        for i in range(200):
            env = relay.make(server.address)
            env.reset(seed=i)
            env.step(i % 2)
            env.close()
        assert entries_of(os.getpid()) == set()
        deadline = time.monotonic() + 10
        while server._threads and time.monotonic() < deadline:
            time.sleep(0.02)  # the server's connection threads finish
        assert not server._threads
    assert entries_of(os.getpid()) == set()


def test_64_mb_observation_round_trips_and_over_the_limit_is_a_clear_error() -> None:
    size = 64 << 20
    with relay.serve(shm_peer.factory, "shm://0", max_message_size=80 << 20) as server:
        env = relay.make(server.address, "big", size=size)
        try:
            obs, _ = env.reset(seed=5)
            assert obs.dtype == np.uint8 and obs.shape == (size,)
            assert np.array_equal(obs, shm_peer.big_obs(5, 0, size))
            obs, *_ = env.step(0)
            assert np.array_equal(obs, shm_peer.big_obs(5, 1, size))
        finally:
            env.close()
        big = relay.make(server.address, "big", size=96 << 20)
        try:
            with pytest.raises(RemoteEnvError, match=r"max_message_size=83886080"):
                big.reset(seed=0)
            with pytest.raises(RemoteEnvError, match=r"MessageTooLarge"):
                big.step(0)
        finally:
            big.close()
        env = relay.make(server.address, "big", size=1000)  # the server still serves
        assert np.array_equal(env.reset(seed=2)[0], shm_peer.big_obs(2, 0, 1000))
        env.close()


def test_client_limit_on_a_big_observation_is_a_clear_error() -> None:
    with relay.serve(shm_peer.factory, "shm://0") as server:
        env = relay.make(server.address, "big", size=4 << 20, max_message_size=1 << 20)
        with pytest.raises(ConnectionLost, match="max_message_size=1048576"):
            env.reset(seed=0)
        env.close()


@pytest.mark.parametrize("zero_copy", [False, True])
def test_consecutive_observations_share_memory_only_with_zero_copy(zero_copy: bool) -> None:
    with relay.serve(shm_peer.factory, "shm://0") as server:
        env = relay.make(server.address, "big", size=100_000, zero_copy=zero_copy)
        try:
            first, _ = env.reset(seed=3)
            kept = first.copy()
            second, *_ = env.step(0)
            assert np.array_equal(second, shm_peer.big_obs(3, 1, 100_000))
            base = first
            while isinstance(base, np.ndarray) and base.base is not None:
                base = base.base
            if zero_copy:  # a view into the shared segment, valid until the next call
                if isinstance(base, memoryview):  # numpy may keep the view or its mmap
                    base = base.obj
                assert isinstance(base, mmap.mmap)
            else:
                assert not np.shares_memory(first, second)
                assert first.flags.writeable and np.array_equal(first, kept)
        finally:
            env.close()


def test_check_env_passes_over_shm() -> None:
    with relay.serve("CartPole-v1", "shm://0") as server:
        env = relay.make(server.address)
        try:
            check_env_as_local(env, gym.make("CartPole-v1").unwrapped, skip_render_check=True)
        finally:
            env.close()


@pytest.mark.parametrize("env_id", ["CartPole-v1", pytest.param("ALE/Pong-v5",
                                                                marks=pytest.mark.slow)])
def test_remote_matches_local(env_id: str) -> None:
    if env_id.startswith("ALE/"):
        ale_py = pytest.importorskip("ale_py")
        gym.register_envs(ale_py)
    with relay.serve(env_id, "shm://0") as server:
        env = relay.make(server.address)
        try:
            check_environments_match(gym.make(env_id), env, num_steps=300, seed=11,
                                     skip_render=True)
        finally:
            env.close()
