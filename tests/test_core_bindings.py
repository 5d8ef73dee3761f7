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
    if name == "cosine_matrix_alloc":
        return core.cosine_matrix, [arr(m, d), draw(st.sampled_from([None, arr(n, d)])), None]
    if name == "cosine_rows_alloc":
        return core.cosine_rows, [arr(m, d), arr(m, d), None]
    if name == "cosine_pair":
        return core.cosine_pair, [arr(d), arr(d)]
    if name == "triplet_cost":
        return core.triplet_cost, [arr(b, d), arr(b, d), 0.25, draw(st.sampled_from([0, 1])), draw(st.booleans())]
    if name == "cosine_rows":
        return core.cosine_rows, [arr(m, d), arr(m, d), np.empty(m, dt)]
    if name == "gemm_nt":
        return core.gemm_nt, [arr(m, d), arr(n, d), np.empty((m, n), dt)]
    if name == "triplet_forward":
        return core.triplet_forward, [arr(b, d), arr(b, d), draw(st.sampled_from([0, 1]))]
    if name == "triplet_backward":
        idx = rng.integers(-1, b, size=b).astype(np.int64)
        act = [rng.integers(0, 2, size=b).astype(np.uint8) for _ in range(2)]
        weight = np.ones(b)
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


_BINDINGS = ["cosine_matrix", "cosine_matrix_alloc", "cosine_rows_alloc", "cosine_pair", "triplet_cost",
             "cosine_rows", "gemm_nt", "triplet_forward", "triplet_backward", "top_k",
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


# --------------------------------------------------------------------------- one route per operation
# Every public function converts and checks its arguments in the Python layer
# (fastsim._validation) whatever the backend, then calls one kernel; the
# compiled entry points allocate a result when out is None.  So an unusual
# call (lists, subclasses, strides, mixed or converted dtypes, bad shapes, bad
# out arrays) gets from the cpp backend exactly the answer the NumPy
# reference backend gives: the same error, or the same result.


class _Subclass(np.ndarray):
    pass


def _plain(dtype=np.float32, m=5, n=7, d=9, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, d)).astype(dtype), rng.standard_normal((n, d)).astype(dtype)


def _unaligned(shape, dtype):
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(size + 1, np.uint8)
    arr = raw[1:].view(dtype).reshape(shape)
    assert not arr.flags.aligned
    return arr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("self_pair", [False, True])
@pytest.mark.parametrize("shape", [(5, 7, 9), (300, 400, 33)])
def test_cosine_matrix_entry_allocates_what_it_writes_into_out(dtype, self_pair, shape):
    core = fastsim._backend.core()
    a, b = _plain(dtype, *shape)
    b = None if self_pair else b
    n = a.shape[0] if self_pair else b.shape[0]
    got = core.cosine_matrix(a, b, None)
    assert got.dtype == dtype and got.shape == (a.shape[0], n) and got.flags.c_contiguous and got.flags.writeable
    if got.nbytes >= 1 << 16:
        assert got.ctypes.data % 64 == 0  # whole cache lines, from _validation.empty_aligned
    out = np.full((a.shape[0], n), 7.0, dtype)
    assert core.cosine_matrix(a, b, out) is out
    np.testing.assert_array_equal(got, out)


def test_allocated_results_outlive_the_call():
    core = fastsim._backend.core()
    a, b = _plain(np.float64, m=300, n=400, d=33)
    results = [core.cosine_matrix(a, b, None) for _ in range(3)]
    import gc

    gc.collect()
    for r in results:
        np.testing.assert_array_equal(r, results[0])
    assert results[0].base is not None  # the memory's owner travels with the array


