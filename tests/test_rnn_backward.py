"""Backward passes of the recurrent layers: the NumPy reference (fastsim._reference.rnn_backward).

Oracles: central finite differences in float64 of the reference forward
(fastsim._reference.rnn, the spec, not the training forward under test), and
PyTorch's autograd through nn.LSTM / nn.GRU / nn.RNN with packed sequences
where torch is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastsim._reference import rnn as ref
from fastsim._reference import rnn_backward as rb

CELLS = [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu")]
CELL_IDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _weights(rng, kind, D, H, layers, dirs, dtype=np.float64, scale=0.6):
    G = GATES[kind]
    out = []
    for layer in range(layers):
        d_in = D if layer == 0 else dirs * H
        out.append([
            tuple(scale * rng.standard_normal(s).astype(dtype) for s in ((G * H, d_in), (G * H, H), (G * H,), (G * H,)))
            for _ in range(dirs)
        ])
    return out


def _spec_forward(kind, nonlinearity, x, weights, initial, lengths, batch_first):
    """The forward of fastsim._reference.rnn (the spec), as (outputs, finals tuple)."""
    if kind == "lstm":
        out, (h, c) = ref.lstm(x, weights, initial[0], initial[1], lengths, batch_first)
        return out, (h, c)
    if kind == "gru":
        out, h = ref.gru(x, weights, initial[0], lengths, batch_first)
        return out, (h,)
    out, h = ref.rnn(x, weights, initial[0], lengths, batch_first, nonlinearity)
    return out, (h,)


def _problem(kind, layers, bidirectional, use_lengths, batch_first, *, B=3, T=4, D=3, H=2, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    dirs = 2 if bidirectional else 1
    weights = _weights(rng, kind, D, H, layers, dirs, dtype)
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D)).astype(dtype)
    n_states = 2 if kind == "lstm" else 1
    initial = tuple(rng.standard_normal((layers * dirs, B, H)).astype(dtype) for _ in range(n_states))
    # the longest, the shortest possible, and the rest in between
    lengths = np.array([T, 1, *rng.integers(1, T + 1, size=B)][:B]) if use_lengths else None
    d_out = rng.standard_normal((B, T, dirs * H) if batch_first else (T, B, dirs * H)).astype(dtype)
    d_finals = tuple(rng.standard_normal((layers * dirs, B, H)).astype(dtype) for _ in range(n_states))
    return weights, x, initial, lengths, d_out, d_finals


def _loss(kind, nonlinearity, x, weights, initial, lengths, batch_first, d_out, d_finals):
    out, finals = _spec_forward(kind, nonlinearity, x, weights, initial, lengths, batch_first)
    if lengths is not None:
        # outputs past a sequence's length are constants (0): their weight in the loss must not matter
        steps = np.arange(out.shape[1] if batch_first else out.shape[0])
        pad = steps[None, :] >= lengths[:, None]
        assert np.all((out[pad] if batch_first else np.swapaxes(out, 0, 1)[pad]) == 0)
    return float(np.sum(out * d_out) + sum(np.sum(f * g) for f, g in zip(finals, d_finals)))


def _numeric_grad(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every entry of a (perturbed in place)."""
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        keep = a[idx]
        a[idx] = keep + eps
        up = f()
        a[idx] = keep - eps
        down = f()
        a[idx] = keep
        g[idx] = (up - down) / (2 * eps)
    return g


# every layer count, direction count and layout, each combination of two in some case
# (the full product is in test_against_torch)
SHAPES = [(1, False, True), (1, True, False), (2, False, False), (2, True, True)]


@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize(("layers", "bidirectional", "batch_first"), SHAPES,
                         ids=["1-uni-batch_first", "1-bi-time_major", "2-uni-time_major", "2-bi-batch_first"])
