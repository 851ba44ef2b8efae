"""What a client may reach on a served environment beyond the Gymnasium core.

A relay server answers ``Make``/``Reset``/``Step``/``Render``/``Close`` for
anyone who connects.  Everything else is opt-in, named by the server
(:class:`Access`, built from :func:`relay.serve`'s ``allow_calls``,
``allow_set`` and ``allow_wrappers``, or ``relay serve --allow-call NAME
--allow-set NAME --allow-wrapper ENTRY_POINT``):

* ``Call`` requests read an attribute or call a method of the env (through
  Gymnasium's ``get_wrapper_attr``, so wrappers are looked through) when the
  name is in :data:`DEFAULT_CALLS` or ``allow_calls``; they write one
  (``set_wrapper_attr``) when it is in :data:`DEFAULT_SET` or
  ``allow_set``.  Arguments and results travel through the codec like
  observations (value trees; never pickle), so a method whose result is not a
  value tree answers an error.
* ``Make.wrappers`` applies Gymnasium wrappers on the server, innermost
  first: by default any wrapper class of ``gymnasium.wrappers`` except those
  that write files or open windows on the server (:data:`REFUSED_WRAPPERS`);
  ``allow_wrappers`` adds entry points (``"module:Class"``), which are
  imported only when named there.

A refused name is answered with ``Error`` code ``not_allowed``
(:class:`~relay.core.errors.NotAllowed` on the client), naming the setting.

``np_random`` is special: a ``numpy.random.Generator`` is not a value tree,
so it travels as its bit generator's state (:func:`rng_state`, a JSON text)
and is rebuilt on the other side (:func:`rng_from_state`) for the numpy bit
generators only.  ``np_random_seed`` travels as decimal text: a seed
Gymnasium picks itself is a 128-bit int, beyond MessagePack's integers.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from relay.core.errors import ConfigError, NotAllowed
from relay.core.messages import Call, Returned

__all__ = [
    "DEFAULT_CALLS",
    "DEFAULT_SET",
    "REFUSED_WRAPPERS",
    "Access",
    "apply_wrappers",
    "rng_from_state",
    "rng_state",
    "serve_call",
    "wrapper_spec_dict",
]

DEFAULT_CALLS = frozenset({"get_action_meanings", "np_random", "np_random_seed"})
"""Names every relay server lets a client call or read: ALE's
``get_action_meanings`` (what SB3's ``AtariWrapper`` asks), and the env's
seeding state (read-only values)."""

DEFAULT_SET = frozenset({"np_random"})
"""Names every relay server lets a client write (the env's generator, as
``env.np_random = generator`` does locally)."""

REFUSED_WRAPPERS = frozenset({"RecordVideo", "HumanRendering"})
"""``gymnasium.wrappers`` classes a client may not apply by default: they write
files or open windows on the server (name them in ``allow_wrappers`` to allow)."""

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


@dataclass(frozen=True, slots=True)
class Access:
    """What a server's clients may reach besides the core requests.

    Attributes:
        calls: names that may be called or read (besides :data:`DEFAULT_CALLS`).
        set: names that may be written (besides :data:`DEFAULT_SET`).
        wrappers: wrapper entry points (``"module:Class"``) that may be
            applied besides the default ones of ``gymnasium.wrappers``.
    """

    calls: frozenset[str] = frozenset()
    set: frozenset[str] = frozenset()
    wrappers: frozenset[str] = frozenset()

    @classmethod
    def of(cls, calls: Iterable[str] = (), set: Iterable[str] = (),  # noqa: A002
           wrappers: Iterable[str] = ()) -> Access:
        """An :class:`Access` from any iterables of names.

        Raises:
            ConfigError: a name that is not a string, or a wrapper entry point
                not of the form ``module:Class``.
        """
        if any(isinstance(names, str) for names in (calls, set, wrappers)):
            raise ConfigError("allow_calls, allow_set and allow_wrappers take lists of names, "
                              "not one string")
        for name in (*calls, *set):
            if not isinstance(name, str) or not name:
                raise ConfigError(f"allow_calls/allow_set take attribute names, got {name!r}")
        for entry in wrappers:
            if not isinstance(entry, str) or entry.count(":") != 1:
                raise ConfigError(f"allow_wrappers takes entry points 'module:Class', "
                                  f"got {entry!r}")
        return cls(frozenset(calls), frozenset(set), frozenset(wrappers))


def serve_call(env: gym.Env, call: Call, access: Access) -> Returned:
    """Answer one ``Call`` on ``env``, as Gymnasium's ``SyncVectorEnv.call``/
    ``get_attr``/``set_attr`` would on a local env.

    Raises:
        NotAllowed: the name is not allowed for this kind of access.
        ConfigError: an unknown ``kind``, a ``set`` without one value, or an
            ``index`` on a single env.
        Exception: whatever the env raises (AttributeError for a missing name).
    """
    name = call.name
    if call.index is not None:
        raise ConfigError(f"instance {call.instance} is one environment: Call.index must be "
                          f"null, got {call.index}")
    if call.kind == "set":
        if name not in DEFAULT_SET and name not in access.set:
            raise NotAllowed(f"this server does not allow setting {name!r}: the server names "
                             f"what may be set with allow_set=[...] (relay serve --allow-set "
                             f"{name})")
        if len(call.args) != 1 or call.kwargs:
            raise ConfigError(f"setting {name!r} takes exactly one value")
        value = call.args[0]
        if name == "np_random":
            value = rng_from_state(value)
        env.set_wrapper_attr(name, value)
        return Returned()
    if call.kind not in ("call", "get"):
        raise ConfigError(f"unknown Call kind {call.kind!r} (known: call, get, set)")
    if name not in DEFAULT_CALLS and name not in access.calls:
        raise NotAllowed(f"this server does not allow calling or reading {name!r}: the server "
                         f"names what may be called with allow_calls=[...] (relay serve "
                         f"--allow-call {name})")
    if name == "np_random":
        return Returned(value=rng_state(env.np_random))
    if name == "np_random_seed":  # 128 bits when Gymnasium picked it: decimal text
        return Returned(value=str(env.np_random_seed))
    attribute = env.get_wrapper_attr(name)
    if not callable(attribute):
        return Returned(value=attribute)
    if call.kind == "get":
        return Returned(callable=True)
    return Returned(value=attribute(*call.args, **call.kwargs))


# -- the generator's state ---------------------------------------------------------

def rng_state(generator: np.random.Generator) -> str:
    """The state of ``generator``'s bit generator as JSON text (its ints are
    128-bit for PCG64, beyond MessagePack's integers; arrays become lists)."""
    return json.dumps(generator.bit_generator.state, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot put a {type(value).__name__} into a generator state")


def rng_from_state(text: Any) -> np.random.Generator:
    """A ``numpy.random.Generator`` in the state :func:`rng_state` wrote.

    Raises:
        ConfigError: not such a state, or a bit generator that is not one of
            numpy's (nothing else is looked up).
    """
    try:
        state = json.loads(text)
        kind = state["bit_generator"]
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"not a generator state: {str(text)[:100]!r}") from exc
    if kind not in _BIT_GENERATORS:
        raise ConfigError(f"unknown bit generator {kind!r} (known: {', '.join(_BIT_GENERATORS)})")
    bit_generator = getattr(np.random, kind)()
    try:
        bit_generator.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"malformed {kind} state: {exc}") from exc
    return np.random.Generator(bit_generator)


