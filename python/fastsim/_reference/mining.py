"""Corpus mining, reference semantics: range search over dense blocks.

What this module owns: the executable specification of
:func:`fastsim.range_search` on one block pair, in plain NumPy.  It may call
:mod:`fastsim._reference.cosine` and nothing else.

A block pair is ``queries`` (rows ``row_offset ..``) against ``corpus`` (rows
``col_offset ..``).  The pairs are every ``(i, j)`` with
``cos(queries[i], corpus[j]) >= threshold`` (scores as the reference cosine
matrix computes them, clamped; NaN never qualifies) restricted by ``mode``,
on global indices ``I = row_offset + i`` and ``J = col_offset + j``:

* ``0`` every pair;
* ``1`` all but ``I == J`` (a set searched against itself);
* ``2`` only ``J > I`` (the self-join's pairs ``i < j``, each once).

Each row lists its pairs best first: descending score, equal scores by
ascending ``J``; ``max_per_row`` keeps the first ones.  The comparison is
made in the dtype of the scores, against a ``threshold`` of that dtype (the
public layer rounds the user's threshold up to it, so ``score >= threshold``
holds exactly when the computed score is at least the user's number).
"""

from __future__ import annotations

import numpy as np

from .cosine import cosine_similarity_matrix

# Rows of queries per dense block: the score block is at most this many entries.
BLOCK_SCORES = 1 << 22


def range_search(queries, corpus, threshold, mode=0, row_offset=0, col_offset=0, max_per_row=None):
    """``(indptr, indices, scores)`` of the qualifying pairs, rows best first (indices global)."""
    m, n = queries.shape[0], corpus.shape[0]
    thr = np.asarray(threshold, dtype=queries.dtype)
    indptr = np.zeros(m + 1, dtype=np.int64)
    cols, vals = [], []
    rows_per_block = max(1, BLOCK_SCORES // max(n, 1))
    for r0 in range(0, m, rows_per_block):
        r1 = min(m, r0 + rows_per_block)
        s = cosine_similarity_matrix(queries[r0:r1], corpus)
        big_i = row_offset + np.arange(r0, r1)[:, None]
        big_j = col_offset + np.arange(n)[None, :]
        with np.errstate(invalid="ignore"):
            keep = s >= thr
        if mode == 1:
            keep &= big_j != big_i
        elif mode == 2:
            keep &= big_j > big_i
        i, j = np.nonzero(keep)
        sc = s[i, j]
        # sort keys, last one primary: row, then descending score, then ascending column
        order = np.lexsort((j, -sc, i))
        i, j, sc = i[order], j[order], sc[order]
        counts = np.bincount(i, minlength=r1 - r0)
        if max_per_row is not None:
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            rank = np.arange(i.size) - np.repeat(starts, counts)
            sel = rank < max_per_row
            i, j, sc = i[sel], j[sel], sc[sel]
            counts = np.minimum(counts, max_per_row)
        indptr[r0 + 1:r1 + 1] = counts
        cols.append(j.astype(np.int64) + col_offset)
        vals.append(sc.astype(queries.dtype, copy=False))
    np.cumsum(indptr, out=indptr)
    indices = np.concatenate(cols) if cols else np.empty(0, np.int64)
    scores = np.concatenate(vals) if vals else np.empty(0, queries.dtype)
    return indptr, indices, scores