@pytest.mark.parametrize(("kind", "nonlinearity"), CELLS, ids=CELL_IDS)
def test_finite_differences(kind, nonlinearity, layers, bidirectional, batch_first, use_lengths):
    weights, x, initial, lengths, d_out, d_finals = _problem(
        kind, layers, bidirectional, use_lengths, batch_first, B=3, T=3, D=2, H=2
    )
    # weights as mutable lists so that the finite differences can perturb them in place
    weights = [[[np.array(w) for w in direction] for direction in layer] for layer in weights]

    def loss():
        return _loss(kind, nonlinearity, x, weights, initial, lengths, batch_first, d_out, d_finals)

    _, _, tape = rb.forward(kind, x, weights, initial, lengths, batch_first, nonlinearity)
    dx, d_weights, d_initial = rb.backward(tape, weights, d_out, d_finals)
    tol = dict(rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dx, _numeric_grad(loss, x), **tol, err_msg="dx")
    for s, (a, g) in enumerate(zip(initial, d_initial)):
        np.testing.assert_allclose(g, _numeric_grad(loss, a), **tol, err_msg=f"initial state {s}")
    names = ("W_ih", "W_hh", "b_ih", "b_hh")
    for layer, directions in enumerate(weights):
        for d, direction in enumerate(directions):
            for j, w in enumerate(direction):
                np.testing.assert_allclose(
                    d_weights[layer][d][j], _numeric_grad(loss, w), **tol, err_msg=f"{names[j]} layer {layer} dir {d}"
                )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize(("kind", "nonlinearity"), CELLS, ids=CELL_IDS)
def test_training_forward_is_the_spec_forward(kind, nonlinearity, use_lengths, dtype):
    weights, x, initial, lengths, _, _ = _problem(kind, 2, True, use_lengths, True, B=4, T=6, D=5, H=3, dtype=dtype)
    out, finals, tape = rb.forward(kind, x, weights, initial, lengths, True, nonlinearity)
    want_out, want_finals = _spec_forward(kind, nonlinearity, x, weights, initial, lengths, True)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert out.dtype == dtype
    np.testing.assert_allclose(out, want_out, rtol=tol, atol=tol)
    for f, w in zip(finals, want_finals):
        np.testing.assert_allclose(f, w, rtol=tol, atol=tol)
    assert len(tape.layers) == 2 and len(tape.layers[0]) == 2


def test_padding_takes_no_part():
    """NaN or inf in the padding of a sequence changes no gradient; the padding's dx is 0."""
    weights, x, initial, lengths, d_out, d_finals = _problem("lstm", 2, True, True, True, B=3, T=5)
    dirty = x.copy()
    dirty[1, 1:] = np.nan
    dirty[2, 4:] = np.inf
    clean = _grads("lstm", "tanh", x, weights, initial, lengths, d_out, d_finals)
    got = _grads("lstm", "tanh", dirty, weights, initial, lengths, d_out, d_finals)
    for a, b in zip(_flat(clean), _flat(got)):
        np.testing.assert_array_equal(a, b)
    assert np.all(clean[0][1, 1:] == 0) and np.all(clean[0][2, 4:] == 0)


@pytest.mark.parametrize(("kind", "nonlinearity"), CELLS, ids=CELL_IDS)
def test_nan_stays_in_its_row(kind, nonlinearity):
    weights, x, initial, lengths, d_out, d_finals = _problem(kind, 2, True, False, True, B=3, T=4)
    dirty = x.copy()
    dirty[1, 2, 0] = np.nan
    dx, _, d_initial = _grads(kind, nonlinearity, dirty, weights, initial, lengths, d_out, d_finals)
    # rows 0 and 2 equal the run without row 1; row 1 is NaN where the NaN could reach
    keep = [0, 2]
    sub = _grads(kind, nonlinearity, x[keep], weights, tuple(s[:, keep] for s in initial), None,
                 d_out[keep], tuple(g[:, keep] for g in d_finals))
    np.testing.assert_allclose(dx[keep], sub[0], rtol=1e-12, atol=1e-14)
    for g, want in zip(d_initial, sub[2]):
        np.testing.assert_allclose(g[:, keep], want, rtol=1e-12, atol=1e-14)
    assert np.isnan(dx[1]).any()
    assert np.isnan(d_initial[0][:, 1]).any()


