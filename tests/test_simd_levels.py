"""Every compiled SIMD level runs the triplet, top-k and recurrent kernels correctly.

The cosine kernels are checked per level in test_cosine.py; the other
kernels have level-specific register blocking (the LSTM gate panel width
follows the micro-kernel's), so each level is compared with the float64
reference here.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastsim
from fastsim._reference import topk as topk_ref
from fastsim._reference import triplet as triplet_ref

from .conftest import assert_close

pytestmark = pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not available")


@pytest.fixture(params=fastsim.simd_levels() or ["none"])
def level(request):
    fastsim.set_simd_level(request.param)
    yield request.param
    fastsim.set_simd_level(None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_triplet_and_topk(level, dtype, rng):
    v1 = rng.standard_normal((37, 19)).astype(dtype)
    v2 = (v1 + rng.standard_normal((37, 19))).astype(dtype)
    got = fastsim.modified_triplet_loss(v1, v2, reduction="none", backend="cpp")
    want = triplet_ref.modified_triplet_loss(v1.astype(np.float64), v2.astype(np.float64), 0.25, "shift")["loss"]
    assert_close(got, want, dtype)
    scores, idx = fastsim.top_k(v1, v2, 5, backend="cpp")
    want_s, want_i = topk_ref.top_k(v1.astype(np.float64), v2.astype(np.float64), 5)
    assert_close(scores, want_s, dtype)
    np.testing.assert_array_equal(idx, want_i)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_recurrent_layers(level, dtype, cls, rng):
    kind = getattr(fastsim, cls)
    layer = kind(7, 13, num_layers=2, bidirectional=True, seed=3, dtype=dtype)
    reference = kind.from_torch(layer.state_dict(), dtype=np.float64)
    x = rng.standard_normal((5, 9, 7)).astype(dtype)
    lengths = np.array([9, 1, 4, 9, 6])
    out, _ = layer(x, lengths=lengths, backend="cpp")
    want, _ = reference(x.astype(np.float64), lengths=lengths, backend="numpy")
    assert_close(out, want, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("b", [7, 31, 50])
def test_triplet_positive_ties_exactly_at_every_level(level, dtype, b):
    # identical rows: every negative equals its positive bit for bit only if the
    # positive is computed with the arithmetic of the level's GEMM tile
    rng = np.random.default_rng(b)
    v1 = np.repeat(rng.standard_normal((1, 37)), b, axis=0).astype(dtype)
    v2 = np.repeat(rng.standard_normal((1, 37)), b, axis=0).astype(dtype)
    parts = fastsim.modified_triplet_loss(v1, v2, return_parts=True, backend="cpp")
    np.testing.assert_array_equal(parts.closest_negative, parts.positive)
    np.testing.assert_array_equal(parts.closest_index, np.where(np.arange(b) == 0, 1, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_triplet_negative_equal_to_the_positive(level, dtype):
    # A copy of row i of v1 at row j makes s[i, j] == s[i, i] exactly, on any
    # data: "equal to the positive still counts", so row i's closest negative is
    # the positive itself, at index j.  Random data (not a grid of exact
    # values) needs the positive to be computed with exactly the arithmetic of
    # the score tiles, FMA contraction included, at every SIMD level.
    rng = np.random.default_rng(7)
    misses = []
    for _ in range(60):
        b, d = int(rng.integers(3, 40)), int(rng.integers(1, 70))
        v1 = rng.standard_normal((b, d)).astype(dtype)
        v2 = rng.standard_normal((b, d)).astype(dtype)
        i, j = (int(x) for x in rng.choice(b, 2, replace=False))
        v1[j] = v1[i]
        parts = fastsim.modified_triplet_loss(v1, v2, reduction="none", return_parts=True, backend="cpp")
        if parts.closest_negative[i] != parts.positive[i] or parts.closest_index[i] != j:
            misses.append((b, d, i, j, parts.positive[i], parts.closest_negative[i], parts.closest_index[i]))
    assert not misses, f"{len(misses)} of 60 rows missed the negative equal to the positive, e.g. {misses[0]}"
