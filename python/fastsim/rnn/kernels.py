"""The per-direction kernels of every backend, in the form :mod:`fastsim.rnn.driver` calls them.

This room owns the adapters between the stacked driver and each backend's
kernels for one layer in one direction: the inference forward, the training
forward that keeps a workspace (the tape) and its backward.  It may call the
reference (:mod:`fastsim._reference.rnn`, :mod:`fastsim._reference.rnn_backward`),
the Numba kernels, the compiled core and :mod:`fastsim.rnn.cells`; it checks
nothing (callers hand it arrays of one float dtype and int64 lengths within
1..T).

* ``INFER[be](p, seq, states, lengths, reverse, sink)``: ``p`` a
  :class:`fastsim.rnn.weights.Prepared`.  The NumPy and Numba kernels take
  time-major ``seq`` (T, B, D) and return (T, B, H), which ``sink.put`` places
  (or pools); the compiled layer reads ``seq`` in either layout, or an
  :class:`IdsInput` (rows of a projected embedding), and writes its columns of
  the sink (or pools them) itself.
* ``TRAIN[be] = (forward, backward)``: ``forward(cell, w, seq, states,
  lengths, reverse, sink)`` with ``w = (W_ih, W_hh, b_ih, b_hh)`` in PyTorch
  layout and time-major ``seq``, returning ``(finals, tape)``;
  ``backward(cell, w, tape, d_out, d_finals)`` returning ``(dx, grads,
  d_initial)``.  The tape belongs to the backend that made it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _backend
from .._reference import rnn as _ref
from .._reference import rnn_backward as _ref_bw

__all__ = ["INFER", "SUPPORTED", "TRAIN", "IdsInput"]

SUPPORTED = ("numpy", "numba", "cpp")


def _c(a):
    return np.ascontiguousarray(a)


# --------------------------------------------------------------------------- inference


class IdsInput(NamedTuple):
    """Layer 0's input as token ids (B, T) int64 and the projection tables of its directions (cpp only).

    ``tables(p)`` returns the compiled table of prepared weights ``p``.
    """

    ids: np.ndarray
    tables: object


def _numpy_infer(p, seq, states, lengths, reverse, sink):
    W = p.weights
    kind = p.cell.kind
    if kind == "lstm":
        out, h, c = _ref.lstm_layer(seq, W.W_ih, W.W_hh, p.bias, states[0], states[1], lengths, reverse)
        finals = (h, c)
    elif kind == "gru":
        out, h = _ref.gru_layer(seq, W.W_ih, W.W_hh, W.b_ih, W.b_hh, states[0], lengths, reverse)
        finals = (h,)
    else:
        out, h = _ref.rnn_layer(seq, W.W_ih, W.W_hh, p.bias, states[0], lengths, reverse, p.cell.nonlinearity)
        finals = (h,)
    sink.put(out)
    return finals, None


def _numba_infer(p, seq, states, lengths, reverse, sink):
    kernels = _backend.numba_module("rnn")
    w_ih_t, w_hh_t = p.numba_weights()
    kind = p.cell.kind
    if kind == "lstm":
        out, h, c = kernels.lstm_layer(seq, w_ih_t, w_hh_t, p.bias, states[0], states[1], lengths, reverse)
        finals = (h, c)
    elif kind == "gru":
        out, h = kernels.gru_layer(seq, w_ih_t, w_hh_t, p.bias, p.bias_hn, states[0], lengths, reverse)
        finals = (h,)
    else:
        out, h = kernels.rnn_layer(seq, w_ih_t, w_hh_t, p.bias, states[0], lengths, reverse, p.cell.relu)
        finals = (h,)
    sink.put(out)
    return finals, None


def _cpp_infer(p, seq, states, lengths, reverse, sink):
    core = p.core_layer()
    dt = states[0].dtype
    h = np.array(states[0], dtype=dt, order="C")
    c = np.array(states[1], dtype=dt, order="C") if p.cell.n_states == 2 else None
    F = (sink.out if sink.pooled is None else sink.pooled).shape[-1]
    B = h.shape[0]
    if isinstance(seq, IdsInput):
        T = seq.ids.shape[1]
        core.run_ids(seq.tables(p), seq.ids, B, T, lengths, reverse, h, c, sink.out, F, sink.col, sink.pooled,
                     sink.until)
    else:
        T = seq.shape[1] if sink.batch_first else seq.shape[0]
        core.run(seq, B, T, sink.batch_first, lengths, reverse, h, c, sink.out, F, sink.col, sink.pooled, sink.until)
    return ((h,) if c is None else (h, c)), None


INFER = {"numpy": _numpy_infer, "numba": _numba_infer, "cpp": _cpp_infer}


# --------------------------------------------------------------------------- training


def _numpy_train_forward(cell, w, seq, states, lengths, reverse, sink):
    c0 = states[1] if cell.n_states == 2 else None
    out, finals, tape = _ref_bw.direction_forward(_ref_bw.cell_math(cell.kind, cell.nonlinearity), seq, *w,
                                                  states[0], c0, lengths, reverse)
    sink.put(out)
    return finals, tape


def _numpy_train_backward(cell, w, tape, d_out, d_finals):
    d_c = d_finals[1] if cell.n_states == 2 else None
    dx, grads, dh, dc = _ref_bw.direction_backward(_ref_bw.cell_math(cell.kind, cell.nonlinearity), tape, w[0],
                                                   w[1], d_out, d_finals[0], d_c)
    return dx, grads, ((dh,) if dc is None else (dh, dc))


def _numba_train_backward(cell, w, tape, d_out, d_finals):
    """The reference's forward and all-steps products; the walk back through time in Numba."""
    kernels = _backend.numba_module("rnn_backward")
    W_ih, W_hh = w[0], _c(w[1])
    T = d_out.shape[0]
    order = np.arange(T, dtype=np.int64) if tape.reverse else np.arange(T - 1, -1, -1, dtype=np.int64)
    dt = d_out.dtype
    dh = np.array(d_finals[0], dtype=dt, order="C")
    d_out = _c(d_out)
    work = tape.work
    dc = None
    if cell.kind == "lstm":
        dc = np.array(d_finals[1], dtype=dt, order="C")
        da_x, da_h = kernels.lstm_steps(order, tape.active, work["gates"], tape.c_prev, work["c_new"], d_out, dh, dc,
                                        W_hh)
    elif cell.kind == "gru":
        da_x, da_h = kernels.gru_steps(order, tape.active, work["gates"], tape.h_prev, d_out, dh, W_hh)
    else:
        da_x, da_h = kernels.rnn_steps(order, tape.active, work["h_new"], d_out, dh, W_hh, cell.relu)
    dx, grads = _ref_bw.all_steps_products(tape, W_ih, da_x, da_h)
    return dx, grads, ((dh,) if dc is None else (dh, dc))


