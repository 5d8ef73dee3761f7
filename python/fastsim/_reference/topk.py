"""Exact cosine top-k retrieval, reference semantics.

For every query row ``i`` the result lists the ``k`` corpus rows ``j`` with the
highest ``cos(queries[i], corpus[j])`` (clamped to [-1, 1], zero vectors score 0,
as in :mod:`fastsim._reference.cosine`), best first.

Ordering rules, which every backend reproduces exactly on the scores it computes:

* higher score first; equal scores go to the lower corpus index;
* a NaN score (a query or corpus row holding NaN or inf) ranks below every
  number, and NaN scores among themselves go to the lower index;
* ``exclude_self`` drops the pair ``j == i`` (queries and corpus are the same rows).

This reference forms the full (m, n) matrix: it is the specification, not the
fast path.  The NumPy backend (:mod:`fastsim.topk`) calls it on blocks of
query rows, with ``first_row`` locating each block for ``exclude_self``.
"""

from __future__ import annotations

import numpy as np

from .cosine import cosine_similarity_matrix


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, exclude_self: bool = False, first_row: int = 0):
    """Return ``(scores, indices)`` of shape (m, k') with ``k' = min(k, number of candidates)``.

    The number of candidates per row is ``n``, or ``n - 1`` with ``exclude_self``.
    ``first_row`` is the corpus index of ``queries[0]`` for ``exclude_self``
    when ``queries`` is a block of rows of a larger query set.
    """
    m, n = queries.shape[0], corpus.shape[0]
    kk = max(0, min(k, n - 1 if exclude_self else n))
    s = cosine_similarity_matrix(queries, corpus)
    j = np.broadcast_to(np.arange(n), (m, n))
    # sort keys, last one primary: excluded pairs last, then descending score
    # with NaN after every number, then ascending index
    descending = np.where(np.isnan(s), np.inf, -s)
    excluded = (j == first_row + np.arange(m)[:, None]) if exclude_self else np.zeros((m, n), dtype=bool)
    order = np.lexsort((j, descending, excluded), axis=1)[:, :kk]
    scores = np.take_along_axis(s, order, axis=1)
    return scores, order.astype(np.int64)
