"""The transport compliance suite every transport subclasses (plugins too), an
environment for testing servers' error paths (:class:`FaultyEnv`), the
step-for-step comparison of a remote vector env with a local one
(:func:`run_both`), and Gymnasium's env checker held to a local env's
warnings (:func:`check_env_as_local`).

Usage, in a transport's test module::

    from relay.testing import TransportCompliance

    class TestZmqTcp(TransportCompliance):
        url = "zmq+tcp://127.0.0.1:0"

The suite checks the contract written in :mod:`relay.transports.base`:
multi-frame order and boundaries, bit-identical payloads, timeouts, peer
death, the message-size limit, the small limit before the handshake, several
clients on one listening port, idempotent close, the real bound address, and
work in a process holding over 1,024 file descriptors.  With :meth:`TransportCompliance.declare`
implemented it also checks that lengths a peer declares allocate nothing.
Only :class:`TransportCompliance` needs pytest; the module imports without it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

try:
    import pytest
except ImportError:  # only TransportCompliance needs pytest (it has no use without it)
    pytest = None  # type: ignore[assignment]

from relay.core.config import Settings
from relay.core.errors import ConnectError, ConnectionLost, MessageTooLarge, Timeout
from relay.core.plugins import get_transport
from relay.core.url import URL, make_url
from relay.transports.base import HANDSHAKE_LIMIT, Channel, Listener

__all__ = ["FaultyEnv", "ScaleReward", "TransportCompliance", "assert_same_infos",
           "check_env_as_local", "faulty", "make_certificate", "run_both"]



def _fixture(function: Any) -> Any:
    """``pytest.fixture``, or the function unchanged when pytest is missing."""
    return function if pytest is None else pytest.fixture(function)


def _needs_proc(function: Any) -> Any:
    """Skip a test where ``/proc/self/statm`` (the process's memory) is missing."""
    if pytest is None:
        return function
    return pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                              reason="reads /proc")(function)

