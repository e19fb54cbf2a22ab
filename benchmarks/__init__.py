"""Benchmarks: each module runs with `python -m benchmarks.<name>` and prints ratios measured in-process."""
