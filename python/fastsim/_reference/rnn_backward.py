"""Backpropagation through time for the LSTM, GRU and vanilla RNN, reference semantics.

This room owns the training form of the recurrent layers: a forward pass that
keeps a *workspace* (the gate activations and the states entering every step),
and the backward pass that reads it.  It may call only NumPy and
:mod:`fastsim._reference.rnn` (for ``sigmoid`` and the IEEE error state), and
the stacked driver :mod:`fastsim.rnn.driver` (which orders the work); the
forward it computes is the one specified there, and every other backend's
backward must agree with this one.

Notation (one layer, one direction, one step; PyTorch layout)::

    a_x = W_ih x_t + b_ih                  input projection, all steps in one GEMM
    a_h = W_hh h_{t-1} + b_hh              recurrent projection, one GEMM per step

With ``L`` the loss and ``dv`` short for ``dL/dv``, the chain rule through one
step gives the gradients of the two projections' pre-activations, ``d a_x``
and ``d a_h`` (equal for the LSTM and the RNN; for the GRU they differ in the
``n`` gate, where ``a_h`` is multiplied by ``r``), plus the part of
``dh_{t-1}`` (and ``dc_{t-1}``) that bypasses the projections.  Then::

    dx_t      = d a_x @ W_ih               (one GEMM over all steps)
    dh_{t-1} += d a_h @ W_hh               (one GEMM per step, walking time backwards)
    dW_ih     = sum_t d a_x^T x_t          (one GEMM over all steps)
    dW_hh     = sum_t d a_h^T h_{t-1}      (one GEMM over all steps)
    db_ih     = sum_t d a_x,   db_hh = sum_t d a_h

which is the lecture's "gradient is proportional to a sum of partial derivative
products": the per-step recursion carries ``prod dh_i/dh_{i-1}`` backwards, the
sums over ``t`` collect each state's contribution to the weights.

The step derivatives (``s' = s (1 - s)`` for the sigmoid, ``1 - t^2`` for tanh):

* LSTM (gates i, f, g, o; ``c' = f c + i g``, ``h' = o tanh(c')``)::

      do = dh' tanh(c')                    dc = dc' + dh' o (1 - tanh(c')^2)
      di = dc g    df = dc c    dg = dc i  dc_{t-1} = dc f
      d a = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]

* GRU (gates r, z, n; ``h' = (1 - z) n + z h``, ``n = tanh(a_x,n + r a_h,n)``)::

      dn = dh' (1 - z)     dz = dh' (h - n)     dh_{t-1} (direct) = dh' z
      d a_n = dn (1 - n^2)     dr = d a_n a_h,n
      d a_x = [dr r(1-r), dz z(1-z), d a_n]
      d a_h = [dr r(1-r), dz z(1-z), d a_n r]

* RNN: ``d a = dh' (1 - h'^2)`` (tanh) or ``dh' [h' > 0]`` (relu; 0 at 0 as in PyTorch).

Variable lengths (packed-sequence semantics): at a step where ``t >=
lengths[b]`` row ``b`` produces no output and its state passes through
unchanged, so in the backward pass its state gradient passes through unchanged
and its step gives and gets no gradient: the row's projection gradients are
exactly zero there and its (padding) inputs take no part in the weight
gradients, even when they hold NaN or inf.  Gradients of a row holding NaN stay
NaN in that row's input and state gradients (and, through the sums over rows,
in the weight gradients), never in another row's.

Arrays are time-major inside: ``x`` (T, B, D), states (B, H).  The stacked
functions take the user's layout.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..rnn import driver
from .rnn import _ieee, _time_steps, sigmoid

__all__ = ["CELLS", "DirectionTape", "StackTape", "backward", "cell_math", "forward"]


# --------------------------------------------------------------------------- cells


class _LSTMCell:
    """LSTM step: workspace per step is ``gates`` (B, 4H) = [i, f, g, o] and the new cell ``c'``."""

    gates = 4
    n_states = 2

    @staticmethod
    def step(a_x, h, c, W_hh, b_hh):
        a = a_x + h @ W_hh.T + b_hh
        i, f, g, o = np.split(a, 4, axis=1)
        i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        return (h_new, c_new), {"gates": np.concatenate([i, f, g, o], axis=1), "c_new": c_new}

    @staticmethod
    def step_backward(dh_new, dc_new, work, h, c):
        """Returns ``(d a_x, d a_h, dh_prev bypassing W_hh, dc_prev)``."""
        i, f, g, o = np.split(work["gates"], 4, axis=1)
        tanh_c = np.tanh(work["c_new"])
        do = dh_new * tanh_c
        dc = dc_new + dh_new * o * (1.0 - tanh_c * tanh_c)
        di, df, dg = dc * g, dc * c, dc * i
        da = np.concatenate([di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g * g), do * o * (1.0 - o)], axis=1)
        return da, da, np.zeros_like(h), dc * f


