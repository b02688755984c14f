"""Benchmark scripts for the toolkit; see bench/README.md."""
