"""Top-k retrieval: every backend against a stable argsort of the full float64 matrix."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsim
from fastsim import topk as topk_mod

from .conftest import DTYPES, assert_close, backend_params, tol

BACKENDS = backend_params(topk_mod._SUPPORTED)


# --------------------------------------------------------------------------- the oracle


def _unit(a):
    """Rows divided by their largest |entry|, then by their norm: no square overflows or underflows."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        peak = np.max(np.abs(a), axis=1, initial=0)
        a = a / np.where(peak == 0, 1.0, peak)[:, None]
        n = np.linalg.norm(a, axis=1)
        return a / np.where(n == 0, 1.0, n)[:, None]


def _full_scores(q, c):
    """Cosine matrix in float64, written independently of fastsim."""
    with np.errstate(invalid="ignore"):
        return np.clip(_unit(q) @ _unit(c).T, -1.0, 1.0)


def _oracle(q, c, exclude_self):
    """Per row: candidate indices best first, and their float64 scores."""
    s = _full_scores(q, c)
    m, n = s.shape
    # descending score, NaN after every number, the excluded pair after that;
    # a stable sort keeps equal keys in ascending index
    key = np.where(np.isnan(s), 2.0, -s)
    if exclude_self:
        key[np.arange(m), np.arange(m)] = 3.0
    order = np.argsort(key, axis=1, kind="stable")
    if exclude_self:
        order = order[:, : n - 1]
    return s, order, np.take_along_axis(s, order, axis=1)


def check_top_k(scores, idx, q, c, k, *, exclude_self=False, dtype=np.float64, exact=False):
    """Everything the contract says about a result, at the dtype's tolerance.

    Positions whose float64 score lies within twice the tolerance of a
    neighbour's may legitimately come out in either order (the backend ranks
    its own rounded scores); ``exact`` demands the oracle's indices everywhere.
    """
    m, n = q.shape[0], c.shape[0]
    kk = max(0, min(k, n - 1 if exclude_self else n))
    assert scores.shape == (m, kk) and idx.shape == (m, kk)
    assert idx.dtype == np.int64
    assert scores.dtype == np.dtype(dtype)
    if m == 0 or kk == 0:
        return
    s, order, sorted_scores = _oracle(q, c, exclude_self)
    eps = tol(dtype)
    # the returned scores are the k best values, and belong to the returned rows
    assert_close(scores, sorted_scores[:, :kk], dtype, err_msg="scores")
    assert_close(scores, np.take_along_axis(s, idx, axis=1), dtype, err_msg="score of returned index")
    assert idx.min() >= 0 and idx.max() < n
    assert np.all(np.diff(np.sort(idx, axis=1), axis=1) != 0), "repeated index in a row"
    if exclude_self:
        assert not np.any(idx == np.arange(m)[:, None]), "a row returned itself"
    # each row's own ordering is exact: descending, NaN last, ties by lower index
    got = scores.astype(np.float64)
    a, b = got[:, :-1], got[:, 1:]
    rising = idx[:, 1:] > idx[:, :-1]
    with np.errstate(invalid="ignore"):
        assert np.all(~np.isnan(a) | (np.isnan(b) & rising)), "NaN scores must come last, by index"
        assert np.all(np.isnan(a) | np.isnan(b) | (a >= b)), "scores not descending"
        assert np.all((a != b) | rising), "equal scores not ordered by lower index"
    # indices agree with the oracle wherever the float64 scores are well separated
    ref = sorted_scores
    with np.errstate(invalid="ignore"):
        close = np.abs(np.diff(ref, axis=1)) <= 2 * eps  # NaN gaps compare False: NaN order is exact
    ambiguous = np.zeros(ref.shape, dtype=bool)
    ambiguous[:, 1:] |= close
    ambiguous[:, :-1] |= close
    keep = np.ones((m, kk), dtype=bool) if exact else ~ambiguous[:, :kk]
    mismatch = (idx != order[:, :kk]) & keep
    assert not mismatch.any(), (
        f"indices differ from the oracle at (row, rank) {np.argwhere(mismatch)[:5].tolist()}: "
        f"got {idx[mismatch][:5]}, want {order[:, :kk][mismatch][:5]}"
    )


