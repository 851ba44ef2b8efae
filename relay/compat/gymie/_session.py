"""The server side of one Gymie connection as a conversation without I/O: a text
message in, Gymie's answer or close out (see the package docstring).
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium.spaces as gs

from relay.compat.gymie._messages import (
    _GYM_ENV_ID,
    _LOOKUP_ERRORS,
    _json,
    _to_space_value,
    _tolist,
    array_text,
    space_info,
)
from relay.core import spaces
from relay.core.messages import (
    Close,
    Error,
    Made,
    Make,
    Observation,
    Render,
    Request,
    Reset,
    Response,
    Step,
    Transition,
)

# ---------------------------------------------------------------------------
# Server side: one connection's conversation, no I/O


@dataclass(frozen=True, slots=True)
class GymieClose:
    """Close the WebSocket with ``code`` and ``reason`` (Gymie's only error answer)."""

    code: int
    reason: str


class _Fail(Exception):
    def __init__(self, reason: str, code: int = 1007) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class _ParamsWrong(Exception):
    pass


@dataclass(slots=True)
class _Instance:
    relay_id: int
    observation_space: gs.Space[Any]
    action_space: gs.Space[Any]
    seed: int | None = None  # Gymie seeds at make; relay passes it to the first reset


class GymieSession:
    """Gymie's methods for one WebSocket connection, answered by a relay handler.

    Feed every received message to :meth:`receive`; send the text it returns,
    or close the socket as the :class:`GymieClose` it returns says.  Never raises.

    Args:
        handler: answers relay/1 requests (``EnvHost(factory).handle``).
        new_id: makes instance ids (``uuid4().hex`` as Gymie does).
    """

    def __init__(
        self, handler: Callable[[Request], Response], *, new_id: Callable[[], str] | None = None
    ) -> None:
        self._handler = handler
        self._new_id = new_id or (lambda: uuid.uuid4().hex)
        self._instances: dict[str, _Instance] = {}
        self._methods: dict[str, Callable[..., str]] = {
            "make": self._make,
            "step": self._step,
            "reset": self._reset,
            "close": self._close,
            "observation_space": self._observation_space,
            "action_space": self._action_space,
            "action_sample": self._action_sample,
        }
        # (required, allowed) parameter names, as Python would bind them
        self._params = {
            name: (frozenset(p.name for p in sig.parameters.values()
                             if p.default is inspect.Parameter.empty),
                   frozenset(sig.parameters))
            for name, sig in ((n, inspect.signature(f)) for n, f in self._methods.items())
        }

    def receive(self, message: str | bytes) -> str | GymieClose:
        """The answer to one message (text or binary, as Gymie accepts both)."""
        shown = message if isinstance(message, str) else repr(message)  # Gymie shows b'...'
        try:
            data = json.loads(message)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return GymieClose(1003, f"Message `{shown}` is invalid")
        if not isinstance(data, dict):
            return GymieClose(1003, f"Message `{shown}` is invalid")
        if "method" not in data or "params" not in data:
            return GymieClose(1003, f"Message keys {list(data.keys())} are missing or invalid")
        method, params = data["method"], data["params"]
        try:
            function = self._methods[method]
        except KeyError:
            return GymieClose(1007, f"Method `{method}` not found")
        except TypeError:  # an unhashable method name
            return GymieClose(1007, f"Parameters `{params}` are wrong")
        try:
            if not isinstance(params, dict):
                raise _ParamsWrong
            required, allowed = self._params[method]
            if not required <= params.keys() <= allowed:
                raise _ParamsWrong
            return function(**params)
        except _ParamsWrong:
            return GymieClose(1007, f"Parameters `{params}` are wrong")
        except _Fail as fail:
            return GymieClose(fail.code, fail.reason)
        except Exception as exc:  # a bug here must not take the server down
            return GymieClose(1007, f"Unknonwn error: {exc}")

    def close(self) -> None:
        """Forget every instance (their envs are closed by the handler's owner)."""
        self._instances.clear()

    # -- methods, with Gymie's signatures (gymie/api.py) --

    def _lookup(self, instance_id: Any) -> _Instance:
        try:
            return self._instances[instance_id]
        except KeyError:
            raise _Fail(f"Instance `{instance_id}` not found") from None
        except TypeError:  # unhashable id
            raise _ParamsWrong from None

    def _make(self, env_id: Any, seed: Any = None) -> str:
        if not isinstance(env_id, str):
            raise _ParamsWrong
        if seed:
            if not isinstance(seed, int) or seed < 0:
                raise _Fail(f"Unknonwn error: Seed must be a non-negative integer or omitted, "
                            f"not {seed}")
            seed = int(seed)
        answer = self._handler(Make(env_id=env_id, kwargs={}))
        if isinstance(answer, Error):
            if _GYM_ENV_ID.match(env_id) is None:
                raise _Fail(f"Environment `{env_id}` is malformed")
            if answer.code == "config" or answer.remote_type in _LOOKUP_ERRORS:
                raise _Fail(f"Environment `{env_id}` not found")
            raise _Fail(f"Unknonwn error: {answer.message}")
        assert isinstance(answer, Made)
        instance_id = self._new_id()
        self._instances[instance_id] = _Instance(
            relay_id=answer.instance,
            observation_space=spaces.build(answer.observation_space),
            action_space=spaces.build(answer.action_space),
            seed=seed or None,
        )
        return instance_id

    def _reset(self, instance_id: Any) -> str:
        instance = self._lookup(instance_id)
        seed, instance.seed = instance.seed, None
        answer = self._handler(Reset(instance=instance.relay_id, seed=seed))
        if isinstance(answer, Error):
            raise _Fail(f"Unknonwn error: {answer.message}")
        assert isinstance(answer, Observation)
        text = array_text(answer.obs, json_style=False)
        return str(_tolist(answer.obs)) if text is None else text

    def _step(self, instance_id: Any, action: Any, render: Any = False) -> str:
        instance = self._lookup(instance_id)
        if render:
            self._handler(Render(instance=instance.relay_id))
        try:
            value = _to_space_value(action, instance.action_space)
        except (TypeError, ValueError, OverflowError):
            raise _Fail(f"Action `{action}` is wrong") from None
        answer = self._handler(Step(instance=instance.relay_id, action=value))
        if isinstance(answer, Error):
            raise _Fail(f"Action `{action}` is wrong")
        assert isinstance(answer, Transition)
        info = answer.info
        if answer.truncated:  # gym 0.17's TimeLimit, which Gymie's clients know
            info = {**info, "TimeLimit.truncated": not answer.terminated}
        done = bool(answer.terminated or answer.truncated)
        obs = array_text(answer.obs, json_style=True)
        if obs is None:
            obs = _json(_tolist(answer.obs))
        # the text of json.dumps([obs, reward, done, info]), obs made above
        return (f"[{obs}, {_json(answer.reward)}, {'true' if done else 'false'}, "
                f"{_json(info) if info else '{}'}]")

    def _close(self, instance_id: Any) -> str:
        instance = self._lookup(instance_id)
        answer = self._handler(Close(instance=instance.relay_id))
        if isinstance(answer, Error):
            raise _Fail(f"Unknonwn error: {answer.message}")
        del self._instances[instance_id]
        return "true"

    def _observation_space(self, instance_id: Any) -> str:
        return json.dumps(space_info(self._lookup(instance_id).observation_space))

    def _action_space(self, instance_id: Any) -> str:
        return json.dumps(space_info(self._lookup(instance_id).action_space))

    def _action_sample(self, instance_id: Any) -> str:
        return str(_tolist(self._lookup(instance_id).action_space.sample()))
