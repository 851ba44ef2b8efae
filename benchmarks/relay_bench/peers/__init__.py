"""Servers of foreign protocols, written without relay, that relay is tested and
benchmarked against."""
