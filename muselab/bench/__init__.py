"""Benchmarks: `python -m muselab.bench.<name>` (see `make bench`); results go to docs/benchmarks.md."""