class FaultyEnv(gym.Env[np.ndarray, Any]):
    """Raises ``ZeroDivisionError`` on action 1, sleeps 1 s on action 2, else counts.

    Observation: float32 ``(1,)``, the number of steps since reset (also
    ``info["count"]``); reward 1.0; never ends.
    """

    observation_space = gym.spaces.Box(0, 1000, (1,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.count = 0
        return np.zeros(1, np.float32), {"count": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if action == 1:
            raise ZeroDivisionError("the env divided by zero")
        if action == 2:
            time.sleep(1.0)
        self.count += 1
        return np.full(1, self.count, np.float32), 1.0, False, False, {"count": self.count}


class ScaleReward(gym.RewardWrapper[np.ndarray, Any]):
    """Multiplies the reward by ``scale``: a wrapper outside ``gymnasium.wrappers``, for
    tests of the servers' ``allow_wrappers``."""

    def __init__(self, env: gym.Env[np.ndarray, Any], scale: float) -> None:
        super().__init__(env)
        self.scale = scale

    def reward(self, reward: Any) -> Any:
        return reward * self.scale


def faulty(env_id: str | None = None, **kwargs: Any) -> FaultyEnv:
    """An env factory for ``relay.serve``: a :class:`FaultyEnv` whatever the id."""
    return FaultyEnv()


def assert_same_infos(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Assert two vector infos equal: same keys in the same order, arrays equal with
    their dtype, nested infos (``final_info``) and object arrays (``final_obs``) item
    by item."""
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, dict):
            assert_same_infos(got[key], value)
            continue
        got_value = got[key]
        if isinstance(value, np.ndarray) and value.dtype.hasobject:
            assert got_value.dtype.hasobject and got_value.shape == value.shape
            for a, b in zip(got_value.reshape(-1), value.reshape(-1), strict=True):
                if isinstance(b, dict):
                    assert_same_infos(a, b)
                else:
                    assert (a is None and b is None) or (
                        np.array_equal(a, b) and np.asarray(a).dtype == np.asarray(b).dtype)
            continue
        np.testing.assert_array_equal(got_value, value)
        assert np.asarray(got_value).dtype == np.asarray(value).dtype, key


def run_both(remote: Any, local: Any, steps: int, seed: Any, actions_seed: int = 0,
             reset_seeds: Any = None) -> int:
    """Drive two vector envs with the same seeds and actions; assert them equal at
    every step (observations bit for bit, rewards, terminations, truncations with
    their dtypes, infos).  In ``DISABLED`` autoreset mode, ended sub-envs are reset
    with ``reset_mask`` in both.

    Returns:
        The number of sub-env episodes that ended.
    """
    obs_r, info_r = remote.reset(seed=reset_seeds if reset_seeds is not None else seed)
    obs_l, info_l = local.reset(seed=reset_seeds if reset_seeds is not None else seed)
    np.testing.assert_array_equal(obs_r, obs_l)
    assert_same_infos(info_r, info_l)
    disabled = local.metadata.get("autoreset_mode") is gym.vector.AutoresetMode.DISABLED
    local.action_space.seed(actions_seed)
    ended = 0
    for _ in range(steps):
        actions = local.action_space.sample()
        got, want = remote.step(actions), local.step(actions)
        for g, w in zip(got[:4], want[:4], strict=True):
            np.testing.assert_array_equal(g, w)
            assert g.dtype == w.dtype and g.shape == w.shape
        assert_same_infos(got[4], want[4])
        done = want[2] | want[3]
        ended += int(np.sum(done))
        if disabled and done.any():
            got_reset = remote.reset(options={"reset_mask": done})
            want_reset = local.reset(options={"reset_mask": done})
            np.testing.assert_array_equal(got_reset[0], want_reset[0])
            assert_same_infos(got_reset[1], want_reset[1])
    return ended


class Closable(Protocol):
    def close(self) -> None: ...


def _rss() -> int:
    """Resident memory of this process, bytes (Linux ``/proc``)."""
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def _open_files(count: int) -> Iterator[None]:
    """Hold ``count`` more open file descriptors (of ``/dev/null``) meanwhile,
    raising the soft ``RLIMIT_NOFILE`` limit when it is too low."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = count + 512
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    fds: list[int] = []
    try:
        fds.extend(os.open(os.devnull, os.O_RDONLY) for _ in range(count))
        yield
    finally:
        for fd in fds:
            os.close(fd)
        if soft != resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _listening_tcp_ports() -> set[int]:
    """The TCP ports this process listens on: the LISTEN rows of
    ``/proc/net/tcp`` and ``tcp6`` whose socket is one of its file descriptors."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def check_env_as_local(env: gym.Env[Any, Any], local: gym.Env[Any, Any] | None,
                       **kwargs: Any) -> None:
    """Gymnasium's ``check_env`` on ``env`` (a remote env), failing on any warning
    that ``local`` (the same env in this process, checked the same way) does not
    give: the checker warns about some envs' own traits (CartPole's infinite
    observation bounds), which are allowed; anything relay adds is not.
    ``local=None`` allows no warning.  ``kwargs`` go to both ``check_env`` calls.

    Raises:
        AssertionError: ``env`` gave warnings ``local`` did not (listed), or
            ``check_env`` failed.
    """
    extra = _checker_warnings(env, **kwargs)
    if local is not None:
        extra -= _checker_warnings(local, **kwargs)
    assert not extra, f"check_env warned about the remote env only: {sorted(extra)}"


def _checker_warnings(env: gym.Env[Any, Any], **kwargs: Any) -> set[str]:
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, **kwargs)
    return {str(w.message) for w in caught}


class TransportCompliance:
    """Subclass and set ``url`` (a listen URL, port 0 where there is a port).

    Override :meth:`declare` where the wire format carries message lengths.
    """

    url: str = ""
    max_message_size: int = 1 << 20
    #: a URL where nobody listens, for the connect-failure test (None: skip it)
    unreachable_url: str | None = None

    @_fixture
    def settings(self) -> Settings:
        return Settings(max_message_size=self.max_message_size, connect_timeout=3.0)

    @_fixture
    def listener(self, settings: Settings) -> Iterator[Listener]:
        url = make_url(self.url)
        listener = get_transport(url.scheme).listen(url, settings)
        yield listener
        listener.close()

    @_fixture
    def pair(self, listener: Listener, settings: Settings) -> Iterator[tuple[Channel, Channel]]:
        client, server = self.connect_pair(listener, settings)
        yield client, server
        client.close()
        server.close()

    @staticmethod
    def connect_pair(listener: Listener, settings: Settings, *, handshaken: bool = True
                     ) -> tuple[Channel, Channel]:
        """A connected ``(client, server)`` pair; ``handshaken``: with both receive
        limits raised to ``settings.max_message_size``, as after relay's handshake."""
        accepted: list[Channel] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept(5.0)))
        thread.start()
        client = get_transport(listener.address.scheme).connect(
            listener.address, settings, timeout=5.0)
        thread.join(10.0)
        assert accepted, "listener.accept() returned no channel"
        if handshaken:
            client.set_receive_limit(settings.max_message_size)
            accepted[0].set_receive_limit(settings.max_message_size)
        return client, accepted[0]

    def declare(self, address: URL, nbytes: int) -> Closable | None:
        """Connect to the listener at ``address`` the way a hostile client would:
        write only what announces a message of ``nbytes`` bytes (the header with
        its declared lengths, after the transport's own connection handshake),
        never its body, and return the open connection.  The listener's
        ``accept`` (running meanwhile in another thread) gives the channel it
        arrived on.

        None (the default): the transport has no declared lengths of its own on
        a wire (the memory tests are skipped).
        """
        return None

    def test_address_is_concrete(self, listener: Listener) -> None:
        address = listener.address
        assert isinstance(address, URL)
        if address.port is not None:
            assert address.port != 0

    def test_round_trip_keeps_frames(self, pair: tuple[Channel, Channel]) -> None:
        client, server = pair
        payload = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8)
        client.send([b"head", payload.data, b"", b"tail"])
        frames = server.recv(5.0)
        assert [bytes(f) for f in frames] == [b"head", payload.tobytes(), b"", b"tail"]
        server.send([b"answer"])
        assert [bytes(f) for f in client.recv(5.0)] == [b"answer"]

    def test_messages_arrive_in_order(self, pair: tuple[Channel, Channel]) -> None:
        client, server = pair
        for i in range(50):
            client.send([str(i).encode()])
        assert [bytes(server.recv(5.0)[0]) for _ in range(50)] == [
            str(i).encode() for i in range(50)
        ]

    def test_received_frames_stay_valid(self, pair: tuple[Channel, Channel]) -> None:
        client, server = pair
        client.send([b"a" * 5000])
        first = server.recv(5.0)
        client.send([b"b" * 5000])
        server.recv(5.0)
        assert bytes(first[0]) == b"a" * 5000

    def test_recv_timeout(self, pair: tuple[Channel, Channel]) -> None:
        client, _ = pair
        start = time.monotonic()
        with pytest.raises(Timeout):
            client.recv(0.2)
        assert time.monotonic() - start < 2.0

    def test_recv_zero_takes_a_waiting_message_or_times_out(
        self, pair: tuple[Channel, Channel]
    ) -> None:
        # recv(0) is one look: a driver's last check before it reports a Timeout
        client, server = pair
        with pytest.raises(Timeout):
            client.recv(0)
        server.send([b"waiting"])
        deadline = time.monotonic() + 5.0
        while True:  # a transport may need a moment to move it to the receiver
            try:
                frames = client.recv(0)
                break
            except Timeout:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert bytes(frames[0]) == b"waiting"
        with pytest.raises(Timeout):
            client.recv(0)

    def test_channel_usable_after_timeout(self, pair: tuple[Channel, Channel]) -> None:
        client, server = pair
        with pytest.raises(Timeout):
            client.recv(0.05)
        server.send([b"late"])
        assert bytes(client.recv(5.0)[0]) == b"late"

    def test_peer_close_is_connection_lost(self, pair: tuple[Channel, Channel]) -> None:
        client, server = pair
        server.close()
        with pytest.raises(ConnectionLost):
            client.recv(5.0)
        with pytest.raises(ConnectionLost):
            client.recv(0.1)

    def test_client_close_seen_by_server(self, pair: tuple[Channel, Channel]) -> None:
        client, server = pair
        client.close()
        with pytest.raises(ConnectionLost):
            server.recv(5.0)

    def test_send_over_limit(self, pair: tuple[Channel, Channel]) -> None:
        client, server = pair
        with pytest.raises(MessageTooLarge):
            client.send([b"x" * (self.max_message_size + 1)])
        client.send([b"still usable"])
        assert bytes(server.recv(5.0)[0]) == b"still usable"

    def test_message_at_limit(self, pair: tuple[Channel, Channel]) -> None:
        client, server = pair
        data = bytes(range(256)) * (self.max_message_size // 256)
        client.send([data])
        assert bytes(server.recv(10.0)[0]) == data

    def test_several_clients(self, listener: Listener, settings: Settings) -> None:
        pairs = [self.connect_pair(listener, settings) for _ in range(3)]
        try:
            for i, (client, _) in enumerate(pairs):
                client.send([f"client {i}".encode()])
            for i, (_, server) in enumerate(pairs):
                assert bytes(server.recv(5.0)[0]) == f"client {i}".encode()
                server.send([f"to {i}".encode()])
            for i, (client, _) in enumerate(pairs):
                assert bytes(client.recv(5.0)[0]) == f"to {i}".encode()
        finally:
            for client, server in pairs:
                client.close()
                server.close()

    def test_one_listening_port_for_every_client(self, listener: Listener,
                                                 settings: Settings) -> None:
        # clusters, NAT and Kubernetes Services expose fixed ports: no port per client
        port = listener.address.port
        if not port or not os.path.exists("/proc/net/tcp"):
            pytest.skip("not a TCP listener, or no /proc/net/tcp to look at")
        before = _listening_tcp_ports()
        assert port in before
        pairs = [self.connect_pair(listener, settings) for _ in range(3)]
        try:
            for client, server in pairs:
                client.send([b"hello"])
                server.recv(5.0)
            # a listener of an earlier test may still be closing: only new ports count
            assert _listening_tcp_ports() - before == set()
        finally:
            for client, server in pairs:
                client.close()
                server.close()

    def test_close_is_idempotent(self, pair: tuple[Channel, Channel]) -> None:
        client, server = pair
        client.close()
        client.close()
        server.close()
        server.close()
        # a closed channel refuses work the same way on both sides
        for channel in (client, server):
            with pytest.raises(ConnectionLost):
                channel.send([b"after close"])
            with pytest.raises(ConnectionLost):
                channel.recv(0.1)
            with pytest.raises(ConnectionLost):
                channel.recv(0)

    def test_accept_timeout(self, listener: Listener) -> None:
        with pytest.raises(Timeout):
            listener.accept(0.1)

    def test_small_limit_before_handshake(self, listener: Listener, settings: Settings
                                          ) -> None:
        # until set_receive_limit, a channel takes HANDSHAKE_LIMIT bytes (a Hello)
        client, server = self.connect_pair(listener, settings, handshaken=False)
        try:
            client.send([b"h" * (HANDSHAKE_LIMIT - 10), b"x" * 10])
            assert len(server.recv(5.0)[0]) == HANDSHAKE_LIMIT - 10
            server.send([b"w" * HANDSHAKE_LIMIT])
            assert len(client.recv(5.0)[0]) == HANDSHAKE_LIMIT
            client.send([b"h" * (HANDSHAKE_LIMIT + 1)])
            with pytest.raises(ConnectionLost):
                server.recv(5.0)
        finally:
            client.close()
            server.close()
        client, server = self.connect_pair(listener, settings, handshaken=False)
        try:  # a client protects itself from a server the same way
            server.send([b"w" * (HANDSHAKE_LIMIT + 1)])
            with pytest.raises(ConnectionLost):
                client.recv(5.0)
        finally:
            client.close()
            server.close()

    def test_set_receive_limit_takes_larger_messages(self, listener: Listener,
                                                     settings: Settings) -> None:
        client, server = self.connect_pair(listener, settings, handshaken=False)
        try:
            server.set_receive_limit(4 * HANDSHAKE_LIMIT)
            client.send([b"a" * (4 * HANDSHAKE_LIMIT)])
            assert len(server.recv(5.0)[0]) == 4 * HANDSHAKE_LIMIT
        finally:
            client.close()
            server.close()

    def _hostile_clients(self, limit: int, handshaken: bool) -> int:
        """Resident memory growth (bytes) of this process while four raw clients
        each declare a message of ``limit`` bytes to a listener with
        ``max_message_size=limit``, before or after the handshake."""
        if type(self).declare is TransportCompliance.declare:
            pytest.skip("the transport declares no lengths on a wire (declare())")
        url = make_url(self.url)
        settings = Settings(max_message_size=limit, connect_timeout=3.0, timeout=3.0)
        listener = get_transport(url.scheme).listen(url, settings)
        clients: list[Closable] = []
        servers: list[Channel] = []
        try:
            before = _rss()
            for _ in range(4):
                accepted: list[Channel] = []
                thread = threading.Thread(target=lambda into=accepted: into.append(
                    listener.accept(5.0)))
                thread.start()
                client = self.declare(listener.address, limit)
                thread.join(10.0)
                assert client is not None
                clients.append(client)
                assert accepted, "listener.accept() returned no channel"
                server = accepted[0]
                servers.append(server)
                if handshaken:
                    server.set_receive_limit(limit)
                    with pytest.raises((Timeout, ConnectionLost)):
                        server.recv(0.2)  # the body never comes
                else:
                    start = time.monotonic()
                    with pytest.raises(ConnectionLost):
                        server.recv(5.0)
                    assert time.monotonic() - start < 2.0, "refused only after a wait"
            return _rss() - before
        finally:
            for closable in (*clients, *servers):  # a server need not wait for a goodbye
                closable.close()
            listener.close()

    @_needs_proc
    def test_declared_lengths_before_handshake_allocate_nothing(self) -> None:
        grown = self._hostile_clients(128 << 20, handshaken=False)
        assert grown < 32 << 20, f"4 declarations of 128 MiB grew the listener by {grown} bytes"

    @_needs_proc
    def test_declared_lengths_after_handshake_allocate_nothing(self) -> None:
        grown = self._hostile_clients(128 << 20, handshaken=True)
        assert grown < 32 << 20, f"4 declarations of 128 MiB grew the listener by {grown} bytes"

    def test_works_with_over_1024_file_descriptors(self, settings: Settings) -> None:
        # select.select() fails for descriptor numbers >= 1024; poll/selectors do not
        url = make_url(self.url)
        with _open_files(1100):
            listener = get_transport(url.scheme).listen(url, settings)
            try:
                client, server = self.connect_pair(listener, settings)
                try:
                    client.send([b"ping"])
                    assert bytes(server.recv(5.0)[0]) == b"ping"
                    server.send([b"pong"])
                    assert bytes(client.recv(5.0)[0]) == b"pong"
                    with pytest.raises(Timeout):
                        client.recv(0.05)
                finally:
                    client.close()
                    server.close()
                with pytest.raises(Timeout):
                    listener.accept(0.05)
            finally:
                listener.close()

    def test_connect_to_nobody(self, settings: Settings) -> None:
        if self.unreachable_url is None:
            pytest.skip("no unreachable URL for this transport")
        url = make_url(self.unreachable_url)
        start = time.monotonic()
        with pytest.raises(ConnectError):
            get_transport(url.scheme).connect(url, settings, timeout=1.0)
        assert time.monotonic() - start < 3.0


def make_certificate(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
                     ) -> tuple[Path, Path]:
    """Write a self-signed TLS certificate for ``hosts`` into ``directory``.

    For tests of TLS transports (``wss://``, ``grpcs://``): the certificate is
    its own CA, so clients trust it by loading it as their CA file.  Valid for
    one day, EC P-256 key.  Needs the ``cryptography`` package (test extra).

    Returns:
        ``(certfile, keyfile)``: PEM files.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = Path(directory) / "cert.pem", Path(directory) / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return certfile, keyfile
