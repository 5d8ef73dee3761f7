"""Recurrent layers (LSTM, GRU, vanilla RNN).

* every backend against the float64 NumPy reference, over dtype x shapes
  (sizes of 1 included), initial states, lengths, stacking and directions;
* the reference itself against PyTorch's nn.LSTM / nn.GRU / nn.RNN (packed
  sequences included) when torch is installed;
* the importers against Keras and ONNX Runtime when installed, and always
  against layouts built by hand in this file from PyTorch-layout weights;
* bad input, and property tests of the packed-sequence semantics.
"""

from __future__ import annotations

import importlib.util
import os
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastsim
from fastsim import rnn as R
from fastsim._reference import rnn as ref

from .conftest import DTYPES, assert_close, backend_params

BACKENDS = backend_params(R._SUPPORTED)
KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


# --------------------------------------------------------------------------- building blocks


def make_layer(kind, D, H, num_layers=1, bidirectional=False, batch_first=True, dtype=np.float64, seed=0, bias=True):
    kw = dict(bidirectional=bidirectional, batch_first=batch_first, dtype=dtype, seed=seed, bias=bias)
    if kind == "lstm":
        return R.LSTM(D, H, num_layers, **kw)
    if kind == "gru":
        return R.GRU(D, H, num_layers, **kw)
    return R.RNN(D, H, num_layers, nonlinearity=kind[4:], **kw)


def weights64(layer):
    return [[tuple(np.asarray(a, dtype=np.float64) for a in w) for w in dirs] for dirs in layer.weights]


def reference(kind, weights, x, lengths=None, initial=None, batch_first=True):
    """The float64 reference of a stacked layer; ``initial`` as the layer's ``initial_state``."""
    x = np.asarray(x, dtype=np.float64)
    if kind == "lstm":
        h0, c0 = initial if initial is not None else (None, None)
        return ref.lstm(x, weights, h0, c0, lengths, batch_first)
    if kind == "gru":
        return ref.gru(x, weights, initial, lengths, batch_first)
    return ref.rnn(x, weights, initial, lengths, batch_first, nonlinearity=kind[4:])


def assert_result(actual, expected, dtype, *, scale=1.0):
    out, state = actual
    e_out, e_state = expected
    assert out.dtype == np.dtype(dtype)
    assert_close(out, e_out, dtype, scale=scale, err_msg="outputs")
    if isinstance(e_state, tuple):
        for a, e, name in zip(state, e_state, ("h_n", "c_n")):
            assert a.dtype == np.dtype(dtype)
            assert_close(a, e, dtype, scale=scale, err_msg=name)
    else:
        assert state.dtype == np.dtype(dtype)
        assert_close(state, e_state, dtype, scale=scale, err_msg="h_n")


def random_initial(kind, rng, n, B, H, dtype):
    h0 = rng.standard_normal((n, B, H)).astype(dtype)
    if kind == "lstm":
        return h0, rng.standard_normal((n, B, H)).astype(dtype)
    return h0


def torch_weights(rng, kind, D, H):
    """Random PyTorch-layout weights of one layer and direction, float64."""
    G = GATES[kind]
    k = 1 / np.sqrt(H)
    return tuple(rng.uniform(-k, k, s) for s in ((G * H, D), (G * H, H), (G * H,), (G * H,)))


# --------------------------------------------------------------------------- backends against the reference

