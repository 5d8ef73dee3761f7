"""The recurrent kernels' vectorized exp, sigmoid and tanh meet their stated accuracy.

Bounds (cpp/include/fastsim/vecmath.hpp): e^x relative error < 2e-7 (float32)
and 5e-16 (float64); sigmoid and tanh absolute error < 3e-7 and 1e-15; checked
at every compiled SIMD level against long double references.  Also: the
kernels flush denormals only while they run and restore the caller's mode.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastsim

pytestmark = pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not available")

BOUNDS = {
    np.dtype(np.float32): {"exp": 2e-7, "sigmoid": 3e-7, "tanh": 3e-7},
    np.dtype(np.float64): {"exp": 5e-16, "sigmoid": 1e-15, "tanh": 1e-15},
}


def _reference(fn, x):
    xl = x.astype(np.longdouble)
    if fn == "exp":
        return np.exp(xl)
    if fn == "sigmoid":
        return 1 / (1 + np.exp(-xl))
    return np.tanh(xl)


@pytest.mark.parametrize("level", fastsim.simd_levels() or ["none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["exp", "sigmoid", "tanh"])
def test_accuracy(level, dtype, fn):
    core = fastsim._backend.core()
    hi = 80.0 if dtype == np.float32 else 700.0
    x = np.concatenate([np.linspace(-30, 30, 200_003), np.linspace(-hi, hi, 50_001), [0.0, -0.0, 1e-30, -1e-30]])
    x = x.astype(dtype)
    try:
        fastsim.set_simd_level(level)
        got = core.vec_math(fn, x).astype(np.longdouble)
    finally:
        fastsim.set_simd_level(None)
    want = _reference(fn, x)
    err = np.abs(got - want)
    if fn == "exp":
        err = err / want
    assert float(err.max()) < BOUNDS[np.dtype(dtype)][fn]


@pytest.mark.parametrize("fn", ["exp", "sigmoid", "tanh"])
def test_nan_and_saturation(fn):
    core = fastsim._backend.core()
    for dtype in (np.float32, np.float64):
        x = np.array([np.nan, np.inf, -np.inf, 1e6, -1e6], dtype=dtype)
        got = core.vec_math(fn, x)
        assert np.isnan(got[0])
        assert np.all(np.isfinite(got[1:]))
        if fn == "sigmoid":
            # exp's argument is clamped, but below -80 the sigmoid is exactly 0 (as in the reference)
            np.testing.assert_array_equal(got[1:], [1, 0, 1, 0])
            edge = core.vec_math(fn, np.array([-80.0, -80.5], dtype=dtype))
            assert 0 < edge[0] < 2e-35 and edge[1] == 0
        if fn == "tanh":
            np.testing.assert_array_equal(got[1:], [1, -1, 1, -1])


def test_caller_floating_point_mode_is_restored():
    # The recurrent kernels flush denormals while they run; afterwards the
    # calling thread must produce subnormals again.
    tiny = np.float32(1e-38)
    assert tiny * np.float32(0.01) != 0
    lstm = fastsim.LSTM(8, 16, seed=0)
    x = np.full((3, 5, 8), 1e-39, dtype=np.float32)  # subnormal inputs
    out, _ = lstm(x, backend="cpp")
    assert np.all(np.isfinite(out))
    assert tiny * np.float32(0.01) != 0
    assert np.float64(1e-308) * 1e-5 != 0
