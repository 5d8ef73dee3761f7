"""pytest-benchmark groups for cosine similarity; NumPy's normalize + @ in every group."""

from __future__ import annotations

import numpy as np
import pytest

import fastsim
from fastsim._bench.cosine import numpy_normalize_matmul

BACKENDS = [b for b in ("numba", "cpp") if b in fastsim.available_backends()]
SIZES = [(64, 128), (1024, 256), (4096, 256)]


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


def _inputs(n, d, dtype):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)).astype(dtype), rng.standard_normal((n, d)).astype(dtype)


@pytest.mark.parametrize(("n", "d"), SIZES, ids=[f"{n}x{d}" for n, d in SIZES])
@pytest.mark.parametrize("runner", ["numpy", *BACKENDS])
def test_cosine_matrix(benchmark, runner, n, d, dtype):
    a, b = _inputs(n, d, dtype)
    benchmark.group = f"cosine_matrix {n}x{d} {np.dtype(dtype).name}"
    if runner == "numpy":
        result = benchmark(numpy_normalize_matmul, a, b)
    else:
        out = np.empty((n, n), dtype)
        result = benchmark(fastsim.cosine_similarity_matrix, a, b, out=out, backend=runner)
    want = numpy_normalize_matmul(a.astype(np.float64), b.astype(np.float64))
    assert np.max(np.abs(result - want)) < (1e-5 if dtype == np.float32 else 1e-12)
