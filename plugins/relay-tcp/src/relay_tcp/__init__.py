"""relay-tcp: a plain TCP transport for relay (``tcp://HOST:PORT``), standard library only.

It is found through the ``relay`` entry point (:mod:`relay_tcp.hooks`); the
transport itself lives in :mod:`relay_tcp.transport` and is imported on the
first use of a ``tcp://`` URL.
"""

__version__ = "0.1.0"
