"""Numba kernels for hard-negative mining and the modified triplet loss.

The structure follows ``_reference.triplet`` but streams: the (b, b) score
matrix never exists.

Forward (:func:`triplet_forward`):

1. Normalize both batches once, O(b d).  The mean negative needs no tile at
   all: ``sum_j s[i, j] = u2_i . (sum_j u1_j)``, so it is one float64 dot per
   row minus the positive's own term.
2. Walk row blocks of ``ROW_BLOCK`` rows against column tiles of
   ``COL_BLOCK`` columns.  Each tile is one ``np.dot`` (SciPy's BLAS under
   Numba) into a reused buffer, folded into each row's running closest
   negative and its index.  The column tile holding a block's diagonal comes
   first: its diagonal gives the positives, from the same BLAS call as the
   negatives they are compared with, so an exact duplicate compares equal.
3. Rows left without a valid negative under ``empty="shift"`` (rare: the
   positive is below every negative) get one more streaming pass over just
   those rows for their largest negative.

Extra memory is O(b d) for the normalized copies plus one
``ROW_BLOCK x COL_BLOCK`` tile.

The fold turns each score into an integer key that orders like the float
(:func:`_key_constants`), so a span's masked maximum is an integer max
reduction that vectorizes without fast-math; only a span that beats or ties the
running best is rescanned for its first column.  Columns reach a row in
increasing order except for the diagonal's tile, which comes first, so equal
values keep the lower index explicitly.

Gradient (:func:`triplet_backward`): O(b d) with no tile at all, given each
row's closest index and hinge flags.  Writing ``G = dcost/ds``, the mean term
of ``G u1`` needs only ``sum_j u1_j`` (minus the row's own ``u1_i``), the
closest term is one gathered row; ``G^T u2`` needs ``sum_i mean_w_i u2_i`` and,
for each column, the rows that chose it as closest, grouped by a counting sort
so that the pass gathers instead of scattering.  Float64 throughout.

Threads: the GEMM tiles run on the BLAS library's threads.  The folds and the
O(b d) passes are serial on purpose: a Numba parallel region started while the
BLAS threads are still spinning after a call fights them for the cores (on
2 cores, a parallel fold after every tile made the whole call several times
slower), and the vectorized fold is a fraction of the GEMM (about a sixth at
b = 4096, d = 256).  Few, large tiles matter for the same reason: every
BLAS call is a fork and a join of its threads.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numba as nb
import numpy as np

from .cosine import normalized_rows, unit_factors

ROW_BLOCK = 1024
COL_BLOCK = 4096
SPAN = 256

_OPTS = dict(nogil=True, cache=True, error_model="numpy")

EMPTY_SHIFT = 0
EMPTY_FLOOR = 1


@nb.njit(inline="always")
def _clamp(s):
    if s > 1.0:
        return 1.0
    if s < -1.0:
        return -1.0
    return s


class _Keys(NamedTuple):
    """Constants of the monotone float -> int key map (see :func:`_key_constants`), one int type."""

    shift: int
    mask: int
    plus_one: int
    minus_one: int
    plus_inf: int
    none: int
    excluded: int


def _key(x: float, dtype) -> int:
    ft = np.dtype(dtype)
    it = np.dtype(np.int32 if ft == np.float32 else np.int64)
    bits = int(np.array([x], dtype=ft).view(it)[0])
    return bits ^ ((bits >> (8 * it.itemsize - 1)) & int(np.iinfo(it).max))


@functools.lru_cache(maxsize=None)
def _key_constants(dtype):
    """The int dtype matching ``dtype`` and the key constants as scalars of it.

    ``key(x) = bits ^ ((bits >> (w - 1)) & INT_MAX)`` orders every non-NaN float
    like the float itself, so the masked maximum of a tile row becomes an
    integer max reduction, which vectorizes with no fast-math (float max
    reductions do not).  A NaN with the sign bit clear maps above +inf.
    """
    ft = np.dtype(dtype)
    it = np.int32 if ft == np.float32 else np.int64
    info = np.iinfo(it)
    return it, _Keys(it(8 * ft.itemsize - 1), it(info.max), it(_key(1.0, ft)), it(_key(-1.0, ft)),
                     it(_key(np.inf, ft)), it(info.min), it(info.max))


@nb.njit(**_OPTS)
def _fold_closest(tile, tile_keys, i0, j0, limit_key, best, best_key, best_j, k):
    """Fold ``tile`` (columns j0..) into running per-row maxima with their first column.

    Row ``r`` of the tile updates state slot ``i0 + r``.  Only entries whose
    key is at most the slot's ``limit_key`` take part, their scores clamped to
    [-1, 1]; ``tile_keys`` is the same memory as ``tile`` read as integers.
    Entries excluded outright (the diagonal) hold the key ``k.excluded``,
    above every limit.
    """
    rows, cols = tile.shape
    shift, mask, hi, lo, none = k.shift, k.mask, k.plus_one, k.minus_one, k.none
    for r in range(rows):
        slot = i0 + r
        lim = limit_key[slot]
        bk = best_key[slot]
        bj = best_j[slot]
        krow = tile_keys[r]
        for t0 in range(0, cols, SPAN):
            # indexing a slice from 0 (not the row from t0) spares the negative-index
            # check that keeps this loop from vectorizing
            span = krow[t0:min(cols, t0 + SPAN)]
            n = span.shape[0]
            m = none
            for t in range(n):
                x = span[t]
                x = x ^ ((x >> shift) & mask)
                c = min(max(x, lo), hi)
                c = c if x <= lim else none
                m = c if c > m else m
            if m == none or m < bk:
                continue
            # the span holds a new maximum (or ties the old one): find its first column
            first = 0
            for t in range(n):
                x = span[t]
                x = x ^ ((x >> shift) & mask)
                if x <= lim and min(max(x, lo), hi) == m:
                    first = t
                    break
            j = j0 + t0 + first
            if m > bk or j < bj:
                bk = m
                bj = j
                best[slot] = _clamp(tile[r, t0 + first])
        best_key[slot] = bk
        best_j[slot] = bj


@nb.njit(**_OPTS)
def _tile(buf, buf_keys, a, b_rows):
    """``a @ b_rows.T`` into the front of the flat buffer; returns it as floats and as integer keys."""
    m = a.shape[0]
    n = b_rows.shape[0]
    out = buf[: m * n].reshape((m, n))
    np.dot(a, b_rows.T, out)
    return out, buf_keys[: m * n].reshape((m, n))


@nb.njit(**_OPTS)
def _forward(v1, v2, empty, buf, buf_keys, positive, positive_bits, k, row_block, col_block):
    b, d = v1.shape
    dt = v1.dtype
    u1 = normalized_rows(v1)
    u2 = normalized_rows(v2)

    # sum over j != i of s[i, j] = u2_i . (sum_j u1_j) - u2_i . u1_i, in float64.  A NaN row
    # of u1 (NaN or inf in v1) is left out of the sum: it makes the mean of every
    # other row NaN, but not the mean of its own row, where it is the positive.
    u1_sum = np.zeros(d, dtype=np.float64)
    nan_rows = np.zeros(b, dtype=np.bool_)
    for j in range(b):
        for kk in range(d):
            nan_rows[j] |= np.isnan(u1[j, kk])
        if not nan_rows[j]:
            for kk in range(d):
                u1_sum[kk] += u1[j, kk]
    n_nan = nan_rows.sum()
    mean_negative = np.empty(b, dtype=dt)
    for i in range(b):
        if n_nan - nan_rows[i] > 0:
            mean_negative[i] = np.nan
            continue
        total = 0.0
        own = 0.0
        for kk in range(d):
            x = np.float64(u2[i, kk])
            total += x * u1_sum[kk]
            if not nan_rows[i]:
                own += x * u1[i, kk]
        mean_negative[i] = (total - own) / (b - 1)

    limit_key = np.empty(b, dtype=buf_keys.dtype)
    closest = np.full(b, np.nan, dtype=dt)
    closest_key = np.full(b, k.none, dtype=buf_keys.dtype)
    closest_j = np.full(b, -1, dtype=np.int64)
    for i0 in range(0, b, row_block):
        i1 = min(b, i0 + row_block)
        block = u2[i0:i1]
        # the column tile holding this block's diagonal comes first: it gives the
        # positives, from the same BLAS call as the negatives they are compared with
        first_j0 = (i0 // col_block) * col_block
        for n_tile in range(-1, (b + col_block - 1) // col_block):
            j0 = first_j0 if n_tile < 0 else n_tile * col_block
            if n_tile >= 0 and j0 == first_j0:
                continue
            tile, tile_keys = _tile(buf, buf_keys, block, u1[j0:min(b, j0 + col_block)])
            if n_tile < 0:
                for r in range(i1 - i0):
                    i = i0 + r
                    p = _clamp(tile[r, i - j0])
                    positive[i] = p
                    # a clamped score is <= the clamped positive iff the raw score
                    # is, or always when the positive is 1
                    x = positive_bits[i]
                    limit_key[i] = k.plus_inf if p >= 1.0 else x ^ ((x >> k.shift) & k.mask)
                    tile_keys[r, i - j0] = k.excluded
            _fold_closest(tile, tile_keys, i0, j0, limit_key, closest, closest_key, closest_j, k)

    if empty == EMPTY_SHIFT:
        _shift_empty_rows(u1, u2, closest, closest_j, buf, buf_keys, k, row_block, col_block)
    for i in range(b):
        if closest_j[i] < 0:  # no valid negative, and under "shift" none above 0 either
            closest[i] = -2.0
        if np.isnan(mean_negative[i]) or np.isnan(positive[i]):
            closest[i] = np.nan
            closest_j[i] = -1
    return positive, mean_negative, closest, closest_j


@nb.njit(**_OPTS)
def _shift_empty_rows(u1, u2, closest, closest_j, buf, buf_keys, k, row_block, col_block):
    """Rows with no valid negative: ``closest = largest negative - 2`` when that is above -2."""
    b = u1.shape[0]
    empty_rows = np.nonzero(closest_j < 0)[0]
    n_empty = empty_rows.shape[0]
    for r0 in range(0, n_empty, row_block):
        r1 = min(n_empty, r0 + row_block)
        rows_idx = empty_rows[r0:r1]
        n = r1 - r0
        block = np.empty((n, u2.shape[1]), dtype=u2.dtype)
        for r in range(n):
            block[r] = u2[rows_idx[r]]
        largest = np.full(n, np.nan, dtype=u2.dtype)
        largest_key = np.full(n, k.none, dtype=buf_keys.dtype)
        largest_j = np.full(n, -1, dtype=np.int64)
        no_limit = np.full(n, k.plus_inf, dtype=buf_keys.dtype)
        for j0 in range(0, b, col_block):
            j1 = min(b, j0 + col_block)
            tile, tile_keys = _tile(buf, buf_keys, block, u1[j0:j1])
            for r in range(n):
                i = rows_idx[r]
                if j0 <= i < j1:
                    tile_keys[r, i - j0] = k.excluded
            _fold_closest(tile, tile_keys, 0, j0, no_limit, largest, largest_key, largest_j, k)
        for r in range(n):
            shifted = largest[r] - 2.0
            if largest_j[r] >= 0 and shifted > -2.0:
                closest[rows_idx[r]] = shifted
                closest_j[rows_idx[r]] = largest_j[r]


def _buffers(dtype, rows: int, cols: int):
    int_dtype, keys = _key_constants(np.dtype(dtype))
    buf = np.empty(rows * cols, dtype=dtype)
    return buf, buf.view(int_dtype), keys


def triplet_forward(v1, v2, empty):
    """Per-row ``(positive, mean_negative, closest_negative, closest_index)`` of ``s[i, j] = cos(v2[i], v1[j])``.

    ``v1``, ``v2``: C-contiguous (b, d), one float dtype, ``b >= 2``, ``d >= 1``;
    ``empty``: 0 for ``"shift"``, 1 for ``"floor"``.  ``closest_index`` is -1
    where the closest negative is the constant -2 or NaN.
    """
    b = v1.shape[0]
    if COL_BLOCK % ROW_BLOCK:
        msg = (f"COL_BLOCK ({COL_BLOCK}) must be a multiple of ROW_BLOCK ({ROW_BLOCK}): "
               "a row block's diagonal must lie in one column tile")
        raise ValueError(msg)
    rows = min(b, ROW_BLOCK)
    cols = min(b, COL_BLOCK)
    buf, buf_keys, keys = _buffers(v1.dtype, rows, cols)
    positive = np.empty(b, dtype=v1.dtype)
    positive_bits = positive.view(buf_keys.dtype)
    return _forward(v1, v2, int(empty), buf, buf_keys, positive, positive_bits, keys, ROW_BLOCK, COL_BLOCK)


# --------------------------------------------------------------------------- gradient




@nb.njit(inline="always")
def _project_into(g, x, pre, post, i, out):
    # through u = x / |x|: drop the component along u, scale by 1/|x| = pre * post;
    # a zero row gets 0 whatever g is (even NaN)
    d = g.shape[0]
    p = pre[i]
    q = post[i]
    if q == 0.0:
        for k in range(d):
            out[i, k] = 0.0
        return
    along = 0.0
    for k in range(d):
        along += g[k] * ((x[i, k] * p) * q)
    inv_norm = p * q
    for k in range(d):
        out[i, k] = (g[k] - along * ((x[i, k] * p) * q)) * inv_norm


@nb.njit(**_OPTS)
def _backward(v1, v2, closest_idx, active1, active2, weight, grad_v1, grad_v2):
    b, d = v1.shape
    # float64 arithmetic throughout (O(b d) work): the unit rows u = (x * pre) * post
    # are formed on the fly from the inputs and these factors, never stored
    pre1, post1 = unit_factors(v1)
    pre2, post2 = unit_factors(v2)
    # each row's weight on its b - 1 mean-term scores, its positive and its closest negative
    mean_w = np.empty(b)
    pos_w = np.empty(b)
    closest_w = np.empty(b)
    for i in range(b):
        a1 = 1.0 if active1[i] else 0.0
        a2 = 1.0 if active2[i] else 0.0
        mean_w[i] = weight[i] * a1 / (b - 1)
        pos_w[i] = -weight[i] * (a1 + a2)
        closest_w[i] = weight[i] * a2 if closest_idx[i] >= 0 else 0.0

    # column sums: sum_j u1_j and sum_i mean_w_i u2_i
    u1_sum = np.zeros(d)
    u2_weighted_sum = np.zeros(d)
    for i in range(b):
        p1 = pre1[i]
        q1 = post1[i]
        p2 = pre2[i]
        q2 = mean_w[i] * post2[i]
        for k in range(d):
            u1_sum[k] += (v1[i, k] * p1) * q1
            u2_weighted_sum[k] += (v2[i, k] * p2) * q2

    # the rows whose closest negative is column j, grouped by j (a counting sort),
    # so that the closest term of dC/du1_j is a gather rather than a scatter
    start = np.zeros(b + 1, dtype=np.int64)
    for i in range(b):
        if closest_w[i] != 0.0:
            start[closest_idx[i] + 1] += 1
    for j in range(b):
        start[j + 1] += start[j]
    fill = start[:b].copy()
    chosen_by = np.empty(start[b], dtype=np.int64)
    for i in range(b):
        if closest_w[i] != 0.0:
            chosen_by[fill[closest_idx[i]]] = i
            fill[closest_idx[i]] += 1

    g = np.empty(d)
    # dC/du2_i = pos_w_i u1_i + mean_w_i (sum_j u1_j - u1_i) + closest_w_i u1_{k_i}
    for i in range(b):
        p1 = pre1[i]
        q1 = post1[i]
        pw = pos_w[i]
        mw = mean_w[i]
        for k in range(d):
            u1 = (v1[i, k] * p1) * q1
            g[k] = pw * u1 + mw * (u1_sum[k] - u1)
        cw = closest_w[i]
        if cw != 0.0:
            kj = closest_idx[i]
            pk = pre1[kj]
            wk = cw * post1[kj]
            for k in range(d):
                g[k] += (v1[kj, k] * pk) * wk
        _project_into(g, v2, pre2, post2, i, grad_v2)
    # dC/du1_j = pos_w_j u2_j + (sum_i mean_w_i u2_i - mean_w_j u2_j) + sum_{i: k_i = j} closest_w_i u2_i
    for j in range(b):
        p2 = pre2[j]
        c = (pos_w[j] - mean_w[j]) * post2[j]
        for k in range(d):
            g[k] = (v2[j, k] * p2) * c + u2_weighted_sum[k]
        for r in range(start[j], start[j + 1]):
            i = chosen_by[r]
            pi = pre2[i]
            wi = closest_w[i] * post2[i]
            for k in range(d):
                g[k] += (v2[i, k] * pi) * wi
        _project_into(g, v1, pre1, post1, j, grad_v1)


def triplet_backward(v1, v2, closest_idx, active1, active2, weight):
    """``(dcost/dv1, dcost/dv2)`` for ``cost = sum_i weight_i (L1_i + L2_i)``.

    ``closest_idx`` int64 (b,) from :func:`triplet_forward`; ``active1``,
    ``active2`` (b,) truthy where the hinge is strictly positive; ``weight`` a
    float or one float per row.  Gradients come back in the inputs' dtype.
    """
    b = v1.shape[0]
    w = np.ascontiguousarray(np.broadcast_to(np.asarray(weight, dtype=np.float64), (b,)))
    grad_v1 = np.empty_like(v1)
    grad_v2 = np.empty_like(v2)
    _backward(v1, v2, np.ascontiguousarray(closest_idx, dtype=np.int64), np.ascontiguousarray(active1, dtype=np.uint8),
              np.ascontiguousarray(active2, dtype=np.uint8), w, grad_v1, grad_v2)
    return grad_v1, grad_v2


# --------------------------------------------------------------------------- precomputed matrix


@nb.njit(parallel=True, **_OPTS)
def _hard_negatives(sim, empty, positive, mean_negative, closest, closest_idx):
    b = sim.shape[0]
    for i in nb.prange(b):
        p = sim[i, i]
        total = 0.0
        has_nan = p != p
        bv = -np.inf
        bj = -1
        tv = -np.inf
        tj = -1
        for j in range(b):
            if j == i:
                continue
            s = sim[i, j]
            total += s
            if s != s:
                has_nan = True
                continue
            if s > tv or tj < 0:
                tv = s
                tj = j
            if s <= p and (s > bv or bj < 0):
                bv = s
                bj = j
        positive[i] = p
        mean_negative[i] = total / (b - 1)
        if has_nan:
            closest[i] = np.nan
            closest_idx[i] = -1
        elif bj >= 0:
            closest[i] = bv
            closest_idx[i] = bj
        else:
            shifted = tv - 2.0
            if empty == EMPTY_SHIFT and shifted > -2.0:
                closest[i] = shifted
                closest_idx[i] = tj
            else:
                closest[i] = -2.0
                closest_idx[i] = -1


def hard_negatives(sim, empty):
    """Per-row ``(positive, mean_negative, closest_negative, closest_index)`` of a C-contiguous square ``sim``."""
    b = sim.shape[0]
    out = (np.empty(b, sim.dtype), np.empty(b, sim.dtype), np.empty(b, sim.dtype), np.empty(b, np.int64))
    _hard_negatives(sim, int(empty), *out)
    return out
