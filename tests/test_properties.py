"""Property-based tests: every public function x backend x dtype against the float64 reference.

Each example draws shapes (0 and 1 included), an input dtype (float32,
float64, or integer, bool and float16 input, which is computed in float32), a
memory layout (C order, Fortran order, a strided view, a negative-stride view)
and values: ordinary numbers, zero rows, duplicated and negated rows, whole
rows scaled to extreme magnitudes (1e-30, 1e30, subnormals, the largest finite
numbers) and single entries set to 0, -0, NaN or +-inf.

The expected result is the float64 NumPy reference (:mod:`fastsim._reference`)
on exactly the values the backend computes with (the input after its dtype
conversion), compared with ``assert_close`` at the dtype's tolerance, or the
documented error.  Where the README's section "Reference: bad input and
special values" documents that a result depends on the precision, the test
checks that documented behaviour instead:

* a discrete choice (closest negative, active hinge, top-k order, duplicate
  decision) flips when two float64 values are closer than the dtype's
  rounding error; such rows are skipped (and counted) as in the other suites;
* the triplet gradient of a row scales like 1/|row|, so it is compared after
  multiplying each row by |row|, and only for rows whose 1/|row| is a normal
  number of the dtype;
* recurrent layers compute in the layer's dtype: a relu layer's unbounded
  outputs are compared relative to their magnitude.

``--hypothesis-profile=thorough`` runs many more examples (see conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st

import fastsim
from fastsim import rnn as R
from fastsim import triplet as T
from fastsim._reference import cosine as ref_cos
from fastsim._reference import triplet as ref_trip
from fastsim._reference.rnn import gru as ref_gru
from fastsim._reference.rnn import lstm as ref_lstm
from fastsim._reference.rnn import rnn as ref_rnn

from .conftest import assert_close, backend_params, tol
from .test_rnn import GATES, keras_arrays, onnx_arrays
from .test_topk import check_top_k
from .test_triplet import AMBIGUITY, _ambiguous_rows, _check_parts

ALL = backend_params()
TWO = backend_params(T._HARD_NEGATIVES_SUPPORTED)

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
CONVERTED = (np.dtype(np.float16), np.dtype(np.int8), np.dtype(np.int32), np.dtype(np.uint8), np.dtype(np.bool_))
# pytest-level groups, so that every function x backend sees both precisions and converted input
DTYPE_GROUPS = {"f32": (FLOATS[0],), "f64": (FLOATS[1],), "converted": CONVERTED}


def computed(dtype) -> np.dtype:
    """The dtype fastsim computes in for input of ``dtype``."""
    dtype = np.dtype(dtype)
    return dtype if dtype in FLOATS else np.dtype(np.float32)


def result_of(*dtypes) -> np.dtype:
    return np.dtype(np.float64) if any(computed(d) == np.float64 for d in dtypes) else np.dtype(np.float32)


# --------------------------------------------------------------------------- value strategies

# magnitudes a whole row is scaled to (uniform in [-1, 1] times the factor)
_SCALES = {
    np.dtype(np.float32): {"tiny": 1e-30, "huge": 1e30, "subnormal": 1e-41, "near_max": 3.0e38, "min_normal": 1.2e-38},
    np.dtype(np.float64): {"tiny": 1e-30, "huge": 1e30, "subnormal": 1e-316, "near_max": 1.7e308, "e-200": 1e-200,
                           "e200": 1e200},
    np.dtype(np.float16): {"subnormal": 3e-6, "near_max": 6.0e4},
}
_SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0)
_ROW_KINDS = ("normal",) * 6 + ("zero", "duplicate", "negated", "scaled", "scaled", "special", "special")


@st.composite
def matrices(draw, shape, dtype, *, kinds=_ROW_KINDS, scales=None, specials=_SPECIALS, layout=True):
    """A (rows, cols) array of ``dtype`` as described in the module docstring, in a random memory layout."""
    rows, cols = shape
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == np.bool_:
        a = rng.integers(0, 2, shape).astype(bool)
    elif dtype.kind in "iu":
        lo = 0 if dtype.kind == "u" else -3
        a = rng.integers(lo, 4, shape).astype(dtype)
    else:
        a = rng.standard_normal(shape)
        table = _SCALES[dtype] if scales is None else scales
        row_kinds = draw(st.lists(st.sampled_from(kinds), min_size=rows, max_size=rows))
        for i, kind in enumerate(row_kinds):
            if kind == "zero":
                a[i] = 0.0
            elif kind == "duplicate" and i > 0:
                a[i] = a[draw(st.integers(0, i - 1))]
            elif kind == "negated" and i > 0:
                a[i] = -a[draw(st.integers(0, i - 1))]
            elif kind == "scaled" and table:
                name = draw(st.sampled_from(sorted(table)))
                a[i] = rng.uniform(-1.0, 1.0, cols) * table[name]
            elif kind == "special" and cols and specials:
                a[i, draw(st.integers(0, cols - 1))] = draw(st.sampled_from(specials))
        with np.errstate(over="ignore"):
            a = a.astype(dtype)
    if layout:
        a = draw(st.sampled_from(["C", "F", "strided", "reversed"]).map(lambda how: _layout(a, how)))
    return a


def _layout(a, how):
    """The same values as ``a`` in another memory layout (a view where possible)."""
    if how == "F":
        return np.asfortranarray(a)
    if how == "strided":
        big = np.zeros(tuple(2 * n + 1 for n in a.shape), dtype=a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if how == "reversed":
        flipped = np.ascontiguousarray(a[tuple(slice(None, None, -1) for _ in a.shape)])
        return flipped[tuple(slice(None, None, -1) for _ in a.shape)]
    return a


def vectors(n, dtype, **kw):
    return matrices((1, n), dtype, **kw).map(lambda a: a[0])


def f64(a) -> np.ndarray:
    """The values fastsim computes with, in float64 (integers, bools and float16 go through float32)."""
    a = np.asarray(a)
    return a.astype(computed(a.dtype)).astype(np.float64)


def dtypes_of(group):
    return st.sampled_from(DTYPE_GROUPS[group])


def _scaled(actual, expected, per_row):
    """Both sides times ``per_row`` (a quantity of size 1/|row| compared relative to that size)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(actual, np.float64) * per_row, np.asarray(expected, np.float64) * per_row