class _GRUCell:
    """GRU step: workspace per step is ``gates`` (B, 4H) = [r, z, n, a_h,n]."""

    gates = 3
    n_states = 1

    @staticmethod
    def step(a_x, h, c, W_hh, b_hh):
        a_h = h @ W_hh.T + b_hh
        x_r, x_z, x_n = np.split(a_x, 3, axis=1)
        h_r, h_z, h_n = np.split(a_h, 3, axis=1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = np.tanh(x_n + r * h_n)
        h_new = (1.0 - z) * n + z * h
        return (h_new,), {"gates": np.concatenate([r, z, n, h_n], axis=1)}

    @staticmethod
    def step_backward(dh_new, dc_new, work, h, c):
        r, z, n, h_n = np.split(work["gates"], 4, axis=1)
        dn = dh_new * (1.0 - z)
        dz = dh_new * (h - n)
        da_n = dn * (1.0 - n * n)
        dr = da_n * h_n
        da_r, da_z = dr * r * (1.0 - r), dz * z * (1.0 - z)
        da_x = np.concatenate([da_r, da_z, da_n], axis=1)
        da_h = np.concatenate([da_r, da_z, da_n * r], axis=1)
        return da_x, da_h, dh_new * z, None


class _RNNCell:
    """Vanilla RNN step: workspace per step is the new state ``h'`` (its derivative needs nothing else)."""

    gates = 1
    n_states = 1

    def __init__(self, nonlinearity="tanh"):
        self.relu = nonlinearity == "relu"

    def step(self, a_x, h, c, W_hh, b_hh):
        a = a_x + h @ W_hh.T + b_hh
        h_new = np.maximum(a, 0.0) if self.relu else np.tanh(a)
        return (h_new,), {"h_new": h_new}

    def step_backward(self, dh_new, dc_new, work, h, c):
        h_new = work["h_new"]
        if self.relu:
            # 1 above 0, 0 at and below (as torch's threshold_backward); NaN for a NaN pre-activation
            da = dh_new * np.where(h_new > 0, 1.0, 0.0 * h_new)
        else:
            da = dh_new * (1.0 - h_new * h_new)
        return da, da, np.zeros_like(h), None


CELLS = {"lstm": _LSTMCell(), "gru": _GRUCell(), "rnn": _RNNCell("tanh"), "rnn_relu": _RNNCell("relu")}


def cell_math(kind, nonlinearity="tanh"):
    """The step equations of a cell kind (``nonlinearity`` for the RNN)."""
    return CELLS["rnn_relu" if kind == "rnn" and nonlinearity == "relu" else kind]


# --------------------------------------------------------------------------- one layer, one direction


class DirectionTape(NamedTuple):
    """What one layer's direction keeps for its backward pass (time-major).

    ``x`` (T, B, D) the layer's input; ``h_prev``, ``c_prev`` (T, B, H) the
    states entering each step (``c_prev`` None without a cell state);
    ``work`` the cell's per-step workspace, each entry (T, B, .); ``active``
    (T, B) bool, ``t < lengths[b]``.
    """

    x: np.ndarray
    h_prev: np.ndarray
    c_prev: np.ndarray | None
    work: dict
    active: np.ndarray
    reverse: bool


def direction_forward(cell, x, W_ih, W_hh, b_ih, b_hh, h0, c0, lengths, reverse):
    """One direction over time-major ``x``; returns ``(out, finals, tape)``."""
    T, B = x.shape[:2]
    H = W_hh.shape[1]
    dt = h0.dtype
    active = np.arange(T)[:, None] < np.asarray(lengths)[None, :]
    with _ieee():
        a_x = x @ W_ih.T + b_ih
        h = h0.copy()
        c = None if c0 is None else c0.copy()
        out = np.zeros((T, B, H), dtype=dt)
        h_prev = np.zeros((T, B, H), dtype=dt)
        c_prev = None if c is None else np.zeros((T, B, H), dtype=dt)
        work = {}
        for t in _time_steps(T, reverse):
            h_prev[t] = h
            if c is not None:
                c_prev[t] = c
            states, saved = cell.step(a_x[t], h, c, W_hh, b_hh)
            for name, value in saved.items():
                work.setdefault(name, np.zeros((T, *value.shape), dtype=dt))[t] = value
            m = active[t][:, None]
            h = np.where(m, states[0], h)
            if c is not None:
                c = np.where(m, states[1], c)
            out[t] = np.where(m, states[0], 0.0)
    finals = (h,) if c is None else (h, c)
    return out, finals, DirectionTape(x, h_prev, c_prev, work, active, reverse)


def direction_backward(cell, tape: DirectionTape, W_ih, W_hh, d_out, d_h, d_c):
    """Gradients of one direction from ``d_out`` (T, B, H) and the final states' ``d_h``, ``d_c`` (B, H).

    Returns ``(dx (T, B, D), (dW_ih, dW_hh, db_ih, db_hh), dh0, dc0)``; ``dc0`` is
    None without a cell state.
    """
    da_x, da_h, dh, dc = step_gradients(cell, tape, W_hh, d_out, d_h, d_c)
    dx, grads = all_steps_products(tape, W_ih, da_x, da_h)
    return dx, grads, dh, dc


def step_gradients(cell, tape: DirectionTape, W_hh, d_out, d_h, d_c):
    """The walk back through time: ``(d a_x, d a_h)`` (T, B, GH) of every step, and ``dh0``, ``dc0``."""
    T, B = d_out.shape[:2]
    GH = W_hh.shape[0]
    dt = d_out.dtype
    active = tape.active
    with _ieee():
        dh = d_h.copy()
        dc = None if tape.c_prev is None else d_c.copy()
        da_x = np.zeros((T, B, GH), dtype=dt)
        da_h = np.zeros((T, B, GH), dtype=dt)
        # the forward walked _time_steps(T, reverse); the backward walks the other way
        for t in _time_steps(T, not tape.reverse):
            m = active[t][:, None]
            work = {name: value[t] for name, value in tape.work.items()}
            c_prev = None if dc is None else tape.c_prev[t]
            dh_new = np.where(m, dh + d_out[t], 0.0)
            dc_new = None if dc is None else np.where(m, dc, 0.0)
            gx, gh, dh_direct, dc_prev = cell.step_backward(dh_new, dc_new, work, tape.h_prev[t], c_prev)
            # an inactive row takes no part in the step, even when its workspace holds NaN
            da_x[t] = np.where(m, gx, 0.0)
            da_h[t] = np.where(m, gh, 0.0)
            dh = np.where(m, da_h[t] @ W_hh + dh_direct, dh)
            if dc is not None:
                dc = np.where(m, dc_prev, dc)
    return da_x, da_h, dh, dc


def all_steps_products(tape: DirectionTape, W_ih, da_x, da_h):
    """``dx`` and the weight and bias gradients: one product over all T * B rows each."""
    T, B, GH = da_x.shape
    H = tape.h_prev.shape[2]
    with _ieee():
        x = np.where(tape.active[:, :, None], tape.x, 0.0)  # padding inputs never reach the weight gradients
        D = x.shape[2]
        dx = da_x @ W_ih
        dW_ih = da_x.reshape(T * B, GH).T @ x.reshape(T * B, D)
        dW_hh = da_h.reshape(T * B, GH).T @ tape.h_prev.reshape(T * B, H)
        db_ih = da_x.sum(axis=(0, 1))
        db_hh = da_h.sum(axis=(0, 1))
    return dx, (dW_ih, dW_hh, db_ih, db_hh)


# --------------------------------------------------------------------------- stacked, bidirectional


class StackTape(NamedTuple):
    """The workspace of a stacked run: ``layers[layer][direction]`` DirectionTapes."""

    kind: str
    nonlinearity: str
    batch_first: bool
    layers: list


def _direction_forward(kind, nonlinearity):
    math = cell_math(kind, nonlinearity)

    def run(w, seq, states, lengths, reverse, sink):
        c0 = states[1] if math.n_states == 2 else None
        out, finals, tape = direction_forward(math, seq, *w, states[0], c0, lengths, reverse)
        sink.put(out)
        return finals, tape

    return run


def forward(kind, x, weights, initial=None, lengths=None, batch_first=True, nonlinearity="tanh"):
    """Stacked, optionally bidirectional forward pass that keeps its workspace.

    Parameters
    ----------
    kind : {"lstm", "gru", "rnn"}
    x : ndarray, shape (B, T, D) if ``batch_first`` else (T, B, D)
    weights : list over layers of list over directions of ``(W_ih, W_hh, b_ih, b_hh)``
    initial : tuple of state arrays (layers * directions, B, H), optional
        ``(h0, c0)`` for the LSTM, ``(h0,)`` otherwise; zeros when omitted.
    lengths : ndarray of int, shape (B,), optional

    Returns
    -------
    outputs, finals, tape
        As :func:`fastsim._reference.rnn.lstm` (finals a tuple of state arrays),
        and the :class:`StackTape` that :func:`backward` reads.

    The layers are walked by the stacked driver of every backend
    (:mod:`fastsim.rnn.driver`) over :func:`direction_forward`.
    """
    math = cell_math(kind, nonlinearity)
    seq = np.swapaxes(x, 0, 1) if batch_first else x
    T, B = seq.shape[:2]
    H = weights[0][0][1].shape[1]
    n = len(weights) * len(weights[0])
    if initial is None:
        initial = tuple(np.zeros((n, B, H), dtype=x.dtype) for _ in range(math.n_states))
    lengths = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths)
    outputs, finals, tapes = driver.forward(weights, seq, False, tuple(initial), lengths,
                                            _direction_forward(kind, nonlinearity), hidden_size=H, steps=T, batch=B,
                                            dtype=x.dtype)
    outputs = np.swapaxes(outputs, 0, 1) if batch_first else outputs
    return outputs, finals, StackTape(kind, nonlinearity, batch_first, tapes)