SHAPES = [(1, 1, 1, 1), (3, 5, 4, 6), (2, 7, 3, 1), (1, 9, 5, 3), (4, 3, 1, 5)]  # (B, T, D, H)
STACKS = [(1, False), (1, True), (2, False), (2, True)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}D{}H{}".format(*s))
@pytest.mark.parametrize("stack", STACKS, ids=lambda s: f"L{s[0]}{'bi' if s[1] else ''}")
def test_layer_matches_reference(backend, dtype, kind, shape, stack):
    B, T, D, H = shape
    num_layers, bidirectional = stack
    rng = np.random.default_rng(zlib.crc32(repr((shape, stack, kind)).encode()))  # a fixed seed per case
    layer = make_layer(kind, D, H, num_layers, bidirectional, dtype=dtype, seed=rng)
    n = num_layers * (2 if bidirectional else 1)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T  # one full-length row, so that every time step runs for some sequence
    initial = random_initial(kind, rng, n, B, H, dtype)
    for lens, init in ((None, None), (lengths, None), (None, initial), (lengths, initial)):
        got = layer(x, lens, init, backend=backend)
        assert_result(got, reference(kind, weights64(layer), x, lens, init), dtype)


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="cpp backend not available here")
@pytest.mark.parametrize("form", ["0", "1"], ids=["stacked-input", "projected-input"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 6, 5, 3), (7, 5, 9, 37), (13, 4, 1, 70)], ids=lambda s: "B{}T{}D{}H{}".format(*s))
def test_both_step_forms_match_reference(rnn_projection, form, dtype, kind, shape):
    # The compiled LSTM and RNN either multiply [x_t | h] per step or project
    # every step's input first; the size decides, FASTSIM_RNN_PROJECT forces it.
    rnn_projection(int(form))
    B, T, D, H = shape
    rng = np.random.default_rng(zlib.crc32(repr((shape, kind, form)).encode()))
    layer = make_layer(kind, D, H, 2, True, dtype=dtype, seed=rng)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T
    initial = random_initial(kind, rng, 4, B, H, dtype)
    for lens, init in ((None, None), (lengths, initial)):
        got = layer(x, lens, init, backend="cpp")
        assert_result(got, reference(kind, weights64(layer), x, lens, init), dtype)
    # time-major input, through the functional form of one direction
    w64 = weights64(layer)[0][0]
    fn = {"lstm": R.lstm_forward, "gru": R.gru_forward}.get(kind)
    if fn is not None:
        xt = np.swapaxes(x, 0, 1).copy()
        out, _ = fn(xt, *(a.astype(dtype) for a in w64), lengths=lengths, batch_first=False, backend="cpp")
        want, _ = reference(kind, [[w64]], xt, lengths, batch_first=False)
        assert out.dtype == dtype
        assert_close(out, want, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_time_major_input(backend, dtype, kind):
    rng = np.random.default_rng(3)
    T, B, D, H = 6, 4, 3, 5
    layer = make_layer(kind, D, H, 2, True, batch_first=False, dtype=dtype, seed=1)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    lengths = np.array([6, 1, 3, 5])
    got = layer(x, lengths, backend=backend)
    assert got[0].shape == (T, B, 2 * H)
    assert_result(got, reference(kind, weights64(layer), x, lengths, batch_first=False), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_layer_moderate_size(backend, dtype, kind):
    """Sizes where the per-step product goes through BLAS (the small shapes above use
    numba's plain loop); 30 steps of accumulation justify a 4x float32 tolerance."""
    rng = np.random.default_rng(11)
    B, T, D, H = 30, 30, 33, 100
    assert B * H * GATES[kind] * H > 1 << 18  # above the numba kernels' small-product cutoff
    layer = make_layer(kind, D, H, 2, True, dtype=dtype, seed=2)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B)
    got = layer(x, lengths, backend=backend)
    assert_result(got, reference(kind, weights64(layer), x, lengths), dtype, scale=4.0 if dtype == np.float32 else 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_saturated_gates(backend, dtype, kind):
    """Pre-activations in the hundreds: sigmoid and tanh saturate (and exp would overflow)."""
    rng = np.random.default_rng(5)
    layer = make_layer(kind, 4, 6, dtype=dtype, seed=3)
    x = (300.0 * rng.standard_normal((3, 5, 4))).astype(dtype)
    got = layer(x, backend=backend)
    expected = reference(kind, weights64(layer), x)
    scale = 1.0
    if kind == "rnn_relu":
        scale = max(1.0, float(np.abs(expected[0]).max()))  # relu is unbounded: compare relative to the magnitude
    assert_result(got, expected, dtype, scale=scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_nan_stays_in_its_row(backend, kind):
    rng = np.random.default_rng(6)
    layer = make_layer(kind, 3, 4, dtype=np.float64, seed=4)
    x = rng.standard_normal((3, 5, 3))
    x[1, 2, 0] = np.nan
    out, state = layer(x, backend=backend)
    h = state[0] if kind == "lstm" else state
    assert np.all(np.isnan(out[1, 2:]))
    assert np.all(np.isnan(h[:, 1]))
    clean = np.delete(x, 1, axis=0)
    e_out, e_state = reference(kind, weights64(layer), clean)
    assert_close(np.delete(out, 1, axis=0), e_out, np.float64)
    assert_close(np.delete(h, 1, axis=1), e_state[0] if kind == "lstm" else e_state, np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_conversions(backend):
    """Integer input computes in the layer dtype; strided and negative-stride input work."""
    rng = np.random.default_rng(7)
    layer = R.LSTM(4, 3, dtype=np.float32, seed=5)
    xi = rng.integers(-3, 4, size=(2, 5, 4))
    out, _ = layer(xi, backend=backend)
    assert out.dtype == np.float32
    assert_close(out, reference("lstm", weights64(layer), xi)[0], np.float32)
    big = rng.standard_normal((4, 10, 8))
    strided = big[::2, ::-2, 1::2]
    out, _ = layer(strided, backend=backend)
    assert_close(out, reference("lstm", weights64(layer), np.ascontiguousarray(strided))[0], np.float32)
    layer64 = R.LSTM(4, 3, dtype=np.float64, seed=5)
    assert layer64(strided.astype(np.float32), backend=backend)[0].dtype == np.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_sequence(backend):
    layer = R.GRU(3, 2, 2, bidirectional=True, seed=0)
    out, h = layer(np.zeros((0, 4, 3)), backend=backend)
    assert out.shape == (0, 4, 4) and h.shape == (4, 0, 2)
    h0 = np.arange(8, dtype=np.float32).reshape(4, 1, 2)
    out, h = layer(np.zeros((1, 0, 3)), initial_state=h0, backend=backend)
    assert out.shape == (1, 0, 4)
    np.testing.assert_array_equal(h, h0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_calls(backend):
    """One layer called from several threads at once (the kernels release the GIL) gives each caller its answer."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(21)
    layer = R.LSTM(5, 8, 2, bidirectional=True, dtype=np.float64, seed=6)
    xs = [rng.standard_normal((3, 12, 5)) for _ in range(6)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda x: layer(x, backend=backend), xs))
    for x, got in zip(xs, results):
        assert_result(got, reference("lstm", weights64(layer), x), np.float64)


def test_auto_backend_matches_reference():
    layer = R.LSTM(3, 4, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 3, 3))
    assert_result(layer(x), reference("lstm", weights64(layer), x), np.float64)


# --------------------------------------------------------------------------- functional forms


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_functional_matches_reference(backend, dtype, kind, batch_first):
    rng = np.random.default_rng(8)
    B, T, D, H = 3, 6, 4, 5
    W_ih, W_hh, b_ih, b_hh = (a.astype(dtype) for a in torch_weights(rng, kind, D, H))
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype)
    lengths = np.array([6, 2, 4])
    w64 = [[tuple(a.astype(np.float64) for a in (W_ih, W_hh, b_ih, b_hh))]]
    for lens, with_state in ((None, False), (lengths, True)):
        kw = dict(lengths=lens, batch_first=batch_first, backend=backend)
        if kind == "lstm":
            if with_state:
                kw.update(h0=h0, c0=c0)
            out, (h, c) = R.lstm_forward(x, W_ih, W_hh, b_ih, b_hh, **kw)
            init = (h0[None], c0[None]) if with_state else None
            e_out, (e_h, e_c) = reference(kind, w64, x, lens, init, batch_first)
            assert_result((out, (h, c)), (e_out, (e_h[0], e_c[0])), dtype)
        else:
            if with_state:
                kw.update(h0=h0)
            if kind == "gru":
                out, h = R.gru_forward(x, W_ih, W_hh, b_ih, b_hh, **kw)
            else:
                out, h = R.rnn_forward(x, W_ih, W_hh, b_ih, b_hh, nonlinearity=kind[4:], **kw)
            e_out, e_h = reference(kind, w64, x, lens, h0[None] if with_state else None, batch_first)
            assert_result((out, h), (e_out, e_h[0]), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_dtype_promotion_and_default_biases(backend):
    rng = np.random.default_rng(9)
    W_ih, W_hh, _, _ = torch_weights(rng, "lstm", 3, 2)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    out, (h, c) = R.lstm_forward(x, W_ih, W_hh, backend=backend)  # float64 weights promote
    assert out.dtype == h.dtype == c.dtype == np.float64
    zeros = np.zeros(8)
    e_out, (e_h, e_c) = ref.lstm(x.astype(np.float64), [[(W_ih, W_hh, zeros, zeros)]])
    assert_result((out, (h, c)), (e_out, (e_h[0], e_c[0])), np.float64)
    out32, _ = R.gru_forward(x, *(a.astype(np.float32) for a in torch_weights(rng, "gru", 3, 2)[:2]), backend=backend)
    assert out32.dtype == np.float32


# --------------------------------------------------------------------------- packed-sequence semantics


def test_reference_lengths_by_hand():
    """A sequence of length 1 in a batch padded to T = 3: its one output and frozen state, by hand."""
    W_ih = np.array([[1.0], [2.0], [3.0], [4.0]])  # H = 1, D = 1
    W_hh = np.array([[0.5], [0.5], [0.5], [0.5]])
    bias = np.zeros(4)
    x = np.array([[[0.3], [7.0], [9.0]]])  # B = 1, T = 3
    out, (h, c) = ref.lstm(x, [[(W_ih, W_hh, bias, bias)]], lengths=np.array([1]))

    def s(v):
        return 1 / (1 + np.exp(-v))

    c1 = s(0.3) * np.tanh(0.9)  # f * 0 + i * g
    h1 = s(1.2) * np.tanh(c1)
    np.testing.assert_allclose(out[0, :, 0], [h1, 0.0, 0.0], rtol=1e-15)
    np.testing.assert_allclose([h[0, 0, 0], c[0, 0, 0]], [h1, c1], rtol=1e-15)


def _check_truncation_property(kind, layer, x, lengths, backend):
    """Each row run alone on its first ``lengths[b]`` steps, without lengths, gives the same
    outputs on those steps and the same final state; outputs past the length are 0."""
    out, state = layer(x, lengths, backend=backend)
    H = layer.hidden_size
    for b, L in enumerate(lengths):
        o_b, s_b = layer(x[b : b + 1, :L], backend=backend)
        assert_close(out[b : b + 1, :L], o_b, layer.dtype)
        assert not np.any(out[b, L:])
        if kind == "lstm":
            assert_close(state[0][:, b : b + 1], s_b[0], layer.dtype)
            assert_close(state[1][:, b : b + 1], s_b[1], layer.dtype)
        else:
            assert_close(state[:, b : b + 1], s_b, layer.dtype)
    assert out.shape[-1] == H * layer.num_directions


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=15, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    B=st.integers(1, 4),
    T=st.integers(1, 7),
    D=st.integers(1, 4),
    H=st.integers(1, 5),
    num_layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_lengths_equal_truncated_runs(backend, kind, B, T, D, H, num_layers, bidirectional, seed):
    rng = np.random.default_rng(seed)
    layer = make_layer(kind, D, H, num_layers, bidirectional, seed=rng)
    x = rng.standard_normal((B, T, D))
    lengths = rng.integers(1, T + 1, size=B)
    _check_truncation_property(kind, layer, x, lengths, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    dtype=st.sampled_from(DTYPES),
    B=st.integers(1, 5),
    T=st.integers(1, 8),
    D=st.integers(1, 6),
    H=st.integers(1, 6),
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    use_lengths=st.booleans(),
    use_initial=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_hypothesis_against_reference(
    backend, kind, dtype, B, T, D, H, num_layers, bidirectional, use_lengths, use_initial, seed
):
    rng = np.random.default_rng(seed)
    layer = make_layer(kind, D, H, num_layers, bidirectional, dtype=dtype, seed=rng)
    x = (2 * rng.standard_normal((B, T, D))).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B) if use_lengths else None
    n = num_layers * layer.num_directions
    initial = random_initial(kind, rng, n, B, H, dtype) if use_initial else None
    got = layer(x, lengths, initial, backend=backend)
    assert_result(got, reference(kind, weights64(layer), x, lengths, initial), dtype)


# --------------------------------------------------------------------------- PyTorch as the oracle


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


TORCH_CLASSES = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}
FASTSIM_CLASSES = {"lstm": R.LSTM, "gru": R.GRU, "rnn_tanh": R.RNN, "rnn_relu": R.RNN}


def make_torch(torch, kind, D, H, num_layers, bidirectional, batch_first, bias, seed):
    torch.manual_seed(seed)
    cls = getattr(torch.nn, TORCH_CLASSES[kind])
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    if kind.startswith("rnn"):
        kw["nonlinearity"] = kind[4:]
    return cls(D, H, **kw).double().eval()


def run_torch_packed(torch, module, x, lengths, initial):
    """The module on a packed batch (PyTorch's variable-length path); float64 NumPy results."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
    if isinstance(initial, tuple):
        initial = tuple(torch.from_numpy(np.asarray(s, np.float64)) for s in initial)
    elif initial is not None:
        initial = torch.from_numpy(np.asarray(initial, np.float64))
    T = xt.shape[1] if module.batch_first else xt.shape[0]
    with torch.no_grad():
        if lengths is None:
            out, state = module(xt, initial)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xt, torch.as_tensor(lengths), batch_first=module.batch_first, enforce_sorted=False
            )
            po, state = module(packed, initial)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(po, batch_first=module.batch_first, total_length=T)
    state = tuple(s.numpy() for s in state) if isinstance(state, tuple) else state.numpy()
    return out.numpy(), state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["bf", "tm"])
def test_against_torch(torch, backend, kind, bias, batch_first):
    rng = np.random.default_rng(10)
    B, T, D, H, num_layers = 4, 7, 5, 6, 2
    module = make_torch(torch, kind, D, H, num_layers, True, batch_first, bias, seed=1)
    layer = FASTSIM_CLASSES[kind].from_torch(module)
    assert (layer.num_layers, layer.bidirectional, layer.batch_first, layer.bias) == (2, True, batch_first, bias)
    assert layer.dtype == np.float64
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D))
    lengths = np.array([7, 3, 1, 5])
    initial = random_initial(kind, rng, 2 * num_layers, B, H, np.float64)
    for lens, init in ((None, None), (lengths, None), (lengths, initial)):
        expected = run_torch_packed(torch, module, x, lens, init)
        assert_result(layer(x, lens, init, backend=backend), expected, np.float64)
    layer32 = FASTSIM_CLASSES[kind].from_torch(module, dtype=np.float32)
    assert_result(layer32(x, lengths, initial, backend=backend), run_torch_packed(torch, module, x, lengths, initial),
                  np.float32)


def test_torch_state_dict_forms(torch):
    """A state dict of tensors, of NumPy arrays, and one with a module prefix all import alike."""
    module = make_torch(torch, "lstm", 3, 4, 3, True, True, True, seed=2).float()
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    a = R.LSTM.from_torch(module)
    b = R.LSTM.from_torch(module.state_dict())
    c = R.LSTM.from_torch({k: v.numpy() for k, v in module.state_dict().items()})
    d = R.LSTM.from_torch(torch.nn.Sequential(module).state_dict())
    assert a.dtype == np.float32 and a.num_layers == 3 and a.bidirectional
    with torch.no_grad():
        e_out, (e_h, e_c) = module(torch.from_numpy(x))
    for m in (a, b, c, d):
        out, (h, c_n) = m(x, backend="numpy")
        assert_close(out, e_out.numpy(), np.float32)
        assert_close(h, e_h.numpy(), np.float32)
        assert_close(c_n, e_c.numpy(), np.float32)
    e = R.LSTM.from_torch(a.state_dict())  # fastsim's own state dict round-trips
    np.testing.assert_array_equal(e(x)[0], a(x)[0])


def test_torch_module_with_grad_and_batch_first_override(torch):
    module = torch.nn.GRU(3, 2, batch_first=False)  # parameters require grad
    layer = R.GRU.from_torch(module, batch_first=True)
    assert layer.batch_first is True
    np.testing.assert_array_equal(layer.weights[0][0].W_hh, module.weight_hh_l0.detach().numpy())
    rnn = torch.nn.RNN(3, 2, nonlinearity="relu")
    assert R.RNN.from_torch(rnn).nonlinearity == "relu"
    with pytest.raises(ValueError, match="nonlinearity"):
        R.RNN.from_torch(rnn, nonlinearity="tanh")


def test_torch_wrong_module_kind(torch):
    with pytest.raises(ValueError, match="GRU"):
        R.LSTM.from_torch(torch.nn.GRU(3, 2))
    with pytest.raises(ValueError, match="gates"):
        R.LSTM.from_torch(torch.nn.GRU(3, 2).state_dict())
    with pytest.raises(ValueError, match="proj_size"):
        R.LSTM.from_torch(torch.nn.LSTM(3, 4, proj_size=2))


def test_from_torch_state_dict_without_torch():
    """The PyTorch layout read from plain arrays: all layers, _reverse, no biases."""
    rng = np.random.default_rng(12)
    D, H = 3, 2
    sd, weights = {}, []
    for layer in range(2):
        dirs = []
        for suffix in ("", "_reverse"):
            W_ih, W_hh, _, _ = torch_weights(rng, "gru", D if layer == 0 else 2 * H, H)
            sd[f"weight_ih_l{layer}{suffix}"] = W_ih
            sd[f"weight_hh_l{layer}{suffix}"] = W_hh
            dirs.append((W_ih, W_hh, np.zeros(3 * H), np.zeros(3 * H)))
        weights.append(dirs)
    m = R.GRU.from_torch(sd)
    assert (m.num_layers, m.bidirectional, m.bias, m.dtype) == (2, True, False, np.float64)
    assert "bias_ih_l0" not in m.state_dict()
    x = rng.standard_normal((2, 4, D))
    assert_result(m(x, backend="numpy"), ref.gru(x, weights), np.float64)
    del sd["weight_hh_l1_reverse"]
    with pytest.raises(ValueError, match="weight_hh_l1_reverse"):
        R.GRU.from_torch(sd)
    with pytest.raises(ValueError, match="no recurrent weights"):
        R.GRU.from_torch({"foo": np.zeros(3)})
    with pytest.raises(TypeError, match="module_or_state_dict"):
        R.GRU.from_torch(42)


# --------------------------------------------------------------------------- Keras layout


def keras_arrays(kind, W_ih, W_hh, b_ih, b_hh):
    """Keras (kernel, recurrent_kernel, bias) written out gate by gate from PyTorch-layout weights."""
    if kind == "lstm":  # Keras i, f, c, o is PyTorch's i, f, g, o
        return W_ih.T, W_hh.T, b_ih + b_hh
    if kind == "gru":  # PyTorch r, z, n -> Keras z, r, h; reset_after=True keeps the two biases apart
        H = W_hh.shape[1]
        r, z, n = slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H)
        kernel = np.concatenate([W_ih[z], W_ih[r], W_ih[n]]).T
        recurrent = np.concatenate([W_hh[z], W_hh[r], W_hh[n]]).T
        bias = np.stack([np.concatenate([b_ih[z], b_ih[r], b_ih[n]]), np.concatenate([b_hh[z], b_hh[r], b_hh[n]])])
        return kernel, recurrent, bias
    return W_ih.T, W_hh.T, b_ih + b_hh


@pytest.mark.parametrize("kind", KINDS)
def test_from_keras_arrays(kind):
    rng = np.random.default_rng(13)
    B, T, D, H = 3, 5, 4, 3
    w = torch_weights(rng, kind, D, H)
    cls = FASTSIM_CLASSES[kind]
    kw = {"nonlinearity": "relu"} if kind == "rnn_relu" else {}
    kernel, recurrent, bias = keras_arrays(kind, *w)
    x = rng.standard_normal((B, T, D))
    lengths = np.array([5, 2, 3])
    expected = reference(kind, [[w]], x, lengths)
    assert_result(cls.from_keras(kernel, recurrent, bias, **kw)(x, lengths, backend="numpy"), expected, np.float64)
    nobias = cls.from_keras(kernel, recurrent, **kw)
    assert not nobias.bias
    zero = np.zeros_like(w[2])
    assert_result(nobias(x, backend="numpy"), reference(kind, [[(w[0], w[1], zero, zero)]], x), np.float64)


def test_from_keras_gru_reset_before_is_refused():
    rng = np.random.default_rng(14)
    kernel, recurrent, bias = keras_arrays("gru", *torch_weights(rng, "gru", 3, 2))
    with pytest.raises(ValueError, match="reset_after"):
        R.GRU.from_keras(kernel, recurrent, bias, reset_after=False)
    with pytest.raises(ValueError, match="reset_after=False"):
        R.GRU.from_keras(kernel, recurrent, bias[0] + bias[1])  # the (3H,) bias of reset_after=False
    with pytest.raises(ValueError, match="recurrent_kernel"):
        R.LSTM.from_keras(np.zeros((3, 8)), np.zeros((3, 8)))


@pytest.fixture(scope="module")
def keras():
    # Keras 3 runs on PyTorch's backend here, so no TensorFlow is needed
    if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("torch") is not None:
        os.environ["KERAS_BACKEND"] = "torch"
    return pytest.importorskip("keras")


KERAS_LAYERS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "SimpleRNN", "rnn_relu": "SimpleRNN"}
keras_warnings = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