def _grads(kind, nonlinearity, x, weights, initial, lengths, d_out, d_finals):
    _, _, tape = rb.forward(kind, x, weights, initial, lengths, True, nonlinearity)
    return rb.backward(tape, weights, d_out, d_finals)


def _flat(grads):
    dx, d_weights, d_initial = grads
    return [dx, *[w for layer in d_weights for direction in layer for w in direction], *d_initial]


def test_missing_gradients_are_zeros():
    weights, x, initial, lengths, d_out, d_finals = _problem("lstm", 1, False, True, True)
    _, _, tape = rb.forward("lstm", x, weights, initial, lengths, True)
    only_out = rb.backward(tape, weights, d_out, None)
    with_zeros = rb.backward(tape, weights, d_out, tuple(np.zeros_like(g) for g in d_finals))
    for a, b in zip(_flat(only_out), _flat(with_zeros)):
        np.testing.assert_array_equal(a, b)
    nothing = rb.backward(tape, weights)
    assert all(np.all(a == 0) for a in _flat(nothing))


# --------------------------------------------------------------------------- against PyTorch autograd


def _torch_grads(torch, kind, nonlinearity, x, weights, initial, lengths, batch_first, d_out, d_finals):
    """Gradients through torch.nn's module (pack_padded_sequence for lengths), weights copied in."""
    layers, dirs = len(weights), len(weights[0])
    D, H = weights[0][0][0].shape[1], weights[0][0][1].shape[1]
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    extra = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
    m = cls(D, H, num_layers=layers, bidirectional=dirs == 2, batch_first=batch_first, dtype=dtype, **extra)
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    with torch.no_grad():
        for layer in range(layers):
            for d in range(dirs):
                for j, name in enumerate(names):
                    getattr(m, f"{name}_l{layer}{'_reverse' if d else ''}").copy_(torch.from_numpy(weights[layer][d][j]))
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    init = [torch.from_numpy(s.copy()).requires_grad_(True) for s in initial]
    seq = xt
    if lengths is not None:
        seq = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(lengths), batch_first=batch_first,
                                                      enforce_sorted=False)
    out, finals = m(seq, tuple(init) if kind == "lstm" else init[0])
    if lengths is not None:
        T = x.shape[1] if batch_first else x.shape[0]
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    finals = finals if kind == "lstm" else (finals,)
    loss = (out * torch.from_numpy(d_out)).sum() + sum((f * torch.from_numpy(g)).sum() for f, g in zip(finals, d_finals))
    loss.backward()
    d_weights = [[tuple(getattr(m, f"{name}_l{layer}{'_reverse' if d else ''}").grad.numpy() for name in names)
                  for d in range(dirs)] for layer in range(layers)]
    return xt.grad.numpy(), d_weights, tuple(s.grad.numpy() for s in init)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize(("kind", "nonlinearity"), CELLS, ids=CELL_IDS)
