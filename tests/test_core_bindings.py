"""The private compiled bindings check their arrays on their own.

The public API always hands ``fastsim._core`` arrays of the right dtype and
size, so these checks are only reached by calling the core directly; they
exist so that no caller can make a kernel read or write past an array.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsim

pytestmark = pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not available")

B, T, D, H = 2, 3, 4, 5


def _lstm_layer(dtype):
    rng = np.random.default_rng(0)
    w_ih = rng.standard_normal((4 * H, D)).astype(dtype)
    w_hh = rng.standard_normal((4 * H, H)).astype(dtype)
    return fastsim._backend.core().RnnLayer(0, w_ih, w_hh, None, None)


def _run_args(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B * T, D)).astype(dtype)
    return x, np.zeros(B * H, dtype), np.zeros(B * H, dtype), np.zeros((B * T, H), dtype)


@pytest.mark.parametrize(("layer_dtype", "wrong"), [(np.float64, np.float32), (np.float32, np.float64)])
@pytest.mark.parametrize("name", ["x", "h", "c", "out"])
def test_rnn_layer_run_rejects_a_state_or_buffer_of_another_dtype(layer_dtype, wrong, name):
    # A float32 cell state for a float64 layer has half the bytes the kernel
    # writes: it used to be accepted (its size in elements matches) and overrun.
    layer = _lstm_layer(layer_dtype)
    args = dict(zip(("x", "h", "c", "out"), _run_args(layer_dtype)))
    args[name] = args[name].astype(wrong)
    with pytest.raises(TypeError, match=f"{name} must have the same dtype"):
        layer.run(args["x"], B, T, True, None, False, args["h"], args["c"], args["out"], H, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rnn_layer_run_accepts_matching_arrays(dtype):
    layer = _lstm_layer(dtype)
    x, h, c, out = _run_args(dtype)
    layer.run(x, B, T, True, None, False, h, c, out, H, 0)
    assert np.all(np.isfinite(out)) and np.any(out != 0)
    assert np.any(c != 0)


def test_rnn_layer_keeps_biases_given_as_lists():
    # Biases given as lists are converted to arrays; the layer packs its weights
    # from them (again whenever the SIMD level changes), so the converted arrays
    # must live as long as the layer.  They used to be freed right after the
    # check, and the packing read freed memory (H large enough that NumPy's
    # small-block cache does not hide it).
    hidden = 100
    rng = np.random.default_rng(2)
    w_ih = rng.standard_normal((4 * hidden, D))
    w_hh = rng.standard_normal((4 * hidden, hidden)) / hidden
    b_ih = rng.standard_normal(4 * hidden)
    core = fastsim._backend.core()
    from_list = core.RnnLayer(0, w_ih, w_hh, b_ih.tolist(), None)
    from_array = core.RnnLayer(0, w_ih, w_hh, b_ih, None)
    x = rng.standard_normal((B * T, D))
    results = []
    for layer in (from_list, from_array):
        h, c, out = np.zeros(B * hidden), np.zeros(B * hidden), np.zeros((B * T, hidden))
        layer.run(x, B, T, True, None, False, h, c, out, hidden, 0)
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])


def test_rnn_layer_run_needs_an_array_for_the_cell_state():
    # c is updated in place; a list would be silently copied and the state lost.
    layer = _lstm_layer(np.float64)
    x, h, c, out = _run_args(np.float64)
    with pytest.raises(TypeError, match="c must be a numpy array"):
        layer.run(x, B, T, True, None, False, h, c.tolist(), out, H, 0)


def test_rnn_layer_run_refuses_sizes_that_overflow():
    # B * T * D wrapped to 0 for B = 2**59, T = 32, so empty arrays passed the
    # size checks (signed overflow, undefined behaviour) and the kernel got B.
    hidden = 32
    layer = fastsim._backend.core().RnnLayer(2, np.ones((hidden, 1)), np.ones((hidden, hidden)), None, None)
    with pytest.raises(ValueError, match="more elements than fit"):
        layer.run(np.empty((0, 1)), 2**59, 32, True, None, False, np.empty(0), None, np.empty((0, hidden)), hidden, 0)
    with pytest.raises(ValueError, match="must be >= 0"):
        layer.run(np.empty((0, 1)), 0, -1, True, None, False, np.empty(0), None, np.empty((0, hidden)), hidden, 0)


# --------------------------------------------------------------------------- arbitrary arguments
#
# Each binding gets a valid call built from small random shapes, then up to
# two of its arguments are replaced (another dtype, another shape or ndim, a
# strided or read-only view, a list, None, an edge integer).  The only
# acceptable outcomes are a result or TypeError / ValueError; a crash or a
# sanitizer report (tools/sanitize.sh runs this file too) fails.

_ANY_DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_, np.complex64]
_EDGE_INTS = [-(2**62), -2, -1, 0, 1, 2, 3, 7, 2**31, 2**59, 2**62, 2**63 - 1]


def _mutate(draw, value):
    arr = value if isinstance(value, np.ndarray) else None
    if arr is not None:
        kinds = ["dtype", "dtype", "dtype", "shape", "shape", "ndim", "strided", "readonly", "list", "none", "int"]
    else:
        kinds = ["int", "int", "float", "str", "none"]
    kind = draw(st.sampled_from(kinds))
    if kind == "dtype" and arr is not None:
        with warnings.catch_warnings():  # complex -> real, inf -> int: the values do not matter here
            warnings.simplefilter("ignore")
            return arr.astype(draw(st.sampled_from(_ANY_DTYPES)))
    if kind == "shape" and arr is not None and arr.ndim:
        shape = list(arr.shape)
        axis = draw(st.integers(0, arr.ndim - 1))
        shape[axis] = max(0, shape[axis] + draw(st.sampled_from([-1, 1, 2])))
        return np.ones(shape, arr.dtype)
    if kind == "ndim" and arr is not None:
        return arr.reshape(-1) if arr.ndim != 1 else arr[None, :]
    if kind == "strided" and arr is not None:
        return np.stack([arr, arr], axis=-1)[..., 0]
    if kind == "readonly" and arr is not None:
        ro = arr.copy()
        ro.flags.writeable = False
        return ro
    if kind == "list" and arr is not None:
        return arr.tolist()
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.sampled_from(_EDGE_INTS))
    if kind == "float":
        return draw(st.sampled_from([0.5, float("nan")]))
    if kind == "str":
        return "x"
    return value


def _valid_call(draw, name):
    core = fastsim._backend.core()
    dt = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def arr(*shape, dtype=dt):
        return rng.standard_normal(shape).astype(dtype)

    m, n, d = draw(st.integers(0, 7)), draw(st.integers(0, 7)), draw(st.integers(0, 9))
    b = draw(st.integers(2, 7))
    if name == "cosine_matrix":
        return core.cosine_matrix, [arr(m, d), arr(n, d), np.empty((m, n), dt)]
    if name == "cosine_rows":
        return core.cosine_rows, [arr(m, d), arr(m, d), np.empty(m, dt)]
    if name == "gemm_nt":
        return core.gemm_nt, [arr(m, d), arr(n, d), np.empty((m, n), dt)]
    if name == "triplet_forward":
        return core.triplet_forward, [arr(b, d), arr(b, d), draw(st.sampled_from([0, 1]))]
    if name == "triplet_backward":
        idx = rng.integers(-1, b, size=b).astype(np.int64)
        act = [rng.integers(0, 2, size=b).astype(np.uint8) for _ in range(2)]
        weight = draw(st.sampled_from([1.0, np.ones(b)]))
        return core.triplet_backward, [arr(b, d), arr(b, d), idx, act[0], act[1], weight]
    if name == "top_k":
        exclude = draw(st.booleans())
        n = max(n, 2) if exclude else max(n, 1)
        queries = arr(n if exclude else m, d)
        k = draw(st.integers(1, n - 1 if exclude else n))
        return core.top_k, [queries, arr(n, d), k, exclude]
    if name == "vec_math":
        return core.vec_math, [draw(st.sampled_from(["exp", "sigmoid", "tanh"])), arr(n)]
    if name == "RnnLayer":
        cell, hidden = draw(st.integers(0, 3)), draw(st.sampled_from([1, 2, 3, 5, 40]))
        g = (4, 3, 1, 1)[cell]
        return core.RnnLayer, [cell, arr(g * hidden, d), arr(g * hidden, hidden), arr(g * hidden), arr(g * hidden)]
    # RnnLayer.run on a valid layer
    cell, hidden = draw(st.integers(0, 3)), draw(st.sampled_from([1, 2, 3, 5, 40]))
    g = (4, 3, 1, 1)[cell]
    layer = core.RnnLayer(cell, arr(g * hidden, d), arr(g * hidden, hidden), None, None)
    steps, batch = draw(st.integers(1, 4)), draw(st.integers(0, 4))
    lengths = rng.integers(1, steps + 1, size=batch).astype(np.int64) if draw(st.booleans()) else None
    off = draw(st.integers(0, 2))
    ld = hidden + off + draw(st.integers(0, 2))
    args = [arr(batch * steps, d), batch, steps, draw(st.booleans()), lengths, draw(st.booleans()),
            np.zeros(batch * hidden, dt), np.zeros(batch * hidden, dt) if cell == 0 else None,
            np.zeros((batch * steps, ld), dt), ld, off]
    return layer.run, args


_BINDINGS = ["cosine_matrix", "cosine_rows", "gemm_nt", "triplet_forward", "triplet_backward", "top_k",
             "vec_math", "RnnLayer", "RnnLayer.run"]


@pytest.mark.parametrize("name", _BINDINGS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bindings_answer_any_arguments_with_a_result_or_a_clear_error(name, data):
    fn, args = _valid_call(data.draw, name)
    for _ in range(data.draw(st.integers(0, 2))):
        i = data.draw(st.integers(0, len(args) - 1))
        args[i] = _mutate(data.draw, args[i])
    try:
        fn(*args)
    except (TypeError, ValueError):
        pass