# --------------------------------------------------------------------------- cosine similarity


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("group", list(DTYPE_GROUPS))
@given(data=st.data(), d=st.integers(0, 9))
def test_cosine_similarity(backend, group, data, d):
    du, dv = data.draw(dtypes_of(group)), data.draw(dtypes_of(group))
    u, v = data.draw(vectors(d, du)), data.draw(vectors(d, dv))
    got = fastsim.cosine_similarity(u, v, backend=backend)
    dt = result_of(du, dv)
    assert isinstance(got, np.generic) and got.dtype == dt
    assert_close(got, ref_cos.cosine_similarity(f64(u), f64(v)), dt)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("group", list(DTYPE_GROUPS))
@given(data=st.data(), n=st.integers(0, 7), d=st.integers(0, 9), use_out=st.booleans())
def test_cosine_similarity_rows(backend, group, data, n, d, use_out):
    da, db = data.draw(dtypes_of(group)), data.draw(dtypes_of(group))
    a, b = data.draw(matrices((n, d), da)), data.draw(matrices((n, d), db))
    dt = result_of(da, db)
    out = np.full(n, 7.0, dtype=dt) if use_out else None
    got = fastsim.cosine_similarity_rows(a, b, out=out, backend=backend)
    assert got.dtype == dt and got.shape == (n,)
    if use_out:
        assert got is out
    assert_close(got, ref_cos.cosine_similarity_rows(f64(a), f64(b)), dt)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("group", list(DTYPE_GROUPS))
@given(data=st.data(), m=st.integers(0, 7), n=st.integers(0, 7), d=st.integers(0, 9), self_sim=st.booleans(),
       use_out=st.booleans())
def test_cosine_similarity_matrix(backend, group, data, m, n, d, self_sim, use_out):
    da, db = data.draw(dtypes_of(group)), data.draw(dtypes_of(group))
    a = data.draw(matrices((m, d), da))
    b = None if self_sim else data.draw(matrices((n, d), db))
    dt = result_of(da) if self_sim else result_of(da, db)
    shape = (m, m if self_sim else n)
    out = np.full(shape, 7.0, dtype=dt) if use_out else None
    got = fastsim.cosine_similarity_matrix(a, b, out=out, backend=backend)
    assert got.dtype == dt and got.shape == shape
    if use_out:
        assert got is out
    want = ref_cos.cosine_similarity_matrix(f64(a), None if b is None else f64(b))
    assert_close(got, want, dt)


# --------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("group", list(DTYPE_GROUPS))
@given(data=st.data(), m=st.integers(0, 6), n=st.integers(0, 12), d=st.integers(0, 6), extra_k=st.integers(-12, 3),
       exclude_self=st.booleans())
