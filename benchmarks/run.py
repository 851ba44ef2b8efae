"""Round-trip benchmark of relay's transports: ``python benchmarks/run.py --help``.

The same as ``relay bench`` (:mod:`relay_bench`, found next to this file, so
it runs from a checkout without installing ``benchmarks/``).
"""

import sys

from relay_bench import main

if __name__ == "__main__":
    sys.exit(main())
