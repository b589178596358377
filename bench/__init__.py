"""Benchmarks and the quality pipeline; importable so `python -m bench.quality.pipeline` runs."""
