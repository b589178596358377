"""The quality replication pipeline: `python -m bench.quality.pipeline --help`."""
