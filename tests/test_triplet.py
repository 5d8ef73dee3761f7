"""Hard-negative mining and the modified triplet loss: every backend against the float64 reference.

Discrete choices (is a negative at or below the positive? which negative is
closest? is a hinge active?) flip when two float64 scores are closer than the
rounding error of the dtype under test, and float32 and float64 may then
legitimately disagree.  Random-data comparisons therefore skip such
"ambiguous" rows (see :func:`_ambiguous_rows`) and check that they are few;
exact ties are tested on data whose scores are exact in every precision.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastsim
from fastsim import triplet as T
from fastsim._reference import triplet as ref

from .conftest import DTYPES, assert_close, backend_params, tol

BACKENDS = backend_params(T._SUPPORTED)
HN_BACKENDS = backend_params(T._HARD_NEGATIVES_SUPPORTED)

# The course notebook's worked example (section 1.4) and its printed results.
SEED_SIM = np.array([
    [0.9, -0.8, 0.3, -0.5],
    [-0.4, 0.5, 0.1, -0.1],
    [0.3, 0.1, -0.4, -0.8],
    [-0.5, -0.2, -0.7, 0.5],
])
SEED_MEAN_NEG = np.array([-1 / 3, -2 / 15, -2 / 15, -7 / 15])
SEED_CLOSEST_NEG = np.array([0.3, 0.1, -0.8, -0.2])
SEED_COST = 0.51667  # printed as 0.517; the loss of row 2 is 0.51666667

# Section 1.3.2: two batches and the similarity matrix the notebook printed.
COURSE_V1 = np.array([[1.0, 2.0, 3.0], [9.0, 8.0, 7.0], [-1.0, -4.0, -2.0], [1.0, -7.0, 2.0]])
COURSE_V2 = np.array([
    [-4.16578958, 2.9674321, -0.62896203],
    [9.82422985, 6.76743218, 8.15714369],
    [2.17241552, -8.55048662, -1.32886256],
    [1.47697008, -6.61283851, 5.75044885],
])
COURSE_SIM = np.array([
    [-0.00611012, -0.25294786, -0.27296571, -0.69176758],
    [0.88454751, 0.99189309, -0.80343237, -0.1999424],
    [-0.56663032, -0.46798755, 0.84842692, 0.90554573],
    [0.16548246, 0.00519596, 0.33083789, 0.90754126],
])

MARGINS = (0.0, 0.25, 1.0)
EMPTY = ("shift", "floor")
REDUCTIONS = ("sum", "mean", "none")
# a tie closer than this may be resolved either way by the dtype under test
AMBIGUITY = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-9}


# --------------------------------------------------------------------------- data and comparisons


def _batch(rng, b, d, dtype, *, noise=1.0, flipped=0):
    """Course-style batch: v2 = v1 + noise; the first ``flipped`` rows of v2 point away from v1.

    A flipped row's positive is near -1, below every negative, so it has no
    valid negative and exercises the ``empty`` modes.
    """
    v1 = rng.standard_normal((b, d))
    v2 = v1 + noise * rng.standard_normal((b, d))
    v2[:flipped] = -v1[:flipped] + 0.05 * rng.standard_normal((flipped, d))
    return v1.astype(dtype), v2.astype(dtype)


def _reference(v1, v2, margin, empty):
    """The float64 reference on exactly the values the backend sees."""
    x1, x2 = v1.astype(np.float64), v2.astype(np.float64)
    return ref.modified_triplet_loss(x1, x2, margin, empty), ref.similarity_scores(x1, x2)


def _ambiguous_rows(sim, parts, margin, eps):
    """Rows whose result hinges on a comparison closer than ``eps``."""
    b = sim.shape[0]
    pos = np.diag(sim)
    off = ~np.eye(b, dtype=bool)
    with np.errstate(invalid="ignore"):
        near_positive = (off & (np.abs(sim - pos[:, None]) < eps)).any(axis=1)
        valid = off & (sim <= pos[:, None] + eps)
        closest = parts["closest_negative"]
        near_closest = (valid & (np.abs(sim - closest[:, None]) < eps)).sum(axis=1) > 1
        largest = np.max(np.where(off, sim, -np.inf), axis=1)
        near_largest = (off & (np.abs(sim - largest[:, None]) < eps)).sum(axis=1) > 1
        near_zero_largest = np.abs(largest) < eps  # the shift fallback's "above -2" test
        near_hinge = (np.abs(parts["mean_negative"] - pos + margin) < eps) | (np.abs(closest - pos + margin) < eps)
    no_valid = ~(off & (sim <= pos[:, None] - eps)).any(axis=1)
    return near_positive | near_closest | near_hinge | (no_valid & (near_largest | near_zero_largest))


def _check_parts(got, want, dtype, rows):
    for name in ("positive", "mean_negative", "closest_negative", "l1", "l2", "loss"):
        assert getattr(got, name).dtype == dtype, name
        assert_close(getattr(got, name)[rows], want[name][rows], dtype, err_msg=name)
    assert got.closest_index.dtype == np.int64
    np.testing.assert_array_equal(got.closest_index[rows], want["closest_index"][rows])


def _reduced(loss, reduction):
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def _separated_batch(rng, b, d, dtype, margin, empty="shift", *, eps=None, **kw):
    """A batch with no ambiguous row: discrete choices are then the same in every precision.

    ``eps`` defaults to the dtype's ambiguity; finite differences need more room.
    """
    eps = AMBIGUITY[np.dtype(dtype)] if eps is None else eps
    for _ in range(50):
        v1, v2 = _batch(rng, b, d, dtype, **kw)
        parts, sim = _reference(v1, v2, margin, empty)
        if not _ambiguous_rows(sim, parts, margin, eps).any():
            return v1, v2
    raise AssertionError("could not draw a batch without near-ties")


def _pm_one_batch(rng, b, d=4):
    """Rows of +-1: unit rows are +-1/2, every score a multiple of 1/4, exact in any precision and order.

    With d = 4 there are only five score values, so ties are everywhere.
    """
    v1 = rng.integers(0, 2, (b, d)) * 2 - 1
    v2 = rng.integers(0, 2, (b, d)) * 2 - 1
    return v1.astype(np.float64), v2.astype(np.float64)


# --------------------------------------------------------------------------- the course's numbers


@pytest.mark.parametrize("backend", HN_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("empty", EMPTY)
def test_seed_worked_example(backend, dtype, empty):
    got = fastsim.hard_negatives(SEED_SIM.astype(dtype), empty=empty, backend=backend)
    assert_close(got.positive, np.diag(SEED_SIM), dtype)
    assert_close(got.mean_negative, SEED_MEAN_NEG, dtype)
    assert_close(got.closest_negative, SEED_CLOSEST_NEG, dtype)
    np.testing.assert_array_equal(got.closest_index, [2, 2, 3, 1])
    l1 = np.maximum(got.mean_negative - got.positive + 0.25, 0)
    l2 = np.maximum(got.closest_negative - got.positive + 0.25, 0)
    assert_close(l1, [0, 0, 31 / 60, 0], dtype)  # -2/15 - (-0.4) + 0.25, printed as 0.51666667
    assert_close(l2, [0, 0, 0, 0], dtype)
    assert abs(float(np.sum(l1 + l2)) - SEED_COST) < 5e-6  # the 0.51667 of the brief, 5 digits


@pytest.mark.parametrize("empty", EMPTY)
def test_notebook_baseline_agrees_with_reference(empty):
    # the benchmarks' baseline is the notebook's computation: it must be the same loss
    rng = np.random.default_rng(1)
    v1, v2 = _separated_batch(rng, 40, 9, np.float64, 0.25, empty, noise=1.5, flipped=4)
    want = ref.modified_triplet_loss(v1, v2, 0.25, empty)["loss"].sum()
    assert_close(ref.notebook_modified_triplet_loss(v1, v2, 0.25, empty), want, np.float64, scale=40)
    if empty == "shift":
        cost, (g1, g2) = ref.notebook_value_and_grad(v1, v2, 0.25)
        w1, w2 = ref.modified_triplet_loss_grad(v1, v2, 0.25, "sum", empty)
        assert_close(cost, want, np.float64, scale=40)
        assert_close(g1, w1, np.float64, scale=10)
        assert_close(g2, w2, np.float64, scale=10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_course_batches(backend, dtype):
    """The notebook's v1, v2 and printed matrix: s[i, j] = cos(v2[i], v1[j])."""
    got = fastsim.modified_triplet_loss(COURSE_V1.astype(dtype), COURSE_V2.astype(dtype), return_parts=True,
                                        backend=backend)
    printed = 1e-7  # the notebook printed 8 decimals of v2 and of the scores
    scale = max(1.0, printed / tol(dtype))
    pos = np.diag(COURSE_SIM)
    neg = COURSE_SIM[~np.eye(4, dtype=bool)].reshape(4, 3)
    assert_close(got.positive, pos, dtype, scale=scale)
    assert_close(got.mean_negative, neg.mean(axis=1), dtype, scale=scale)
    # read off the printed matrix: the largest negative at or below each positive
    assert_close(got.closest_negative, [-0.25294786, 0.88454751, -0.46798755, 0.33083789], dtype, scale=scale)
    np.testing.assert_array_equal(got.closest_index, [1, 0, 1, 2])
    expected_cost = (-0.25294786 - pos[0] + 0.25) + (0.88454751 - pos[1] + 0.25)  # the only active hinges
    assert_close(got.cost, expected_cost, dtype, scale=4 * scale)


