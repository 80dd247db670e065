"""Benchmark rows: one module per system, all implementing `base.System`."""
