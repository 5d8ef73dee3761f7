"""Numba cosine kernels, following the structure of ``_reference.cosine``.

The matrix kernel normalizes both operands (a parallel O((m + n) d) pass),
hands the product to BLAS through ``np.dot`` (SciPy's BLAS under Numba), and
clamps in a parallel pass; the row kernel fuses the three dot products of a
row into one loop accumulated in float64.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_OPTS = dict(nogil=True, cache=True, error_model="numpy")


@nb.njit(parallel=True, **_OPTS)
def _inverse_norms(a):
    m, d = a.shape
    inv = np.empty(m, dtype=a.dtype)
    for i in nb.prange(m):
        s = 0.0
        for k in range(d):
            x = np.float64(a[i, k])
            s += x * x
        nrm = np.sqrt(s)
        if np.isnan(nrm):
            inv[i] = np.nan
        elif nrm == 0.0 or np.isinf(nrm):
            inv[i] = 0.0  # zero row scores 0; inf row gives inf * 0 = NaN downstream
        else:
            inv[i] = 1.0 / nrm
    return inv


@nb.njit(parallel=True, **_OPTS)
def _scaled(a, inv):
    m, d = a.shape
    out = np.empty_like(a)
    for i in nb.prange(m):
        w = inv[i]
        for k in range(d):
            out[i, k] = a[i, k] * w
    return out


@nb.njit(parallel=True, **_OPTS)
def _clamp_rows(out, inv_a, self_diag):
    m, n = out.shape
    for i in nb.prange(m):
        for j in range(n):
            s = out[i, j]
            if s > 1.0:
                out[i, j] = 1.0
            elif s < -1.0:
                out[i, j] = -1.0
        if self_diag:
            w = inv_a[i]
            if np.isnan(w):
                out[i, i] = np.nan
            elif w > 0:
                out[i, i] = 1.0
            else:
                out[i, i] = 0.0


@nb.njit(**_OPTS)
def _matrix(a, b, out, self_sim):
    inv_a = _inverse_norms(a)
    an = _scaled(a, inv_a)
    if self_sim:
        bn = an
    else:
        bn = _scaled(b, _inverse_norms(b))
    if a.shape[1] == 0:
        out[:, :] = 0.0
    else:
        np.dot(an, bn.T, out)
    _clamp_rows(out, inv_a, self_sim)


def cosine_matrix(a, b, out):
    """``out[i, j] = cos(a[i], b[j])``; ``b=None`` compares ``a`` with itself."""
    if a.shape[0] == 0 or out.size == 0:
        return
    if b is None:
        _matrix(a, a, out, True)
    else:
        _matrix(a, b, out, False)


@nb.njit(parallel=True, **_OPTS)
def cosine_rows(a, b, out):
    """``out[i] = cos(a[i], b[i])``."""
    n, d = a.shape
    for i in nb.prange(n):
        xy = 0.0
        xx = 0.0
        yy = 0.0
        for k in range(d):
            x = np.float64(a[i, k])
            y = np.float64(b[i, k])
            xy += x * y
            xx += x * x
            yy += y * y
        nx = np.sqrt(xx)
        ny = np.sqrt(yy)
        if np.isnan(xy) or np.isnan(nx) or np.isnan(ny) or np.isinf(nx) or np.isinf(ny):
            out[i] = np.nan
        elif nx == 0.0 or ny == 0.0:
            out[i] = 0.0
        else:
            s = xy / (nx * ny)
            out[i] = min(1.0, max(-1.0, s))
