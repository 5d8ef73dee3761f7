"""Numba range-search kernel: BLAS tiles, an njit filter, no (m, n) matrix.

What this module owns: the ``"numba"`` backend of one block pair of
:func:`fastsim.range_search`, with the contract of
:func:`fastsim._reference.mining.range_search` (indices global, rows best
first).  It may call :mod:`fastsim._numba.cosine` for unit rows.

Both operands are normalized once; tiles of ``QUERY_BLOCK`` x ``CORPUS_TILE``
scores come from ``np.dot`` into one reused buffer, and :func:`_filter_tile`
appends the qualifying entries (clamped, as the reference clamps) to growing
arrays.  Rows are then put in the output order by one ``np.lexsort``.  Extra
memory: the unit rows, one score tile and the pairs found.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .cosine import normalized_rows

CORPUS_TILE = 4096
QUERY_BLOCK = 1024

_OPTS = dict(nogil=True, cache=True, error_model="numpy")


@nb.njit(**_OPTS)
def _filter_tile(scores, q0, j0, thr, mode, diag, rows_out, cols_out, vals_out, count, limit):
    """Append the entries of ``scores`` >= thr; returns the new count, or -1 past ``limit``.

    Local pair (q0 + r, j0 + t) is global (row, column) with column - row =
    j0 + t - q0 - r - diag, so the diagonal is where that difference is 0.
    """
    rows, cols = scores.shape
    for r in range(rows):
        srow = scores[r]
        for t in range(cols):
            s = srow[t]
            if s >= thr:  # NaN never passes
                d = (j0 + t) - (q0 + r) - diag
                if (mode == 1 and d == 0) or (mode == 2 and d <= 0):
                    continue
                if count >= rows_out.shape[0]:
                    return -2 - count  # caller grows the buffers and repeats the tile
                if count >= limit:
                    return -1
                v = s if s < 1.0 else 1.0
                rows_out[count] = q0 + r
                cols_out[count] = j0 + t
                vals_out[count] = v
                count += 1
    return count


def _keep_best(rows_out, cols_out, vals_out, start, count, cap):
    """Cut the pairs in [start, count) back to the best ``cap`` of each row; returns the new count."""
    i, j, s = rows_out[start:count], cols_out[start:count], vals_out[start:count]
    order = np.lexsort((j, -s, i))
    i, j, s = i[order], j[order], s[order]
    first = np.searchsorted(i, i, side="left")
    sel = (np.arange(i.size) - first) < cap
    k = int(sel.sum())
    rows_out[start:start + k] = i[sel]
    cols_out[start:start + k] = j[sel]
    vals_out[start:start + k] = s[sel]
    return start + k


def range_search(queries, corpus, threshold, mode, row_offset, col_offset, max_per_row, max_hits):
    """``(indptr, indices, scores, complete)`` for one block pair (see the module docstring)."""
    m, n = queries.shape[0], corpus.shape[0]
    dt = queries.dtype
    thr = dt.type(threshold)
    qn = normalized_rows(queries)
    cn = normalized_rows(corpus)
    diag = row_offset - col_offset
    cap = 1 << 16
    rows_out = np.empty(cap, np.int64)
    cols_out = np.empty(cap, np.int64)
    vals_out = np.empty(cap, dt)
    count = 0
    complete = True
    buf = np.empty(min(m, QUERY_BLOCK) * min(n, CORPUS_TILE), dtype=dt)
    capped = max_per_row is not None and max_per_row > 0
    for q0 in range(0, m, QUERY_BLOCK):
        q1 = min(m, q0 + QUERY_BLOCK)
        block_start = count
        # Upper mode: columns at or left of the block's first row never pair with it
        c_start = min(n, max(0, q0 + diag + 1)) if mode == 2 else 0
        c_start -= c_start % CORPUS_TILE
        for j0 in range(c_start, n, CORPUS_TILE):
            j1 = min(n, j0 + CORPUS_TILE)
            tile = buf[: (q1 - q0) * (j1 - j0)].reshape((q1 - q0, j1 - j0))
            np.dot(qn[q0:q1], cn[j0:j1].T, tile)
            # with max_per_row the block's pairs are cut back after every tile, so the limit
            # applies to the pairs kept, not to those a tile passes on the way
            limit = (1 << 62) if capped else max_hits
            while True:
                got = _filter_tile(tile, q0, j0, thr, mode, diag, rows_out, cols_out, vals_out, count, limit)
                if got >= -1:
                    break
                # out of room: keep what the tile appended, grow, redo the tile from a clean count
                rows_out = np.concatenate([rows_out, np.empty_like(rows_out)])
                cols_out = np.concatenate([cols_out, np.empty_like(cols_out)])
                vals_out = np.concatenate([vals_out, np.empty_like(vals_out)])
            if got == -1:
                complete = False
                break
            count = got
            if capped:
                count = _keep_best(rows_out, cols_out, vals_out, block_start, count, max_per_row)
                if count > max_hits:
                    complete = False
                    count = max_hits
                    break
        if not complete:
            break
    i, j, s = rows_out[:count], cols_out[:count], vals_out[:count]
    order = np.lexsort((j, -s, i))
    i, j, s = i[order], j[order], s[order]
    counts = np.bincount(i, minlength=m)
    if max_per_row is not None and max_per_row > 0:
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        rank = np.arange(i.size) - np.repeat(starts, counts)
        sel = rank < max_per_row
        j, s = j[sel], s[sel]
        counts = np.minimum(counts, max_per_row)
    indptr = np.zeros(m + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, j + col_offset, s, complete
