"""The names of ``shm://``'s POSIX objects and rendezvous sockets: created, unlinked at
close, exit and SIGTERM/SIGINT, and swept after a crash (see the package docstring).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import mmap
import os
import re
import secrets
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import posix_ipc

from relay.core.errors import (
    ConnectionLost,
    InvalidURL,
    TransportError,
)
from relay.transports.shm._ring import ALIGN, HEADER

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_OBJECT = re.compile(r"^(?:sem\.)?relay_(\d+)_[0-9a-f]{8}$")
_SHM_DIR = Path("/dev/shm")

# ---------------------------------------------------------------------------
# Names this process created and that may still be linked: unlinked on close,
# at exit and on SIGTERM/SIGINT.

_linked: dict[str, tuple[str, int]] = {}
"""``"/relay_..."`` or a socket path -> (``"shm"`` | ``"sem"`` | ``"sock"``, creator pid)."""
_linked_lock = threading.Lock()
_hooks_installed = False


def _unlink(name: str, kind: str) -> None:
    with contextlib.suppress(posix_ipc.ExistentialError, OSError):
        if kind == "sock":
            os.unlink(name)
        elif kind == "sem":
            posix_ipc.unlink_semaphore(name)
        else:
            posix_ipc.unlink_shared_memory(name)


def _forget(name: str, *, unlink: bool) -> None:
    with _linked_lock:
        entry = _linked.pop(name, None)
    if unlink and entry is not None and entry[1] == os.getpid():
        _unlink(name, entry[0])


def unlink_all() -> None:
    """Unlink every name this process created that is still linked (exit hook).

    A forked child inherits the table but never unlinks its parent's names.
    """
    with _linked_lock:
        items = list(_linked.items())
        _linked.clear()
    pid = os.getpid()
    for name, (kind, owner) in items:
        if owner == pid:
            _unlink(name, kind)


def _chain_signal(signum: int, previous: Any) -> Any:
    def handler(sig: int, frame: Any) -> None:
        if callable(previous):
            # A Python handler: KeyboardInterrupt for SIGINT.  It may be caught
            # and the program go on serving, so SIGINT unlinks nothing here
            # (the atexit hook does, when the program does end).
            if sig != signal.SIGINT:
                unlink_all()
            previous(sig, frame)
        elif previous == signal.SIG_DFL:  # the process dies now: no atexit
            unlink_all()
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    return handler


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(unlink_all)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit remains
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if previous in (signal.SIG_IGN, None):
            continue
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, _chain_signal(signum, previous))


def _new_name() -> str:
    return f"/relay_{os.getpid()}_{secrets.token_hex(4)}"


def _create_segment(size: int) -> tuple[str, mmap.mmap]:
    _install_hooks()
    for _ in range(8):
        name = _new_name()
        with _linked_lock:
            _linked[name] = ("shm", os.getpid())
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError:
            _forget(name, unlink=False)
            continue
        except (posix_ipc.Error, OSError, ValueError) as exc:
            _forget(name, unlink=False)
            raise TransportError(f"cannot create a shared-memory segment of {size} bytes: "
                                 f"{exc}") from exc
        try:
            return name, mmap.mmap(shm.fd, size)
        except (OSError, ValueError) as exc:
            _forget(name, unlink=True)
            raise TransportError(f"cannot map a shared-memory segment of {size} bytes: "
                                 f"{exc}") from exc
        finally:
            shm.close_fd()
    raise TransportError("cannot find a free shared-memory segment name")


def _create_semaphore() -> tuple[str, posix_ipc.Semaphore]:
    _install_hooks()
    for _ in range(8):
        name = _new_name()
        with _linked_lock:
            _linked[name] = ("sem", os.getpid())
        try:
            return name, posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600,
                                             initial_value=0)
        except posix_ipc.ExistentialError:
            _forget(name, unlink=False)
        except (posix_ipc.Error, OSError, ValueError) as exc:
            _forget(name, unlink=False)
            raise TransportError(f"cannot create a semaphore: {exc}") from exc
    raise TransportError("cannot find a free semaphore name")


def _open_segment(name: str, limit: int) -> mmap.mmap:
    """Map the peer's segment ``name`` and unlink the name (we hold the mapping now)."""
    if not isinstance(name, str) or not _OBJECT.match(name.lstrip("/")):
        raise ConnectionLost(f"peer named an invalid segment {name!r}")
    try:
        shm = posix_ipc.SharedMemory(name)
    except (posix_ipc.Error, OSError, ValueError) as exc:
        raise ConnectionLost(f"cannot open the peer's segment {name}: {exc}") from exc
    try:
        if not HEADER + ALIGN <= shm.size <= limit:
            raise ConnectionLost(f"peer's segment {name} has a bad size {shm.size}")
        return mmap.mmap(shm.fd, shm.size)
    except (OSError, ValueError) as exc:
        raise ConnectionLost(f"cannot map the peer's segment {name}: {exc}") from exc
    finally:
        shm.close_fd()
        _unlink(name, "shm")