def test_top_k(backend, group, data, m, n, d, extra_k, exclude_self):
    dq, dc = data.draw(dtypes_of(group)), data.draw(dtypes_of(group))
    c = data.draw(matrices((n, d), dc))
    q = c if exclude_self else data.draw(matrices((m, d), dq))
    k = max(1, n + extra_k)
    dt = result_of(dc) if exclude_self else result_of(dq, dc)
    scores, idx = fastsim.top_k(q, c, k, exclude_self=exclude_self, backend=backend)
    check_top_k(scores, idx, f64(q), f64(c), k, exclude_self=exclude_self, dtype=dt)


# --------------------------------------------------------------------------- hard negatives and triplet losses


def _hn_ambiguous(sim, want, eps):
    """Rows of a given score matrix whose result depends on rounding: only the shift's ``largest - 2``."""
    b = sim.shape[0]
    off = ~np.eye(b, dtype=bool)
    with np.errstate(invalid="ignore"):
        largest = np.max(np.where(off, sim, -np.inf), axis=1)
        no_valid = ~(off & (sim <= np.diag(sim)[:, None])).any(axis=1)
    return no_valid & (np.abs(largest) < eps)


@pytest.mark.parametrize("backend", TWO)
@pytest.mark.parametrize("group", list(DTYPE_GROUPS))
@given(data=st.data(), b=st.integers(0, 9), empty=st.sampled_from(["shift", "floor"]))
def test_hard_negatives(backend, group, data, b, empty):
    dt_in = data.draw(dtypes_of(group))
    scales = {"tiny": 1e-30, "huge": 1e30, "subnormal": 1e-41 if computed(dt_in) == np.float32 else 1e-316}
    if dt_in == np.float16:
        scales = {"subnormal": 3e-6, "large": 6e4}
    sim = data.draw(matrices((b, b), dt_in, scales=scales))
    if b < 2:
        with pytest.raises(ValueError, match=r"batch size b of sim must be >= 2"):
            fastsim.hard_negatives(sim, empty=empty, backend=backend)
        return
    dt = computed(dt_in)
    got = fastsim.hard_negatives(sim, empty=empty, backend=backend)
    s64 = f64(sim)
    want = ref_trip.hard_negatives(s64, empty)
    rows = ~_hn_ambiguous(s64, want, tol(dt))
    # the mean adds b - 1 scores in the input precision: compared relative to the row's largest |score|
    with np.errstate(invalid="ignore"):
        finite = np.where(np.isfinite(s64), np.abs(s64), 0.0)
    size = np.maximum(1.0, finite.max(axis=1))
    got_parts = (got.positive, got.mean_negative, got.closest_negative)
    for name, g, w in zip(("positive", "mean_negative", "closest_negative"), got_parts, want[:3]):
        assert g.dtype == dt, name
        scale = b if name == "mean_negative" else 1.0
        assert_close(g[rows] / size[rows], w[rows] / size[rows], dt, scale=scale, err_msg=name)
    np.testing.assert_array_equal(got.closest_index[rows], want[3][rows])


def _triplet_pair(data, group, b, d, **kw):
    d1, d2 = data.draw(dtypes_of(group)), data.draw(dtypes_of(group))
    return data.draw(matrices((b, d), d1, **kw)), data.draw(matrices((b, d), d2, **kw)), result_of(d1, d2)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("group", list(DTYPE_GROUPS))
@given(data=st.data(), b=st.integers(0, 9), d=st.integers(0, 7), margin=st.sampled_from([0.0, 0.25, 1.0, -0.5]),
       empty=st.sampled_from(["shift", "floor"]), reduction=st.sampled_from(["sum", "mean", "none"]))
def test_modified_triplet_loss(backend, group, data, b, d, margin, empty, reduction):
    v1, v2, dt = _triplet_pair(data, group, b, d)
    if b < 2:
        with pytest.raises(ValueError, match=r"batch size b of v1 and v2 must be >= 2"):
            fastsim.modified_triplet_loss(v1, v2, margin, backend=backend)
        return
    got = fastsim.modified_triplet_loss(v1, v2, margin, reduction=reduction, empty=empty, return_parts=True,
                                        backend=backend)
    x1, x2 = f64(v1), f64(v2)
    want = ref_trip.modified_triplet_loss(x1, x2, margin, empty)
    ambiguous = _ambiguous_rows(ref_trip.similarity_scores(x1, x2), want, margin, AMBIGUITY[dt])
    note(f"ambiguous rows: {np.flatnonzero(ambiguous)}")
    _check_parts(got, want, dt, ~ambiguous)
    if not ambiguous.any():
        loss = want["loss"]
        expected = {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]
        assert np.asarray(got.cost).dtype == dt
        assert_close(got.cost, expected, dt, scale=b if reduction == "sum" else 1.0)


