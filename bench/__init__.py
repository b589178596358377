"""GPU benchmarks of the engine, the service and the trainer; each module runs as
`python -m bench.NAME` from the repository root (see BENCHMARKS.md)."""
