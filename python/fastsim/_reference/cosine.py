"""Cosine similarity, reference semantics.

``cos(u, v) = u.v / (|u| |v|)`` clamped to [-1, 1].  A zero vector has
similarity 0 with everything (not NaN).  A vector holding NaN or inf has
similarity NaN with everything, zero vectors included (NaN in gives NaN out,
and inf / inf is NaN).

Cosine does not change when a vector is multiplied by a positive number, and
the reference uses that: each row is first multiplied by a power of two that
brings its largest entry into [0.5, 1) (exact: only exponents change), so no
square overflows or underflows and rows of any finite magnitude, from
subnormals to the largest finite numbers, get their cosine.
"""

from __future__ import annotations

import numpy as np


def _scaled_rows(a: np.ndarray):
    """``(a * 2^-e, e)`` per row, ``e`` the exponent of the row's largest |entry| (0 for zero rows)."""
    with np.errstate(invalid="ignore"):
        peak = np.max(np.abs(a), axis=1, initial=0)
    _, e = np.frexp(peak)
    return np.ldexp(a, -e[:, None]).astype(a.dtype, copy=False), e


def _unit_rows_and_norms(a: np.ndarray):
    scaled, e = _scaled_rows(a)
    # Pairwise summation (np.add.reduce along a contiguous axis): einsum sums a
    # float32 row in one running sum, 1e-3 off for 2e7 positive entries.
    norms = np.sqrt(np.add.reduce(scaled * scaled, axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        u = scaled / norms[:, None]
    u[norms == 0] = 0.0
    u[~np.isfinite(norms)] = np.nan  # a NaN or inf entry
    return u, norms, e


def unit_rows(a: np.ndarray) -> np.ndarray:
    """``a[i] / |a[i]|`` for each row, in ``a``'s dtype; zero rows stay zero, rows holding NaN or inf become NaN."""
    return _unit_rows_and_norms(a)[0]


def row_norms(a: np.ndarray) -> np.ndarray:
    """``|a[i]|`` for each row without overflow or underflow in the squares (inf only past the dtype's range)."""
    _, norms, e = _unit_rows_and_norms(a)
    with np.errstate(over="ignore"):
        return np.ldexp(norms, e)


def _clamp(s):
    # np.clip keeps NaN, which is what the spec asks for
    return np.clip(s, -1.0, 1.0)


def cosine_similarity(u: np.ndarray, v: np.ndarray) -> float:
    """Similarity of two vectors of the same length."""
    return float(cosine_similarity_rows(u[None, :], v[None, :])[0])


def cosine_similarity_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row i of ``a`` with row i of ``b``: shape (n,)."""
    return _clamp(np.add.reduce(unit_rows(a) * unit_rows(b), axis=1))


def cosine_similarity_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``S[i, j] = cos(a[i], b[j])``; with ``b=None`` the diagonal is exactly 1 for nonzero rows.

    (0 for zero rows, NaN for rows holding NaN or inf.)
    """
    self_sim = b is None
    ua, norms_a, _ = _unit_rows_and_norms(a)
    ub = ua if self_sim else unit_rows(b)
    s = _clamp(ua @ ub.T)
    if self_sim and a.shape[0]:
        diag = np.where(norms_a > 0, 1.0, 0.0)
        diag[~np.isfinite(norms_a)] = np.nan
        np.fill_diagonal(s, diag)
    return s