# -- server-side wrappers ------------------------------------------------------------

def wrapper_spec_dict(wrapper: Any) -> dict[str, Any]:
    """``{"name", "entry_point", "kwargs"}`` of a Gymnasium ``WrapperSpec``, a wrapper
    class (no kwargs), or such a dict (checked).

    Raises:
        ConfigError: anything else.
    """
    if isinstance(wrapper, gym.envs.registration.WrapperSpec):
        return {"name": wrapper.name, "entry_point": wrapper.entry_point,
                "kwargs": dict(wrapper.kwargs or {})}
    if isinstance(wrapper, type) and issubclass(wrapper, gym.Wrapper):
        return {"name": wrapper.__name__,
                "entry_point": f"{wrapper.__module__}:{wrapper.__qualname__}", "kwargs": {}}
    if isinstance(wrapper, dict) and isinstance(wrapper.get("entry_point"), str):
        return {"name": str(wrapper.get("name", "")), "entry_point": wrapper["entry_point"],
                "kwargs": dict(wrapper.get("kwargs") or {})}
    raise ConfigError(f"a server-side wrapper is a gymnasium WrapperSpec, a gymnasium.Wrapper "
                      f"class or a dict with an 'entry_point', got {wrapper!r}")


def apply_wrappers(env: gym.Env, wrappers: Sequence[dict[str, Any]], access: Access) -> gym.Env:
    """``env`` wrapped by each wrapper of ``wrappers`` (innermost first), each
    checked against ``access`` before its module is imported.

    Raises:
        NotAllowed: a wrapper the server does not allow.
        ConfigError: a malformed entry.  Exception: what the wrapper raises.
    """
    for wrapper in wrappers:
        spec = wrapper_spec_dict(wrapper)
        env = _wrapper_class(spec["entry_point"], access)(env, **spec["kwargs"])
    return env


def _wrapper_class(entry_point: str, access: Access) -> type[gym.Wrapper]:
    module_name, _, name = entry_point.partition(":")
    explicit = entry_point in access.wrappers
    in_gymnasium = module_name == "gymnasium.wrappers" or \
        module_name.startswith("gymnasium.wrappers.")
    if not explicit and not (in_gymnasium and name not in REFUSED_WRAPPERS):
        raise NotAllowed(
            f"this server does not apply the wrapper {entry_point!r}: by default only "
            f"gymnasium.wrappers (not {', '.join(sorted(REFUSED_WRAPPERS))}); the server names "
            f"others with allow_wrappers=[...] (relay serve --allow-wrapper {entry_point})")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load the wrapper {entry_point!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, gym.Wrapper)):
        raise NotAllowed(f"{entry_point!r} is not a gymnasium.Wrapper class")
    if not explicit and cls.__name__ in REFUSED_WRAPPERS:  # the same class by another path
        raise NotAllowed(f"this server does not apply {cls.__name__} unless named in "
                         f"allow_wrappers")
    return cls