# row magnitudes whose 1/|row| is a normal number of the dtype (see the module docstring)
_GRAD_SCALES = {np.dtype(np.float32): {"tiny": 1e-30, "huge": 1e30},
                np.dtype(np.float64): {"tiny": 1e-30, "huge": 1e30, "e-200": 1e-200, "e200": 1e200}}


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("group", list(DTYPE_GROUPS))
@given(data=st.data(), b=st.integers(2, 8), d=st.integers(1, 6), margin=st.sampled_from([0.0, 0.25, 1.0]),
       empty=st.sampled_from(["shift", "floor"]), reduction=st.sampled_from(["sum", "mean"]))
def test_modified_triplet_loss_grad(backend, group, data, b, d, margin, empty, reduction):
    d1, d2 = data.draw(dtypes_of(group)), data.draw(dtypes_of(group))
    dt = result_of(d1, d2)
    v1 = data.draw(matrices((b, d), d1, scales=_GRAD_SCALES.get(d1, {})))
    v2 = data.draw(matrices((b, d), d2, scales=_GRAD_SCALES.get(d2, {})))
    x1, x2 = f64(v1), f64(v2)
    want = ref_trip.modified_triplet_loss(x1, x2, margin, empty)
    # the gradient couples every row: any ambiguous row may change it anywhere
    assume(not _ambiguous_rows(ref_trip.similarity_scores(x1, x2), want, margin, AMBIGUITY[dt]).any())
    cost, (g1, g2) = T.value_and_grad(v1, v2, margin, reduction=reduction, empty=empty, backend=backend)
    w1, w2 = ref_trip.modified_triplet_loss_grad(x1, x2, margin, reduction, empty)
    assert g1.dtype == dt and g2.dtype == dt and g1.shape == (b, d)
    for g, w, x, name in ((g1, w1, x1, "grad_v1"), (g2, w2, x2, "grad_v2")):
        norms = ref_cos.row_norms(x)[:, None]
        assert_close(*_scaled(g, w, np.where(norms > 0, norms, 1.0)), dt, scale=10, err_msg=name)
    g1b, g2b = fastsim.modified_triplet_loss_grad(v1, v2, margin, reduction=reduction, empty=empty, backend=backend)
    np.testing.assert_array_equal(g1b, g1)
    np.testing.assert_array_equal(g2b, g2)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("group", list(DTYPE_GROUPS))
@given(data=st.data(), n=st.integers(0, 7), d=st.integers(0, 7), single=st.booleans(),
       margin=st.sampled_from([0.0, 0.25, 2.0, -1.0]), reduction=st.sampled_from(["sum", "mean", "none"]))
def test_triplet_loss(backend, group, data, n, d, single, margin, reduction):
    dts = [data.draw(dtypes_of(group)) for _ in range(3)]
    rows = 1 if single else n
    a, p, q = (data.draw(matrices((rows, d), dt)) for dt in dts)
    if single:
        a, p, q = a[0], p[0], q[0]
    dt = result_of(*dts)
    got = fastsim.triplet_loss(a, p, q, margin, reduction=reduction, backend=backend)
    loss = ref_trip.triplet_loss(*(np.atleast_2d(f64(x)) for x in (a, p, q)), margin)
    if single:
        expected = loss[0]  # one triplet: its loss whatever the reduction
    elif reduction == "none":
        expected = loss
    elif reduction == "sum":
        expected = loss.sum()
    else:
        expected = loss.mean() if n else np.nan  # documented: the mean of no triplets is NaN
    assert np.asarray(got).dtype == dt
    assert_close(got, expected, dt, scale=max(1, n) if reduction == "sum" and not single else 1.0)


# --------------------------------------------------------------------------- recurrent layers

KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _ref_run(kind, x, weights, lengths, initial, batch_first):
    if kind == "lstm":
        h0, c0 = initial if initial is not None else (None, None)
        return ref_lstm(x, weights, h0, c0, lengths, batch_first)
    if kind == "gru":
        return ref_gru(x, weights, initial, lengths, batch_first)
    return ref_rnn(x, weights, initial, lengths, batch_first, nonlinearity=kind[4:])


def _states(kind, state):
    return list(state) if isinstance(state, tuple) else [state]


