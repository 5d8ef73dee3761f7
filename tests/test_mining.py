"""Corpus mining: range search, duplicate groups and paraphrase mining against a float64 dense oracle.

Pairs near the threshold: a backend computes each score in the input dtype,
within ``tol(dtype)`` of the float64 score (checked below), and keeps it when
that score reaches the threshold.  So a pair whose float64 score lies within
``tol(dtype)`` of the threshold may be on either side; every other pair must
be decided exactly as the oracle decides it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given
from hypothesis import strategies as st

import fastsim
from fastsim import mining

from .conftest import DTYPES, assert_close, backend_params, tol

BACKENDS = backend_params(mining._SUPPORTED)


# --------------------------------------------------------------------------- oracle and data


def _unit(a):
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        peak = np.max(np.abs(a), axis=1, initial=0)
        a = a / np.where(peak == 0, 1.0, peak)[:, None]
        n = np.linalg.norm(a, axis=1)
        return a / np.where(n == 0, 1.0, n)[:, None]


def _dense(q, c):
    with np.errstate(invalid="ignore"):
        return np.clip(_unit(q) @ _unit(c).T, -1.0, 1.0)


def planted(n, d, dups, rng, noise=0.3, dtype=np.float32):
    """Random rows plus ``dups`` noisy copies of earlier rows: scores spread around the usual thresholds."""
    x = rng.standard_normal((n, d))
    src = rng.integers(0, n, size=dups)
    dst = rng.choice(n, size=dups, replace=False)
    scale = rng.uniform(0.0, noise, size=(dups, 1))
    x[dst] = x[src] + scale * rng.standard_normal((dups, d)) * np.linalg.norm(x[src], axis=1, keepdims=True) / np.sqrt(d)
    return x.astype(dtype)


def check_pairs(indptr, indices, scores, q, c, threshold, *, mode, dtype, max_per_row=None):
    """Everything the contract says about a range-search result (mode 0 all, 1 exclude self, 2 upper)."""
    s = _dense(q, c)
    m, n = s.shape
    assert indptr.shape == (m + 1,) and indptr[0] == 0 and np.all(np.diff(indptr) >= 0)
    assert indices.size == scores.size == indptr[-1]
    assert scores.dtype == np.dtype(dtype)
    band = tol(dtype)
    i_idx = np.repeat(np.arange(m), np.diff(indptr))
    if indices.size:
        assert indices.min() >= 0 and indices.max() < n
    # scores are those of their pairs
    assert_close(scores, s[i_idx, indices], dtype, err_msg="score of returned pair")
    # every returned score reaches the threshold as computed (exact comparison in the dtype)
    assert np.all(scores.astype(np.float64) >= threshold)
    if mode == 1:
        assert not np.any(indices == i_idx)
    if mode == 2:
        assert np.all(indices > i_idx)
    # rows best first, equal scores by ascending index; no repeats
    for i in range(m):
        lo, hi = indptr[i], indptr[i + 1]
        row_s = scores[lo:hi].astype(np.float64)
        row_j = indices[lo:hi]
        assert np.unique(row_j).size == row_j.size
        if hi - lo > 1:
            assert np.all((row_s[:-1] > row_s[1:]) | ((row_s[:-1] == row_s[1:]) & (row_j[:-1] < row_j[1:]))), i
    # the set of pairs: exact outside the rounding band
    allowed = np.ones_like(s, dtype=bool)
    if mode == 1:
        allowed[np.arange(min(m, n)), np.arange(min(m, n))] = False
    if mode == 2:
        allowed = np.triu(allowed, 1)
    with np.errstate(invalid="ignore"):
        sure_in = (s >= threshold + band) & allowed
        maybe = (np.abs(s - threshold) <= band) & allowed
    got = np.zeros_like(allowed)
    got[i_idx, indices] = True
    if max_per_row is None:
        assert np.all(got[sure_in]), "a pair clearly above the threshold is missing"
        assert not np.any(got & ~(sure_in | maybe)), "a pair clearly below the threshold was returned"
    else:
        counts = np.diff(indptr)
        assert counts.max(initial=0) <= max_per_row
        # each row holds the best ones: its count is min(max_per_row, qualifying), and nothing
        # clearly better than its worst kept entry is missing
        for i in range(m):
            lo, hi = indptr[i], indptr[i + 1]
            n_sure = int(sure_in[i].sum())
            n_maybe = int((sure_in[i] | maybe[i]).sum())
            assert min(max_per_row, n_sure) <= hi - lo <= min(max_per_row, n_maybe)
            if hi - lo == max_per_row:
                worst = float(scores[hi - 1])
                better = sure_in[i] & (s[i] > worst + 2 * band)
                assert np.all(got[i][better])


# --------------------------------------------------------------------------- range search


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 13, 5), (60, 50, 16), (257, 130, 33)])
def test_range_search_against_oracle(backend, dtype, shape, rng):
    m, n, d = shape
    c = planted(n, d, max(1, n // 4), rng, dtype=dtype)
    q = np.concatenate([c[: m // 2], rng.standard_normal((m - m // 2, d)).astype(dtype)])
    for threshold in (0.9, 0.5, 0.0, -1.0):
        ip, ix, sc = fastsim.range_search(q, c, threshold, output="arrays", backend=backend)
        check_pairs(ip, ix, sc, q, c, threshold, mode=0, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d", [(2, 4), (31, 7), (200, 24), (2100, 8)])
def test_self_join_against_oracle(backend, dtype, n, d, rng):
    x = planted(n, d, n // 3, rng, dtype=dtype)
    for threshold in (0.95, 0.7):
        csr = fastsim.range_search(x, threshold=threshold, backend=backend)
        assert isinstance(csr, scipy.sparse.csr_matrix) and csr.shape == (n, n)
        check_pairs(csr.indptr, csr.indices, csr.data, x, x, threshold, mode=2, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_exclude_self_and_max_per_row(backend, dtype, rng):
    x = planted(150, 12, 60, rng, dtype=dtype)
    ip, ix, sc = fastsim.range_search(x, x, 0.6, exclude_self=True, output="arrays", backend=backend)
    check_pairs(ip, ix, sc, x, x, 0.6, mode=1, dtype=dtype)
    for cap in (1, 3):
        ip, ix, sc = fastsim.range_search(x, x, 0.3, exclude_self=True, max_per_row=cap, output="arrays",
                                          backend=backend)
        check_pairs(ip, ix, sc, x, x, 0.3, mode=1, dtype=dtype, max_per_row=cap)
        csr = fastsim.range_search(x, threshold=0.3, max_per_row=cap, backend=backend)
        check_pairs(csr.indptr, csr.indices, csr.data, x, x, 0.3, mode=2, dtype=dtype, max_per_row=cap)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_reference_backend_within_band(backend, rng):
    x = planted(300, 16, 100, rng, dtype=np.float64)
    a = fastsim.range_search(x, threshold=0.8, backend=backend)
    b = fastsim.range_search(x, threshold=0.8, backend="numpy")
    assert (a != b).nnz == 0 or np.abs((a - b).data).max() < 1e-12


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="cpp backend not available")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpp_scores_bitwise_those_of_the_cosine_matrix(dtype, rng):
    # every row in full-tile order: m a multiple of the micro-tile height
    mr = fastsim._backend.core().micro_tile(np.dtype(dtype) == np.float64)[0]
    n = 40 * mr
    x = planted(n, 48, n // 2, rng, dtype=dtype)
    S = fastsim.cosine_similarity_matrix(x, x, backend="cpp")
    csr = fastsim.range_search(x, threshold=0.5, backend="cpp")
    rows = np.repeat(np.arange(n), np.diff(csr.indptr))
    np.testing.assert_array_equal(csr.data, S[rows, csr.indices])
    # and the same pairs as thresholding that matrix in its dtype
    thr = mining._round_up(0.5, dtype)
    want = np.triu(S >= thr, 1)
    got = np.zeros_like(want)
    got[rows, csr.indices] = True
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="cpp backend not available")
@pytest.mark.parametrize("level", fastsim.simd_levels() or ["none"])
def test_cpp_every_simd_level(level, rng):
    x = planted(500, 40, 200, rng)
    before = fastsim.info()["simd_level"]
    fastsim.set_simd_level(level)
    try:
        csr = fastsim.range_search(x, threshold=0.7, backend="cpp")
        ip, ix, sc = fastsim.range_search(x[:77], x, 0.7, exclude_self=False, max_per_row=2, output="arrays",
                                          backend="cpp")
    finally:
        fastsim.set_simd_level(before)
    check_pairs(csr.indptr, csr.indices, csr.data, x, x, 0.7, mode=2, dtype=np.float32)
    check_pairs(ip, ix, sc, x[:77], x, 0.7, mode=0, dtype=np.float32, max_per_row=2)


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="cpp backend not available")
@pytest.mark.parametrize("level", fastsim.simd_levels() or ["none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_self_top_k_is_top_k_bitwise(level, dtype, rng):
    # top_k(x, x) multiplies each pair once (topk_self.hpp); the result must be
    # exactly that of the general kernel, which gets a copy of x as the corpus
    core = fastsim._backend.core()
    before = fastsim.info()["simd_level"]
    fastsim.set_simd_level(level)
    try:
        for n, d, k, ex in [(1, 3, 1, False), (7, 5, 3, True), (100, 16, 5, True), (2047, 33, 10, True),
                            (4100, 20, 7, False), (2200, 64, 40, True)]:
            x = rng.standard_normal((n, d)).astype(dtype)
            x[n // 3] = x[n // 2]  # ties
            if n > 10:
                x[5] = 0.0
                x[8, 0] = np.nan
            s1, i1 = core.top_k(x, x.copy(), k, ex)
            s2, i2 = fastsim.top_k(x, x, k, exclude_self=ex, backend="cpp")
            np.testing.assert_array_equal(s1, s2)
            np.testing.assert_array_equal(i1, i2)
        ones = np.ones((500, 8), dtype)
        s1, i1 = core.top_k(ones, ones.copy(), 10, True)
        s2, i2 = fastsim.top_k(ones, ones, 10, exclude_self=True, backend="cpp")
        np.testing.assert_array_equal(i1, i2)
    finally:
        fastsim.set_simd_level(before)


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="cpp backend not available")
def test_blocking_does_not_change_the_result(rng):
    # the cpp kernel sums every row in one order wherever its block starts
    # (the BLAS behind the numpy and numba backends makes no such promise)
    backend = "cpp"
    x = planted(700, 20, 300, rng)
    whole = fastsim.range_search(x, threshold=0.6, output="arrays", backend=backend)
    for block_rows in (6, 100, 2040):
        part = fastsim.range_search(x, threshold=0.6, output="arrays", block_rows=block_rows, backend=backend)
        for a, b in zip(whole, part):
            np.testing.assert_array_equal(a, b)


def test_special_rows(rng):
    x = rng.standard_normal((10, 6)).astype(np.float32)
    x[2] = 0.0
    x[5, 3] = np.nan
    x[7] = x[1] * 1e30  # far outside float32's safe range for squares: rescaled, still cosine 1
    x[8] = x[1] * 1e-30
    for be in fastsim.available_backends():
        csr = fastsim.range_search(x, threshold=0.999, backend=be)
        pairs = {(int(i), int(j)) for i, j in zip(*csr.nonzero())}
        assert {(1, 7), (1, 8), (7, 8)} <= pairs, be
        assert not any(5 in p or 2 in p for p in pairs), be
        # the zero row scores 0 with everything (in at threshold 0); the NaN row is never in
        for thr in (0.0, -1.0):
            ip, ix, sc = fastsim.range_search(x, threshold=thr, output="arrays", backend=be)
            rows = np.repeat(np.arange(10), np.diff(ip))
            assert 5 not in rows and 5 not in ix, be
            assert sorted(ix[rows == 2]) == [3, 4, 6, 7, 8, 9], be
            assert np.all(sc[rows == 2] == 0), be


def test_integer_and_noncontiguous_input(rng):
    x = rng.integers(-3, 4, size=(40, 9))
    csr = fastsim.range_search(x, threshold=0.5)
    assert csr.dtype == np.float32
    check_pairs(csr.indptr, csr.indices, csr.data, x, x, 0.5, mode=2, dtype=np.float32)
    y = np.asfortranarray(rng.standard_normal((30, 9)))[::-1]
    ip, ix, sc = fastsim.range_search(y, x.astype(np.float64), 0.2, output="arrays")
    check_pairs(ip, ix, sc, y, x, 0.2, mode=0, dtype=np.float64)


def test_zero_columns_and_empty():
    x = np.zeros((4, 0), np.float32)
    csr = fastsim.range_search(x, threshold=0.0)
    assert csr.nnz == 6  # every pair scores 0
    assert fastsim.range_search(x, threshold=0.5).nnz == 0
    e = np.zeros((0, 3))
    assert fastsim.range_search(e, threshold=0.5).shape == (0, 0)
    ip, ix, sc = fastsim.range_search(e, np.ones((2, 3)), 0.5, output="arrays")
    assert ip.tolist() == [0] and ix.size == 0


@pytest.mark.skipif(pytest.importorskip("faiss", reason="faiss not installed") is None, reason="faiss")
def test_against_faiss_range_search(rng):
    import faiss

    x = planted(800, 32, 300, rng)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(32)
    index.add(u)
    thr = 0.8
    lims, D, I = index.range_search(u, thr)
    band = 1e-5
    got = fastsim.range_search(x, x, thr, exclude_self=True)
    s = _dense(x, x)
    for i in range(0, 800, 7):
        f = {int(j) for j in I[lims[i]:lims[i + 1]] if j != i and abs(s[i, j] - thr) > band}
        g = {int(j) for j in got.indices[got.indptr[i]:got.indptr[i + 1]] if abs(s[i, j] - thr) > band}
        assert f == g, i


# --------------------------------------------------------------------------- every pair passes, limits


def test_every_pair_passes_returns_every_pair():
    x = np.ones((300, 8), np.float32)
    csr = fastsim.range_search(x, threshold=0.99)
    assert csr.nnz == 300 * 299 // 2
    assert np.all(np.abs(csr.data - 1.0) <= tol(np.float32))
    # ties: ascending column within each row
    assert np.all(np.diff(csr.indices[csr.indptr[0]:csr.indptr[1]]) > 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_pair_passes_stops_cleanly_at_max_pairs(backend):
    x = np.ones((3000, 8), np.float32)
    with pytest.raises(mining.TooManyPairsError, match=r"more than 10000 pairs.*max_pairs=10000"):
        fastsim.range_search(x, threshold=0.5, max_pairs=10_000, backend=backend)
    with pytest.raises(mining.TooManyPairsError, match="max_memory"):
        fastsim.range_search(x, threshold=0.5, max_memory="1MiB", backend=backend)
    # exactly at the limit is fine
    y = np.ones((20, 4))
    assert fastsim.range_search(y, threshold=0.5, max_pairs=190, backend=backend).nnz == 190
    with pytest.raises(mining.TooManyPairsError):
        fastsim.range_search(y, threshold=0.5, max_pairs=189, backend=backend)
    # max_per_row keeps the result small
    csr = fastsim.range_search(x, threshold=0.5, max_per_row=2, max_pairs=10_000, backend=backend)
    assert csr.nnz == 2 * 2998 + 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("threshold,exc,match", [
    (float("nan"), ValueError, "threshold.*NaN"),
    (1.5, ValueError, r"threshold must lie within \[-1, 1\]"),
    (-1.01, ValueError, "threshold"),
    (float("inf"), ValueError, "threshold"),
    ("0.9", TypeError, "threshold must be a real number"),
    (True, TypeError, "threshold"),
    (None, TypeError, "threshold is required"),
])
def test_bad_threshold(threshold, exc, match):
    x = np.ones((3, 2))
    with pytest.raises(exc, match=match):
        fastsim.range_search(x, threshold=threshold)
    with pytest.raises(exc, match=match.split(".*")[0].split(" ")[0]):
        fastsim.duplicate_groups(x, threshold)


def test_bad_options():
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match="max_per_row must be >= 1"):
        fastsim.range_search(x, threshold=0.5, max_per_row=0)
    with pytest.raises(TypeError, match="max_per_row must be an int"):
        fastsim.range_search(x, threshold=0.5, max_per_row=1.5)
    with pytest.raises(ValueError, match="max_pairs must be >= 1"):
        fastsim.range_search(x, threshold=0.5, max_pairs=0)
    with pytest.raises(ValueError, match="max_memory"):
        fastsim.range_search(x, threshold=0.5, max_memory="lots")
    with pytest.raises(ValueError, match="output must be one of"):
        fastsim.range_search(x, threshold=0.5, output="dense")
    with pytest.raises(ValueError, match="same number of columns"):
        fastsim.range_search(x, np.ones((3, 3)), 0.5)
    with pytest.raises(ValueError, match="exclude_self=True needs"):
        fastsim.range_search(x, np.ones((4, 2)), 0.5, exclude_self=True)
    with pytest.raises(ValueError, match="queries must be 2-D"):
        fastsim.range_search(np.ones(3), threshold=0.5)
    with pytest.raises(TypeError, match="queries must hold real numbers"):
        fastsim.range_search(np.ones((3, 2), complex), threshold=0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        fastsim.duplicate_groups(x, 0.5, method="louvain")
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        fastsim.paraphrase_mining(x, top_k=0)


def test_bad_memmap(tmp_path):
    path = tmp_path / "x.dat"
    np.arange(24, dtype=np.int32).tofile(path)
    mm = np.memmap(path, dtype=np.int32, mode="r", shape=(6, 4))
    with pytest.raises(TypeError, match="queries is a memmap of dtype int32"):
        fastsim.range_search(mm, threshold=0.5)
    flat = np.memmap(path, dtype=np.float32, mode="r")
    with pytest.raises(ValueError, match=r"corpus is a memmap of shape \(24,\); it must be 2-D"):
        fastsim.range_search(np.ones((2, 4), np.float32), flat, 0.5)


# --------------------------------------------------------------------------- beyond memory


def test_memmap_and_blocks_equal_in_memory(tmp_path, rng):
    x = planted(5000, 16, 1500, rng)
    path = tmp_path / "corpus.f32"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    want = fastsim.range_search(x, threshold=0.8, output="arrays")
    # a memmap read 2040 rows at a time (max_memory bounds the blocks)
    got = fastsim.range_search(mm, threshold=0.8, output="arrays", max_memory=4 * 2040 * 16 * 4)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    # a list of uneven blocks
    cuts = [0, 7, 1000, 1001, 3333, 5000]
    blocks = [x[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    got = fastsim.range_search(blocks, threshold=0.8, output="arrays")
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    # queries in memory against a one-shot generator of corpus blocks
    want_q = fastsim.range_search(x[:300], x, 0.8, exclude_self=False, output="arrays")
    got_q = fastsim.range_search(x[:300], (b for b in blocks), 0.8, output="arrays")
    for a, b in zip(want_q, got_q):
        np.testing.assert_array_equal(a, b)
    # with max_per_row across corpus blocks
    want_c = fastsim.range_search(x[:300], x, 0.3, max_per_row=3, output="arrays")
    got_c = fastsim.range_search(x[:300], mm, 0.3, max_per_row=3, max_memory=4 * 2040 * 16 * 4, output="arrays")
    for a, b in zip(want_c, got_c):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="one-shot iterator"):
        fastsim.range_search((b for b in blocks), threshold=0.8)


def test_stream_to_caller_and_to_disk(tmp_path, rng):
    x = planted(3000, 12, 900, rng)
    want = fastsim.range_search(x, threshold=0.85, output="arrays")
    seen_rows = 0
    idx, sc = [], []
    for r0, ip, ix, s in mining.iter_range_search(x, threshold=0.85, block_rows=600):
        assert r0 == seen_rows
        seen_rows += ip.size - 1
        idx.append(ix)
        sc.append(s)
    assert seen_rows == 3000
    np.testing.assert_array_equal(np.concatenate(idx), want[1])
    np.testing.assert_array_equal(np.concatenate(sc), want[2])
    ip, ix, s = fastsim.range_search(x, threshold=0.85, out=tmp_path / "pairs", block_rows=600)
    assert isinstance(ix, np.memmap)
    for a, b in zip(want, (ip, ix, s)):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path / "pairs")) == ["indices.npy", "indptr.npy", "scores.npy"]


def test_progress_bar(capsys, rng):
    pytest.importorskip("tqdm")
    x = planted(500, 8, 100, rng)
    a = fastsim.range_search(x, threshold=0.9, progress=True, block_rows=120)
    b = fastsim.range_search(x, threshold=0.9, progress=False)
    assert (a != b).nnz == 0
    assert "range_search" in capsys.readouterr().err
    with pytest.raises(TypeError, match="progress must be a bool"):
        fastsim.range_search(x, threshold=0.9, progress="yes")


# --------------------------------------------------------------------------- groups and best pairs


def _components_oracle(x, threshold):
    s = _dense(x, x) >= threshold
    n = len(x)
    labels = -np.ones(n, int)
    nxt = 0
    for i in range(n):
        if labels[i] >= 0:
            continue
        stack = [i]
        labels[i] = nxt
        while stack:
            u = stack.pop()
            for v in np.nonzero(s[u])[0]:
                if labels[v] < 0:
                    labels[v] = nxt
                    stack.append(v)
        nxt += 1
    return labels


def _community_oracle(x, threshold, min_size):
    """sentence-transformers' community detection, written out on the dense float64 matrix."""
    s = _dense(x, x)
    np.fill_diagonal(s, 1.0)
    communities = []
    for i in range(len(x)):
        order = np.lexsort((np.arange(len(x)), -s[i]))
        members = [j for j in order if s[i, j] >= threshold]
        if len(members) >= min_size:
            communities.append(members)
    communities.sort(key=len, reverse=True)
    labels = -np.ones(len(x), int)
    taken = set()
    nxt = 0
    for com in communities:
        fresh = [j for j in com if j not in taken]
        if len(fresh) >= min_size:
            taken.update(fresh)
            labels[fresh] = nxt
            nxt += 1
    return labels