def randomize_keras(rng, layer):
    layer.set_weights([rng.uniform(-0.6, 0.6, np.shape(w)) for w in layer.get_weights()])


@keras_warnings
@pytest.mark.parametrize("kind", KINDS)
def test_against_keras(keras, kind):
    rng = np.random.default_rng(15)
    B, T, D, H = 3, 6, 4, 5
    x = rng.standard_normal((B, T, D))
    keras_cls = getattr(keras.layers, KERAS_LAYERS[kind])

    def cls(units, **kw):
        if kind == "rnn_relu":
            kw["activation"] = "relu"
        return keras_cls(units, **kw)

    plain = cls(H, return_sequences=True, return_state=True, dtype="float64")
    plain(x)
    randomize_keras(rng, plain)
    out, h, *rest = (keras.ops.convert_to_numpy(a) for a in plain(x))
    layer = FASTSIM_CLASSES[kind].from_keras(plain)
    got_out, got_state = layer(x, backend="numpy")
    # Keras's SimpleRNN on the torch backend rounds its input through float32
    # even in a float64 layer (7e-8 from a float64 NumPy loop): float32 tolerance
    tol_dtype = np.float32 if kind.startswith("rnn") else np.float64
    assert_close(got_out, out, tol_dtype)
    assert_close((got_state[0] if kind == "lstm" else got_state)[0], h, tol_dtype)
    if kind == "lstm":
        assert_close(got_state[1][0], rest[0], np.float64)
    # a stack of Bidirectional layers
    first = keras.layers.Bidirectional(cls(H, return_sequences=True, dtype="float64"), dtype="float64")
    second = keras.layers.Bidirectional(cls(H, return_sequences=True, dtype="float64"), dtype="float64")
    y = second(first(x))
    randomize_keras(rng, first)
    randomize_keras(rng, second)
    y = keras.ops.convert_to_numpy(second(first(x)))
    stacked = FASTSIM_CLASSES[kind].from_keras([first, second])
    assert stacked.num_layers == 2 and stacked.bidirectional
    for backend in fastsim.available_backends():
        if backend in R._SUPPORTED:
            assert_close(stacked(x, backend=backend)[0], y, tol_dtype)