def _check_rnn(kind, got, want, dt, rounded=None):
    """Outputs and final states at the dtype's tolerance, relative to each array's largest |value|.

    Bounded values (tanh, LSTM hidden states) keep the absolute tolerance; the
    unbounded ones (relu, an LSTM's cell state, a GRU or LSTM started from a
    huge state) are compared relative to their size, like sums of terms of
    that size.

    ``rounded`` is the reference run in ``dt`` itself on the same inputs.  Its
    distance from the float64 reference is this example's own sensitivity to
    rounding in ``dt``: a second layer fed states of ~1e4 forms gate
    pre-activations of ~1e4 whose float32 rounding (~1e-3) moves a gate in its
    steep part, and the GRU update multiplies that by the ~1e4 state (0.11 of
    error against a 0.084 tolerance in one such example, with the NumPy
    backend, which is that reference).  Any computation in ``dt`` may then
    deviate by a few times as much, so the tolerance grows by four times that
    distance; where the example is well conditioned the distance is ~1 ulp of
    the scale and the tolerance is unchanged.
    """
    pairs = [(got[0], want[0], "outputs")] + [(g, w, "state") for g, w in zip(_states(kind, got[1]),
                                                                                 _states(kind, want[1]))]
    if rounded is not None:
        rounded = [rounded[0]] + _states(kind, rounded[1])
    for p, (g, w, name) in enumerate(pairs):
        assert g.dtype == dt, name
        with np.errstate(invalid="ignore"):
            finite = np.abs(w[np.isfinite(w)])
        scale = max(1.0, float(finite.max(initial=0.0)))
        if rounded is not None:
            with np.errstate(invalid="ignore"):
                dev = np.abs(np.asarray(rounded[p], np.float64) - w)
            own = float(dev[np.isfinite(dev)].max(initial=0.0))
            scale += 4.0 * own / tol(dt)
        assert_close(g, w, dt, scale=scale, err_msg=name)


# inputs of recurrent layers: magnitudes whose products with O(1) weights stay finite in float32
_RNN_SCALES = {"tiny": 1e-30, "huge": 1e30, "subnormal": 1e-41, "large": 1e4}


@st.composite
def rnn_inputs(draw, dtype, shape):
    """A 3-D input whose rows (one time step of one sequence) follow :func:`matrices`."""
    B, T_, D = shape
    flat = draw(matrices((B * T_, D), dtype, scales=_RNN_SCALES if dtype in FLOATS else None, layout=False))
    x = flat.reshape(B, T_, D)
    return draw(st.sampled_from(["C", "strided", "reversed"]).map(lambda how: _layout(x, how)))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("group", list(DTYPE_GROUPS))
@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data(), B=st.integers(0, 4), T_=st.integers(0, 5), D=st.integers(0, 4), H=st.integers(1, 5),
       batch_first=st.booleans(), use_lengths=st.booleans(), use_state=st.booleans(), bias=st.booleans())
def test_functional_forward(backend, group, kind, data, B, T_, D, H, batch_first, use_lengths, use_state, bias):
    dx, dw = data.draw(dtypes_of(group)), data.draw(dtypes_of(group))
    G = GATES[kind]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    k = 1 / np.sqrt(H)
    weights = [rng.uniform(-k, k, s) for s in ((G * H, D), (G * H, H), (G * H,), (G * H,))]
    if dw == np.bool_ or dw.kind in "iu":
        weights = [np.round(4 * w) for w in weights]  # small integers
        if dw.kind in "ub":
            weights = [np.abs(w) for w in weights]
    weights = [_layout(w.astype(dw), data.draw(st.sampled_from(["C", "F", "strided", "reversed"]))) for w in weights]
    if not bias:
        weights[2] = weights[3] = None
    x = data.draw(rnn_inputs(dx, (B, T_, D)))
    if not batch_first:
        x = np.swapaxes(x, 0, 1)
    lengths = rng.integers(1, T_ + 1, size=B) if use_lengths and T_ > 0 else None
    states = {}
    if use_state:
        names = ("h0", "c0") if kind == "lstm" else ("h0",)
        states = {name: data.draw(matrices((B, H), dx, scales=_RNN_SCALES if dx in FLOATS else None))
                  for name in names}
    dt = result_of(dx, dw, *(s.dtype for s in states.values()))
    fn = {"lstm": fastsim.lstm_forward, "gru": fastsim.gru_forward}.get(kind, fastsim.rnn_forward)
    kw = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    got = fn(x, *weights, lengths=lengths, batch_first=batch_first, backend=backend, **states, **kw)
    w64 = [f64(w) if w is not None else np.zeros(G * H) for w in weights]
    initial = None
    if states:
        initial = tuple(f64(s)[None] for s in states.values())
        initial = initial if kind == "lstm" else initial[0]
    want_out, want_state = _ref_run(kind, f64(x), [[tuple(w64)]], lengths, initial, batch_first)
    want_state = tuple(s[0] for s in want_state) if kind == "lstm" else want_state[0]
    rounded = None
    if dt != np.float64:  # the reference itself, run in the result dtype (see _check_rnn)
        def cast(a):
            return np.asarray(a).astype(dt)

        r_initial = None if initial is None else (tuple(cast(s) for s in initial) if kind == "lstm" else cast(initial))
        r_out, r_state = _ref_run(kind, cast(f64(x)), [[tuple(cast(w) for w in w64)]], lengths, r_initial, batch_first)
        rounded = (r_out, tuple(s[0] for s in r_state) if kind == "lstm" else r_state[0])
    _check_rnn(kind, got, (want_out, want_state), dt, rounded)