def _open_semaphore(name: str) -> posix_ipc.Semaphore:
    if not isinstance(name, str) or not _OBJECT.match(name.lstrip("/")):
        raise ConnectionLost(f"peer named an invalid semaphore {name!r}")
    try:
        return posix_ipc.Semaphore(name)
    except (posix_ipc.Error, OSError, ValueError) as exc:
        raise ConnectionLost(f"cannot open the peer's semaphore {name}: {exc}") from exc
    finally:
        _unlink(name, "sem")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def sweep_orphans(directory: Path = _SHM_DIR) -> list[str]:
    """Unlink relay's segments and semaphores whose creating process is dead.

    Looks at ``directory`` (``/dev/shm``; on systems without it, such as
    macOS, there is nothing to list and nothing is done) for
    ``relay_<pid>_<hex>`` and ``sem.relay_<pid>_<hex>``; an entry is removed
    only if no process ``pid`` exists.  Entries of live processes (and of
    other users, which cannot be removed) are left alone.

    Returns:
        The removed entry names, e.g. ``["relay_4242_0a1b2c3d"]``.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _OBJECT.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    return removed


def sweep_sockets(names: Iterable[str] | None = None) -> list[str]:
    """Remove rendezvous socket files in this user's directory that nobody listens on.

    Args:
        names: only the socket files of these ``shm://`` names (default: all).

    Returns:
        The removed paths.
    """
    removed: list[str] = []
    try:
        paths = (sorted(_runtime_dir().glob("*.sock")) if names is None
                 else [socket_path(name) for name in names])
    except (OSError, TransportError):
        return removed
    for path in paths:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(0.5)
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(str(path))
        except OSError:
            pass
        finally:
            probe.close()
    return removed


# ---------------------------------------------------------------------------
# Rendezvous socket path.


def _runtime_dir() -> Path:
    base = os.environ.get("RELAY_SHM_DIR") or os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base):
        base = tempfile.gettempdir()
    directory = Path(base) / f"relay-{os.getuid()}"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.lstat()
    except OSError as exc:
        raise TransportError(f"cannot create the rendezvous directory {directory}: "
                             f"{exc}") from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise TransportError(f"{directory} is not a directory owned by this user")
    return directory


def socket_path(name: str) -> Path:
    """The UNIX socket a listener of ``shm://name`` binds (hashed if the path is long)."""
    if not _NAME.match(name):
        raise InvalidURL(f"shm://{name}",
                         "the name must be 1-100 characters of letters, digits, '.', '_', '-'")
    directory = _runtime_dir()
    path = directory / f"{name}.sock"
    if len(os.fsencode(path)) > 100:
        path = directory / f"{hashlib.sha256(name.encode()).hexdigest()[:24]}.sock"
    return path