@keras_warnings
def test_keras_layers_refused(keras):
    x = np.zeros((1, 2, 3))
    gru = keras.layers.GRU(2, reset_after=False)
    gru(x)
    with pytest.raises(ValueError, match="reset_after"):
        R.GRU.from_keras(gru)
    hard = keras.layers.LSTM(2, recurrent_activation="hard_sigmoid")
    hard(x)
    with pytest.raises(ValueError, match="recurrent_activation"):
        R.LSTM.from_keras(hard)
    back = keras.layers.LSTM(2, go_backwards=True)
    back(x)
    with pytest.raises(ValueError, match="go_backwards"):
        R.LSTM.from_keras(back)
    with pytest.raises(ValueError, match="expected LSTM"):
        R.LSTM.from_keras(gru)
    summed = keras.layers.Bidirectional(keras.layers.LSTM(2, return_sequences=True), merge_mode="sum")
    summed(x)
    with pytest.raises(ValueError, match="merge_mode"):
        R.LSTM.from_keras(summed)
    relu = keras.layers.SimpleRNN(2, activation="relu")
    relu(x)
    assert R.RNN.from_keras(relu).nonlinearity == "relu"
    with pytest.raises(ValueError, match="contradicts"):
        R.RNN.from_keras(relu, nonlinearity="tanh")
    with pytest.raises(TypeError, match="omitted"):
        R.LSTM.from_keras(hard, np.zeros((2, 8)))


