"""Round-trip benchmark of relay's transports: ``python benchmarks/run.py --help``.

A thin wrapper around :mod:`relay.bench` (also ``relay bench``); results go to
``benchmarks/results/`` (git-ignored) as CSV and Markdown.
"""

import sys

from relay.bench import main

if __name__ == "__main__":
    sys.exit(main())