def _cpp_train_forward(cell, w, seq, states, lengths, reverse, sink):
    core = _backend.core()
    x = _c(seq)
    W_ih, W_hh, b_ih, b_hh = (_c(a) for a in w)
    T, B = x.shape[:2]
    H = W_hh.shape[1]
    dt = x.dtype
    lstm = cell.n_states == 2
    h = np.array(states[0], dtype=dt, order="C")
    c = np.array(states[1], dtype=dt, order="C") if lstm else None
    out = np.zeros((T, B, H), dtype=dt)
    # the workspace: every entry the backward reads is written (rows past their length are never read)
    act = np.empty((T, B, H if cell.gates == 1 else 4 * H), dtype=dt)
    h_prev = np.empty((T, B, H), dtype=dt)
    c_prev = np.empty((T, B, H), dtype=dt) if lstm else None
    tanh_c = np.empty((T, B, H), dtype=dt) if lstm else None
    core.rnn_train_forward(cell.core_id, x, W_ih, W_hh, b_ih, b_hh, lengths, reverse, h, c, out, act, h_prev, c_prev,
                           tanh_c)
    sink.put(out)
    active = np.arange(T)[:, None] < lengths[None, :]
    work = {"act": act, "tanh_c": tanh_c, "lengths": lengths}
    return ((h,) if c is None else (h, c)), _ref_bw.DirectionTape(x, h_prev, c_prev, work, active, reverse)


def _cpp_train_backward(cell, w, tape, d_out, d_finals):
    core = _backend.core()
    x = tape.x
    T, B, D = x.shape
    W_ih, W_hh = _c(w[0]), _c(w[1])
    GH, H = W_hh.shape
    dt = x.dtype
    dh = np.array(d_finals[0], dtype=dt, order="C")
    dc = np.array(d_finals[1], dtype=dt, order="C") if tape.c_prev is not None else None
    dx = np.empty((T, B, D), dtype=dt)
    grads = (np.empty((GH, D), dtype=dt), np.empty((GH, H), dtype=dt), np.empty(GH, dtype=dt), np.empty(GH, dtype=dt))
    work = tape.work
    core.rnn_train_backward(cell.core_id, x, W_ih, W_hh, work["lengths"], tape.reverse, work["act"], tape.h_prev,
                            tape.c_prev, work["tanh_c"], _c(d_out), dh, dc, dx, *grads)
    return dx, grads, ((dh,) if dc is None else (dh, dc))


TRAIN = {
    "numpy": (_numpy_train_forward, _numpy_train_backward),
    "numba": (_numpy_train_forward, _numba_train_backward),
    "cpp": (_cpp_train_forward, _cpp_train_backward),
}
