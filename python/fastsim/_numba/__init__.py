"""Numba kernels, derived from the reference's structure.

Imported lazily (``fastsim._backend.numba_module``) because JIT compilation is
slow; every kernel is ``njit(nogil=True, cache=True)``.
"""
