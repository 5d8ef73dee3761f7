"""Numba kernels for the recurrent layers (LSTM, GRU, vanilla RNN).

Each kernel runs one layer in one direction over a time-major, C-contiguous
input and follows the reference's structure (:mod:`fastsim._reference.rnn`):

1. one GEMM projects the inputs of all time steps at once:
   ``(T*B, D) @ (D, G*H)`` through ``np.dot`` (SciPy's BLAS);
2. per time step, the recurrent GEMM ``(B, H) @ (H, G*H)`` into a buffer
   reused across steps (a plain loop instead of BLAS when it is tiny), then one fused, vectorized loop per batch row adds
   the two projections and the bias, applies the gate nonlinearities and
   updates the state in place.

Arguments are those of the public module's per-layer dispatch
(:mod:`fastsim.rnn`): ``x`` (T, B, D); ``w_ih_t`` (D, G*H) and ``w_hh_t``
(H, G*H), the transposed PyTorch weights with gate-ordered columns; ``bias``
(G*H,) the fused bias (and the GRU's ``bias_hn`` (H,)); ``h0`` (and ``c0``)
(B, H); ``lengths`` int64 (B,) within 1..T; ``reverse``; the RNN's ``relu``.

Threads: the GEMMs run on BLAS's own threads.  The gate loop stays on the
calling thread: with a Numba thread pool beside BLAS's, whose workers
spin-wait after each call, the two pools fight for the cores, and a ``prange``
over the batch measured 10x to 40x slower on two cores (B=64, H=256).

The gate nonlinearities use a branch-free exponential written here so LLVM
can vectorize the fused loop (libm's ``exp`` and ``tanh`` are scalar calls):
Cody-Waite reduction to ``|r| <= ln2/2``, a Taylor polynomial (degree 12 in
float64, 7 in float32) and an exact power-of-two scale built from the bits of
the integer exponent.  Arguments are clamped to [-80, 80], where sigmoid and
tanh are saturated far below the dtype's resolution; NaN passes through.
Below -80 the sigmoid is exactly 0, as in the reference (``SIGMOID_ZERO_BELOW``).
Measured against extended-precision values: sigmoid and tanh within 4e-16
(float64) and 2e-7 (float32) absolute.
"""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# ln(2) split so that k * _LN2_HI is exact for |k| <= 127 and _LN2_HI + _LN2_LO
# carries ln(2) well beyond the working precision.
_LN2 = Decimal("0.693147180559945309417232121458176568075500134360255254120680")
_LN2_HI64 = math.ldexp(round(math.ldexp(float(_LN2), 32)), -32)
_LN2_LO64 = float(_LN2 - Decimal(_LN2_HI64))
_LN2_HI32 = math.ldexp(round(math.ldexp(float(_LN2), 12)), -12)
_LN2_LO32 = float(_LN2 - Decimal(_LN2_HI32))
_CLAMP = 80.0


def _exp_kernel_constants(ftype, degree):
    """Taylor coefficients of exp (highest degree first), log2(e), the ln(2) split and the clamp, in ``ftype``."""
    taylor = tuple(ftype(1.0 / math.factorial(n)) for n in range(degree, -1, -1))
    hi, lo = (_LN2_HI64, _LN2_LO64) if ftype is np.float64 else (_LN2_HI32, _LN2_LO32)
    return taylor, ftype(1.0 / math.log(2.0)), ftype(hi), ftype(lo), ftype(_CLAMP)


def _make_pow2(bits):
    """``2.0**k`` for an integer ``k`` in the normal range, built from its bits."""
    mant, bias = (52, 1023) if bits == 64 else (23, 127)
    ftype = types.float64 if bits == 64 else types.float32

    @intrinsic
    def pow2(typingctx, k):
        if not isinstance(k, types.Integer):
            return None
        sig = ftype(k)

        def codegen(context, builder, signature, args):
            ity = ir.IntType(bits)
            (kv,) = args
            if kv.type.width < bits:
                kv = builder.sext(kv, ity)
            elif kv.type.width > bits:
                kv = builder.trunc(kv, ity)
            biased = builder.add(kv, ir.Constant(ity, bias))
            return builder.bitcast(builder.shl(biased, ir.Constant(ity, mant)), context.get_value_type(ftype))

        return sig, codegen

    return pow2


# these scalar functions are inlined into the kernels by LLVM; they carry the kernels' flags
# so that their instructions may be contracted and vectorized alike
_INLINED_OPTIONS = dict(nogil=True, error_model="numpy", fastmath={"contract"})