LAYERS = {"lstm": R.LSTM, "gru": R.GRU, "rnn_tanh": R.RNN, "rnn_relu": R.RNN}


def _random_directions(rng, kind, D, H, num_layers, num_dirs):
    G = GATES[kind]
    k = 1 / np.sqrt(H)
    return [[tuple(rng.uniform(-k, k, s) for s in ((G * H, D if layer == 0 else num_dirs * H), (G * H, H), (G * H,),
                                                    (G * H,)))
             for _ in range(num_dirs)] for layer in range(num_layers)]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", ["torch", "keras", "onnx"])
@given(data=st.data(), B=st.integers(0, 3), T_=st.integers(0, 4), D=st.integers(1, 4), H=st.integers(1, 4),
       layers=st.integers(1, 2), bidirectional=st.booleans(), dtype=st.sampled_from(FLOATS + CONVERTED[:1]),
       x_dtype=st.sampled_from(FLOATS + CONVERTED), use_lengths=st.booleans(), use_state=st.booleans())
def test_layers_and_importers(backend, kind, source, data, B, T_, D, H, layers, bidirectional, dtype, x_dtype,
                              use_lengths, use_state):
    """LSTM/GRU/RNN built by each importer from random weights (any float dtype, any layout) run like the reference."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if source != "torch":
        layers = 1  # Keras and ONNX arrays describe one layer
        bidirectional = bidirectional and source == "onnx"
    num_dirs = 2 if bidirectional else 1
    weights = _random_directions(rng, kind, D, H, layers, num_dirs)
    stored = [[tuple(_layout(w.astype(dtype), data.draw(st.sampled_from(["C", "F", "reversed"]))) for w in dirs_w)
               for dirs_w in layer_w] for layer_w in weights]
    cls = LAYERS[kind]
    kw = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    layer_dtype = computed(dtype)
    # the reference runs on the stored values (after the dtype cast), in float64
    ref_weights = [[tuple(f64(a) for a in dirs_w) for dirs_w in layer_w] for layer_w in stored]
    if source == "torch":
        sd = {}
        for li, dirs_w in enumerate(stored):
            for di, w in enumerate(dirs_w):
                suffix = f"_l{li}{'_reverse' if di else ''}"
                for name, a in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), w):
                    sd[name + suffix] = a
        layer = cls.from_torch(sd, **kw)
    elif source == "keras":
        kernel, recurrent, bias = (a.astype(dtype) for a in keras_arrays(kind, *ref_weights[0][0]))
        layer = cls.from_keras(kernel, recurrent, bias, **kw)
        if kind != "gru":  # the Keras layout holds only b_ih + b_hh, as stored in its dtype
            W_ih, W_hh = ref_weights[0][0][:2]
            ref_weights = [[(W_ih, W_hh, f64(bias), np.zeros(bias.shape))]]
    else:
        W, Rm, Bm = (a.astype(dtype) for a in onnx_arrays(kind, ref_weights[0]))
        extra = {"linear_before_reset": 1} if kind == "gru" else kw
        layer = cls.from_onnx(W, Rm, Bm, **extra)
    assert layer.dtype == layer_dtype
    x = data.draw(rnn_inputs(x_dtype, (B, T_, D)))
    lengths = rng.integers(1, T_ + 1, size=B) if use_lengths and T_ > 0 else None
    n = layers * num_dirs
    initial = ref_initial = None
    if use_state:
        def state():
            return data.draw(matrices((n * B, H), layer_dtype, scales=_RNN_SCALES)).reshape(n, B, H)

        initial = (state(), state()) if kind == "lstm" else state()
        ref_initial = tuple(f64(s) for s in initial) if kind == "lstm" else f64(initial)
    got = layer(x, lengths, initial, backend=backend)
    # the layer computes in its own dtype: x is rounded to it first
    x_seen = f64(x).astype(layer_dtype).astype(np.float64)
    want = _ref_run(kind, x_seen, ref_weights, lengths, ref_initial, True)
    rounded = None
    if layer_dtype != np.float64:  # the reference itself, run in the layer's dtype
        def cast(a):
            return None if a is None else np.asarray(a).astype(layer_dtype)

        rounded = _ref_run(kind, cast(x_seen), [[tuple(cast(a) for a in d) for d in w] for w in ref_weights], lengths,
                           None if ref_initial is None else (tuple(cast(s) for s in ref_initial)
                                                             if kind == "lstm" else cast(ref_initial)), True)
    _check_rnn(kind, got, want, layer_dtype, rounded)


# --------------------------------------------------------------------------- the Siamese pipeline


def _reference_encode(embedding, weights, kind, ids, lengths, pooling, bidirectional):
    """Embedding, the reference recurrent layers, pooling, L2 normalization, in float64: (encodings, pooled norms)."""
    Tn = ids.shape[1]
    if lengths is not None:
        L = np.asarray(lengths)
        run_len = L
    else:
        real = ids != 0
        L = np.where(real.any(axis=1), Tn - np.argmax(real[:, ::-1], axis=1), 1)
        run_len = None
    x = embedding[ids]
    out, _ = _ref_run(kind, x, weights, run_len, None, True)
    if pooling == "mean":
        pooled = out.sum(axis=1) / Tn
    elif pooling == "masked_mean":
        mask = (np.arange(Tn)[None, :] < L[:, None]).astype(np.float64)
        pooled = np.einsum("btf,bt->bf", out, mask) / L[:, None]
    else:
        pooled = out[np.arange(len(L)), L - 1].copy()
        if bidirectional:
            H = weights[-1][0][1].shape[1]
            pooled[:, H:] = out[:, 0, H:]
    return ref_cos.unit_rows(pooled), ref_cos.row_norms(pooled)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@given(data=st.data(), V=st.integers(2, 8), E=st.integers(1, 4), H=st.integers(1, 4), B=st.integers(0, 4),
       T_=st.integers(1, 5), kind=st.sampled_from(KINDS), bidirectional=st.booleans(),
       pooling=st.sampled_from(["mean", "masked_mean", "last"]), use_lengths=st.booleans(),
       batch_size=st.integers(1, 3))
def test_siamese_encoder(backend, dtype, data, V, E, H, B, T_, kind, bidirectional, pooling, use_lengths, batch_size):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    num_dirs = 2 if bidirectional else 1
    weights = _random_directions(rng, kind, E, H, 1, num_dirs)
    kw = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    layer = LAYERS[kind](E, H, bidirectional=bidirectional, dtype=dtype, **kw)
    for di, w in enumerate(weights[0]):
        layer.set_weights(0, di, *w)
    embedding = data.draw(matrices((V, E), dtype, scales=_RNN_SCALES))
    enc = fastsim.SiameseEncoder(embedding, layer, pooling)
    ids = rng.integers(0, V, size=(B, T_))
    lengths = None
    if use_lengths:
        lengths = rng.integers(1, T_ + 1, size=B)
        ids[np.arange(T_)[None, :] >= lengths[:, None]] = 0
    got = enc.encode(_layout(ids, data.draw(st.sampled_from(["C", "strided", "reversed"]))), lengths,
                     batch_size=batch_size, backend=backend)
    ref_w = [[tuple(np.asarray(a, np.float64) for a in layer.weights[0][di]) for di in range(num_dirs)]]
    want, pooled_norms = _reference_encode(f64(embedding), ref_w, kind, ids, lengths, pooling, bidirectional)
    assert got.dtype == dtype and got.shape == (B, num_dirs * H)
    # normalizing a pooled vector near zero is ill-conditioned in any precision: such rows are skipped
    rows = ~(pooled_norms < 1e-3)
    note(f"pooled norms {pooled_norms}")
    assert_close(got[rows], want[rows], dtype, scale=10)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("group", list(DTYPE_GROUPS))
@given(data=st.data(), n=st.integers(0, 7), d=st.integers(0, 6), threshold=st.floats(-1.5, 1.5))
def test_similarity_decisions_and_accuracy(backend, group, data, n, d, threshold):
    d1, d2 = data.draw(dtypes_of(group)), data.draw(dtypes_of(group))
    a, b = data.draw(matrices((n, d), d1)), data.draw(matrices((n, d), d2))
    dt = result_of(d1, d2)
    want = ref_cos.cosine_similarity_rows(f64(a), f64(b))
    got = fastsim.similarity(a, b, backend=backend)
    assert got.dtype == dt
    assert_close(got, want, dt)
    decided = fastsim.is_duplicate(a, b, threshold, backend=backend)
    assert decided.dtype == bool and decided.shape == (n,)
    with np.errstate(invalid="ignore"):
        clear = ~(np.abs(want - threshold) < 2 * tol(dt))  # NaN is clear: never a duplicate
        expected = want >= threshold
    np.testing.assert_array_equal(decided[clear], expected[clear])
    labels = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if n == 0:
        with pytest.raises(ValueError, match="q1_vecs and q2_vecs must hold at least one pair"):
            fastsim.accuracy(a, b, labels, threshold, backend=backend)
        return
    acc = fastsim.accuracy(a, b, np.array(labels, dtype=int), threshold, backend=backend)
    assert isinstance(acc, float)
    if clear.all():
        assert acc == np.mean(expected == np.array(labels))


_TEXT = st.text(alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "Zs")), max_size=30)


@given(texts=st.lists(_TEXT, max_size=6), others=st.lists(_TEXT, max_size=4),
       max_length=st.one_of(st.none(), st.integers(1, 8)), min_count=st.integers(1, 3))
def test_vocabulary(texts, others, max_length, min_count):
    vocab = fastsim.Vocabulary.build(texts, min_count=min_count)
    ids, lengths = vocab.encode(texts + others, max_length)
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    assert ids.shape[0] == len(texts) + len(others)
    Tn = ids.shape[1]
    assert np.all((lengths >= 1) & (lengths <= Tn))
    if max_length is not None:
        assert Tn == max_length
    for text, row, n in zip(texts + others, ids, lengths):
        tokens = fastsim.Vocabulary.tokenize(text) or ["<UNK>"]
        kept = tokens[: n]
        assert n == min(len(tokens), Tn)
        assert np.all(row[n:] == 0) and np.all(row[:n] >= 1)
        expect = [t if t in vocab else "<UNK>" for t in kept]
        assert vocab.decode(row) == expect
        for t, i in zip(kept, row[:n]):
            assert vocab.token_to_id(t) == i


# --------------------------------------------------------------------------- PyTorch front end


@pytest.mark.parametrize("backend", ALL)
@given(data=st.data(), b=st.integers(2, 7), d=st.integers(1, 5), margin=st.sampled_from([0.0, 0.25, 1.0]),
       reduction=st.sampled_from(["sum", "mean", "none"]), dtype=st.sampled_from(["float32", "float64", "float16"]),
       transposed=st.booleans())
def test_torch_modified_triplet_loss(backend, data, b, d, margin, reduction, dtype, transposed):
    torch = pytest.importorskip("torch")
    from fastsim.torch import ModifiedTripletLoss

    np_dtype = np.dtype(dtype)
    scales = _GRAD_SCALES.get(computed(np_dtype), {})
    v1 = data.draw(matrices((b, d), np_dtype, scales=scales, layout=False, specials=()))
    v2 = data.draw(matrices((b, d), np_dtype, scales=scales, layout=False, specials=()))
    x1, x2 = f64(v1), f64(v2)
    want = ref_trip.modified_triplet_loss(x1, x2, margin, "shift")
    dt = computed(np_dtype)
    assume(not _ambiguous_rows(ref_trip.similarity_scores(x1, x2), want, margin, AMBIGUITY[dt]).any())
    t1 = torch.from_numpy(np.ascontiguousarray(v1.T)).T if transposed else torch.from_numpy(v1.copy())
    t1.requires_grad_(True)
    t2 = torch.from_numpy(v2.copy()).requires_grad_(True)
    loss = ModifiedTripletLoss(margin, reduction=reduction, backend=backend)(t1, t2)
    expected = {"none": want["loss"], "sum": want["loss"].sum(), "mean": want["loss"].mean()}[reduction]
    assert_close(loss.detach().numpy(), expected, dt, scale=b if reduction == "sum" else 1.0)
    weights = torch.ones(b, dtype=loss.dtype) if reduction == "none" else None
    loss.backward(weights if weights is not None else None)
    r = "sum" if reduction == "none" else reduction
    w1, w2 = ref_trip.modified_triplet_loss_grad(x1, x2, margin, r, "shift")
    for t, w, x in ((t1, w1, x1), (t2, w2, x2)):
        assert t.grad.dtype == t.dtype
        norms = ref_cos.row_norms(x)[:, None]
        got, want_g = _scaled(t.grad.numpy(), w, np.where(norms > 0, norms, 1.0))
        if np_dtype == np.float16:  # the gradient of a float16 tensor is rounded to float16
            np.testing.assert_allclose(got, want_g, rtol=2.0**-10, atol=tol(dt, 10))
        else:
            assert_close(got, want_g, dt, scale=10)


# --------------------------------------------------------------------------- threads


@given(n=st.integers(1, 64))
def test_set_num_threads_round_trip(n):
    before = fastsim.get_num_threads()
    try:
        fastsim.set_num_threads(np.int64(n) if n % 2 else n)
        if fastsim.info()["openmp"]:
            assert fastsim.get_num_threads() == n
    finally:
        fastsim.set_num_threads(before)
