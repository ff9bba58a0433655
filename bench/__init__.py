"""privfl benchmarks: each module runs with ``python -m bench.NAME`` (see docs/benchmarks.md)."""
