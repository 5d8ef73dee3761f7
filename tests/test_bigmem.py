"""64-bit indexing: an output of more than 2^31 elements.

The compiled kernels index with ``index_t`` (``std::ptrdiff_t``, 64-bit) and
form every offset as ``row * ld + column`` in that type (the GEMM packing,
the epilogues' ``(i0 + r) * ldc + j0``), so no offset wraps at 2^31
elements.  The cheapest public operation that gets past 2^31 elements is a
cosine matrix of two small inputs: (40000, 3) x (54000, 3) float32 gives
2.16e9 outputs (8.6 GB, written into one ``out`` array shared by the
backends) from 1.1 MB of input.  Every entry must be written (a NaN sentinel
is checked everywhere, in chunks) and rows on both sides of element 2^31 and
at the end must hold the right cosines.

It needs about 9 GB of free memory and takes about 30 s on one core, so it
is skipped unless asked for::

    FASTSIM_BIGMEM=1 python -m pytest tests/test_bigmem.py

(and still skipped, with the reason, when /proc/meminfo's MemAvailable is
below 10 GiB).  The NumPy reference backend is left out: it materializes
full-size float64 temporaries.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import fastsim

M, N, D = 40000, 54000, 3
NEEDED = 10 * 2**30


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _skip_reason():
    if os.environ.get("FASTSIM_BIGMEM", "") in ("", "0"):
        return "an 8.6 GB output: set FASTSIM_BIGMEM=1 to run it"
    available = _available_bytes()
    if available < NEEDED:
        return f"needs {NEEDED / 2**30:.0f} GiB of available memory, MemAvailable is {available / 2**30:.1f} GiB"
    return None


pytestmark = [pytest.mark.bigmem, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]


@pytest.fixture(scope="module")
def big_out():
    assert M * N > 2**31
    out = np.empty((M, N), dtype=np.float32)
    yield out
    del out


def _reference_rows(a, b, rows):
    x = a[rows].astype(np.float64)
    y = b.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return np.clip(x @ y.T, -1.0, 1.0)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_cosine_matrix_output_past_2_31_elements(backend, big_out):
    if backend not in fastsim.available_backends():
        pytest.skip(f"{backend} backend not available here")
    rng = np.random.default_rng(31)
    a = rng.standard_normal((M, D)).astype(np.float32)
    b = rng.standard_normal((N, D)).astype(np.float32)
    out = big_out
    chunk = 2000
    for i in range(0, M, chunk):
        out[i:i + chunk] = np.nan  # sentinel: every entry must be overwritten
    t0 = time.perf_counter()
    got = fastsim.cosine_similarity_matrix(a, b, out=out, backend=backend)
    elapsed = time.perf_counter() - t0
    assert got is out
    for i in range(0, M, chunk):
        block = out[i:i + chunk]
        assert not np.isnan(block).any(), f"rows {i}..{i + chunk - 1} hold an entry that was not written"
        assert block.min() >= -1.0 and block.max() <= 1.0
    boundary = 2**31 // N  # the row holding flat element 2^31
    rows = np.unique(np.r_[0, 1, M // 2, boundary - 1, boundary, boundary + 1, M - 2, M - 1,
                           rng.integers(0, M, size=24)])
    want = _reference_rows(a, b, rows)
    np.testing.assert_allclose(out[rows].astype(np.float64), want, rtol=0, atol=1e-5)
    print(f"{backend}: {M} x {N} cosine matrix in {elapsed:.1f} s")