# --------------------------------------------------------------------------- ONNX layout


def onnx_arrays(kind, directions):
    """ONNX (W, R, B) written out gate by gate from a list of PyTorch-layout direction weights."""
    Ws, Rs, Bs = [], [], []
    for W_ih, W_hh, b_ih, b_hh in directions:
        H = W_hh.shape[1]
        blk = [slice(g * H, (g + 1) * H) for g in range(GATES[kind])]
        if kind == "lstm":  # PyTorch i, f, g, o -> ONNX i, o, f, c
            i, f, g, o = blk
            order = [i, o, f, g]
        elif kind == "gru":  # PyTorch r, z, n -> ONNX z, r, h
            r, z, n = blk
            order = [z, r, n]
        else:
            order = blk
        Ws.append(np.concatenate([W_ih[s] for s in order]))
        Rs.append(np.concatenate([W_hh[s] for s in order]))
        Bs.append(np.concatenate([b_ih[s] for s in order] + [b_hh[s] for s in order]))
    return np.stack(Ws), np.stack(Rs), np.stack(Bs)


ONNX_EXTRA = {"gru": {"linear_before_reset": 1}, "rnn_relu": {"nonlinearity": "relu"}}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_dirs", [1, 2])
def test_from_onnx_arrays(kind, num_dirs):
    rng = np.random.default_rng(16)
    T, B, D, H = 5, 3, 4, 3
    dirs = [torch_weights(rng, kind, D, H) for _ in range(num_dirs)]
    W, Rm, Bm = onnx_arrays(kind, dirs)
    layer = FASTSIM_CLASSES[kind].from_onnx(W, Rm, Bm, batch_first=False, **ONNX_EXTRA.get(kind, {}))
    assert layer.bidirectional == (num_dirs == 2)
    x = rng.standard_normal((T, B, D))
    lengths = np.array([5, 1, 3])
    expected = reference(kind, [dirs], x, lengths, batch_first=False)
    assert_result(layer(x, lengths, backend="numpy"), expected, np.float64)


