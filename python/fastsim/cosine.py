"""Cosine similarity: one pair, row-wise pairs, and the full matrix of two batches.

One route per function: the arguments are converted and checked here (by
``fastsim._validation``), the backend is resolved, and the kernel is called
once.  The compiled entry points allocate a result when ``out`` is None
(``_validation.empty_aligned``, as the other backends' results are).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _backend
from ._reference import cosine as _ref
from ._validation import check_out, check_same_columns, check_same_shape, empty_aligned, kernel_array, kernel_pair

__all__ = ["cosine_similarity", "cosine_similarity_matrix", "cosine_similarity_rows"]


def cosine_similarity(u: ArrayLike, v: ArrayLike, /, *, backend: str = "auto") -> np.floating:
    """Cosine similarity of two vectors.

    Parameters
    ----------
    u, v : array_like, shape (d,)
        The two vectors.  Integer and float16 input is computed in float32.
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    numpy.float32 or numpy.float64
        ``u.v / (|u| |v|)`` clamped to [-1, 1]; 0 when either vector is zero;
        NaN when either holds NaN or inf.
    """
    u, v = kernel_pair(u, v, ("u", "v"), 1)
    if u.shape != v.shape:
        check_same_shape((u, v), ("u", "v"), "two vectors of d entries", noun="length")
    be = _backend.resolve(backend)
    if be == "cpp":
        return _backend.core().cosine_pair(u, v)
    if be == "numpy":
        return u.dtype.type(_ref.cosine_similarity(u, v))
    out = np.empty(1, u.dtype)
    _backend.numba_module("cosine").cosine_rows(u[None, :], v[None, :], out)
    return out[0]


def _arrays(given: dict) -> dict:
    """The caller's arguments that are arrays: ``out`` may share no memory with
    them, even where the kernel reads a converted copy."""
    return {name: x for name, x in given.items() if isinstance(x, np.ndarray)}


def cosine_similarity_rows(a: ArrayLike, b: ArrayLike, /, *, out: NDArray[np.floating] | None = None,
                           backend: str = "auto") -> NDArray[np.floating]:
    """Cosine similarity of row i of ``a`` with row i of ``b``.

    Parameters
    ----------
    a, b : array_like, shape (n, d)
    out : ndarray, shape (n,), optional
        Written in place and returned; must have the result dtype.
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    ndarray, shape (n,)
        float64 if either input is float64, else float32.
    """
    given = {"a": a, "b": b}
    a, b = kernel_pair(a, b, ("a", "b"), 2)
    if a.shape != b.shape:
        check_same_shape((a, b), ("a", "b"), "row i of a is compared with row i of b")
    if out is not None:
        check_out(out, (a.shape[0],), a.dtype, inputs=_arrays(given))
    be = _backend.resolve(backend)
    if out is None or out.flags.aligned:
        return _rows(be, a, b, out)
    out[...] = _rows(be, a, b, None)  # a misaligned out: computed aligned, then copied
    return out


def _rows(be, a, b, target):
    if be == "cpp":
        return _backend.core().cosine_rows(a, b, target)
    if target is None:
        target = np.empty(a.shape[0], a.dtype)
    if be == "numpy":
        target[...] = _ref.cosine_similarity_rows(a, b)
    else:
        _backend.numba_module("cosine").cosine_rows(a, b, target)
    return target


def cosine_similarity_matrix(a: ArrayLike, b: ArrayLike | None = None, /, *, out: NDArray[np.floating] | None = None,
                             backend: str = "auto") -> NDArray[np.floating]:
    """All-pairs cosine similarity ``S[i, j] = cos(a[i], b[j])``.

    Parameters
    ----------
    a : array_like, shape (m, d)
    b : array_like, shape (n, d), optional
        ``None`` compares ``a`` with itself; the diagonal is then exactly 1 for
        nonzero rows (0 for zero rows, NaN for rows holding NaN/inf).
    out : ndarray, shape (m, n), optional
        C-contiguous, of the result dtype, not overlapping the inputs.
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    ndarray, shape (m, n)
        float64 if either input is float64, else float32.  Entries are clamped
        to [-1, 1]; zero rows give 0; NaN or inf in a row gives NaN in its
        row/column of the result.

    Notes
    -----
    The cpp backend runs one cache-blocked GEMM whose epilogue applies the
    inverse norms and the clamp while each tile is still in registers; the
    normalized copies of the inputs are never formed.
    """
    given = {"a": a, "b": b}
    if b is None:
        a = kernel_array(a, "a", 2)
    else:
        a, b = kernel_pair(a, b, ("a", "b"), 2)
        if a.shape[1] != b.shape[1]:
            check_same_columns(a, b, ("a", "b"))
    if out is not None:
        check_out(out, (a.shape[0], (a if b is None else b).shape[0]), a.dtype, inputs=_arrays(given))
    be = _backend.resolve(backend)
    if out is None or out.flags.aligned:
        return _matrix(be, a, b, out)
    out[...] = _matrix(be, a, b, None)  # a misaligned out: computed aligned, then copied
    return out


def _matrix(be, a, b, target):
    if be == "cpp":
        return _backend.core().cosine_matrix(a, b, target)
    if target is None:
        target = empty_aligned((a.shape[0], (a if b is None else b).shape[0]), a.dtype)
    if be == "numpy":
        target[...] = _ref.cosine_similarity_matrix(a, b)
    else:
        _backend.numba_module("cosine").cosine_matrix(a, b, target)
    return target
