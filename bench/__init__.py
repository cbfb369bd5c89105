"""Benchmarks: `make bench` (python -m bench.run). Nothing here is imported by the services."""