def test_against_torch(kind, nonlinearity, bidirectional, use_lengths, batch_first, dtype):
    torch = pytest.importorskip("torch")
    weights, x, initial, lengths, d_out, d_finals = _problem(
        kind, 2, bidirectional, use_lengths, batch_first, B=4, T=7, D=5, H=6, seed=3, dtype=dtype
    )
    if use_lengths:
        lengths = np.array([7, 2, 5, 1])
    _, _, tape = rb.forward(kind, x, weights, initial, lengths, batch_first, nonlinearity)
    got = _flat(rb.backward(tape, weights, d_out, d_finals))
    want = _flat(_torch_grads(torch, kind, nonlinearity, x, weights, initial, lengths, batch_first, d_out, d_finals))
    tol = 1e-11 if dtype == np.float64 else 2e-4
    for a, b in zip(got, want):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@given(
    B=st.integers(1, 5), T=st.integers(1, 6), D=st.integers(1, 5), H=st.integers(1, 5),
    layers=st.integers(1, 3), bidirectional=st.booleans(), cell=st.sampled_from(CELLS),
    seed=st.integers(0, 2**31 - 1), use_lengths=st.booleans(),
)
def test_against_torch_shapes(B, T, D, H, layers, bidirectional, cell, seed, use_lengths):
    torch = pytest.importorskip("torch")
    kind, nonlinearity = cell
    weights, x, initial, _, d_out, d_finals = _problem(
        kind, layers, bidirectional, False, True, B=B, T=T, D=D, H=H, seed=seed
    )
    lengths = np.random.default_rng(seed).integers(1, T + 1, size=B) if use_lengths else None
    _, _, tape = rb.forward(kind, x, weights, initial, lengths, True, nonlinearity)
    got = _flat(rb.backward(tape, weights, d_out, d_finals))
    want = _flat(_torch_grads(torch, kind, nonlinearity, x, weights, initial, lengths, True, d_out, d_finals))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11)


# --------------------------------------------------------------------------- compiled kernels against the reference


def _core_or_skip():
    import fastsim

    if "cpp" not in fastsim.available_backends():
        pytest.skip("compiled core not available")
    return fastsim


@pytest.fixture(params=["avx2", "avx512", "generic"])
def simd_level(request):
    fastsim = _core_or_skip()
    if request.param not in fastsim.simd_levels():
        pytest.skip(f"SIMD level {request.param} not supported here")
    fastsim.set_simd_level(request.param)
    yield request.param
    fastsim.set_simd_level(None)


def _backend_grads(be, kind, nonlinearity, x, weights, initial, lengths, batch_first, d_out, d_finals):
    from fastsim.rnn import cells, train

    cell = cells.cell(kind, nonlinearity)
    if lengths is None:
        lengths = np.full(x.shape[0] if batch_first else x.shape[1], x.shape[1] if batch_first else x.shape[0])
    lengths = np.asarray(lengths, dtype=np.int64)
    out, finals, tape = train.train_forward(be, cell, x, weights, initial, lengths, batch_first)
    dx, d_weights, d_initial = train.train_backward(be, cell, tape, weights, d_out, d_finals)
    return [out, *finals, *_flat((dx, d_weights, d_initial))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("layers", "bidirectional", "batch_first", "use_lengths"),
                         [(1, False, True, False), (2, True, True, True), (2, True, False, True), (1, True, False, False)],
                         ids=["1-uni-bf-full", "2-bi-bf-lengths", "2-bi-tm-lengths", "1-bi-tm-full"])
@pytest.mark.parametrize(("kind", "nonlinearity"), CELLS, ids=CELL_IDS)
def test_cpp_matches_reference(simd_level, kind, nonlinearity, layers, bidirectional, batch_first, use_lengths, dtype):
    # H = 19 and D = 13: edge tiles and vector tails at every level; B = 7 rows span two micro-tiles
    weights, x, initial, _, d_out, d_finals = _problem(
        kind, layers, bidirectional, False, batch_first, B=7, T=9, D=13, H=19, seed=11, dtype=dtype
    )
    lengths = np.array([9, 1, 4, 9, 2, 7, 8]) if use_lengths else None
    x64 = x.astype(np.float64)
    w64 = [[tuple(a.astype(np.float64) for a in d) for d in layer] for layer in weights]
    cast = tuple(a.astype(np.float64) for a in initial), d_out.astype(np.float64), tuple(g.astype(np.float64) for g in d_finals)
    want = _backend_grads("numpy", kind, nonlinearity, x64, w64, cast[0], lengths, batch_first, cast[1], cast[2])
    got = _backend_grads("cpp", kind, nonlinearity, x, weights, initial, lengths, batch_first, d_out, d_finals)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == dtype
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=f"array {i}")


