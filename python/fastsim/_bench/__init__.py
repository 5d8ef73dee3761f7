"""Benchmark workloads behind ``python -m fastsim bench``."""
