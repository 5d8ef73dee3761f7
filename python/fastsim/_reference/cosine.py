"""Cosine similarity, reference semantics.

``cos(u, v) = u.v / (|u| |v|)`` clamped to [-1, 1].  A zero vector has
similarity 0 with everything (not NaN); NaN in gives NaN out; an infinite
entry gives NaN (inf / inf).
"""

from __future__ import annotations

import numpy as np


def inverse_norms(a: np.ndarray) -> np.ndarray:
    """1 / |row| for each row of ``a``, with 0 for zero rows (NaN stays NaN)."""
    norms = np.sqrt(np.einsum("ij,ij->i", a, a))
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / norms
    inv[norms == 0] = 0.0
    return inv


def _clamp(s):
    # np.clip keeps NaN, which is what the spec asks for
    return np.clip(s, -1.0, 1.0)


def cosine_similarity(u: np.ndarray, v: np.ndarray) -> float:
    """Similarity of two vectors of the same length."""
    nu = np.sqrt(np.dot(u, u))
    nv = np.sqrt(np.dot(v, v))
    if nu == 0 or nv == 0:
        return 0.0 * float(np.dot(u, v))  # NaN stays NaN, a zero vector gives 0
    return float(_clamp(np.dot(u, v) / (nu * nv)))


def cosine_similarity_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row i of ``a`` with row i of ``b``: shape (n,)."""
    with np.errstate(invalid="ignore", over="ignore"):
        dots = np.einsum("ij,ij->i", a, b)
        return _clamp(dots * inverse_norms(a) * inverse_norms(b))


def cosine_similarity_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``S[i, j] = cos(a[i], b[j])``; with ``b=None`` the diagonal of nonzero rows is exactly 1."""
    self_sim = b is None
    if self_sim:
        b = a
    with np.errstate(invalid="ignore", over="ignore"):
        inv_a = inverse_norms(a)
        inv_b = inv_a if self_sim else inverse_norms(b)
        s = _clamp((a * inv_a[:, None]) @ (b * inv_b[:, None]).T)
        if self_sim and a.shape[0]:
            diag = np.where(inv_a > 0, 1.0, 0.0)
            diag[np.isnan(inv_a)] = np.nan
            np.fill_diagonal(s, diag)
    return s
