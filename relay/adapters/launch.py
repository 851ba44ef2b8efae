"""``relay.launch``: start an environment server process, connect to it, own it.

The pattern of dm_alchemy's ``load_from_docker``: one call starts the server
(``relay serve``, or any command, a container included), waits until it tells
its address, connects, and returns an env whose ``close()`` also stops the
process.

How a command tells its address (port 0 everywhere, so there is no port race):

* the first line of its stdout that is a relay URL (``scheme://address``, no
  whitespace), as ``relay serve`` prints; or
* a *ready file*: when an argument of the command contains ``{ready_file}``,
  it is replaced by a fresh path and relay waits for that file to hold one
  line ending in a newline (write it atomically, or write the newline last),
  as ``relay serve --ready-file {ready_file}`` does.

``{url}`` in an argument is replaced by the ``url`` argument of
:func:`launch`.

Stopping: SIGTERM to the process group (the process starts a new session),
``grace`` seconds, then SIGKILL of the group.  This happens on ``close()``, on
any failure while starting, and at interpreter exit.  On Linux the process
also gets SIGTERM when the parent dies (``PR_SET_PDEATHSIG``), even by
SIGKILL; that signal reaches the direct child only, so a command that starts
processes of its own (a shell script) should ``exec`` the server or pass the
signal on.  The parent-death signal is tied to the thread that called
:func:`launch`: launch from a thread that lives as long as the env.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from relay.core.errors import ConfigError, InvalidURL, LaunchError, RelayError
from relay.core.url import make_url

__all__ = ["ServerProcess", "launch", "launch_vec"]

DEFAULT_URL = "zmq+tcp://127.0.0.1:0"
"""Where ``relay serve`` listens when :func:`launch` is given an env id or factory."""

READY_FILE = "{ready_file}"
URL_FIELD = "{url}"
_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1
_live: set[ServerProcess] = set()


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when this process dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: nothing to load in the child
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec


def _as_url(line: str) -> str | None:
    text = line.strip()
    if not text or any(c.isspace() for c in text) or "://" not in text:
        return None
    try:
        make_url(text)
    except InvalidURL:
        return None
    return text


class ServerProcess:
    """A server process started by :func:`launch` (or directly), with its process group.

    Args:
        argv: the command; ``{ready_file}`` in an argument makes it tell its
            address through that file, otherwise through its stdout.
        env: the process's environment variables (None: this process's).
        grace: seconds between SIGTERM and SIGKILL when stopping.

    Raises:
        LaunchError: the command cannot be started (not found, not executable).
    """

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 grace: float = 5.0) -> None:
        self.grace = grace
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.ready_file: Path | None = None
        if any(READY_FILE in arg for arg in argv):
            self._tmp = tempfile.TemporaryDirectory(prefix="relay-launch-")
            self.ready_file = Path(self._tmp.name) / "address"
            argv = [arg.replace(READY_FILE, str(self.ready_file)) for arg in argv]
        self.argv = list(argv)
        self._stderr: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._address: str | None = None
        self._printed = threading.Event()
        try:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 (only prctl and getppid)
                env=None if env is None else {**os.environ, **env},
            )
        except OSError as exc:
            self._cleanup()
            raise LaunchError(f"cannot start {shlex.join(self.argv)}: {exc}") from exc
        _live.add(self)
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        """The process id, also its process group id."""
        return self.popen.pid

    @property
    def stderr_tail(self) -> str:
        """The last lines the process wrote to stderr."""
        return "".join(self._stderr)

    def _read(self, stream: IO[str], stdout: bool) -> None:
        for line in stream:  # drained to the end: a full pipe would block the server
            if not stdout:
                self._stderr.append(line)
            elif self._address is None and (url := _as_url(line)) is not None:
                self._address = url
                self._printed.set()

    def _ready_address(self) -> str | None:
        if self.ready_file is None:
            return self._address
        try:
            text = self.ready_file.read_text()
        except FileNotFoundError:
            return None
        return text.splitlines()[0].strip() if "\n" in text else None

    def wait_ready(self, timeout: float) -> str:
        """Wait until the process tells its address, and return it.

        Raises:
            LaunchError: it exited first, or ``timeout`` s passed, or the ready
                file does not hold a relay URL; the process is stopped.
        """
        deadline = time.monotonic() + timeout
        while True:
            address = self._ready_address()
            if address is not None:
                if _as_url(address) is None:
                    self._fail(f"{self.ready_file} holds {address!r}, not a relay URL")
                return address
            if self.popen.poll() is not None:
                self._readers[1].join(1.0)  # the last words on stderr
                self._fail(f"{shlex.join(self.argv)} exited with code "
                           f"{self.popen.returncode} before telling its address")
            if time.monotonic() > deadline:
                how = f"wrote {self.ready_file}" if self.ready_file else \
                    "printed a relay URL on stdout"
                self._fail(f"{shlex.join(self.argv)} was not ready within {timeout:g} s "
                           f"(it never {how})")
            self._printed.wait(0.02)

    def _fail(self, message: str) -> None:
        self.stop()
        raise LaunchError(message, self.stderr_tail)

    def stop(self) -> int | None:
        """Stop the process and its group: SIGTERM, ``grace`` s, SIGKILL.

        Idempotent; returns the process's exit code (negative: killed by that
        signal)."""
        _live.discard(self)
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(self.grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait()
        self._signal(signal.SIGKILL)  # what is left of the group
        for reader in self._readers:
            reader.join(1.0)
        self._cleanup()
        return self.popen.returncode

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __repr__(self) -> str:
        state = "running" if self.popen.poll() is None else f"exited {self.popen.returncode}"
        return f"ServerProcess(pid={self.pid}, {state}: {shlex.join(self.argv)})"


@atexit.register
def _stop_all() -> None:
    for process in list(_live):
        process.stop()


def _argv(command: str | Sequence[str], url: str) -> list[str]:
    """``command`` as argv: a string without whitespace is a ``relay serve`` spec."""
    if isinstance(command, str):
        if not command.strip():
            raise ConfigError("launch needs a command or an env id, got an empty string")
        if len(command.split()) == 1:
            return [sys.executable, "-m", "relay", "serve", command, "--url", url]
        argv = shlex.split(command)
    else:
        argv = list(command)
        if not argv:
            raise ConfigError("launch needs a command or an env id, got an empty list")
    return [arg.replace(URL_FIELD, url) for arg in argv]


def _connect(processes: list[ServerProcess], timeout: float,
             connect: Callable[[list[str]], Any]) -> Any:
    try:
        addresses = [process.wait_ready(timeout) for process in processes]
        try:
            env = connect(addresses)
        except RelayError as exc:
            tail = "".join(p.stderr_tail for p in processes)
            raise LaunchError(f"connecting to {', '.join(addresses)} failed: "
                              f"{type(exc).__name__}: {exc}", tail) from exc
    except BaseException:
        for process in processes:
            process.stop()
        raise
    close = env.close

    def close_and_stop() -> None:
        try:
            close()
        finally:
            for process in processes:
                process.stop()

    env.close = close_and_stop
    env.server_processes = processes
    return env


def launch(command: str | Sequence[str], *, url: str = DEFAULT_URL, api: str = "gymnasium",
           timeout: float = 60.0, grace: float = 5.0, process_env: dict[str, str] | None = None,
           **make_kwargs: Any) -> Any:
    """Start a server process, wait until it is ready, connect, and return its env.

    The env owns the process: its ``close()`` closes the env, then stops the
    process (SIGTERM to its group, ``grace`` s, SIGKILL); so does any failure
    here and interpreter exit.  ``env.server_processes`` lists the
    :class:`ServerProcess`.

    Args:
        command: an env id or ``module:factory`` spec (one word: run as
            ``python -m relay serve SPEC --url URL``), or a command (a string,
            split like a shell would, or an argv list), e.g.
            ``"relay serve CartPole-v1 --url tcp://127.0.0.1:0"`` or
            ``["docker", "run", ..., "--ready-file", "{ready_file}"]``; it tells
            its address as the module docstring says.
        url: where ``relay serve`` listens (port 0: a free port); replaces
            ``{url}`` in a command.
        api: ``"gymnasium"`` (:func:`relay.make`: a ``gymnasium.Env``) or
            ``"dm_env"`` (:func:`relay.make_dm_env`: a ``dm_env.Environment``).
        timeout: seconds to wait for the address.
        grace: seconds between SIGTERM and SIGKILL when stopping.
        process_env: environment variables added to the process's.
        **make_kwargs: for :func:`relay.make` / :func:`relay.make_dm_env`
            (``env_id``, env kwargs, settings).

    Raises:
        LaunchError: the process exited or was not ready within ``timeout``
            s, or connecting failed (the cause is chained); the message ends
            with the tail of the process's stderr.
        ConfigError: an empty command or an unknown ``api``.
    """
    connect = _connector(api)
    argv = _argv(command, url)
    process = ServerProcess(argv, env=process_env, grace=grace)
    return _connect([process], timeout, lambda addresses: connect(addresses[0], **make_kwargs))


def launch_vec(command: str | Sequence[str], num_servers: int, *, url: str = DEFAULT_URL,
               timeout: float = 60.0, grace: float = 5.0,
               process_env: dict[str, str] | None = None, **make_vec_kwargs: Any) -> Any:
    """Start ``num_servers`` server processes of ``command`` and return one
    ``gymnasium.vector.VectorEnv`` over them (:func:`relay.make_vec`) that owns
    them all: its ``close()`` stops every process.

    The processes start together and are waited for in turn.  Arguments as in
    :func:`launch`; ``**make_vec_kwargs`` go to :func:`relay.make_vec`, with
    ``num_envs`` = ``num_servers`` unless given (one sub-env per server; for
    servers of vector instances, ``relay serve --num-envs K``, give
    ``num_envs=num_servers * K``).

    Raises:
        LaunchError: as :func:`launch`; every process is stopped.
        ConfigError: ``num_servers`` < 1 or an empty command.
    """
    from relay.adapters.vector import make_vec

    if num_servers < 1:
        raise ConfigError(f"launch_vec needs num_servers >= 1, got {num_servers}")
    argv = _argv(command, url)
    make_vec_kwargs.setdefault("num_envs", num_servers)
    processes: list[ServerProcess] = []
    try:
        for _ in range(num_servers):
            processes.append(ServerProcess(argv, env=process_env, grace=grace))
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return _connect(processes, timeout, lambda addresses: make_vec(addresses, **make_vec_kwargs))


def _connector(api: str) -> Callable[..., Any]:
    if api == "gymnasium":
        from relay.adapters.gymnasium import make

        return make
    if api == "dm_env":
        from relay.adapters.dm_env import make_dm_env

        return make_dm_env
    raise ConfigError(f"launch api must be 'gymnasium' or 'dm_env', got {api!r}")