def _exact_vectors(rng, rows, d=4):
    """Rows whose cosines are exact in any precision (0, +-1/2, +-1, ...) and tie a lot.

    Axis vectors, the all-ones direction and their negatives, scaled by powers
    of two, plus zero rows: normalizing them is exact, so every backend sees
    the same exact scores.
    """
    dirs = [np.eye(d)[a] for a in range(d)] + [np.ones(d)]
    dirs += [-v for v in dirs] + [np.zeros(d)]
    pick = rng.integers(0, len(dirs), rows)
    scale = 2.0 ** rng.integers(-3, 4, rows)
    return np.array([dirs[p] for p in pick]) * scale[:, None]


# --------------------------------------------------------------------------- backends x dtypes x shapes

SHAPES = [  # (m, n, d, k)
    (1, 1, 1, 1),
    (1, 50, 8, 1),
    (7, 300, 16, 5),
    (3, 10, 4, 25),
    (12, 12, 3, 12),
    (40, 5000, 33, 10),
]


def _tiled_params():
    marks = [] if "numba" in fastsim.available_backends() else [pytest.mark.skip(reason="numba backend not available here")]
    return [*BACKENDS, pytest.param("numba-small-tiles", marks=marks, id="numba-small-tiles"), "numpy-small-blocks"]


@pytest.fixture(params=_tiled_params())
def tiled_backend(request, monkeypatch):
    """Every backend, plus the numba kernel with tiny tiles (many tiles, ragged edges, several query blocks)
    and the NumPy backend on blocks of one or a few query rows."""
    if request.param == "numpy-small-blocks":
        monkeypatch.setattr(topk_mod, "_NUMPY_BLOCK_SCORES", 700)
        return "numpy"
    if request.param == "numba-small-tiles":
        mod = importlib.import_module("fastsim._numba.topk")
        monkeypatch.setattr(mod, "CORPUS_TILE", 300)
        monkeypatch.setattr(mod, "QUERY_BLOCK", 7)
        return "numba"
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "n", "d", "k"), SHAPES)
def test_matches_full_argsort(tiled_backend, dtype, m, n, d, k, rng):
    q = rng.standard_normal((m, d)).astype(dtype)
    c = rng.standard_normal((n, d)).astype(dtype)
    scores, idx = fastsim.top_k(q, c, k, backend=tiled_backend)
    check_top_k(scores, idx, q, c, k, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "d", "k"), [(2, 3, 1), (9, 5, 3), (64, 8, 63), (64, 8, 200), (700, 12, 7)])