def _unusual_matrix_calls():
    a, b = _plain(np.float32)
    m, n = a.shape[0], b.shape[0]
    out = np.empty((m, n), np.float32)
    readonly = out.copy()
    readonly.flags.writeable = False
    joint = np.empty(m * a.shape[1] + m * n, np.float32)
    a_in_joint = joint[: m * a.shape[1]].reshape(a.shape)
    a_in_joint[...] = a
    return {
        "plain": (a, b, None),
        "plain with out": (a, b, out),
        "self": (a, None, None),
        "a is a list": (a.tolist(), b, out),
        "a is a subclass": (a.view(_Subclass), b, out),
        "b is a subclass": (a, b.view(_Subclass), out),
        "out is a subclass": (a, b, out.view(_Subclass)),
        "a is not contiguous": (np.asfortranarray(a), b, out),
        "b is not contiguous": (a, b[::2], np.empty((m, (n + 1) // 2), np.float32)),
        "mixed dtypes": (a, b.astype(np.float64), np.empty((m, n), np.float64)),
        "integer a": (a.astype(np.int32), b, out),
        "big-endian a": (a.astype(">f4"), b.astype(">f4"), out),
        "float16 a": (a.astype(np.float16), b.astype(np.float16), out),
        "3-D a": (a[None], b, out),
        "no rows": (a[:0], b, np.empty((0, n), np.float32)),
        "no columns": (a[:, :0], b[:, :0], out),
        "columns differ": (a, b[:, :-1].copy(), out),
        "out of the wrong shape": (a, b, np.empty((m, n + 1), np.float32)),
        "out of another dtype": (a, b, np.empty((m, n), np.float64)),
        "out not contiguous": (a, b, np.empty((n, m), np.float32).T),
        "out read-only": (a, b, readonly),
        "out overlaps a": (a_in_joint, b, joint[m * a.shape[1] - 1 : -1].reshape(m, n)),
        "out is a": (np.ones((m, m), np.float32), None, "a"),
        "unaligned a": (_unaligned(a.shape, np.float32), b, out),
        "unaligned out": (a, b, _unaligned((m, n), np.float32)),
        "out is a list": (a, b, out.tolist()),
    }


def _answer(fn):
    try:
        result = fn()
    except (TypeError, ValueError) as exc:
        return None, (type(exc), str(exc))
    return (result.copy() if isinstance(result, np.ndarray) else result), None


def _same_answer(got, want, tol):
    (r1, e1), (r2, e2) = got, want
    assert e1 == e2
    if e1 is None:
        assert type(r1) is type(r2) and np.asarray(r1).dtype == np.asarray(r2).dtype
        np.testing.assert_allclose(np.asarray(r1, np.float64), np.asarray(r2, np.float64), rtol=0, atol=tol)


@pytest.mark.parametrize("case", list(_unusual_matrix_calls()))
def test_cosine_similarity_matrix_answers_every_call_as_the_reference_does(case):
    answers = []
    for backend in ("cpp", "numpy"):
        a, b, out = _unusual_matrix_calls()[case]
        out = a if isinstance(out, str) else out
        answers.append(_answer(lambda a=a, b=b, out=out, be=backend: fastsim.cosine_similarity_matrix(a, b, out=out,
                                                                                             backend=be)))
        if isinstance(out, np.ndarray) and answers[-1][1] is None:
            np.testing.assert_array_equal(out, answers[-1][0])  # written in place
    _same_answer(*answers, tol=1e-6)


@pytest.mark.parametrize("backend", [np.array(["cpp", "cpp"]), ["cpp"], 1, None])
def test_a_backend_that_is_not_a_str_is_refused(backend):
    a, b = _plain(np.float32)
    with pytest.raises(TypeError, match="backend must be a str"):
        fastsim.cosine_similarity_matrix(a, b, backend=backend)


def test_str_subclasses_name_a_backend():
    a, b = _plain(np.float32)
    got = fastsim.cosine_similarity_matrix(a, b, backend=np.str_("cpp"))
    np.testing.assert_array_equal(got, fastsim.cosine_similarity_matrix(a, b, backend="cpp"))


def _unusual_rows_and_pairs():
    a, b = _plain(np.float32, m=6, n=6)
    out = np.empty(6, np.float32)
    readonly = out.copy()
    readonly.flags.writeable = False
    u, v = a[0].copy(), b[0].copy()
    joint = np.zeros(a.size + 1, np.float32)
    a_in_joint = joint[: a.size].reshape(a.shape)
    a_in_joint[...] = a
    return {
        "rows: plain": ("rows", a, b, None),
        "rows: plain with out": ("rows", a, b, out),
        "rows: out overlaps a": ("rows", a_in_joint, b, joint[a.size - 5 :]),
        "rows: a is a list": ("rows", a.tolist(), b, out),
        "rows: b is a subclass": ("rows", a, b.view(_Subclass), out),
        "rows: a not contiguous": ("rows", np.asfortranarray(a), b, out),
        "rows: shapes differ": ("rows", a, b[:5], out),
        "rows: mixed dtypes": ("rows", a, b.astype(np.float64), np.empty(6, np.float64)),
        "rows: integer a": ("rows", a.astype(np.int64), b, out),
        "rows: no columns": ("rows", a[:, :0], b[:, :0], out),
        "rows: out of the wrong length": ("rows", a, b, np.empty(7, np.float32)),
        "rows: out of another dtype": ("rows", a, b, np.empty(6, np.float64)),
        "rows: out read-only": ("rows", a, b, readonly),
        "rows: out 2-D": ("rows", a, b, np.empty((6, 1), np.float32)),
        "rows: unaligned a": ("rows", _unaligned(a.shape, np.float32), b, out),
        "rows: unaligned out": ("rows", a, b, _unaligned((6,), np.float32)),
        "pair: plain": ("pair", u, v, None),
        "pair: u is a list": ("pair", u.tolist(), v, None),
        "pair: u is a subclass": ("pair", u.view(_Subclass), v, None),
        "pair: u strided": ("pair", a[:, 0], b[:, 0], None),
        "pair: lengths differ": ("pair", u, v[:-1], None),
        "pair: mixed dtypes": ("pair", u, v.astype(np.float64), None),
        "pair: float16": ("pair", u.astype(np.float16), v.astype(np.float16), None),
        "pair: big-endian": ("pair", u.astype(">f4"), v.astype(">f4"), None),
        "pair: empty": ("pair", u[:0], v[:0], None),
        "pair: 2-D": ("pair", u[None], v[None], None),
        "pair: unaligned u": ("pair", _unaligned(u.shape, np.float32), v, None),
        "pair: zero vector": ("pair", np.zeros_like(u), v, None),
    }


@pytest.mark.parametrize("case", list(_unusual_rows_and_pairs()))
def test_rows_and_pair_answer_every_call_as_the_reference_does(case):
    answers = []
    for backend in ("cpp", "numpy"):
        kind, x, y, out = _unusual_rows_and_pairs()[case]
        if kind == "rows":
            answers.append(_answer(lambda x=x, y=y, out=out, be=backend: fastsim.cosine_similarity_rows(x, y, out=out,
                                                                                                     backend=be)))
        else:
            answers.append(_answer(lambda x=x, y=y, be=backend: fastsim.cosine_similarity(x, y, backend=be)))
    _same_answer(*answers, tol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "d"), [(1, 1), (5, 3), (64, 300), (3, 70000)])
def test_rows_and_pair_allocate_what_they_write_into_out(dtype, n, d):
    a, b = _plain(dtype, m=n, n=n, d=d)
    a[0, 0] = 0.0
    if n > 1:
        a[1] = 0.0  # a zero row scores 0
    rows = fastsim.cosine_similarity_rows(a, b)
    out = np.full(n, 5.0, dtype)
    assert fastsim.cosine_similarity_rows(a, b, out=out, backend="cpp") is out
    np.testing.assert_array_equal(out, rows)
    pair = fastsim.cosine_similarity(a[-1], b[-1])
    assert rows.dtype == dtype and type(pair) is np.dtype(dtype).type and pair == rows[-1]
    want = fastsim.cosine_similarity_rows(a.astype(np.float64), b.astype(np.float64), backend="numpy")
    np.testing.assert_allclose(rows, want, rtol=0, atol=1e-5 if dtype == np.float32 else 1e-12)


def _unusual_triplets():
    v1, v2 = _plain(np.float32, m=8, n=8, d=5)
    return {
        "plain": (v1, v2),
        "v1 is a list": (v1.tolist(), v2),
        "v2 is a subclass": (v1, v2.view(_Subclass)),
        "v1 not contiguous": (np.asfortranarray(v1), v2),
        "mixed dtypes": (v1, v2.astype(np.float64)),
        "integer v1": (v1.astype(np.int32), v2),
        "big-endian": (v1.astype(">f4"), v2.astype(">f4")),
        "one row": (v1[:1], v2[:1]),
        "no columns": (v1[:, :0], v2[:, :0]),
        "shapes differ": (v1, v2[:7]),
        "1-D": (v1[0], v2[0]),
        "unaligned v1": (_unaligned(v1.shape, np.float32), v2),
        "a NaN": (np.where(np.arange(5) == 2, np.nan, v1).astype(np.float32), v2),
    }


@pytest.mark.parametrize("case", list(_unusual_triplets()))
def test_triplet_loss_answers_every_call_as_the_reference_does(case):
    answers = [_answer(lambda be=be: fastsim.modified_triplet_loss(*_unusual_triplets()[case], backend=be))
               for be in ("cpp", "numpy")]
    _same_answer(*answers, tol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("b", "d"), [(3, 4), (9, 7), (64, 128)])
@pytest.mark.parametrize(("reduction", "empty", "margin"), [("sum", "shift", 0.25), ("mean", "floor", 0.5),
                                                            ("sum", "floor", 0)])
def test_the_compiled_cost_is_the_sum_of_the_per_row_losses(dtype, b, d, reduction, empty, margin):
    # The cost alone comes from one kernel call that also takes the hinges and
    # their sum; the parts come from the mining kernel with the hinges taken
    # in Python.  The per-row losses are the same bits; both sum them in
    # double, the kernel in row order and NumPy pairwise, so the costs agree
    # to the last place of the dtype (one unit where the double sums round
    # to either side of a float boundary).
    rng = np.random.default_rng(b * 31 + d)
    v1 = rng.standard_normal((b, d)).astype(dtype)
    v2 = (v1 + rng.standard_normal((b, d))).astype(dtype)
    kw = {"margin": margin, "reduction": reduction, "empty": empty}
    got = fastsim.modified_triplet_loss(v1, v2, backend="cpp", **kw)
    parts = fastsim.modified_triplet_loss(v1, v2, return_parts=True, backend="cpp", **kw)
    assert type(got) is type(parts.cost) is np.dtype(dtype).type
    assert abs(got - parts.cost) <= np.spacing(abs(parts.cost))
    ref = fastsim.modified_triplet_loss(v1.astype(np.float64), v2.astype(np.float64), backend="numpy", **kw)
    assert abs(float(got) - float(ref)) <= (1e-5 if dtype == np.float32 else 1e-12) * max(1.0, b)
