"""The private compiled bindings check their arrays on their own.

The public API always hands ``fastsim._core`` arrays of the right dtype and
size, so these checks are only reached by calling the core directly; they
exist so that no caller can make a kernel read or write past an array.
"""

from __future__ import annotations

import numpy as np
import pytest

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