# --------------------------------------------------------------------------- hand-made matrices


@pytest.mark.parametrize("backend", HN_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_without_valid_negative(backend, dtype):
    sim = np.array([
        [-0.5, 0.3, 0.7],   # both negatives above: shift -> 0.7 - 2 at column 2
        [0.1, 0.9, -0.2],   # ordinary row
        [-0.3, -0.1, -0.9],  # both above, largest -0.1 < 0: shift -> the diagonal's -2
    ], dtype=dtype)
    shift = fastsim.hard_negatives(sim, empty="shift", backend=backend)
    floor = fastsim.hard_negatives(sim, empty="floor", backend=backend)
    assert_close(shift.closest_negative, [0.7 - 2, 0.1, -2], dtype)
    np.testing.assert_array_equal(shift.closest_index, [2, 0, -1])
    assert_close(floor.closest_negative, [-2, 0.1, -2], dtype)
    np.testing.assert_array_equal(floor.closest_index, [-1, 0, -1])
    assert_close(shift.mean_negative, [0.5, -0.05, -0.2], dtype)
    # the largest negative exactly 0: shifted to exactly -2, which is the constant
    zero = np.array([[-0.5, 0.0], [0.25, 0.5]], dtype=dtype)
    got = fastsim.hard_negatives(zero, backend=backend)
    assert got.closest_negative[0] == -2 and got.closest_index[0] == -1


@pytest.mark.parametrize("backend", HN_BACKENDS)
def test_ties_go_to_the_lowest_index(backend):
    sim = np.array([
        [0.5, 0.2, 0.5, 0.5],   # negatives equal to the positive count; first of them
        [0.3, 0.9, 0.3, 0.1],   # tie between columns 0 and 2
        [0.4, 0.4, -0.9, 0.2],  # no valid negative, shift tie between columns 0 and 1
        [0.0, -0.25, -0.25, 0.0],  # equal to the positive at column 0
    ])
    got = fastsim.hard_negatives(sim, backend=backend)
    np.testing.assert_array_equal(got.closest_index, [2, 0, 0, 0])
    np.testing.assert_allclose(got.closest_negative, [0.5, 0.3, 0.4 - 2, 0.0], rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", HN_BACKENDS)
def test_nan_rows(backend):
    sim = np.array([[0.5, np.nan, 0.1], [0.2, 0.6, 0.3], [0.1, 0.2, np.nan]])
    got = fastsim.hard_negatives(sim, backend=backend)
    assert np.isnan(got.mean_negative[0]) and np.isnan(got.closest_negative[0]) and got.closest_index[0] == -1
    assert np.isnan(got.closest_negative[2]) and got.closest_index[2] == -1
    assert got.mean_negative[2] == pytest.approx(0.15)
    assert got.closest_negative[1] == 0.3 and got.closest_index[1] == 2


@pytest.mark.parametrize("backend", HN_BACKENDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hard_negatives_on_a_grid(backend, data):
    # scores on a grid of quarters: exact, so ties of every kind are common and must agree exactly
    b = data.draw(st.integers(2, 12))
    sim = data.draw(hnp.arrays(np.float64, (b, b), elements=st.integers(-8, 8).map(lambda k: k / 4)))
    empty = data.draw(st.sampled_from(EMPTY))
    got = fastsim.hard_negatives(sim, empty=empty, backend=backend)
    want = ref.hard_negatives(sim, empty)
    for g, w in zip((got.positive, got.mean_negative, got.closest_negative), want[:3]):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(got.closest_index, want[3])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_cost_alone_equals_the_cost_of_the_parts(backend, dtype, reduction):
    # the cpp backend computes the cost alone in one compiled call; it must be
    # the cost the parts give, NaN rows included
    rng = np.random.default_rng(3)
    v1, v2 = _batch(rng, 40, 24, dtype, noise=1.0, flipped=3)
    for nan_row in (None, 5):
        if nan_row is not None:
            v2 = v2.copy()
            v2[nan_row, 3] = np.nan
        for margin in (0.0, 0.25, 1.5):
            for empty in EMPTY:
                cost = fastsim.modified_triplet_loss(v1, v2, margin, reduction=reduction, empty=empty,
                                                     backend=backend)
                parts = fastsim.modified_triplet_loss(v1, v2, margin, reduction=reduction, empty=empty,
                                                      return_parts=True, backend=backend)
                assert np.asarray(cost).dtype == dtype
                if nan_row is None:
                    assert_close(cost, parts.cost, dtype)
                else:
                    assert np.isnan(cost) and np.isnan(parts.cost)


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("b", [2, 7, 31, 50, 97])
def test_identical_rows_tie_with_the_positive_exactly(dtype, b):
    # Every v1 row is the same vector and so is every v2 row.  The cpp kernel
    # computes each positive with the arithmetic of the GEMM tile that holds
    # it, so every negative of a row equals its positive bit for bit and the
    # closest negative is the first column that is not the row's own.  (BLAS,
    # behind the other backends, may round columns of one row differently.)
    backend = "cpp"
    rng = np.random.default_rng(b)
    d = 37
    v1 = np.repeat(rng.standard_normal((1, d)), b, axis=0).astype(dtype)
    v2 = np.repeat(rng.standard_normal((1, d)), b, axis=0).astype(dtype)
    parts = fastsim.modified_triplet_loss(v1, v2, return_parts=True, backend=backend)
    np.testing.assert_array_equal(parts.closest_negative, parts.positive)
    np.testing.assert_array_equal(parts.closest_index, np.where(np.arange(b) == 0, 1, 0))


@pytest.mark.parametrize("backend", HN_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b", [2, 15, 17, 100, 600, 1100])
@pytest.mark.parametrize("empty", EMPTY)
def test_hard_negatives_large_with_specials(backend, dtype, b, empty):
    # quarter-grid scores (exact ties everywhere) with infinities and a NaN row;
    # b past 512 runs the compiled kernel's rows in parallel
    rng = np.random.default_rng(b)
    sim = (rng.integers(-8, 9, (b, b)) / 4).astype(dtype)
    if b > 2:
        sim[1, rng.integers(0, b, 3)] = np.inf
        sim[2, rng.integers(0, b, 3)] = -np.inf
        sim[b - 1, :] = -np.inf  # every negative -inf: closest is -inf itself
        sim[b - 1, b - 1] = 0.5
        sim[b // 2, b // 3] = np.nan
    got = fastsim.hard_negatives(sim, empty=empty, backend=backend)
    want = ref.hard_negatives(sim, empty)
    np.testing.assert_array_equal(got.positive, want[0])
    np.testing.assert_array_equal(got.closest_negative, want[2])
    np.testing.assert_array_equal(got.closest_index, want[3])
    finite = np.isfinite(want[1])
    np.testing.assert_array_equal(np.isnan(got.mean_negative), np.isnan(want[1]))
    np.testing.assert_array_equal(got.mean_negative[~finite & ~np.isnan(want[1])],
                                  want[1][~finite & ~np.isnan(want[1])])
    assert_close(got.mean_negative[finite], want[1][finite].astype(np.float64), dtype)


# --------------------------------------------------------------------------- fused loss against the reference


SHAPES = [(2, 3), (3, 4), (17, 5), (31, 20), (49, 35), (64, 128), (300, 33), (1100, 16)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("b", "d"), SHAPES, ids=[f"{b}x{d}" for b, d in SHAPES])
@pytest.mark.parametrize("empty", EMPTY)
def test_loss_matches_reference(backend, dtype, b, d, empty):
    rng = np.random.default_rng(b * 1000 + d)
    v1, v2 = _batch(rng, b, d, dtype, noise=1.5, flipped=min(3, b // 2))
    eps = AMBIGUITY[np.dtype(dtype)]
    for margin in MARGINS:
        want, sim = _reference(v1, v2, margin, empty)
        ambiguous = _ambiguous_rows(sim, want, margin, eps)
        assert ambiguous.mean() < 0.05, "the data should mostly test something"
        rows = ~ambiguous
        got = fastsim.modified_triplet_loss(v1, v2, margin, reduction="none", empty=empty, return_parts=True,
                                            backend=backend)
        _check_parts(got, want, dtype, rows)
        for reduction in REDUCTIONS:
            cost = fastsim.modified_triplet_loss(v1, v2, margin, reduction=reduction, empty=empty, backend=backend)
            assert np.asarray(cost).dtype == dtype
            if not ambiguous.any():
                # the sum adds b per-row errors; the mean divides them by b again
                scale = b if reduction == "sum" else 1.0
                assert_close(cost, _reduced(want["loss"], reduction), dtype, scale=scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("empty", EMPTY)
def test_exact_ties_match_reference(backend, empty):
    # +-1 rows: every score is exact, so ties are real ties in every backend
    rng = np.random.default_rng(7)
    for b in (2, 5, 9, 40):
        v1, v2 = _pm_one_batch(rng, b)
        v1[b // 2] = v1[0]  # a duplicate column: equal scores in every row
        want, _ = _reference(v1, v2, 0.25, empty)
        for dtype in DTYPES:
            got = fastsim.modified_triplet_loss(v1.astype(dtype), v2.astype(dtype), empty=empty, return_parts=True,
                                                backend=backend)
            _check_parts(got, want, dtype, slice(None))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_identical_vectors(backend, dtype):
    # every row the same: every score is exactly 1, each negative equals the positive
    b = 5
    v = np.ones((b, 4), dtype=dtype)
    got = fastsim.modified_triplet_loss(v, v, 0.25, return_parts=True, backend=backend)
    np.testing.assert_array_equal(got.positive, np.ones(b))
    np.testing.assert_array_equal(got.closest_negative, np.ones(b))
    np.testing.assert_array_equal(got.closest_index, [1, 0, 0, 0, 0])
    assert_close(got.mean_negative, np.ones(b), dtype)
    assert_close(got.loss, np.full(b, 0.5), dtype)
    assert_close(got.cost, 2.5, dtype)
    # cos is at its maximum: the gradient through the normalization vanishes
    g1, g2 = T.modified_triplet_loss_grad(v, v, 0.25, backend=backend)
    assert_close(g1, np.zeros_like(g1), dtype)
    assert_close(g2, np.zeros_like(g2), dtype)
    # duplicates row by row (v2 == v1): positives 1, compared with the reference
    rng = np.random.default_rng(3)
    w = rng.standard_normal((30, 8)).astype(dtype)
    want, sim = _reference(w, w, 0.25, "shift")
    got = fastsim.modified_triplet_loss(w, w, return_parts=True, backend=backend)
    _check_parts(got, want, dtype, ~_ambiguous_rows(sim, want, 0.25, AMBIGUITY[np.dtype(dtype)]))
    assert_close(got.positive, np.ones(30), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_vectors(backend, dtype):
    rng = np.random.default_rng(11)
    v1, v2 = _separated_batch(rng, 12, 6, dtype, 0.25)
    v1[2] = 0
    v2[5] = 0
    want, sim = _reference(v1, v2, 0.25, "shift")
    got = fastsim.modified_triplet_loss(v1, v2, return_parts=True, backend=backend)
    _check_parts(got, want, dtype, ~_ambiguous_rows(sim, want, 0.25, AMBIGUITY[np.dtype(dtype)]))
    assert got.positive[2] == 0 and got.positive[5] == 0
    g1, g2 = T.modified_triplet_loss_grad(v1, v2, backend=backend)
    assert np.all(g1[2] == 0) and np.all(g2[5] == 0)
    assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))
    # no columns at all: every row is the zero vector
    cost, (h1, h2) = T.value_and_grad(np.zeros((3, 0), dtype), np.zeros((3, 0), dtype), backend=backend)
    assert_close(cost, 3 * 2 * 0.25, dtype)  # every score 0: both hinges are the margin
    assert h1.shape == (3, 0) and h2.shape == (3, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_inputs(backend):
    rng = np.random.default_rng(5)
    v1, v2 = _batch(rng, 10, 4, np.float64)
    v2[3, 1] = np.nan
    loss = fastsim.modified_triplet_loss(v1, v2, reduction="none", backend=backend)
    assert np.isnan(loss[3]) and not np.isnan(np.delete(loss, 3)).any()
    v1[6, 0] = np.inf  # column 6 scores NaN for every row
    parts = fastsim.modified_triplet_loss(v1, v2, return_parts=True, backend=backend)
    assert np.isnan(parts.cost) and np.isnan(parts.loss).all()
    assert np.all(parts.closest_index == -1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_and_strided_input(backend):
    rng = np.random.default_rng(2)
    v1 = rng.integers(-5, 6, (20, 6))
    v2 = v1 + rng.integers(-2, 3, (20, 6))
    got = fastsim.modified_triplet_loss(v1, v2, return_parts=True, backend=backend)
    assert got.loss.dtype == np.float32
    want, sim = _reference(v1.astype(np.float32), v2.astype(np.float32), 0.25, "shift")
    _check_parts(got, want, np.float32, ~_ambiguous_rows(sim, want, 0.25, AMBIGUITY[np.dtype(np.float32)]))
    big = np.asfortranarray(rng.standard_normal((40, 14)))
    w1, w2 = big[::-2, ::2], big[1::2, 1::2]  # negative strides, Fortran order underneath
    assert_close(fastsim.modified_triplet_loss(w1, w2, backend=backend),
                 ref.modified_triplet_loss(np.ascontiguousarray(w1), np.ascontiguousarray(w2))["loss"].sum(),
                 np.float64, scale=20)


def test_numba_tiles_and_block_boundaries(monkeypatch):
    """Small tiles: many row blocks and column tiles, diagonals inside later tiles, fallback rows in many tiles."""
    if "numba" not in fastsim.available_backends():
        pytest.skip("numba backend not available here")
    kernels = fastsim._backend.numba_module("triplet")
    monkeypatch.setattr(kernels, "ROW_BLOCK", 8)
    monkeypatch.setattr(kernels, "COL_BLOCK", 32)
    rng = np.random.default_rng(17)
    for empty in EMPTY:
        for dtype in DTYPES:
            v1, v2 = _batch(rng, 150, 12, dtype, noise=1.5, flipped=20)
            want, sim = _reference(v1, v2, 0.25, empty)
            got = fastsim.modified_triplet_loss(v1, v2, empty=empty, return_parts=True, backend="numba")
            _check_parts(got, want, dtype, ~_ambiguous_rows(sim, want, 0.25, AMBIGUITY[np.dtype(dtype)]))
        x1, x2 = _pm_one_batch(rng, 100)
        want, _ = _reference(x1, x2, 0.25, empty)
        got = fastsim.modified_triplet_loss(x1, x2, empty=empty, return_parts=True, backend="numba")
        _check_parts(got, want, np.float64, slice(None))
    monkeypatch.setattr(kernels, "COL_BLOCK", 20)
    with pytest.raises(ValueError, match="COL_BLOCK"):
        fastsim.modified_triplet_loss(x1, x2, backend="numba")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_loss_property(backend, data):
    b = data.draw(st.integers(2, 40), label="b")
    d = data.draw(st.integers(1, 12), label="d")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    # a grid of thousandths, zero included: a float32 row much below 1e-19 has a
    # squared norm that underflows, a precision limit rather than a semantic one
    values = st.integers(-8000, 8000).map(lambda k: k / 1000)
    v1 = data.draw(hnp.arrays(dtype, (b, d), elements=values), label="v1")
    v2 = data.draw(hnp.arrays(dtype, (b, d), elements=values), label="v2")
    margin = data.draw(st.floats(-1, 2, allow_nan=False), label="margin")
    empty = data.draw(st.sampled_from(EMPTY), label="empty")
    want, sim = _reference(v1, v2, margin, empty)
    rows = ~_ambiguous_rows(sim, want, margin, AMBIGUITY[np.dtype(dtype)])
    assume(rows.any())
    got = fastsim.modified_triplet_loss(v1, v2, margin, empty=empty, return_parts=True, backend=backend)
    _check_parts(got, want, dtype, rows)
    assert np.all(got.loss[rows] >= 0)


# --------------------------------------------------------------------------- original triplet loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triplet_loss(backend, dtype):
    rng = np.random.default_rng(9)
    a, p, n = (rng.standard_normal((25, 7)).astype(dtype) for _ in range(3))
    cos = lambda x, y: np.sum(x * y, axis=-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)  # noqa: E731
    x = [v.astype(np.float64) for v in (a, p, n)]
    for margin in MARGINS:
        want = np.maximum(cos(x[0], x[2]) - cos(x[0], x[1]) + margin, 0)
        got = fastsim.triplet_loss(a, p, n, margin, reduction="none", backend=backend)
        assert got.dtype == dtype
        assert_close(got, want, dtype)
        assert_close(fastsim.triplet_loss(a, p, n, margin, backend=backend), want.sum(), dtype, scale=25)
        assert_close(fastsim.triplet_loss(a, p, n, margin, reduction="mean", backend=backend), want.mean(), dtype)
        single = fastsim.triplet_loss(a[0], p[0], n[0], margin, backend=backend)
        assert np.ndim(single) == 0
        assert_close(single, want[0], dtype)
    # the notebook's two vectors: s = 0.9974086507360697, so with N = P the loss is the margin
    v1, v2 = np.array([1, 2, 3.0]), np.array([1, 2, 3.5])
    assert fastsim.triplet_loss(v1, v2, v2, backend=backend) == pytest.approx(0.25, abs=1e-15)
    assert fastsim.triplet_loss(v1, v1, v2, backend=backend) == pytest.approx(0.9974086507360697 - 1 + 0.25,
                                                                               abs=1e-12)


# --------------------------------------------------------------------------- gradient


def _fd_grad(fn, v1, v2, h=1e-6):
    """Central finite differences of a scalar function of (v1, v2), float64."""
    grads = []
    for which in (0, 1):
        base = [v1.copy(), v2.copy()]
        g = np.zeros_like(base[which])
        for idx in np.ndindex(g.shape):
            plus = [x.copy() for x in base]
            minus = [x.copy() for x in base]
            plus[which][idx] += h
            minus[which][idx] -= h
            g[idx] = (fn(*plus) - fn(*minus)) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("empty", EMPTY)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reference_gradient_against_finite_differences(empty, reduction):
    rng = np.random.default_rng(21)
    # flipped rows put the fallback (and under "shift" its gradient) into play
    # h = 1e-6 steps must not cross a kink
    v1, v2 = _separated_batch(rng, 6, 4, np.float64, 0.6, empty, eps=1e-3, noise=1.5, flipped=2)

    def cost(a, b):
        loss = ref.modified_triplet_loss(a, b, 0.6, empty)["loss"]
        return loss.sum() if reduction == "sum" else loss.mean()

    fd1, fd2 = _fd_grad(cost, v1, v2)
    g1, g2 = ref.modified_triplet_loss_grad(v1, v2, 0.6, reduction, empty)
    assert np.abs(fd1).max() > 1e-3  # the batch has active hinges
    # central differences: truncation O(h^2) plus rounding O(eps / h) ~ 1e-10 relative
    assert_close(g1, fd1, np.float64, scale=1e4)
    assert_close(g2, fd2, np.float64, scale=1e4)


def _torch_cost(torch, v1, v2, margin, empty="shift", reduction="sum"):
    """The modified triplet loss written in PyTorch like the course's TensorFlow code."""
    v1n = v1 / v1.norm(dim=1, keepdim=True)
    v2n = v2 / v2.norm(dim=1, keepdim=True)
    sim = v2n @ v1n.T
    b = sim.shape[0]
    pos = torch.diagonal(sim)
    eye = torch.eye(b, dtype=torch.bool)
    sim_an = sim.masked_fill(eye, 0.0)
    mean_neg = sim_an.sum(dim=1) / (b - 1)
    mask = eye | (sim_an > pos[:, None])
    if empty == "shift":
        masked = sim_an - 2.0 * mask.to(sim.dtype)
    else:
        masked = sim_an.masked_fill(mask, -2.0)
    closest = masked.max(dim=1).values
    loss = torch.relu(mean_neg - pos + margin) + torch.relu(closest - pos + margin)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("empty", EMPTY)
@pytest.mark.parametrize(("b", "d"), [(2, 3), (9, 5), (64, 32)])
def test_gradient_matches_reference_and_torch(backend, dtype, empty, b, d):
    rng = np.random.default_rng(b + d)
    v1, v2 = _separated_batch(rng, b, d, dtype, 0.25, empty, noise=1.5, flipped=min(2, b - 1))
    x1, x2 = v1.astype(np.float64), v2.astype(np.float64)
    for reduction in ("sum", "mean"):
        cost, (g1, g2) = T.value_and_grad(v1, v2, 0.25, reduction=reduction, empty=empty, backend=backend)
        assert g1.dtype == dtype and g2.dtype == dtype and g1.shape == v1.shape
        w1, w2 = ref.modified_triplet_loss_grad(x1, x2, 0.25, reduction, empty)
        # entries of the gradient are sums of b terms of size ~1/|x|
        assert_close(g1, w1, dtype, scale=10)
        assert_close(g2, w2, dtype, scale=10)
        h1, h2 = T.modified_triplet_loss_grad(v1, v2, 0.25, reduction=reduction, empty=empty, backend=backend)
        np.testing.assert_array_equal(h1, g1)
        np.testing.assert_array_equal(h2, g2)
    torch = pytest.importorskip("torch")
    t1 = torch.tensor(x1, requires_grad=True)
    t2 = torch.tensor(x2, requires_grad=True)
    _torch_cost(torch, t1, t2, 0.25, empty).backward()
    _, (g1, g2) = T.value_and_grad(v1, v2, 0.25, empty=empty, backend=backend)
    assert_close(g1, t1.grad.numpy(), dtype, scale=10)
    assert_close(g2, t2.grad.numpy(), dtype, scale=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hinge_at_exactly_zero_has_zero_gradient(backend):
    # s = identity: positives 1, negatives 0, so margin 1 puts both hinges exactly at 0
    v = np.eye(3)
    cost, (g1, g2) = T.value_and_grad(v, v, 1.0, backend=backend)
    assert cost == 0
    assert np.all(g1 == 0) and np.all(g2 == 0)
    _, (g1, g2) = T.value_and_grad(v, v, 1.0 + 1e-3, backend=backend)
    w1, w2 = ref.modified_triplet_loss_grad(v, v, 1.0 + 1e-3)
    assert np.abs(w1).max() > 0.1
    assert_close(g1, w1, np.float64)
    assert_close(g2, w2, np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_exact_ties(backend):
    rng = np.random.default_rng(4)
    v1, v2 = _pm_one_batch(rng, 12)
    for empty in EMPTY:
        _, (g1, g2) = T.value_and_grad(v1, v2, 0.3, empty=empty, backend=backend)
        w1, w2 = ref.modified_triplet_loss_grad(v1, v2, 0.3, "sum", empty)
        assert_close(g1, w1, np.float64, scale=10)
        assert_close(g2, w2, np.float64, scale=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_weights(backend):
    # the kernels' vector-Jacobian product: sum_i w_i loss_i, as fastsim.torch uses it
    rng = np.random.default_rng(8)
    v1, v2 = _separated_batch(rng, 10, 6, np.float64, 0.25, noise=1.5, flipped=2)
    parts = fastsim.modified_triplet_loss(v1, v2, return_parts=True, backend=backend)
    weights = rng.uniform(-1, 2, 10)
    a1, a2 = (parts.l1 > 0).astype(np.uint8), (parts.l2 > 0).astype(np.uint8)
    g1, g2 = T._backward(backend, v1, v2, parts.closest_index, a1, a2, weights)
    w1, w2 = ref.triplet_backward(v1, v2, parts.closest_index, a1, a2, weights)
    assert_close(g1, w1, np.float64, scale=10)
    assert_close(g2, w2, np.float64, scale=10)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend):
    v = np.ones((4, 3))
    with pytest.raises(ValueError, match="batch size"):
        fastsim.modified_triplet_loss(v[:1], v[:1], backend=backend)
    with pytest.raises(ValueError, match="batch size"):
        T.value_and_grad(v[:1], v[:1], backend=backend)
    with pytest.raises(ValueError, match="batch size"):
        fastsim.hard_negatives(np.ones((1, 1)), backend=backend)
    with pytest.raises(ValueError, match="v1 and v2 must have the same shape"):
        fastsim.modified_triplet_loss(v, np.ones((4, 2)), backend=backend)
    with pytest.raises(ValueError, match="v1 must be 2-D"):
        fastsim.modified_triplet_loss(np.ones(3), np.ones(3), backend=backend)
    for margin in (np.nan, np.inf):
        with pytest.raises(ValueError, match="margin must be finite"):
            fastsim.modified_triplet_loss(v, v, margin, backend=backend)
        with pytest.raises(ValueError, match="margin must be finite"):
            fastsim.triplet_loss(v, v, v, margin, backend=backend)
    with pytest.raises(TypeError, match="margin must be a real number"):
        fastsim.modified_triplet_loss(v, v, "0.25", backend=backend)
    with pytest.raises(ValueError, match="reduction must be one of"):
        fastsim.modified_triplet_loss(v, v, reduction="max", backend=backend)
    with pytest.raises(ValueError, match="empty must be one of"):
        fastsim.modified_triplet_loss(v, v, empty="zero", backend=backend)
    with pytest.raises(ValueError, match="reduction='none'"):
        fastsim.modified_triplet_loss_grad(v, v, reduction="none", backend=backend)
    with pytest.raises(TypeError, match="return_parts must be a bool"):
        fastsim.modified_triplet_loss(v, v, return_parts=1, backend=backend)
    with pytest.raises(TypeError, match="v2 must hold real numbers"):
        fastsim.modified_triplet_loss(v, v.astype(complex), backend=backend)
    with pytest.raises(ValueError, match="sim must be a square"):
        fastsim.hard_negatives(np.ones((3, 4)), backend=backend)
    with pytest.raises(ValueError, match="anchor, positive and negative must have the same shape"):
        fastsim.triplet_loss(v, v, v[:2], backend=backend)


def test_unsupported_backend():
    with pytest.raises(ValueError, match="backend"):
        fastsim.modified_triplet_loss(np.ones((2, 2)), np.ones((2, 2)), backend="gpu")


def test_internal_forward_contract():
    """``_forward(be, v1, v2, empty_code)``, the slot every kernel fills, on each supported backend."""
    avail = [be for be in T._SUPPORTED if be in fastsim.available_backends()]
    rng = np.random.default_rng(12)
    v1, v2 = _separated_batch(rng, 20, 8, np.float64, 0.25, noise=1.5, flipped=3)
    want = ref.triplet_forward(v1, v2, "floor")
    for be in avail:
        out = T._forward(be, v1, v2, 1)
        assert len(out) == 4 and out[3].dtype == np.int64
        for g, w in zip(out, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- large batches


@pytest.mark.slow
def test_large_batch_streams():
    """b = 65536: the (b, b) matrix would take 16 GiB in float32; check a sample of rows."""
    if "numba" not in fastsim.available_backends():
        pytest.skip("numba backend not available here")
    b, d = 65536, 4
    rng = np.random.default_rng(0)
    v1, v2 = _batch(rng, b, d, np.float32, noise=0.5)
    got = fastsim.modified_triplet_loss(v1, v2, return_parts=True, backend="numba")
    rows = rng.choice(b, 24, replace=False)
    x1 = v1.astype(np.float64)
    u1 = x1 / np.linalg.norm(x1, axis=1, keepdims=True)
    x2 = v2[rows].astype(np.float64)
    s = (x2 / np.linalg.norm(x2, axis=1, keepdims=True)) @ u1.T  # 24 full rows of the matrix
    pos = s[np.arange(24), rows]
    s[np.arange(24), rows] = np.nan
    mean = np.nansum(s, axis=1) / (b - 1)
    with np.errstate(invalid="ignore"):
        valid = s <= pos[:, None]
        # with 65535 negatives a few sit within float32 rounding of the positive or of each other
        clear = ~(np.abs(s - pos[:, None]) < 1e-6).any(axis=1)
    closest = np.max(np.where(valid, s, -np.inf), axis=1)
    near = np.abs(np.where(valid, s, -np.inf) - closest[:, None]) < 1e-6
    assert clear.sum() >= 12
    assert_close(got.positive[rows], pos, np.float32)
    assert_close(got.mean_negative[rows], mean, np.float32)
    assert_close(got.closest_negative[rows][clear], closest[clear], np.float32)
    assert all(near[r, got.closest_index[i]] for r, i in enumerate(rows) if clear[r])


# --------------------------------------------------------------------------- fastsim.torch


def test_import_fastsim_does_not_import_torch():
    code = "import sys, fastsim, fastsim.triplet; assert 'torch' not in sys.modules"
    package_root = os.path.dirname(os.path.dirname(fastsim.__file__))
    env = dict(os.environ, PYTHONPATH=package_root)
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_auto_backend_without_numba():
    # a machine without numba falls back on the reference (or the compiled kernels)
    code = ("import numpy as np, fastsim; assert 'numba' not in fastsim.available_backends(); "
            "v = np.random.default_rng(0).standard_normal((6, 3)); "
            "print(repr(float(fastsim.modified_triplet_loss(v, v[::-1] + 1))))")
    package_root = os.path.dirname(os.path.dirname(fastsim.__file__))
    env = dict(os.environ, PYTHONPATH=package_root, FASTSIM_DISABLE_NUMBA="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    v = np.random.default_rng(0).standard_normal((6, 3))
    want = ref.modified_triplet_loss(v, v[::-1] + 1)["loss"].sum()
    assert abs(float(out.stdout) - want) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("empty", EMPTY)
def test_torch_module_forward_and_backward(backend, empty):
    torch = pytest.importorskip("torch")
    from fastsim.torch import ModifiedTripletLoss

    rng = np.random.default_rng(31)
    v1, v2 = _separated_batch(rng, 16, 8, np.float64, 0.25, empty, noise=1.5, flipped=2)
    for reduction in REDUCTIONS:
        t1 = torch.tensor(v1, requires_grad=True)
        t2 = torch.tensor(v2, requires_grad=True)
        s1 = torch.tensor(v1, requires_grad=True)
        s2 = torch.tensor(v2, requires_grad=True)
        loss_fn = ModifiedTripletLoss(0.25, reduction=reduction, empty=empty, backend=backend)
        out = loss_fn(t1, t2)
        expected = _torch_cost(torch, s1, s2, 0.25, empty, reduction)
        assert out.shape == expected.shape and out.dtype == torch.float64
        assert_close(out.detach().numpy(), expected.detach().numpy(), np.float64, scale=10)
        # a non-uniform upstream gradient exercises the per-row weights of reduction="none"
        if reduction == "none":
            upstream = torch.linspace(-1, 2, 16, dtype=torch.float64)
        else:
            upstream = torch.tensor(1.7, dtype=torch.float64)
        out.backward(upstream)
        expected.backward(upstream)
        assert_close(t1.grad.numpy(), s1.grad.numpy(), np.float64, scale=10)
        assert_close(t2.grad.numpy(), s2.grad.numpy(), np.float64, scale=10)


def test_torch_float32_and_gradcheck():
    torch = pytest.importorskip("torch")
    from fastsim.torch import modified_triplet_loss

    rng = np.random.default_rng(6)
    v1, v2 = _separated_batch(rng, 7, 5, np.float64, 0.25, eps=1e-3, noise=1.5, flipped=1)
    t1 = torch.tensor(v1, requires_grad=True)
    t2 = torch.tensor(v2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: modified_triplet_loss(a, b, 0.25), (t1, t2), eps=1e-6)
    f1 = torch.tensor(v1, dtype=torch.float32, requires_grad=True)
    f2 = torch.tensor(v2, dtype=torch.float32)
    out = modified_triplet_loss(f1, f2)
    out.backward()
    assert out.dtype == torch.float32 and f1.grad.dtype == torch.float32 and f2.grad is None


def test_torch_training_loop():
    torch = pytest.importorskip("torch")
    from fastsim.torch import ModifiedTripletLoss

    torch.manual_seed(0)
    encoder = torch.nn.Linear(12, 6, dtype=torch.float64)
    reference_encoder = torch.nn.Linear(12, 6, dtype=torch.float64)
    reference_encoder.load_state_dict(encoder.state_dict())
    loss_fn = ModifiedTripletLoss(margin=0.25)
    opt = torch.optim.SGD(encoder.parameters(), lr=0.05)
    ref_opt = torch.optim.SGD(reference_encoder.parameters(), lr=0.05)
    q1 = torch.randn(32, 12, dtype=torch.float64)
    q2 = q1 + 0.8 * torch.randn(32, 12, dtype=torch.float64)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        ref_opt.zero_grad()
        loss = loss_fn(encoder(q1), encoder(q2))
        ref_loss = _torch_cost(torch, reference_encoder(q1), reference_encoder(q2), 0.25)
        loss.backward()
        ref_loss.backward()
        # the same step as autograd through the same formula in PyTorch
        assert abs(loss.item() - ref_loss.item()) < 1e-10
        for p, q in zip(encoder.parameters(), reference_encoder.parameters()):
            assert_close(p.grad.numpy(), q.grad.numpy(), np.float64, scale=100)
        opt.step()
        ref_opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
