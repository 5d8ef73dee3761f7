"""Training form of the recurrent layers: forward with workspace, backward, per backend.

This room owns the dispatch between the backends' training kernels.  It may
call :mod:`fastsim._reference.rnn_backward` (the spec, and the stacked driver
every backend shares), the compiled core and :mod:`fastsim._numba.rnn_backward`; it checks nothing (callers hand
it arrays of one float dtype and int64 lengths within 1..T) and knows nothing
of PyTorch.

``forward(be, kind, x, weights, initial, lengths, batch_first, nonlinearity)``
returns ``(outputs, finals, tape)``; ``backward(be, tape, weights, d_outputs,
d_finals)`` returns ``(dx, d_weights, d_initial)``, shapes as in
:func:`fastsim._reference.rnn_backward.backward`.  ``weights`` is a list over
layers of a list over directions of ``(W_ih, W_hh, b_ih, b_hh)`` in PyTorch
layout; the tape belongs to the backend that made it.

The stacked driver (layers, directions, layouts, summing the directions'
input gradients) is the reference's for every backend; a backend supplies
only the two per-direction kernels.
"""

from __future__ import annotations

import numpy as np

from . import _backend
from ._reference import rnn_backward as _ref

SUPPORTED = ("numpy", "numba", "cpp")


def _c(a):
    return np.ascontiguousarray(a)


def _cpp_direction_forward(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse):
    core = _backend.core()
    x = _c(x)
    T, B = x.shape[:2]
    H = W_hh.shape[1]
    dt = x.dtype
    lstm = c0 is not None
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    h = np.array(h0, dtype=dt, order="C")
    c = np.array(c0, dtype=dt, order="C") if lstm else None
    out = np.zeros((T, B, H), dtype=dt)
    # the workspace: every entry the backward reads is written (rows past their length are never read)
    act = np.empty((T, B, H if cell.gates == 1 else 4 * H), dtype=dt)
    h_prev = np.empty((T, B, H), dtype=dt)
    c_prev = np.empty((T, B, H), dtype=dt) if lstm else None
    tanh_c = np.empty((T, B, H), dtype=dt) if lstm else None
    core.rnn_train_forward(cell.core_id, x, _c(W_ih), _c(W_hh), _c(b_ih), _c(b_hh), lengths, reverse, h, c, out, act,
                           h_prev, c_prev, tanh_c)
    active = np.arange(T)[:, None] < lengths[None, :]
    work = {"act": act, "tanh_c": tanh_c, "lengths": lengths}
    finals = (h,) if c is None else (h, c)
    return out, finals, _ref.DirectionTape(x, h_prev, c_prev, work, active, reverse)


def _cpp_direction_backward(cell, tape, W_ih, W_hh, d_out, d_h, d_c):
    core = _backend.core()
    x = tape.x
    T, B, D = x.shape
    GH, H = W_hh.shape
    dt = x.dtype
    dh = np.array(d_h, dtype=dt, order="C")
    dc = np.array(d_c, dtype=dt, order="C") if tape.c_prev is not None else None
    dx = np.empty((T, B, D), dtype=dt)
    grads = (np.empty((GH, D), dtype=dt), np.empty((GH, H), dtype=dt), np.empty(GH, dtype=dt), np.empty(GH, dtype=dt))
    work = tape.work
    core.rnn_train_backward(cell.core_id, x, _c(W_ih), _c(W_hh), work["lengths"], tape.reverse, work["act"],
                            tape.h_prev, tape.c_prev, work["tanh_c"], _c(d_out), dh, dc, dx, *grads)
    return dx, grads, dh, dc


def _numba_direction_backward(cell, tape, W_ih, W_hh, d_out, d_h, d_c):
    """The reference's forward and all-steps products; the walk back through time in Numba."""
    kernels = _backend.numba_module("rnn_backward")
    T = d_out.shape[0]
    order = np.arange(T, dtype=np.int64) if tape.reverse else np.arange(T - 1, -1, -1, dtype=np.int64)
    dt = d_out.dtype
    dh = np.array(d_h, dtype=dt, order="C")
    d_out = _c(d_out)
    W_hh = _c(W_hh)
    work = tape.work
    dc = None
    if tape.c_prev is not None:
        dc = np.array(d_c, dtype=dt, order="C")
        da_x, da_h = kernels.lstm_steps(order, tape.active, work["gates"], tape.c_prev, work["c_new"], d_out, dh, dc,
                                        W_hh)
    elif "gates" in work:
        da_x, da_h = kernels.gru_steps(order, tape.active, work["gates"], tape.h_prev, d_out, dh, W_hh)
    else:
        da_x, da_h = kernels.rnn_steps(order, tape.active, work["h_new"], d_out, dh, W_hh, cell.relu)
    dx, grads = _ref.all_steps_products(tape, W_ih, da_x, da_h)
    return dx, grads, dh, dc


_DIRECTIONS = {
    "numpy": (_ref.direction_forward, _ref.direction_backward),
    "numba": (_ref.direction_forward, _numba_direction_backward),
    "cpp": (_cpp_direction_forward, _cpp_direction_backward),
}


def forward(be, kind, x, weights, initial, lengths, batch_first, nonlinearity="tanh"):
    return _ref.forward(kind, x, weights, initial, lengths, batch_first, nonlinearity, direction=_DIRECTIONS[be][0])


def backward(be, tape, weights, d_outputs, d_finals):
    return _ref.backward(tape, weights, d_outputs, d_finals, direction=_DIRECTIONS[be][1])