def backward(tape: StackTape, weights, d_outputs=None, d_finals=None):
    """Gradients of a stacked run from the gradients of its outputs and final states.

    Parameters
    ----------
    tape : StackTape
        From :func:`forward` with the same ``weights``.
    d_outputs : ndarray, shape of ``outputs``, optional (zeros)
    d_finals : tuple of arrays (layers * directions, B, H), optional (zeros)
        One per state, as ``finals``; an entry may be None (zeros).

    Returns
    -------
    dx : ndarray, shape of ``x``
    d_weights : list over layers of list over directions of ``(dW_ih, dW_hh, db_ih, db_hh)``
    d_initial : tuple of arrays (layers * directions, B, H), one per state
    """
    math = cell_math(tape.kind, tape.nonlinearity)
    first = tape.layers[0][0]
    T, B = first.x.shape[:2]
    dt = first.h_prev.dtype
    H = first.h_prev.shape[2]
    num_dirs = len(tape.layers[0])
    n = len(tape.layers) * num_dirs
    if d_outputs is None:
        d_seq = np.zeros((T, B, num_dirs * H), dtype=dt)
    else:
        d_seq = np.swapaxes(d_outputs, 0, 1) if tape.batch_first else d_outputs
    d_finals = tuple(d_finals) if d_finals is not None else (None,) * math.n_states
    d_finals = tuple(np.zeros((n, B, H), dtype=dt) if g is None else g for g in d_finals)

    def direction(w, dir_tape, d_out, d_last):
        d_c = d_last[1] if math.n_states == 2 else None
        dx, grads, dh0, dc0 = direction_backward(math, dir_tape, w[0], w[1], d_out, d_last[0], d_c)
        return dx, grads, ((dh0,) if dc0 is None else (dh0, dc0))

    dx, d_weights, d_initial = driver.backward(weights, tape.layers, d_seq, d_finals, direction, hidden_size=H)
    dx = np.swapaxes(dx, 0, 1) if tape.batch_first else dx
    return dx, d_weights, d_initial