def test_from_onnx_refusals():
    rng = np.random.default_rng(17)
    W, Rm, Bm = onnx_arrays("gru", [torch_weights(rng, "gru", 3, 2)])
    with pytest.raises(ValueError, match="linear_before_reset"):
        R.GRU.from_onnx(W, Rm, Bm, linear_before_reset=0)
    with pytest.raises(ValueError, match="B must have shape"):
        R.GRU.from_onnx(W, Rm, Bm[:, :6], linear_before_reset=1)
    with pytest.raises(ValueError, match="W must have shape"):
        R.GRU.from_onnx(W[:, :3], Rm, Bm, linear_before_reset=1)
    with pytest.raises(ValueError, match="R must have shape"):
        R.LSTM.from_onnx(W, Rm, None)


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def run_onnxruntime(ort, op, W, Rm, Bm, x, lengths, initial, **attrs):
    """One ONNX node run by ONNX Runtime (float32); returns (Y (T, dirs, B, H), Y_h[, Y_c])."""
    import onnx
    from onnx import TensorProto, helper

    nd, GH, H = Rm.shape
    feeds = {"X": x, "W": W, "R": Rm, "B": Bm, "L": lengths.astype(np.int32)}
    names = ["X", "W", "R", "B", "L"]
    if initial is not None:
        states = initial if isinstance(initial, tuple) else (initial,)
        for name, s in zip(("H0", "C0"), states):
            feeds[name] = s
            names.append(name)
    feeds = {k: (v.astype(np.int32) if k == "L" else np.asarray(v, np.float32)) for k, v in feeds.items()}
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    direction = "bidirectional" if nd == 2 else "forward"
    T, B = x.shape[:2]
    out_shapes = [(T, nd, B, H), (nd, B, H), (nd, B, H)]
    node = helper.make_node(op, names, outs, hidden_size=H, direction=direction, **attrs)
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, elem[feeds[n].dtype], feeds[n].shape) for n in names],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(outs, out_shapes)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_dirs", [1, 2])
def test_against_onnxruntime(ort, backend, kind, num_dirs):
    rng = np.random.default_rng(18)
    T, B, D, H = 6, 3, 4, 5
    dirs = [torch_weights(rng, kind, D, H) for _ in range(num_dirs)]
    W, Rm, Bm = (a.astype(np.float32) for a in onnx_arrays(kind, dirs))
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    lengths = np.array([6, 2, 4])
    initial = random_initial(kind, rng, num_dirs, B, H, np.float32)
    op = {"lstm": "LSTM", "gru": "GRU"}.get(kind, "RNN")
    attrs = {"linear_before_reset": 1} if kind == "gru" else {}
    if kind == "rnn_relu":
        attrs["activations"] = ["Relu"] * num_dirs
    Y, Y_h, *rest = run_onnxruntime(ort, op, W, Rm, Bm, x, lengths, initial, **attrs)
    layer = FASTSIM_CLASSES[kind].from_onnx(W, Rm, Bm, batch_first=False, **ONNX_EXTRA.get(kind, {}))
    assert layer.dtype == np.float32
    out, state = layer(x, lengths, initial, backend=backend)
    # ONNX Runtime computes in float32 too: the float32 tolerance covers both roundings
    assert_close(out, Y.transpose(0, 2, 1, 3).reshape(T, B, num_dirs * H), np.float32)
    assert_close(state[0] if kind == "lstm" else state, Y_h, np.float32)
    if kind == "lstm":
        assert_close(state[1], rest[0], np.float32)