def test_exclude_self(tiled_backend, dtype, n, d, k, rng):
    x = rng.standard_normal((n, d)).astype(dtype)
    x[n // 2] = x[0]  # a duplicate of row 0 must still be found; only j == i is dropped
    scores, idx = fastsim.top_k(x, x, k, exclude_self=True, backend=tiled_backend)
    check_top_k(scores, idx, x, x, k, exclude_self=True, dtype=dtype)
    assert idx.shape[1] == min(k, n - 1)
    if n > 2:
        assert idx[0, 0] == n // 2 and idx[n // 2, 0] == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_exact_ties_go_to_lower_index(tiled_backend, dtype, exclude_self):
    rng = np.random.default_rng(7)
    c = _exact_vectors(rng, 650).astype(dtype)
    q = c if exclude_self else _exact_vectors(rng, 30).astype(dtype)
    for k in (1, 5, 40, 649, 650, 1000):
        scores, idx = fastsim.top_k(q, c, k, exclude_self=exclude_self, backend=tiled_backend)
        check_top_k(scores, idx, q, c, k, exclude_self=exclude_self, dtype=dtype, exact=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_order_by_hand(backend):
    corpus = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0], [4.0, 0.0], [-1.0, 0.0]])
    scores, idx = fastsim.top_k([[3.0, 0.0]], corpus, 6, backend=backend)
    np.testing.assert_array_equal(idx, [[1, 2, 4, 0, 3, 5]])
    np.testing.assert_array_equal(scores, [[1.0, 1.0, 1.0, 0.0, 0.0, -1.0]])
    scores, idx = fastsim.top_k([[3.0, 0.0]], corpus, 4, backend=backend)
    np.testing.assert_array_equal(idx, [[1, 2, 4, 0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_nan_and_inf_rows(tiled_backend, dtype, rng):
    backend = tiled_backend
    q = rng.standard_normal((6, 5)).astype(dtype)
    c = rng.standard_normal((400, 5)).astype(dtype)
    q[1] = 0
    q[2, 3] = np.nan
    q[3, 0] = np.inf
    c[10] = 0
    c[20, 1] = np.nan
    c[30, 4] = -np.inf
    for k in (3, 398, 400):
        scores, idx = fastsim.top_k(q, c, k, backend=backend)
        check_top_k(scores, idx, q, c, k, dtype=dtype)
        # a zero query scores 0 with everything: first k indices, NaN rows last
        assert np.all(scores[1][~np.isnan(scores[1])] == 0)
        # NaN and inf queries: all NaN, lowest indices first
        for i in (2, 3):
            assert np.all(np.isnan(scores[i]))
            np.testing.assert_array_equal(idx[i], np.arange(k))
    scores, idx = fastsim.top_k(q, c, 400, backend=backend)
    # the two NaN corpus rows come last for every numeric query row
    np.testing.assert_array_equal(idx[0, -2:], [20, 30])
    assert np.all(np.isnan(scores[0, -2:])) and not np.any(np.isnan(scores[0, :-2]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scores_clamped_to_one(backend, dtype):
    # identical rows: rounding may push the normalized dot past 1, and BLAS
    # may round rows differently depending on where they sit in a tile
    v = np.full((1, 97), 0.1, dtype=dtype)
    c = np.repeat(v, 50, axis=0)
    scores, idx = fastsim.top_k(v, c, 50, backend=backend)
    assert np.all(scores <= 1.0) and np.all(scores >= 1.0 - tol(dtype))
    check_top_k(scores, idx, v, c, 50, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_exactly_on_exact_data(backend):
    rng = np.random.default_rng(3)
    c = _exact_vectors(rng, 5000, d=6)
    q = _exact_vectors(rng, 50, d=6)
    want = fastsim.top_k(q, c, 17, backend="numpy")
    got = fastsim.top_k(q, c, 17, backend=backend)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# --------------------------------------------------------------------------- edges, dtypes, layout


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_edges(backend):
    c = np.ones((4, 3), dtype=np.float32)
    s, i = fastsim.top_k(np.ones((0, 3), np.float32), c, 2, backend=backend)
    assert s.shape == (0, 2) and i.shape == (0, 2) and s.dtype == np.float32
    s, i = fastsim.top_k(np.ones((2, 3)), np.ones((0, 3)), 5, backend=backend)
    assert s.shape == (2, 0) and s.dtype == np.float64 and i.dtype == np.int64
    s, i = fastsim.top_k(np.ones((1, 3)), np.ones((1, 3)), 4, exclude_self=True, backend=backend)
    assert s.shape == (1, 0)
    # d = 0: every vector is zero, so every score is 0 and the order is by index
    s, i = fastsim.top_k(np.ones((3, 0)), np.ones((5, 0)), 2, backend=backend)
    np.testing.assert_array_equal(s, np.zeros((3, 2)))
    np.testing.assert_array_equal(i, [[0, 1]] * 3)
    s, i = fastsim.top_k(np.ones((3, 0)), np.ones((3, 0)), 5, exclude_self=True, backend=backend)
    np.testing.assert_array_equal(i, [[1, 2], [0, 2], [0, 1]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_rules(backend, rng):
    q32 = rng.standard_normal((4, 6)).astype(np.float32)
    c64 = rng.standard_normal((30, 6))
    s, _ = fastsim.top_k(q32, c64, 3, backend=backend)
    assert s.dtype == np.float64
    qi = rng.integers(-5, 5, (4, 6))
    ci = rng.integers(-5, 5, (30, 6)).astype(np.int16)
    s, i = fastsim.top_k(qi, ci, 3, backend=backend)
    assert s.dtype == np.float32
    check_top_k(s, i, qi, ci, 3, dtype=np.float32)
    s, i = fastsim.top_k(qi.astype(np.float16), ci.tolist(), 3, backend=backend)
    assert s.dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend, rng):
    base_q = rng.standard_normal((10, 24))
    base_c = rng.standard_normal((300, 24))
    q = base_q[::-2, ::3]
    c = np.asfortranarray(base_c[::-1, 1::3])
    s, i = fastsim.top_k(q, c, 6, backend=backend)
    check_top_k(s, i, q, c, 6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(queries=np.ones(3)), ValueError, "queries must be 2-D"),
        (dict(corpus=np.ones((2, 2, 2))), ValueError, "corpus must be 2-D"),
        (dict(corpus=np.ones((5, 4))), ValueError, "same number of columns"),
        (dict(k=0), ValueError, "k must be >= 1"),
        (dict(k=-3), ValueError, "k must be >= 1"),
        (dict(k=2.0), TypeError, "k must be an int"),
        (dict(k=True), TypeError, "k must be an int"),
        (dict(queries=np.ones((2, 3), dtype=complex)), TypeError, "queries must hold real numbers"),
        (dict(corpus=None), TypeError, "corpus must be an array"),
        (dict(exclude_self=True), ValueError, "m == n"),
        (dict(exclude_self="yes"), TypeError, "exclude_self must be a bool"),
        (dict(backend="fast"), ValueError, "backend must be"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = dict(queries=np.ones((2, 3)), corpus=np.ones((5, 3)), k=2)
    extra = {key: kwargs.pop(key) for key in ("exclude_self", "backend") if key in kwargs}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fastsim.top_k(args["queries"], args["corpus"], args["k"], **extra)


# --------------------------------------------------------------------------- properties

_AVAILABLE = [b for b in fastsim.available_backends() if b in topk_mod._SUPPORTED]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    m=st.integers(1, 6),
    n=st.integers(1, 40),
    d=st.integers(1, 5),
    k=st.integers(1, 45),
    exclude_self=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    backend=st.sampled_from(_AVAILABLE),
)
def test_property_small_integer_vectors(data, m, n, d, k, exclude_self, dtype, backend):
    # small integers make duplicate, opposite and zero rows common: ties everywhere
    values = st.integers(-2, 2)
    c = np.array(data.draw(st.lists(st.lists(values, min_size=d, max_size=d), min_size=n, max_size=n)), dtype=dtype)
    c = c.reshape(n, d)
    if exclude_self:
        q = c
    else:
        q = np.array(data.draw(st.lists(st.lists(values, min_size=d, max_size=d), min_size=m, max_size=m)),
                     dtype=dtype).reshape(m, d)
    scores, idx = fastsim.top_k(q, c, k, exclude_self=exclude_self, backend=backend)
    check_top_k(scores, idx, q, c, k, exclude_self=exclude_self, dtype=dtype)


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="cpp backend not available here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_column_split_over_blocks_of_different_widths_repeated(dtype):
    # Few queries and a corpus wider than one packed block: the threads split
    # each block's columns, and the last block is narrower than the others, so
    # a thread reaching it first would repack panels another thread still
    # reads unless each packs into a region of its own.  A race shows up in a
    # few percent of calls: repeat.
    rng = np.random.default_rng(17)
    q = rng.standard_normal((40, 33)).astype(dtype)
    c = rng.standard_normal((5000, 33)).astype(dtype)
    full = fastsim.cosine_similarity_matrix(q.astype(np.float64), c.astype(np.float64), backend="numpy")
    want = -np.sort(-full, axis=1)[:, :10]
    old = fastsim.get_num_threads()
    fastsim.set_num_threads(2)
    try:
        for _ in range(150):
            scores, _ = fastsim.top_k(q, c, 10, backend="cpp")
            assert_close(scores, want, dtype)
            assert_close(fastsim.cosine_similarity_matrix(q, c, backend="cpp"), full, dtype)
    finally:
        fastsim.set_num_threads(old)
