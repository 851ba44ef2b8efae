"""Rows of the benchmark, one module per transport or peer protocol (see
:data:`relay_bench.harness.CASE_MODULES`)."""
