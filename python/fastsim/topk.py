"""Exact cosine top-k retrieval over a corpus, without the full similarity matrix.

:func:`top_k` answers "which corpus rows are most similar to each query?" in the
way FAISS's flat inner-product index does on normalized vectors: the corpus is
streamed in tiles, each tile's GEMM with the queries feeds per-row running
top-k selections, and the (m, n) matrix never exists.

Backends
--------
Every backend goes through one internal entry point::

    _top_k_impl(be, queries, corpus, k, exclude_self) -> (scores, indices)

``be`` is a resolved backend name; ``queries`` (m, d) and ``corpus`` (n, d) are
C-contiguous arrays of one dtype (float32 or float64) with ``m >= 1``,
``d >= 1``; ``k`` is an int with ``1 <= k <= n`` (``k <= n - 1`` when
``exclude_self``); ``exclude_self`` is a bool.  It returns freshly allocated,
C-contiguous ``scores`` (m, k) of the input dtype and ``indices`` (m, k) int64,
ordered as :func:`fastsim._reference.topk.top_k` specifies.  A compiled kernel
plugs in as ``_backend.core().top_k(queries, corpus, k, exclude_self)`` with
exactly that contract, once ``"cpp"`` is added to ``_SUPPORTED``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _backend
from ._reference import topk as _ref
from ._validation import (as_float_array, check_bool, check_positive_int, check_same_columns, contiguous,
                          result_dtype)

__all__ = ["top_k"]

_SUPPORTED = ("numpy", "numba", "cpp")


# The NumPy backend runs the reference (which sorts a whole score matrix) on
# blocks of query rows of about this many scores: the rows are independent,
# and 1024 queries x 100000 x 256 float32 then peak near 200 MiB instead of
# 1.5 GiB (bench/topk_memory.py).
_NUMPY_BLOCK_SCORES = 1 << 22


def _numpy_top_k(queries: np.ndarray, corpus: np.ndarray, k: int, exclude_self: bool):
    m, n = queries.shape[0], corpus.shape[0]
    rows = max(1, _NUMPY_BLOCK_SCORES // max(n, 1))
    if rows >= m:
        return _ref.top_k(queries, corpus, k, exclude_self)
    blocks = [_ref.top_k(queries[i:i + rows], corpus, k, exclude_self, first_row=i) for i in range(0, m, rows)]
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def _top_k_impl(be: str, queries: np.ndarray, corpus: np.ndarray, k: int, exclude_self: bool):
    if be == "numpy":
        return _numpy_top_k(queries, corpus, k, exclude_self)
    if be == "cpp":
        if queries is corpus:  # a set against itself: each pair multiplied once, the same result
            return _backend.core().top_k_self(queries, k, exclude_self)
        return _backend.core().top_k(queries, corpus, k, exclude_self)
    return _backend.numba_module("topk").top_k(queries, corpus, k, exclude_self)


def top_k(queries: ArrayLike, corpus: ArrayLike, /, k: int, *, exclude_self: bool = False,
          backend: str = "auto") -> tuple[NDArray[np.floating], NDArray[np.int64]]:
    """The ``k`` corpus rows most cosine-similar to each query, best first.

    Parameters
    ----------
    queries : array_like, shape (m, d)
    corpus : array_like, shape (n, d)
        Integer and float16 input is computed in float32; float64 if either
        input is float64.
    k : int
        Number of neighbours per query, >= 1.  It is clipped to the number of
        candidates: ``n``, or ``n - 1`` with ``exclude_self``.
    exclude_self : bool, default False
        For a search of a set against itself: query row ``i`` is corpus row
        ``i``, and the pair ``(i, i)`` is left out.  Requires ``m == n``
        (pass the same array twice).
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    scores : ndarray, shape (m, min(k, candidates))
        Cosine similarities clamped to [-1, 1], in the result dtype, each row
        in descending order.
    indices : ndarray of int64, same shape
        The corpus rows of ``scores``.

    Notes
    -----
    * Equal scores are ordered by ascending corpus index, so the result is
      deterministic.
    * A zero vector has similarity 0 with every row (query or corpus).
    * A row holding NaN or inf has NaN similarity with everything.  NaN ranks
      below every number: a NaN corpus row is returned only when fewer than
      ``k`` rows have a numeric score, and a NaN query row gets NaN scores with
      the lowest candidate indices.
    * Scores are computed on normalized rows in the input precision, so in
      float32 two rows whose true similarities differ by less than about 1e-6
      may come out in either order.
    """
    queries = as_float_array(queries, "queries", ndim=2)
    corpus = as_float_array(corpus, "corpus", ndim=2)
    check_same_columns(queries, corpus, ("queries", "corpus"))
    k = check_positive_int(k, "k")
    exclude_self = check_bool(exclude_self, "exclude_self")
    m, n = queries.shape[0], corpus.shape[0]
    if exclude_self and m != n:
        msg = (f"exclude_self=True needs queries and corpus to be the same rows (m == n); "
               f"got {m} queries and {n} corpus rows")
        raise ValueError(msg)
    be = _backend.resolve(backend, _SUPPORTED)
    dt = result_dtype(queries, corpus)
    kk = max(0, min(k, n - 1 if exclude_self else n))
    if m == 0 or kk == 0:
        return np.empty((m, kk), dtype=dt), np.empty((m, kk), dtype=np.int64)
    if queries.shape[1] == 0:
        # every row is the zero vector: give the kernels one zero column instead
        queries = np.zeros((m, 1), dtype=dt)
        corpus = np.zeros((n, 1), dtype=dt)
    return _top_k_impl(be, contiguous(queries, dt), contiguous(corpus, dt), kk, exclude_self)