# --------------------------------------------------------------------------- layer objects


@pytest.mark.parametrize("kind", KINDS)
def test_init_like_torch(kind):
    layer = make_layer(kind, 6, 16, 2, True, dtype=np.float32, seed=7)
    bound = 1 / np.sqrt(16)
    G = GATES[kind]
    for layer_idx, dirs in enumerate(layer.weights):
        assert len(dirs) == 2
        for w in dirs:
            assert w.W_ih.shape == (G * 16, 6 if layer_idx == 0 else 32)
            assert w.W_hh.shape == (G * 16, 16)
            for a in w:
                assert a.dtype == np.float32
                assert np.all(np.abs(a) <= bound) and np.abs(a).max() > 0.8 * bound
    same = make_layer(kind, 6, 16, 2, True, dtype=np.float32, seed=7)
    other = make_layer(kind, 6, 16, 2, True, dtype=np.float32, seed=8)
    np.testing.assert_array_equal(layer.weights[1][1].W_hh, same.weights[1][1].W_hh)
    assert not np.array_equal(layer.weights[0][0].W_ih, other.weights[0][0].W_ih)
    nobias = make_layer(kind, 6, 16, bias=False, seed=7)
    assert not np.any(nobias.weights[0][0].b_ih) and not np.any(nobias.weights[0][0].b_hh)


def test_weights_are_read_only_and_copied():
    layer = R.LSTM(3, 2, seed=0, dtype=np.float64)
    with pytest.raises(ValueError):
        layer.weights[0][0].W_ih[0, 0] = 1.0
    rng = np.random.default_rng(19)
    w = list(torch_weights(rng, "lstm", 3, 2))
    layer.set_weights(0, 0, *w)
    x = rng.standard_normal((2, 4, 3))
    expected = ref.lstm(x, [[tuple(a.copy() for a in w)]])
    w[0][:] = 0.0  # the layer holds its own copy
    assert_result(layer(x, backend="numpy"), expected, np.float64)
    np.testing.assert_array_equal(layer.state_dict()["bias_hh_l0"], w[3])


