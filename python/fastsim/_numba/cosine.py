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


@nb.njit(**_OPTS)
def inverse_norms_f64(a):
    """1/|row| accumulated and returned in float64: 0 for zero and infinite rows
    (their scores become 0 or NaN downstream), NaN for rows holding NaN."""
    m, d = a.shape
    inv = np.empty(m)
    for i in range(m):
        s = 0.0
        for k in range(d):
            x = np.float64(a[i, k])
            s += x * x
        nrm = np.sqrt(s)
        inv[i] = nrm if nrm != nrm else (0.0 if nrm == 0.0 or nrm == np.inf else 1.0 / nrm)
    return inv


def _inverse_norms_py(a):
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


def _scaled_py(a, inv):
    m, d = a.shape
    out = np.empty_like(a)
    for i in nb.prange(m):
        w = inv[i]
        for k in range(d):
            out[i, k] = a[i, k] * w
    return out


def _clamp_rows_py(out, inv_a, self_diag):
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


# Each helper exists twice: parallel for large inputs, serial for small ones,
# where waking the thread pool costs more than the work.
_inverse_norms = nb.njit(parallel=True, **_OPTS)(_inverse_norms_py)
_scaled = nb.njit(parallel=True, **_OPTS)(_scaled_py)
_clamp_rows = nb.njit(parallel=True, **_OPTS)(_clamp_rows_py)
_inverse_norms_serial = nb.njit(**_OPTS)(_inverse_norms_py)
_scaled_serial = nb.njit(**_OPTS)(_scaled_py)
_clamp_rows_serial = nb.njit(**_OPTS)(_clamp_rows_py)

_PARALLEL_MIN_WORK = 1 << 20  # multiply-adds below which the serial helpers win


def _make_matrix(inverse_norms, scaled, clamp_rows):
    @nb.njit(**_OPTS)
    def matrix(a, b, out, self_sim):
        inv_a = inverse_norms(a)
        an = scaled(a, inv_a)
        if self_sim:
            bn = an
        else:
            bn = scaled(b, inverse_norms(b))
        if a.shape[1] == 0:
            out[:, :] = 0.0
        else:
            np.dot(an, bn.T, out)
        clamp_rows(out, inv_a, self_sim)

    return matrix


_matrix = _make_matrix(_inverse_norms, _scaled, _clamp_rows)
_matrix_serial = _make_matrix(_inverse_norms_serial, _scaled_serial, _clamp_rows_serial)


def cosine_matrix(a, b, out):
    """``out[i, j] = cos(a[i], b[j])``; ``b=None`` compares ``a`` with itself."""
    if a.shape[0] == 0 or out.size == 0:
        return
    fn = _matrix if out.size * a.shape[1] >= _PARALLEL_MIN_WORK else _matrix_serial
    if b is None:
        fn(a, a, out, True)
    else:
        fn(a, b, out, False)


def _rows_py(a, b, out):
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


_rows = nb.njit(parallel=True, **_OPTS)(_rows_py)
_rows_serial = nb.njit(**_OPTS)(_rows_py)


def cosine_rows(a, b, out):
    """``out[i] = cos(a[i], b[i])``."""
    (_rows if a.size >= _PARALLEL_MIN_WORK else _rows_serial)(a, b, out)
