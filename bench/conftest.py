"""Benchmarks: each group holds the NumPy baseline beside fastsim's backends."""
