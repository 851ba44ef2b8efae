"""The real Gymie server as a peer for tests and benchmarks: its venv and its process.

Gymie 0.5.4 pins gym 0.17.3 and eventlet 0.28 (which fails at import on
Python 3.11), so it lives in a venv of its own, never in relay's:
:func:`ensure_gymie_venv` builds it once (``pip install gymie==0.5.4``, then
``eventlet==0.36.1 'dnspython>=2'``, then the Gymnasium version relay runs
with, for :mod:`relay_bench.peers.gymie_launcher`'s Gymnasium-hosting mode) and
reuses it while its requirements stay the same.  :func:`real_gymie_server` runs the server as a
subprocess and always kills it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from relay.core.errors import RelayError

__all__ = [
    "DEFAULT_VENV",
    "GYMIE_REQUIREMENTS",
    "GymieVenvError",
    "ensure_gymie_venv",
    "gymie_requirements",
    "real_gymie_server",
]

DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "relay-tests" / (
    "gymie-venv"
)
"""Where the venv is built unless ``RELAY_GYMIE_VENV`` or an argument says otherwise."""

GYMIE_REQUIREMENTS: tuple[tuple[str, ...], ...] = (
    ("gymie==0.5.4",),
    # Gymie pins eventlet 0.28, which fails at import on Python 3.11; 0.36.1 with
    # dnspython 2 runs Gymie unchanged.
    ("eventlet==0.36.1", "dnspython>=2"),
)

_LAUNCHER = Path(__file__).with_name("gymie_launcher.py")
_STARTED = re.compile(r"wsgi starting up on http://([^:/\s]+):(\d+)")


class GymieVenvError(RelayError):
    """pip could not build the Gymie venv (no network, a package gone...)."""


def gymie_requirements(extra: Sequence[str] = ()) -> list[list[str]]:
    """The pip install steps of the venv: Gymie, the eventlet fix, Gymnasium, ``extra``."""
    gymnasium = f"gymnasium=={importlib.metadata.version('gymnasium')}"
    return [list(step) for step in GYMIE_REQUIREMENTS] + [[gymnasium, *extra]]


def ensure_gymie_venv(path: Path | None = None, *, extra: Sequence[str] = ()) -> Path:
    """The Python of a venv holding the real Gymie server, built if missing.

    Safe to call from several processes at once (a file lock serializes the
    build); a venv built for other requirements is rebuilt.

    Args:
        path: venv directory; ``RELAY_GYMIE_VENV`` or :data:`DEFAULT_VENV` if None.
        extra: more pip requirements (installed in the last step).

    Raises:
        GymieVenvError: ``venv`` or ``pip`` failed (its output is in the message).
    """
    path = Path(path or os.environ.get("RELAY_GYMIE_VENV") or DEFAULT_VENV)
    steps = gymie_requirements(extra)
    stamp_text = "\n".join(" ".join(step) for step in steps) + "\n"
    digest = hashlib.sha256(stamp_text.encode()).hexdigest()[:16]
    python = path / "bin" / "python"
    stamp = path / ".relay-requirements"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text().startswith(digest):
            return python
        shutil.rmtree(path, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", str(path)], "create the Gymie venv")
        for step in steps:
            _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  *step], f"pip install {' '.join(step)}")
        stamp.write_text(f"{digest}\n{stamp_text}")
    return python


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GymieVenvError(f"cannot {what}: {exc}") from exc
    if done.returncode != 0:
        raise GymieVenvError(f"cannot {what} (exit {done.returncode}):\n"
                             f"{done.stdout[-2000:]}{done.stderr[-2000:]}")


@contextlib.contextmanager
def real_gymie_server(
    python: Path,
    *,
    gymnasium_prefix: str | None = None,
    register: Sequence[str] = (),
    start_timeout: float = 60.0,
) -> Iterator[str]:
    """Run the real Gymie server on a free port of 127.0.0.1; yield its ``ws://`` URL.

    The URL is ``ws://127.0.0.1:PORT/gym`` (Gymie's only WebSocket path).  The
    process (its whole session) is killed on exit, also after an error.

    Args:
        python: from :func:`ensure_gymie_venv`.
        gymnasium_prefix: also host Gymnasium envs under this id prefix
            (see :mod:`relay_bench.peers.gymie_launcher`).
        register: ``ID=FILE:CLASS:KWARGS_JSON`` Gymnasium envs to register
            first (see :mod:`relay_bench.peers.gymie_launcher`).
        start_timeout: seconds to wait for the server to listen.

    Raises:
        RelayError: the server exited or did not listen in time (its log attached).
    """
    command = [str(python), str(_LAUNCHER), "--host", "127.0.0.1", "--port", "0"]
    if gymnasium_prefix:
        command += ["--gymnasium-prefix", gymnasium_prefix]
    for entry in register:
        command += ["--register", entry]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    log: list[str] = []
    address: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # keep reading so a chatty server never blocks on its pipe
        assert process.stderr is not None
        for line in process.stderr:
            if len(log) < 200:
                log.append(line)
            match = _STARTED.search(line)
            if match and not address:
                address.append(f"ws://127.0.0.1:{match.group(2)}/gym")
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, name="gymie-log", daemon=True)
    reader.start()
    try:
        ready.wait(start_timeout)
        if not address:
            raise RelayError(f"the real Gymie server did not start within {start_timeout} s "
                             f"(exit code {process.poll()}):\n{''.join(log)[-3000:]}")
        yield address[0]
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        reader.join(5)