def _exp_for(ftype):
    """A branch-free, vectorizable ``exp`` for one float type, clamped to [-80, 80]."""
    bits = 32 if ftype is np.float32 else 64
    degree = 7 if bits == 32 else 12
    taylor, log2e, ln2_hi, ln2_lo, clamp = _exp_kernel_constants(ftype, degree)
    one = ftype(1.0)
    half = ftype(0.5)
    pow2 = _make_pow2(bits)
    itype = np.int32 if bits == 32 else np.int64

    if bits == 32:
        c7, c6, c5, c4, c3, c2, c1, c0 = taylor

        @njit(**_INLINED_OPTIONS)
        def poly(r):
            return ((((((c7 * r + c6) * r + c5) * r + c4) * r + c3) * r + c2) * r + c1) * r + c0

    else:
        c12, c11, c10, c9, c8, c7, c6, c5, c4, c3, c2, c1, c0 = taylor

        @njit(**_INLINED_OPTIONS)
        def poly(r):
            p = (((((c12 * r + c11) * r + c10) * r + c9) * r + c8) * r + c7) * r + c6
            return (((((p * r + c5) * r + c4) * r + c3) * r + c2) * r + c1) * r + c0

    @njit(**_INLINED_OPTIONS)
    def exp(x):
        # written as selects that let NaN through (min/max would replace it)
        x = x if not x > clamp else clamp
        x = x if not x < -clamp else -clamp
        kf = np.floor(x * log2e + half)
        r = (x - kf * ln2_hi) - kf * ln2_lo
        return poly(r) * pow2(itype(kf))

    return exp, one


_EXP = {32: _exp_for(np.float32), 64: _exp_for(np.float64)}


def _sigmoid(z):  # pragma: no cover - compiled through the overload below
    raise NotImplementedError


def _tanh(z):  # pragma: no cover
    raise NotImplementedError


def _one(z):  # pragma: no cover
    raise NotImplementedError


def _zero(z):  # pragma: no cover
    raise NotImplementedError


@overload(_sigmoid)
def _ov_sigmoid(z):
    if isinstance(z, types.Float):
        exp, one = _EXP[z.bitwidth]
        zero = one - one
        below = -one * _CLAMP  # exactly 0 below -80, as the reference (SIGMOID_ZERO_BELOW)

        def impl(z):
            s = one / (one + exp(-z))
            return zero if z < below else s

        return impl
    return None


@overload(_tanh)
def _ov_tanh(z):
    if isinstance(z, types.Float):
        exp, one = _EXP[z.bitwidth]
        two = one + one

        def impl(z):
            # 1 - 2 / (exp(2z) + 1): absolute error of a few ulps of 1, which is
            # what the absolute tolerances of the comparisons measure
            return one - two / (exp(two * z) + one)

        return impl
    return None


@overload(_one)
def _ov_one(z):
    if isinstance(z, types.Float):
        one = _EXP[z.bitwidth][1]
        return lambda z: one
    return None


@overload(_zero)
def _ov_zero(z):
    if isinstance(z, types.Float):
        zero = _EXP[z.bitwidth][1] * 0
        return lambda z: zero
    return None


# --------------------------------------------------------------------------- fused gate loops

# error_model="numpy": no ZeroDivisionError branch in the gate division, which
# would stop LLVM from vectorizing the fused loop; "contract" only allows fused
# multiply-adds, no reassociation.
_OPTIONS = dict(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})


@njit(**_OPTIONS)
def _lstm_row(xr, hr, bias, c, h, out):
    """Gates and state update of one batch row; ``xr``, ``hr`` (4H,), ``c``, ``h``, ``out`` (H,)."""
    H = c.shape[0]
    for j in range(H):
        zi = xr[j] + hr[j] + bias[j]
        zf = xr[H + j] + hr[H + j] + bias[H + j]
        zg = xr[2 * H + j] + hr[2 * H + j] + bias[2 * H + j]
        zo = xr[3 * H + j] + hr[3 * H + j] + bias[3 * H + j]
        cn = _sigmoid(zf) * c[j] + _sigmoid(zi) * _tanh(zg)
        hn = _sigmoid(zo) * _tanh(cn)
        c[j] = cn
        h[j] = hn
        out[j] = hn


@njit(**_OPTIONS)
def _gru_row(xr, hr, bias, bias_hn, h, out):
    H = h.shape[0]
    for j in range(H):
        r = _sigmoid(xr[j] + hr[j] + bias[j])
        z = _sigmoid(xr[H + j] + hr[H + j] + bias[H + j])
        n = _tanh((xr[2 * H + j] + bias[2 * H + j]) + r * (hr[2 * H + j] + bias_hn[j]))
        hn = (_one(z) - z) * n + z * h[j]
        h[j] = hn
        out[j] = hn


