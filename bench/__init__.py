"""GPU benchmarks of the engine, the service and the trainer, and the quality pipeline
(`bench.quality`); each runs as `python -m bench.NAME` from the repository root (see
BENCHMARKS.md and docs/RESULTS.md)."""