@pytest.mark.parametrize(("kind", "nonlinearity"), CELLS, ids=CELL_IDS)
def test_cpp_padding_and_nan_rows(simd_level, kind, nonlinearity):
    weights, x, initial, lengths, d_out, d_finals = _problem(kind, 2, True, True, True, B=3, T=5, D=4, H=5)
    dirty = x.copy()
    dirty[1, 1:] = np.nan  # padding of row 1 (length 1)
    clean = _backend_grads("cpp", kind, nonlinearity, x, weights, initial, lengths, True, d_out, d_finals)
    got = _backend_grads("cpp", kind, nonlinearity, dirty, weights, initial, lengths, True, d_out, d_finals)
    for a, b in zip(got, clean):
        np.testing.assert_array_equal(a, b)
    # a NaN inside row 0's sequence: rows 1 and 2 keep their input and state gradients
    dirty = x.copy()
    dirty[0, 1, 0] = np.nan
    got = _backend_grads("cpp", kind, nonlinearity, dirty, weights, initial, lengths, True, d_out, d_finals)
    want = _backend_grads("numpy", kind, nonlinearity, dirty, weights, initial, lengths, True, d_out, d_finals)
    n_states = 2 if kind == "lstm" else 1
    dx_at = 1 + n_states
    np.testing.assert_allclose(got[dx_at][1:], want[dx_at][1:], rtol=1e-12, atol=1e-14)
    assert np.isnan(got[dx_at][0]).any()
    np.testing.assert_array_equal(np.isnan(got[dx_at]), np.isnan(want[dx_at]))


def test_cpp_binding_checks_its_arrays():
    fastsim = _core_or_skip()
    core = fastsim._backend.core()
    T, B, D, H = 3, 2, 4, 5
    z = np.zeros
    args = dict(cell=1, x=z((T, B, D)), W_ih=z((3 * H, D)), W_hh=z((3 * H, H)), b_ih=z(3 * H), b_hh=z(3 * H),
                lengths=np.array([3, 1]), reverse=False, h=z((B, H)), c=None, out=z((T, B, H)), act=z((T, B, 4 * H)),
                h_prev=z((T, B, H)), c_prev=None, tanh_c=None)
    core.rnn_train_forward(**args)
    with pytest.raises(ValueError, match="lengths must lie within"):
        core.rnn_train_forward(**{**args, "lengths": np.array([4, 1])})
    with pytest.raises(ValueError, match="act must have shape"):
        core.rnn_train_forward(**{**args, "act": z((T, B, 3 * H))})
    with pytest.raises(TypeError, match="same dtype"):
        core.rnn_train_forward(**{**args, "h": z((B, H), dtype=np.float32)})
    with pytest.raises(ValueError, match="c must be None"):
        core.rnn_train_forward(**{**args, "c": z((B, H))})
    with pytest.raises(ValueError, match="c is required"):
        core.rnn_train_forward(**{**args, "cell": 0, "W_ih": z((4 * H, D)), "W_hh": z((4 * H, H)), "b_ih": z(4 * H),
                                  "b_hh": z(4 * H)})
    with pytest.raises(ValueError, match="cell must be"):
        core.rnn_train_forward(**{**args, "cell": 7})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize(("kind", "nonlinearity"), CELLS, ids=CELL_IDS)
