"""Numba top-k kernel: corpus tiles through BLAS, per-row heaps, no (m, n) matrix.

The structure follows ``_reference.topk`` but streams.  Queries are normalized
once; the corpus is walked in tiles of ``CORPUS_TILE`` rows.  Each tile is
normalized, multiplied with a block of ``QUERY_BLOCK`` normalized queries by
``np.dot`` (SciPy's BLAS under Numba), and every query row of the product is
folded into that row's running top-k, kept as a binary heap whose root is the
current k-th best.  Extra memory is O(m (d + k) + CORPUS_TILE (d + QUERY_BLOCK)):
the normalized queries, the heaps, one normalized tile and one score block.

Only the GEMM is multi-threaded (BLAS's own threads).  Normalizing and folding
are serial on purpose: they cost O((m + n) d) and O(m n) against the GEMM's
O(m n d), and Numba parallel regions placed between BLAS calls compete with
BLAS's still-spinning worker threads for the cores, which measured slower.

Most candidates cost one comparison against the heap root: corpus rows arrive
in increasing index, so a candidate merely equal to the root already loses the
tie (its index is higher than every index in the heap) and only a strictly
higher score enters.  NaN scores are carried as the key ``_NAN_KEY`` (below
every clamped score, above the ``-inf`` of unfilled heap slots) so that one
ordering handles them.  Spans of ``_SPAN`` scores are first screened with a
branch-free count of candidates above the root, which vectorizes; only spans
with a candidate take the scalar path.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .cosine import normalized_rows

CORPUS_TILE = 4096
QUERY_BLOCK = 1024

_OPTS = dict(nogil=True, cache=True, error_model="numpy")
_NAN_KEY = -3.0
_SPAN = 128


@nb.njit(inline="always")
def _worse(ka, ia, kb, ib):
    """Entry a ranks below entry b: lower score, or equal score and higher index."""
    return ka < kb or (ka == kb and ia > ib)


@nb.njit(**_OPTS)
def _sift_down(keys, idx, pos, size):
    kv = keys[pos]
    iv = idx[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        if right < size and _worse(keys[right], idx[right], keys[child], idx[child]):
            child = right
        if _worse(keys[child], idx[child], kv, iv):
            keys[pos] = keys[child]
            idx[pos] = idx[child]
            pos = child
        else:
            break
    keys[pos] = kv
    idx[pos] = iv


@nb.njit(**_OPTS)
def _fold_span(srow, t0, t1, j0, i, keys, idx, exclude_self):
    """Scalar fold of ``srow[t0:t1]`` into one row's heap; returns the new root."""
    k = keys.shape[0]
    root = keys[0]
    for t in range(t0, t1):
        s = srow[t]
        if s > root:
            # clamp only here, before the final comparison: a score that
            # saturates to the root's value loses the tie on its index
            v = s if s < 1.0 else 1.0
            v = v if v > -1.0 else -1.0
            j = j0 + t
            if not v > root or (exclude_self and j == i):
                continue
            keys[0] = v
            idx[0] = j
            _sift_down(keys, idx, 0, k)
            root = keys[0]
        elif s != s and _NAN_KEY > root:  # NaN: only while the heap has empty slots
            j = j0 + t
            if exclude_self and j == i:
                continue
            keys[0] = _NAN_KEY
            idx[0] = j
            _sift_down(keys, idx, 0, k)
            root = keys[0]
    return root


@nb.njit(**_OPTS)
def _fold_tile(scores, j0, q0, heap_keys, heap_idx, exclude_self):
    """Fold the tile ``scores`` (rows q0.., columns j0..) into the row heaps."""
    rows, cols = scores.shape
    full = cols - cols % _SPAN
    for r in range(rows):
        i = q0 + r
        keys = heap_keys[i]
        idx = heap_idx[i]
        srow = scores[r]
        root = keys[0]
        for t0 in range(0, full, _SPAN):
            # a branch-free count over a fixed-length span vectorizes; once the
            # heap is warm most spans hold no candidate and cost only this pass
            hits = 0
            for t in range(t0, t0 + _SPAN):
                hits += srow[t] > root
            # NaN is never counted; it can only enter while slots are empty
            if hits or root == -np.inf:
                root = _fold_span(srow, t0, t0 + _SPAN, j0, i, keys, idx, exclude_self)
        _fold_span(srow, full, cols, j0, i, keys, idx, exclude_self)


@nb.njit(**_OPTS)
def _finish(heap_keys, heap_idx, scores_out, idx_out):
    """Heap-sort every row best first; turn the NaN key back into NaN."""
    m, k = heap_keys.shape
    kk = scores_out.shape[1]
    for i in range(m):
        keys = heap_keys[i]
        idx = heap_idx[i]
        for size in range(k - 1, 0, -1):
            # the root is the worst remaining entry: park it at the end
            kt = keys[0]
            it = idx[0]
            keys[0] = keys[size]
            idx[0] = idx[size]
            keys[size] = kt
            idx[size] = it
            _sift_down(keys, idx, 0, size)
        for r in range(kk):
            v = keys[r]
            scores_out[i, r] = np.nan if v == _NAN_KEY else v
            idx_out[i, r] = idx[r]


@nb.njit(**_OPTS)
def _top_k(queries, corpus, k, exclude_self, corpus_tile, query_block):
    m = queries.shape[0]
    n = corpus.shape[0]
    qn = normalized_rows(queries)
    heap_keys = np.full((m, k), -np.inf, dtype=queries.dtype)
    heap_idx = np.full((m, k), n, dtype=np.int64)
    # one score buffer for every block: fresh 16 MB allocations cost page faults each time
    buf = np.empty(min(m, query_block) * min(n, corpus_tile), dtype=queries.dtype)
    for j0 in range(0, n, corpus_tile):
        j1 = min(n, j0 + corpus_tile)
        tn_t = normalized_rows(corpus[j0:j1]).T
        for q0 in range(0, m, query_block):
            q1 = min(m, q0 + query_block)
            scores = buf[: (q1 - q0) * (j1 - j0)].reshape((q1 - q0, j1 - j0))
            np.dot(qn[q0:q1], tn_t, scores)
            _fold_tile(scores, j0, q0, heap_keys, heap_idx, exclude_self)
    scores_out = np.empty((m, k), dtype=queries.dtype)
    idx_out = np.empty((m, k), dtype=np.int64)
    _finish(heap_keys, heap_idx, scores_out, idx_out)
    return scores_out, idx_out


def top_k(queries, corpus, k, exclude_self):
    """``(scores, indices)`` of shape (m, k), best first.

    ``queries`` (m, d) and ``corpus`` (n, d) are C-contiguous, of the same float
    dtype, with ``m >= 1``, ``d >= 1`` and ``1 <= k <= n`` (``n - 1`` with
    ``exclude_self``); the public wrapper guarantees this.
    """
    return _top_k(queries, corpus, int(k), bool(exclude_self), CORPUS_TILE, QUERY_BLOCK)
