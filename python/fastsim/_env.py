"""Every ``FASTSIM_*`` environment variable, read once, when fastsim is imported.

This module owns the variables' names, parsing and errors; nothing else in
fastsim (Python or C++) reads the environment.  ``fastsim._backend`` applies
the values to the compiled core at import (threads, SIMD level, GEMM block
size, recurrent input projection) and reads ``DISABLE_NUMBA``.  The README's
"Environment variables" section lists them; a change after import has no
effect (use ``fastsim.set_num_threads`` and ``fastsim.set_simd_level``).

It imports nothing from fastsim.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["DISABLE_NUMBA", "GEMM_BLOCK_BYTES", "NUMBA_NUM_THREADS", "NUM_THREADS", "RESULT_CACHE_BYTES", "RNN_PROJECT", "SIMD"]


def _int(name: str, minimum: int, what: str) -> int | None:
    """The variable as an int of at least ``minimum``; None when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = minimum - 1
    if n < minimum:
        msg = f"{name} must be {what}; got {value!r}"
        raise ValueError(msg)
    return n


def _positive_int(name: str) -> int | None:
    return _int(name, 1, "a positive integer")


def _bytes(name: str, default: int) -> int:
    n = _int(name, 0, "a whole number of bytes (0 or more)")
    return default if n is None else n


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def _choice(name: str, choices: tuple[str, ...]) -> str | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if value not in choices:
        msg = f"{name} must be one of {', '.join(choices)}; got {value!r}"
        raise ValueError(msg)
    return value


#: Threads for the cpp and numba kernels (default: every core).
NUM_THREADS: int | None = _positive_int("FASTSIM_NUM_THREADS")

#: SIMD level of the cpp kernels ("avx512", "avx2", "generic" or "best"); a
#: level this CPU or build lacks warns and the best level is used (checked by
#: ``fastsim._backend`` against the levels compiled in).
SIMD: str | None = os.environ.get("FASTSIM_SIMD", "").strip() or None

#: Bytes of packed B one GEMM block may occupy (default: half the L2 cache).
GEMM_BLOCK_BYTES: int | None = _positive_int("FASTSIM_GEMM_BLOCK_BYTES")

#: The recurrent layers' step form: "1" projects every step's input with one
#: GEMM first, "0" multiplies [x_t | h] per step (default: by size).
RNN_PROJECT: int | None = None if (_p := _choice("FASTSIM_RNN_PROJECT", ("0", "1"))) is None else int(_p)

#: Bytes of dropped results of 4 MiB and more kept for the next result of the
#: same size (default 1 GiB; 0 keeps none).
RESULT_CACHE_BYTES: int = _bytes("FASTSIM_RESULT_CACHE_BYTES", 1 << 30)

#: Any value but "" or "0" hides the numba backend, as if Numba were not installed.
DISABLE_NUMBA: bool = _flag("FASTSIM_DISABLE_NUMBA")

#: Numba's own thread count variable, read as Numba reads it, so that
#: ``fastsim.info()`` can report it without importing Numba.
try:
    NUMBA_NUM_THREADS: int | None = _positive_int("NUMBA_NUM_THREADS")
except ValueError:
    NUMBA_NUM_THREADS = None  # Numba itself reports that one when it is imported


def warn_unknown_simd(levels: list[str]) -> None:
    """Warn about a FASTSIM_SIMD value that is not one of ``levels`` or "best"."""
    warnings.warn(f"FASTSIM_SIMD={SIMD!r} is not one of {levels + ['best']}: using the best level",
                  RuntimeWarning, stacklevel=3)