def test_numba_matches_reference(kind, nonlinearity, use_lengths, dtype):
    import fastsim

    if "numba" not in fastsim.available_backends():
        pytest.skip("numba not available")
    weights, x, initial, _, d_out, d_finals = _problem(kind, 2, True, False, True, B=5, T=6, D=4, H=7, seed=13,
                                                      dtype=dtype)
    lengths = np.array([6, 1, 3, 6, 2]) if use_lengths else None
    x[1, 1:] = np.nan  # padding of row 1 when lengths are given; a NaN row otherwise
    want = _backend_grads("numpy", kind, nonlinearity, x, weights, initial, lengths, True, d_out, d_finals)
    got = _backend_grads("numba", kind, nonlinearity, x, weights, initial, lengths, True, d_out, d_finals)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == dtype
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"NaN pattern of array {i}")
        ok = ~np.isnan(b)
        np.testing.assert_allclose(a[ok], b[ok], rtol=tol, atol=tol, err_msg=f"array {i}")


# --------------------------------------------------------------------------- the public functional form


@pytest.mark.parametrize("backend", ["numpy", "numba", "cpp"])
@pytest.mark.parametrize("cls_name", ["LSTM", "GRU", "RNN"])
def test_public_forward_train_and_backward(cls_name, backend):
    import fastsim

    if backend not in fastsim.available_backends():
        pytest.skip(f"{backend} not available")
    torch = pytest.importorskip("torch")
    layer = getattr(fastsim, cls_name)(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=1,
                                       batch_first=True)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 3))
    lengths = np.array([5, 2, 4])
    out, state, tape = fastsim.recurrent_forward_train(layer, x, lengths, backend=backend)
    want_out, want_state = layer(x, lengths, backend="numpy")
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-13)
    d_out = rng.standard_normal(out.shape)
    grads = fastsim.recurrent_backward(tape, d_outputs=d_out)
    # the same through torch.nn's autograd with the layer's weights
    ref = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}[cls_name](
        3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    xt = torch.from_numpy(x).requires_grad_(True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(lengths), batch_first=True,
                                                     enforce_sorted=False)
    o, _ = ref(packed)
    o, _ = torch.nn.utils.rnn.pad_packed_sequence(o, batch_first=True, total_length=5)
    (o * torch.from_numpy(d_out)).sum().backward()
    np.testing.assert_allclose(grads.x, xt.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(grads.weights[1][1].W_hh, ref.weight_hh_l1_reverse.grad.numpy(), rtol=1e-11,
                               atol=1e-12)
    np.testing.assert_allclose(grads.weights[0][0].b_ih, ref.bias_ih_l0.grad.numpy(), rtol=1e-11, atol=1e-12)
    if cls_name == "LSTM":
        assert isinstance(grads.initial_state, tuple) and grads.initial_state[1].shape == (4, 3, 4)
    else:
        assert grads.initial_state.shape == (4, 3, 4)


def test_public_forms_check_their_arguments():
    import fastsim

    layer = fastsim.LSTM(3, 4, dtype=np.float64, seed=0)
    x = np.zeros((2, 5, 3))
    with pytest.raises(TypeError, match="layer must be a fastsim.LSTM"):
        fastsim.recurrent_forward_train(object(), x)
    with pytest.raises(ValueError, match="input_size = 3"):
        fastsim.recurrent_forward_train(layer, np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match="lengths must lie within 1..5"):
        fastsim.recurrent_forward_train(layer, x, [0, 5])
    with pytest.raises(TypeError, match="initial_state must be a tuple"):
        fastsim.recurrent_forward_train(layer, x, initial_state=np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="h0 must have shape"):
        fastsim.recurrent_forward_train(layer, x, initial_state=(np.zeros((1, 3, 4)), None))
    with pytest.raises(ValueError, match="backend"):
        fastsim.recurrent_forward_train(layer, x, backend="fortran")
    _, _, tape = fastsim.recurrent_forward_train(layer, x)
    with pytest.raises(ValueError, match="d_outputs must have shape"):
        fastsim.recurrent_backward(tape, d_outputs=np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match="d_c_n must have shape"):
        fastsim.recurrent_backward(tape, d_state=(None, np.zeros((1, 2, 5))))
    with pytest.raises(TypeError, match="tape must be the RecurrentTape"):
        fastsim.recurrent_backward("tape")