@njit(**_OPTIONS)
def _rnn_row(xr, hr, bias, h, out, relu):
    H = h.shape[0]
    if relu:
        for j in range(H):
            a = xr[j] + hr[j] + bias[j]
            hn = a if not a < 0 else _zero(a)  # NaN propagates, as with np.maximum
            h[j] = hn
            out[j] = hn
    else:
        for j in range(H):
            hn = _tanh(xr[j] + hr[j] + bias[j])
            h[j] = hn
            out[j] = hn


# Below this many multiply-adds the per-step product runs in a plain vectorized
# loop on the calling thread: BLAS would hand it to its thread pool, whose
# wake-up costs more than the product (measured: (1, 128) @ (128, 512) takes
# 6 us in the loop; the same call through BLAS ranged from 4 us to milliseconds
# on a busy machine).
_SMALL_PRODUCT = 1 << 18


@njit(**_OPTIONS)
def _small_matmul(a, b, out):
    """``out = a @ b`` without BLAS, one row of ``out`` at a time."""
    M, K = a.shape
    N = b.shape[1]
    for i in range(M):
        row = out[i]
        for n in range(N):
            row[n] = 0
        for k in range(K):
            aik = a[i, k]
            bk = b[k]
            for n in range(N):
                row[n] += aik * bk[n]


@njit(**_OPTIONS)
def _recurrent_product(h, w_hh_t, out):
    """``out = h @ w_hh_t``, the per-step product (B, H) @ (H, G*H)."""
    if h.shape[0] * w_hh_t.shape[0] * w_hh_t.shape[1] <= _SMALL_PRODUCT:
        _small_matmul(h, w_hh_t, out)
    else:
        np.dot(h, w_hh_t, out)


@njit(**_OPTIONS)
def _project(x, w_ih_t):
    """The input projection of every time step: (T*B, D) @ (D, G*H), one GEMM."""
    T, B, D = x.shape
    return np.dot(x.reshape((T * B, D)), w_ih_t).reshape((T, B, w_ih_t.shape[1]))


# --------------------------------------------------------------------------- layers


@njit(**_OPTIONS)
def lstm_layer(x, w_ih_t, w_hh_t, bias, h0, c0, lengths, reverse):
    """One LSTM direction.  Returns ``(out (T, B, H), h_n (B, H), c_n (B, H))``."""
    T, B, _ = x.shape
    xp = _project(x, w_ih_t)
    out = np.zeros((T, B, h0.shape[1]), dtype=h0.dtype)
    h = h0.copy()
    c = c0.copy()
    hp = np.empty((B, w_hh_t.shape[1]), dtype=h0.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        _recurrent_product(h, w_hh_t, hp)
        for b in range(B):
            if t < lengths[b]:
                _lstm_row(xp[t, b], hp[b], bias, c[b], h[b], out[t, b])
    return out, h, c


@njit(**_OPTIONS)
def gru_layer(x, w_ih_t, w_hh_t, bias, bias_hn, h0, lengths, reverse):
    """One GRU direction.  ``bias`` is ``b_ih + [b_hr, b_hz, 0]``, ``bias_hn`` is ``b_hn``.

    Returns ``(out (T, B, H), h_n (B, H))``.
    """
    T, B, _ = x.shape
    xp = _project(x, w_ih_t)
    out = np.zeros((T, B, h0.shape[1]), dtype=h0.dtype)
    h = h0.copy()
    hp = np.empty((B, w_hh_t.shape[1]), dtype=h0.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        _recurrent_product(h, w_hh_t, hp)
        for b in range(B):
            if t < lengths[b]:
                _gru_row(xp[t, b], hp[b], bias, bias_hn, h[b], out[t, b])
    return out, h


@njit(**_OPTIONS)
def rnn_layer(x, w_ih_t, w_hh_t, bias, h0, lengths, reverse, relu):
    """One vanilla RNN direction (tanh, or relu when ``relu``).  Returns ``(out, h_n)``."""
    T, B, _ = x.shape
    xp = _project(x, w_ih_t)
    out = np.zeros((T, B, h0.shape[1]), dtype=h0.dtype)
    h = h0.copy()
    hp = np.empty((B, w_hh_t.shape[1]), dtype=h0.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        _recurrent_product(h, w_hh_t, hp)
        for b in range(B):
            if t < lengths[b]:
                _rnn_row(xp[t, b], hp[b], bias, h[b], out[t, b], relu)
    return out, h
