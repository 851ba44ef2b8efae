"""``python -m relay_bench [options]`` runs the benchmark (as ``relay bench``);
``python -m relay_bench _serve-... ARG`` runs the server process of a row."""

import sys

from relay_bench.harness import internal, main

if len(sys.argv) == 3 and sys.argv[1].startswith("_"):
    internal(*sys.argv[1:])
else:
    sys.exit(main())
