"""Gymie's JSON-over-WebSocket protocol (``ws://HOST:PORT/gym?codec=gymie``), both ways.

Gymie (``pip install gymie==0.5.4``, github.com/jscriptcoder/Gymie-Server,
files ``gymie/server.py`` and ``gymie/api.py``) serves gym environments over
one WebSocket path, ``/gym``.  A client sends one text message per call::

    {"method": "make", "params": {"env_id": "CartPole-v1", "seed": 3}}

and gets one text message back.  Methods, parameters and answers (exact text):

=====================  ================================  ==========================================
method                 params                            answer
=====================  ================================  ==========================================
``make``               ``env_id``, ``seed`` (optional;   the bare instance id, 32 hex digits
                       only a truthy seed seeds)         (``uuid4().hex``), not JSON-quoted
``reset``              ``instance_id``                   ``str(obs.tolist())``: Python's list text
``step``               ``instance_id``, ``action``,      ``json.dumps([obs, reward, done, info])``
                       ``render`` (optional)
``close``              ``instance_id``                   ``true``
``observation_space``  ``instance_id``                   ``json.dumps(space_info)``, see below
``action_space``       ``instance_id``                   same
``action_sample``      ``instance_id``                   ``str(sample.tolist())``
=====================  ================================  ==========================================

A space is ``{"name": "Discrete", "n": 2}``, ``{"name": "Box", "shape": [4],
"low": [...], "high": [...]}`` (bounds as float64 numbers), ``{"name":
"MultiBinary", "n": 5, "shape": [5]}``, or only ``{"name": ...}`` for any other
class.  ``done`` is gym 0.17's: a time-limit end adds ``"TimeLimit.truncated":
true`` to ``info``.  Any error closes the socket with a code and a reason:
1003 ``Message `TEXT` is invalid`` (not JSON), 1003 ``Message keys [...] are
missing or invalid`` (no ``method``/``params``), 1007 ``Method `M` not found``,
``Parameters `P` are wrong``, ``Instance `I` not found``, ``Environment `E` not
found``, ``Environment `E` is malformed``, ``Action `A` is wrong`` (any failure
of ``step``), ``Unknonwn error: ...`` (sic).  Instances outlive nothing but
their ``close``.

**Server** (:class:`GymieSession`, :class:`GymieServer`):
``relay.serve("CartPole-v1", "ws://127.0.0.1:5000/gym?codec=gymie")`` answers
these messages with the same bytes as Gymie for the same environment outputs,
hosting environments with :class:`relay.server.EnvHost` (one per connection).
Where Gymie itself breaks, relay answers sensibly instead, and says so here:

* infinite Box bounds are sent as +/- the float32 maximum
  (``3.4028234663852886e+38``, what gym 0.17's CartPole declares), because
  Gymie's ``Infinity`` is rejected by JavaScript's ``JSON.parse``;
* a JSON message that is not an object is closed with 1003 ``Message `TEXT` is
  invalid`` (Gymie's handler crashes and the client reads garbage);
* a close reason is cut to the 123 bytes a WebSocket close frame can carry
  (Gymie sends an oversized, invalid frame);
* numpy values in ``info`` and ``reward`` are sent as plain numbers (Gymie's
  ``json.dumps`` fails on them); ``reward`` is always a float (``1.0``);
* instances belong to the connection that made them and are closed when it
  ends (Gymie keeps them in one process-wide table until ``close``).

**Client** (:class:`GymieClientConnection`): ``relay.make("ws://HOST:PORT/gym?
codec=gymie", env_id="CartPole-v1")`` drives a real Gymie server through the
Gymnasium API.  Gymie cannot seed at reset, so ``reset(seed=s)`` closes the
instance and makes a new one with ``seed=s`` (Gymie ignores seed 0: relay warns);
spaces come from ``observation_space``/``action_space`` (Box as float32: Gymie
sends no dtype); an error answer closes the connection (Gymie's way), later
calls raise ``ConnectionLost``.
"""

from __future__ import annotations

from relay.compat.gymie._client import GymieClientConnection, GymieProtocol
from relay.compat.gymie._messages import FLOAT32_MAX, array_text, space_from_info, space_info
from relay.compat.gymie._server import GymieServer
from relay.compat.gymie._session import GymieClose, GymieSession

__all__ = [
    "FLOAT32_MAX",
    "GymieClientConnection",
    "GymieClose",
    "GymieProtocol",
    "GymieServer",
    "GymieSession",
    "array_text",
    "space_from_info",
    "space_info",
]
