"""relay's round-trip benchmark and the foreign-protocol peers its tests share.

* :mod:`relay_bench.harness`: payloads, timing, the row registry, the table
  (``relay bench``, ``python benchmarks/run.py``, ``python -m relay_bench``);
* :mod:`relay_bench.cases`: the rows of each transport and peer protocol;
* :mod:`relay_bench.envs`: the synthetic fixed-observation env;
* :mod:`relay_bench.peers`: stock servers of foreign protocols (dm_env_rpc,
  the real Gymie) that tests and rows run relay against.

relay itself never imports this package.
"""

from relay_bench.harness import main

__all__ = ["main"]
