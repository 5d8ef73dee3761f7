"""Shared test helpers: the backend x dtype grid and tolerances.

Every backend is compared against the float64 NumPy reference.  Tolerances
are the design's: float64 to ~1e-12, float32 to ~1e-5 (absolute, on values of
order one).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import fastsim

# Hypothesis settings for tests that do not set their own: "fastsim" (the
# default) keeps the suite quick; "thorough" explores far more examples:
#   python -m pytest tests/test_properties.py --hypothesis-profile=thorough
settings.register_profile(
    "fastsim",
    max_examples=15,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
settings.register_profile("thorough", settings.get_profile("fastsim"), max_examples=400)
settings.load_profile("fastsim")

ALL_BACKENDS = ("numpy", "numba", "cpp")
DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def backend_params(supported=ALL_BACKENDS):
    """pytest params for every backend; unavailable ones skip with a reason."""
    avail = fastsim.available_backends()
    params = []
    for name in ALL_BACKENDS:
        marks = []
        if name not in supported:
            marks.append(pytest.mark.skip(reason=f"{name} backend not implemented for this operation"))
        elif name not in avail:
            marks.append(pytest.mark.skip(reason=f"{name} backend not available here"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def tol(dtype, scale: float = 1.0) -> float:
    return TOL[np.dtype(dtype)] * scale


def assert_close(actual, expected, dtype, *, scale: float = 1.0, err_msg: str = ""):
    """Compare with the float64 reference at the dtype's tolerance; NaN positions must match."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape} {err_msg}"
    np.testing.assert_allclose(
        actual.astype(np.float64), expected, rtol=0, atol=tol(dtype, scale), equal_nan=True, err_msg=err_msg
    )


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def rnn_projection():
    """Force the compiled recurrent step form (1: inputs projected first, 0:
    [x_t | h] per step; what FASTSIM_RNN_PROJECT sets at import) for one test."""
    core = fastsim._backend.core()
    before = core.rnn_projection()
    yield core.set_rnn_projection
    core.set_rnn_projection(before)
