"""`flywheel bench`: the measured speed of every hot path (docs/benchmarks.md)."""
