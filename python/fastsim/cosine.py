"""Cosine similarity: one pair, row-wise pairs, and the full matrix of two batches."""

from __future__ import annotations

import numpy as np

from . import _backend
from ._reference import cosine as _ref
from ._validation import (as_float_array, check_out, check_same_columns, check_same_shape, contiguous, empty_aligned,
                          result_dtype)

__all__ = ["cosine_similarity", "cosine_similarity_matrix", "cosine_similarity_rows"]


def cosine_similarity(u, v, /, *, backend: str = "auto"):
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
    core = _backend.fast_core(backend)
    if core is not None:
        result = core.cosine_pair_fast(u, v)  # None: the general path below
        if result is not None:
            return result
    u = as_float_array(u, "u", ndim=1)
    v = as_float_array(v, "v", ndim=1)
    check_same_shape((u, v), ("u", "v"), "two vectors of d entries", noun="length")
    dt = result_dtype(u, v)
    be = _backend.resolve(backend)
    if be == "numpy":
        return dt.type(_ref.cosine_similarity(u.astype(dt, copy=False), v.astype(dt, copy=False)))
    out = cosine_similarity_rows(u[None, :], v[None, :], backend=be)
    return out[0]


def _kernel_out(out: np.ndarray) -> np.ndarray:
    """``out``, or an aligned array to compute in when ``out``'s elements are misaligned
    (a view at an odd byte offset); the caller then copies the result over."""
    return out if out.flags.aligned else empty_aligned(out.shape, out.dtype)


def cosine_similarity_rows(a, b, /, *, out=None, backend: str = "auto") -> np.ndarray:
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
    core = _backend.fast_core(backend)
    if core is not None:
        result = core.cosine_rows_fast(a, b, out)  # None: the general path below
        if result is not None:
            return result
    a = as_float_array(a, "a", ndim=2)
    b = as_float_array(b, "b", ndim=2)
    check_same_shape((a, b), ("a", "b"), "row i of a is compared with row i of b")
    dt = result_dtype(a, b)
    n = a.shape[0]
    if out is None:
        out = np.empty(n, dtype=dt)
    else:
        check_out(out, (n,), dt, inputs={"a": a, "b": b})
    be = _backend.resolve(backend)
    if be == "numpy":
        out[...] = _ref.cosine_similarity_rows(a.astype(dt, copy=False), b.astype(dt, copy=False))
        return out
    target = _kernel_out(out)
    if be == "cpp":
        _backend.core().cosine_rows(contiguous(a, dt), contiguous(b, dt), target)
    else:
        _backend.numba_module("cosine").cosine_rows(contiguous(a, dt), contiguous(b, dt), target)
    if target is not out:
        out[...] = target
    return out


def cosine_similarity_matrix(a, b=None, /, *, out=None, backend: str = "auto") -> np.ndarray:
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
    core = _backend.fast_core(backend)
    if core is not None:
        result = core.cosine_matrix_fast(a, b, out)  # None: the general path below
        if result is not None:
            return result
    a = as_float_array(a, "a", ndim=2)
    if b is not None:
        b = as_float_array(b, "b", ndim=2)
        check_same_columns(a, b, ("a", "b"))
    dt = result_dtype(a, b)
    shape = (a.shape[0], (a if b is None else b).shape[0])
    if out is None:
        out = empty_aligned(shape, dt)
    else:
        check_out(out, shape, dt, inputs={"a": a, "b": b})
    be = _backend.resolve(backend)
    if be == "numpy":
        bb = None if b is None else b.astype(dt, copy=False)
        out[...] = _ref.cosine_similarity_matrix(a.astype(dt, copy=False), bb)
        return out
    ac = contiguous(a, dt)
    bc = None if b is None else contiguous(b, dt)
    target = _kernel_out(out)
    if be == "cpp":
        _backend.core().cosine_matrix(ac, bc, target)
    else:
        _backend.numba_module("cosine").cosine_matrix(ac, bc, target)
    if target is not out:
        out[...] = target
    return out