def test_set_weights_checks():
    layer = R.GRU(3, 2, 2, bidirectional=True, seed=0)
    good = torch_weights(np.random.default_rng(0), "gru", 4, 2)  # layer 1 takes 2 * H = 4 features
    layer.set_weights(1, 1, *good)
    with pytest.raises(ValueError, match="W_ih"):
        layer.set_weights(1, 0, np.zeros((6, 3)), good[1])
    with pytest.raises(ValueError, match="W_hh"):
        layer.set_weights(0, 0, np.zeros((6, 3)), np.zeros((6, 3)))
    with pytest.raises(ValueError, match="b_hh"):
        layer.set_weights(1, 0, good[0], good[1], good[2], np.zeros(5))
    with pytest.raises(ValueError, match="layer"):
        layer.set_weights(2, 0, *good)
    with pytest.raises(ValueError, match="direction"):
        layer.set_weights(0, 2, *good)
    with pytest.raises(ValueError, match="bias=False"):
        R.GRU(4, 2, bias=False).set_weights(0, 0, *good)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_functional(backend):
    rng = np.random.default_rng(20)
    W_ih, W_hh, b_ih, b_hh = torch_weights(rng, "lstm", 3, 2)
    x = rng.standard_normal((2, 4, 3))

    def call(**over):
        args = dict(x=x, W_ih=W_ih, W_hh=W_hh, b_ih=b_ih, b_hh=b_hh)
        kw = {k: over.pop(k) for k in ("h0", "c0", "lengths") if k in over}
        args.update(over)
        return R.lstm_forward(args.pop("x"), *args.values(), backend=backend, **kw)

    cases = [
        (dict(x=x[0]), "x must be 3-D"),
        (dict(x=rng.standard_normal((2, 4, 5))), "W_ih expects D = 3"),
        (dict(W_hh=np.zeros((8, 3))), "W_hh must have shape"),
        (dict(W_hh=np.zeros(8)), "W_hh must be 2-D"),
        (dict(W_ih=np.zeros((6, 3))), "W_ih must have shape"),
        (dict(b_ih=np.zeros(7)), "b_ih must have shape"),
        (dict(b_hh=np.zeros((8, 1))), "b_hh must be 1-D"),
        (dict(h0=np.zeros((3, 2))), "h0 must have shape"),
        (dict(c0=np.zeros((1, 2, 2))), "c0 must be 2-D"),
        (dict(lengths=[4, 0]), "lengths must lie within 1..4"),
        (dict(lengths=[5, 1]), "lengths must lie within 1..4"),
        (dict(lengths=[1, 2, 3]), "lengths must have shape"),
    ]
    for over, message in cases:
        with pytest.raises(ValueError, match=message):
            call(**over)
    with pytest.raises(TypeError, match="x must hold real numbers"):
        call(x=x.astype(complex))
    with pytest.raises(TypeError, match="lengths must hold integers"):
        call(lengths=[1.5, 2])
    with pytest.raises(ValueError, match="nonlinearity"):
        R.rnn_forward(x, *torch_weights(rng, "rnn_tanh", 3, 2), nonlinearity="sigmoid", backend=backend)


def test_bad_backend():
    layer = R.LSTM(3, 2, seed=0)
    x = np.zeros((1, 2, 3))
    with pytest.raises(ValueError, match="backend"):
        layer(x, backend="fortran")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_layer(backend):
    layer = R.LSTM(3, 2, 2, bidirectional=True, seed=0)
    x = np.zeros((2, 4, 3))
    good = np.zeros((4, 2, 2))
    with pytest.raises(ValueError, match="x must be 3-D"):
        layer(x[0], backend=backend)
    with pytest.raises(ValueError, match="input_size = 3"):
        layer(np.zeros((2, 4, 5)), backend=backend)
    with pytest.raises(ValueError, match="h0 must have shape"):
        layer(x, initial_state=(np.zeros((2, 2, 2)), good), backend=backend)
    with pytest.raises(ValueError, match="c0 must have shape"):
        layer(x, initial_state=(good, np.zeros((4, 3, 2))), backend=backend)
    with pytest.raises(TypeError, match="initial_state"):
        layer(x, initial_state=good, backend=backend)
    with pytest.raises(ValueError, match="lengths"):
        layer(x, lengths=[0, 4], backend=backend)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        R.GRU(3, 2, seed=0)(x, initial_state=np.zeros((2, 2, 2)), backend=backend)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="hidden_size"):
        R.LSTM(3, 0)
    with pytest.raises(TypeError, match="num_layers"):
        R.GRU(3, 2, 1.5)
    with pytest.raises(TypeError, match="dtype"):
        R.RNN(3, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="nonlinearity"):
        R.RNN(3, 2, nonlinearity="gelu")


def test_public_names():
    for name in ("LSTM", "GRU", "RNN", "lstm_forward", "gru_forward", "rnn_forward"):
        assert name in R.__all__
        assert getattr(fastsim, name) is getattr(R, name)
