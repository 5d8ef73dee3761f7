"""Numba kernels for the walk back through time of the recurrent layers.

Derived from :func:`fastsim._reference.rnn_backward.step_gradients`, whose
workspace layout they read (the reference's training forward writes it):
per step, one fused loop per batch row applies the gate derivatives, then
one product ``d a_h(t) @ W_hh`` (``np.dot``, SciPy's BLAS) gives the
hidden-state gradient of the step before.  The products over all steps
(``dx``, ``dW_ih``, ``dW_hh``) stay with the caller, one BLAS call each.

Arguments: ``order`` (T,) int64, the time steps in the order the backward
visits them; ``active`` (T, B) bool; the workspace arrays (T, B, .); ``d_out``
(T, B, H); ``dh`` (and ``dc``) (B, H), the final states' gradients, updated in
place to the initial states'; ``W_hh`` (G*H, H).  They return
``(da_x, da_h)`` (T, B, G*H) (one array twice where they are equal).
A row inactive at a step passes its state gradient through and gets exact
zeros there (no arithmetic on its workspace, which may hold NaN).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(nogil=True, cache=True, error_model="numpy")


@njit(**_JIT)
def lstm_steps(order, active, gates, c_prev, c_new, d_out, dh, dc, W_hh):
    T, B, H = d_out.shape
    da = np.zeros((T, B, 4 * H), dtype=d_out.dtype)
    for t in order:
        for b in range(B):
            if not active[t, b]:
                continue
            for j in range(H):
                i, f, g, o = gates[t, b, j], gates[t, b, H + j], gates[t, b, 2 * H + j], gates[t, b, 3 * H + j]
                tanh_c = np.tanh(c_new[t, b, j])
                dh_new = dh[b, j] + d_out[t, b, j]
                dcs = dc[b, j] + dh_new * o * (1.0 - tanh_c * tanh_c)
                da[t, b, j] = dcs * g * i * (1.0 - i)
                da[t, b, H + j] = dcs * c_prev[t, b, j] * f * (1.0 - f)
                da[t, b, 2 * H + j] = dcs * i * (1.0 - g * g)
                da[t, b, 3 * H + j] = dh_new * tanh_c * o * (1.0 - o)
                dc[b, j] = dcs * f
        back = np.dot(da[t], W_hh)
        for b in range(B):
            if active[t, b]:
                dh[b, :] = back[b]
    return da, da


@njit(**_JIT)
def gru_steps(order, active, gates, h_prev, d_out, dh, W_hh):
    T, B, H = d_out.shape
    da_x = np.zeros((T, B, 3 * H), dtype=d_out.dtype)
    da_h = np.zeros((T, B, 3 * H), dtype=d_out.dtype)
    direct = np.zeros((B, H), dtype=d_out.dtype)
    for t in order:
        for b in range(B):
            if not active[t, b]:
                continue
            for j in range(H):
                r, z, n, h_n = gates[t, b, j], gates[t, b, H + j], gates[t, b, 2 * H + j], gates[t, b, 3 * H + j]
                dh_new = dh[b, j] + d_out[t, b, j]
                da_n = dh_new * (1.0 - z) * (1.0 - n * n)
                da_r = da_n * h_n * r * (1.0 - r)
                da_z = dh_new * (h_prev[t, b, j] - n) * z * (1.0 - z)
                da_x[t, b, j] = da_r
                da_x[t, b, H + j] = da_z
                da_x[t, b, 2 * H + j] = da_n
                da_h[t, b, j] = da_r
                da_h[t, b, H + j] = da_z
                da_h[t, b, 2 * H + j] = da_n * r
                direct[b, j] = dh_new * z
        back = np.dot(da_h[t], W_hh)
        for b in range(B):
            if active[t, b]:
                dh[b, :] = back[b] + direct[b]
    return da_x, da_h


@njit(**_JIT)
def rnn_steps(order, active, h_new, d_out, dh, W_hh, relu):
    T, B, H = d_out.shape
    da = np.zeros((T, B, H), dtype=d_out.dtype)
    for t in order:
        for b in range(B):
            if not active[t, b]:
                continue
            for j in range(H):
                h = h_new[t, b, j]
                dh_new = dh[b, j] + d_out[t, b, j]
                if relu:
                    # 1 above 0, 0 at and below, NaN for NaN (as the reference)
                    da[t, b, j] = dh_new if h > 0 else dh_new * (h * 0.0)
                else:
                    da[t, b, j] = dh_new * (1.0 - h * h)
        back = np.dot(da[t], W_hh)
        for b in range(B):
            if active[t, b]:
                dh[b, :] = back[b]
    return da, da
