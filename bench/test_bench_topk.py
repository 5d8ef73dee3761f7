"""pytest-benchmark groups for top-k retrieval: NumPy's full matrix + argpartition in every group.

FAISS's exact ``IndexFlatIP`` on normalized float32 vectors joins the groups
when it is installed (index built outside the timing).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastsim
from fastsim._bench.pipeline import faiss_index, faiss_search, float64_topk_scores, numpy_chunked_topk

BACKENDS = [b for b in ("numba", "cpp") if b in fastsim.available_backends() and b in fastsim.topk._SUPPORTED]
try:
    import faiss  # noqa: F401
except ImportError:
    HAVE_FAISS = False
else:
    HAVE_FAISS = True

SIZES = [(256, 20_000, 128, 10), (512, 50_000, 256, 10), (16, 100_000, 256, 100)]


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


_CACHE: dict = {}


def _inputs(m, n, d, k, dtype):
    key = (m, n, d, k, np.dtype(dtype).name)
    if key not in _CACHE:
        _CACHE.clear()  # one size at a time: the large corpus is 100 MB
        rng = np.random.default_rng(0)
        q = rng.standard_normal((m, d)).astype(dtype)
        c = rng.standard_normal((n, d)).astype(dtype)
        _CACHE[key] = (q, c, float64_topk_scores(q, c, k))
    return _CACHE[key]


@pytest.mark.parametrize(("m", "n", "d", "k"), SIZES, ids=[f"{m}x{n}x{d}-k{k}" for m, n, d, k in SIZES])
@pytest.mark.parametrize("runner", ["numpy", *BACKENDS, "faiss"])
def test_top_k(benchmark, runner, m, n, d, k, dtype):
    if runner == "faiss" and not HAVE_FAISS:
        pytest.skip("faiss is not installed")
    if runner == "faiss" and dtype != np.float32:
        pytest.skip("faiss computes in float32 only")
    q, c, want = _inputs(m, n, d, k, dtype)
    benchmark.group = f"top_k {m}x{d} in {n}x{d} k={k} {np.dtype(dtype).name}"
    benchmark.extra_info["gflop"] = 2.0 * m * n * d * 1e-9
    if runner == "numpy":
        scores, idx = benchmark.pedantic(numpy_chunked_topk, (q, c, k), rounds=3, iterations=1, warmup_rounds=1)
    elif runner == "faiss":
        index = faiss_index(c)
        scores, idx = benchmark.pedantic(faiss_search, (index, q, k), rounds=5, iterations=1, warmup_rounds=1)
    else:
        scores, idx = benchmark.pedantic(
            fastsim.top_k, (q, c, k), {"backend": runner}, rounds=5, iterations=1, warmup_rounds=1
        )
    atol = 1e-5 if dtype == np.float32 else 1e-12
    assert scores.shape == (m, k) and idx.shape == (m, k)
    np.testing.assert_allclose(scores, want, rtol=0, atol=atol)
    # the returned rows really have those scores
    rows = np.random.default_rng(1).choice(m, size=min(m, 8), replace=False)
    c64 = c.astype(np.float64)
    for i in rows:
        qi = q[i].astype(np.float64)
        true = c64[idx[i]] @ qi / (np.linalg.norm(c64[idx[i]], axis=1) * np.linalg.norm(qi))
        np.testing.assert_allclose(scores[i], true, rtol=0, atol=atol)
