"""Numba cosine kernels, following the structure of ``_reference.cosine``.

The matrix kernel normalizes both operands (an O((m + n) d) pass), hands the
product to BLAS through ``np.dot`` (SciPy's BLAS under Numba), and clamps in
an O(m n) pass; both passes run in parallel only for large outputs (see
``_MATRIX_PARALLEL_MIN_OUT``).  The row kernel fuses the three dot products
of a row into one loop accumulated in float64.

Rows of any finite magnitude give their cosine: a row whose float64 sum of
squares lies in [``SAFE_MIN``, ``SAFE_MAX``] is normalized as it is, any other
finite row is first scaled by a power of two (exact, see :func:`row_factors`).
float32 rows always fall inside that range in float64; float64 rows leave it
only beyond about 1e-180 or 1e180.
"""

from __future__ import annotations

import math
import types

import numba as nb
import numpy as np

_OPTS = dict(nogil=True, cache=True, error_model="numpy")

SAFE_MIN = 2.0**-600
SAFE_MAX = 2.0**600
_DBL_MAX = 1.7976931348623157e308


@nb.njit(**_OPTS, fastmath={"reassoc", "contract"})
def sum_of_squares(row):
    """Sum of the squared entries of ``row`` in float64.

    Reassociation is allowed here (and only here) so that the sum runs in
    vector partial sums: one running sum is a chain of dependent adds, and
    normalizing a 1024 x 256 float32 matrix took 0.5 ms that way.  NaN and
    inf still propagate (no finite-math assumption); for float32 input every
    square is exact in float64, so only the order of the final additions
    differs from a left-to-right sum.
    """
    s = 0.0
    for k in range(row.shape[0]):
        x = np.float64(row[k])
        s += x * x
    return s


@nb.njit(**_OPTS)
def row_factors(row):
    """``(pre, post)`` such that ``(row * pre) * post``, in float64, is the unit row.

    ``pre`` is 1 and ``post = 1/|row|`` for rows whose sum of squares is in the
    safe range.  Other finite rows are scaled by ``2^-e`` (``e`` the exponent
    of their largest entry) in two representable steps, so that
    ``1/|row| = pre * post`` (inf when that exceeds float64's range).  A zero
    row has ``post = 0``, a row holding NaN or inf ``post = NaN``.
    """
    d = row.shape[0]
    s = sum_of_squares(row)
    if s >= SAFE_MIN and s <= SAFE_MAX:
        return 1.0, 1.0 / np.sqrt(s)
    peak = 0.0
    for k in range(d):
        x = abs(np.float64(row[k]))
        if not x <= _DBL_MAX:  # inf or NaN
            return 1.0, np.nan
        peak = max(peak, x)
    if peak == 0.0:
        return 1.0, 0.0
    e = math.frexp(peak)[1]
    s = 0.0
    for k in range(d):
        x = math.ldexp(np.float64(row[k]), -e)
        s += x * x
    e1 = e // 2
    return math.ldexp(1.0, -e1), math.ldexp(1.0 / np.sqrt(s), e1 - e)


@nb.njit(**_OPTS)
def normalized_rows(a):
    """Unit rows in ``a``'s dtype, scaled in float64 through :func:`row_factors`
    (1/|row| of a tiny float32 row may not fit in float32; any finite magnitude
    works): zero rows stay 0, rows holding NaN or inf become NaN."""
    m, d = a.shape
    out = np.empty_like(a)
    for i in range(m):
        p, q = row_factors(a[i])
        for k in range(d):
            out[i, k] = (np.float64(a[i, k]) * p) * q
    return out


@nb.njit(**_OPTS)
def unit_factors(a):
    """:func:`row_factors` of every row of ``a``: two float64 arrays ``(pre, post)``."""
    m = a.shape[0]
    pre = np.empty(m)
    post = np.empty(m)
    for i in range(m):
        pre[i], post[i] = row_factors(a[i])
    return pre, post


def _unit_rows_py(a):
    """Unit rows in ``a``'s dtype (scaled in float64) and each row's ``post``
    factor: 0 for zero rows, NaN for rows holding NaN or inf, positive otherwise."""
    m, d = a.shape
    out = np.empty_like(a)
    post = np.empty(m)
    for i in nb.prange(m):
        p, q = row_factors(a[i])
        post[i] = q
        for k in range(d):
            out[i, k] = (np.float64(a[i, k]) * p) * q
    return out, post