def _well_separated(rng, groups=12, size=5, d=16, dtype=np.float64):
    """Tight groups far apart: no score within any rounding band of the thresholds used."""
    centres = np.linalg.qr(rng.standard_normal((d, d)))[0][:groups]
    x = np.repeat(centres, size, axis=0) + 0.02 * rng.standard_normal((groups * size, d))
    perm = rng.permutation(len(x))
    return x[perm].astype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_groups_components(backend, rng):
    x = _well_separated(rng)
    labels = fastsim.duplicate_groups(x, 0.9, backend=backend)
    np.testing.assert_array_equal(labels, _components_oracle(x, 0.9))
    assert labels.dtype == np.int64 and labels.max() == 11
    # chains: a, b, c with a~b, b~c but not a~c are one group
    chain = np.array([[1.0, 0.0], [np.cos(0.4), np.sin(0.4)], [np.cos(0.8), np.sin(0.8)], [-1.0, 0.0]])
    np.testing.assert_array_equal(fastsim.duplicate_groups(chain, np.cos(0.45), backend=backend), [0, 0, 0, 1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("min_size", [1, 2, 3, 6])
def test_duplicate_groups_community(backend, min_size, rng):
    x = _well_separated(rng, size=4)
    x = np.concatenate([x, rng.standard_normal((8, 16))])
    got = fastsim.duplicate_groups(x, 0.9, method="community", min_community_size=min_size, backend=backend)
    np.testing.assert_array_equal(got, _community_oracle(x, 0.9, min_size))


def test_community_every_pair_passes_terminates():
    x = np.ones((400, 4))
    labels = fastsim.duplicate_groups(x, 0.9, method="community", min_community_size=10)
    assert np.all(labels == 0)
    with pytest.raises(mining.TooManyPairsError):
        fastsim.duplicate_groups(x, 0.9, method="community", max_pairs=1000)


def _paraphrase_oracle(x, top_k, max_pairs):
    s = _dense(x, x)
    n = len(x)
    pairs = {}
    for i in range(n):
        order = [j for j in np.lexsort((np.arange(n), -s[i])) if j != i][:top_k]
        for j in order:
            key = (min(i, j), max(i, j))
            pairs[key] = s[i, j]
    items = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:max_pairs]
    return np.array([v for _, v in items]), np.array([k for k, _ in items])


@pytest.mark.parametrize("backend", BACKENDS)
def test_paraphrase_mining(backend, rng):
    x = _well_separated(rng, groups=6, size=4)
    for top_k, max_pairs, chunk in ((3, 1000, 7), (1, 5, 100), (30, 50, 11)):
        s, p = fastsim.paraphrase_mining(x, top_k=top_k, max_pairs=max_pairs, query_chunk_size=chunk,
                                         backend=backend)
        ws, wp = _paraphrase_oracle(x, top_k, max_pairs)
        # the set of pairs is exact where scores are apart; scores close
        assert_close(s, ws, np.float64)
        assert np.all(p[:, 0] < p[:, 1])
        assert np.all(np.diff(s) <= 0)
        assert {tuple(r) for r in p} == {tuple(r) for r in wp}
    s, p = fastsim.paraphrase_mining(x, top_k=5, threshold=0.9, backend=backend)
    assert s.min() >= 0.9 and len(s) == 6 * 6  # each group of 4 has 6 pairs


def test_paraphrase_mining_repeated_vector_is_bounded():
    x = np.ones((1000, 4), np.float32)
    s, p = fastsim.paraphrase_mining(x, top_k=5, max_pairs=100)
    assert len(s) == 100 and np.all(s == 1.0)


# --------------------------------------------------------------------------- properties


@given(m=st.integers(1, 40), n=st.integers(1, 40), d=st.integers(1, 12), thr=st.floats(-1, 1),
       seed=st.integers(0, 2**31 - 1), dup=st.booleans())
def test_hypothesis_range_search(m, n, d, thr, seed, dup):
    r = np.random.default_rng(seed)
    c = r.standard_normal((n, d))
    q = r.standard_normal((m, d))
    if dup:
        q[: min(m, n)] = c[: min(m, n)] * r.uniform(0.5, 2.0)
    for be in fastsim.available_backends():
        for dt in DTYPES:
            ip, ix, sc = fastsim.range_search(q.astype(dt), c.astype(dt), thr, output="arrays", backend=be)
            check_pairs(ip, ix, sc, q.astype(dt), c.astype(dt), thr, mode=0, dtype=dt)
            csr = fastsim.range_search(c.astype(dt), threshold=thr, backend=be)
            check_pairs(csr.indptr, csr.indices, csr.data, c.astype(dt), c.astype(dt), thr, mode=2, dtype=dt)