def _clamp_rows_py(out, post_a, self_diag):
    m, n = out.shape
    for i in nb.prange(m):
        row = out[i]
        # Selects, every element stored: LLVM vectorizes this loop.  The
        # branches with conditional stores it was before ran scalar, 0.87 ms
        # for a 1024 x 1024 float32 output (a fifth of the product's time)
        # against 0.11 ms now.  NaN fails both comparisons and stays.
        for j in range(n):
            s = row[j]
            t = 1.0 if s > 1.0 else s
            row[j] = -1.0 if t < -1.0 else t
        if self_diag:
            w = post_a[i]
            if np.isnan(w):
                out[i, i] = np.nan
            elif w > 0:
                out[i, i] = 1.0
            else:
                out[i, i] = 0.0


def _jit_as(py_func, name, **flags):
    """``njit(**flags)`` of ``py_func`` compiled under the name ``name``.

    Numba's on-disk cache files a function under its qualified name and first
    line, not its compile flags: two compilations of one function (or two
    closures of one factory) would share a cache entry, and the later process
    would load whichever was written last for both, e.g. the parallel code
    where the serial was meant.  A name of its own gives each variant its own
    entry.
    """
    f = types.FunctionType(py_func.__code__, py_func.__globals__, name, py_func.__defaults__, py_func.__closure__)
    f.__qualname__ = name
    return nb.njit(**flags, **_OPTS)(f)


# Each helper exists twice: parallel for large inputs, serial for small ones,
# where waking the thread pool costs more than the work.
_unit_rows = _jit_as(_unit_rows_py, "_unit_rows", parallel=True)
_clamp_rows = _jit_as(_clamp_rows_py, "_clamp_rows", parallel=True)
_unit_rows_serial = _jit_as(_unit_rows_py, "_unit_rows_serial")
_clamp_rows_serial = _jit_as(_clamp_rows_py, "_clamp_rows_serial")

_PARALLEL_MIN_WORK = 1 << 20  # multiply-adds below which the serial helpers win
# Outputs below which the matrix kernel keeps its O((m + n) d) and O(m n)
# passes serial: Numba's OpenMP workers spin for a while after a parallel
# pass and then share the cores with the BLAS threads of the product.  At
# 1024 x 1024 x 256 (float32, 2 cores, GCC's default spin) the parallel
# passes left the kernel at 0.63-0.69x NumPy's speed, the serial ones at
# 0.96-1.04x; at 4096 x 4096 the parallel clamp pays for itself again.
_MATRIX_PARALLEL_MIN_OUT = 1 << 22


def _make_matrix(unit_rows, clamp_rows, name):
    def matrix(a, b, out, self_sim):
        an, post_a = unit_rows(a)
        if self_sim:
            bn = an
        else:
            bn = unit_rows(b)[0]
        if a.shape[1] == 0:
            out[:, :] = 0.0
        else:
            np.dot(an, bn.T, out)
        clamp_rows(out, post_a, self_sim)

    return _jit_as(matrix, name)


_matrix = _make_matrix(_unit_rows, _clamp_rows, "_matrix")
_matrix_serial = _make_matrix(_unit_rows_serial, _clamp_rows_serial, "_matrix_serial")


def cosine_matrix(a, b, out):
    """``out[i, j] = cos(a[i], b[j])``; ``b=None`` compares ``a`` with itself."""
    if a.shape[0] == 0 or out.size == 0:
        return
    fn = _matrix if out.size >= _MATRIX_PARALLEL_MIN_OUT else _matrix_serial
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
        if xx >= SAFE_MIN and xx <= SAFE_MAX and yy >= SAFE_MIN and yy <= SAFE_MAX:
            s = xy / (np.sqrt(xx) * np.sqrt(yy))
            out[i] = min(1.0, max(-1.0, s))
            continue
        # a zero, non-finite or out-of-range row: through the unit rows
        px, qx = row_factors(a[i])
        py, qy = row_factors(b[i])
        if np.isnan(qx) or np.isnan(qy):
            out[i] = np.nan
        elif qx == 0.0 or qy == 0.0:
            out[i] = 0.0
        else:
            s = 0.0
            for k in range(d):
                s += ((np.float64(a[i, k]) * px) * qx) * ((np.float64(b[i, k]) * py) * qy)
            out[i] = min(1.0, max(-1.0, s))


_rows = _jit_as(_rows_py, "_rows", parallel=True)
_rows_serial = _jit_as(_rows_py, "_rows_serial")


def cosine_rows(a, b, out):
    """``out[i] = cos(a[i], b[i])``."""
    (_rows if a.size >= _PARALLEL_MIN_WORK else _rows_serial)(a, b, out)
