"""Gradients of the recurrent layers: a forward pass that keeps its workspace, and its backward.

This room owns backpropagation through time for :class:`fastsim.LSTM`,
:class:`fastsim.GRU` and :class:`fastsim.RNN`: the public NumPy form
(:func:`recurrent_forward_train`, :func:`recurrent_backward`) and the two
entry points :mod:`fastsim.torch`'s modules call (:func:`train_forward`,
:func:`train_backward`).  It may call the layers' public surface
(``weights``, ``cell``, ``batch_first``, sizes), fastsim's validation
helpers, :mod:`fastsim.rnn.driver` (the stacked walk every backend shares)
and :mod:`fastsim.rnn.kernels` (the per-direction training kernels).

Examples
--------
>>> lstm = fastsim.LSTM(128, 256, bidirectional=True)
>>> out, (h, c), tape = fastsim.recurrent_forward_train(lstm, x, lengths)
>>> grads = fastsim.recurrent_backward(tape, d_outputs=dL_dout)
>>> grads.weights[0][1].W_hh    # dL/dW_hh of layer 0, backward direction
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _backend
from .._reference.rnn_backward import StackTape
from .._validation import as_float_array, check_lengths, check_shape
from . import driver, kernels
from .cells import Cell
from .weights import RecurrentWeights

__all__ = ["RecurrentGradients", "RecurrentTape", "recurrent_backward", "recurrent_forward_train", "train_backward",
           "train_forward"]


def train_forward(be: str, cell: Cell, x, weights, initial, lengths, batch_first: bool):
    """The stacked training forward on backend ``be``.

    ``x`` (B, T, D) or (T, B, D) of one float dtype; ``weights[layer][direction]
    = (W_ih, W_hh, b_ih, b_hh)`` in PyTorch layout; ``initial`` a tuple of
    (layers * directions, B, H) states (None: zeros); ``lengths`` int64 (B,)
    within 1..T.
    Returns ``(outputs, finals, tape)``, outputs in the input's layout.
    """
    direction_forward = kernels.TRAIN[be][0]
    seq = np.ascontiguousarray(np.swapaxes(x, 0, 1) if batch_first else x)
    T, B = seq.shape[:2]
    H = weights[0][0][1].shape[1]
    if initial is None:
        n = len(weights) * len(weights[0])
        initial = tuple(np.zeros((n, B, H), dtype=seq.dtype) for _ in cell.states)

    def direction(w, seq, states, lengths, reverse, sink):
        return direction_forward(cell, w, seq, states, lengths, reverse, sink)

    out, finals, tapes = driver.forward(weights, seq, False, tuple(initial), lengths, direction, hidden_size=H,
                                        steps=T, batch=B, dtype=seq.dtype)
    out = np.swapaxes(out, 0, 1) if batch_first else out
    return out, finals, StackTape(cell.kind, cell.nonlinearity, batch_first, tapes)


def train_backward(be: str, cell: Cell, tape: StackTape, weights, d_outputs, d_finals):
    """Gradients of a :func:`train_forward` run: ``(dx, d_weights[layer][direction], d_initial)``.

    ``d_outputs`` in the outputs' layout; ``d_finals`` like ``initial`` (None: zeros).
    """
    direction_backward = kernels.TRAIN[be][1]
    d_seq = np.swapaxes(d_outputs, 0, 1) if tape.batch_first else d_outputs
    H = weights[0][0][1].shape[1]
    if d_finals is None:
        n = len(weights) * len(weights[0])
        d_finals = tuple(np.zeros((n, d_seq.shape[1], H), dtype=d_seq.dtype) for _ in cell.states)

    def direction(w, dir_tape, d_out, d_last):
        return direction_backward(cell, w, dir_tape, d_out, d_last)

    dx, d_weights, d_initial = driver.backward(weights, tape.layers, d_seq, tuple(d_finals), direction,
                                               hidden_size=H)
    return (np.swapaxes(dx, 0, 1) if tape.batch_first else dx), d_weights, d_initial


class RecurrentTape:
    """The workspace of one :func:`recurrent_forward_train` call (opaque; pass it to :func:`recurrent_backward`)."""

    __slots__ = ("_be", "_cell", "_out_shape", "_state_shape", "_tape", "_weights", "dtype")

    def __init__(self, be, cell, weights, tape, out_shape, state_shape, dtype):
        self._be, self._cell, self._weights, self._tape = be, cell, weights, tape
        self._out_shape, self._state_shape = out_shape, state_shape
        self.dtype = dtype

    def __repr__(self):
        return f"RecurrentTape({self._cell.kind}, backend={self._be!r}, outputs={self._out_shape}, dtype={self.dtype})"


class RecurrentGradients(NamedTuple):
    """Gradients of a scalar loss through one recurrent run.

    Attributes
    ----------
    x : ndarray, shape of the input
    weights : tuple over layers of tuple over directions of :class:`fastsim.RecurrentWeights`
        ``dL/dW_ih``, ``dL/dW_hh``, ``dL/db_ih``, ``dL/db_hh``; the bias
        gradients are returned also for a layer built with ``bias=False``
        (which holds zero biases and does not train them).
    initial_state : ndarray or tuple of ndarrays, shape (layers * directions, B, H)
        ``(dh0, dc0)`` for an LSTM, ``dh0`` otherwise.
    """

    x: np.ndarray
    weights: tuple
    initial_state: object


def _cell_of(layer) -> Cell:
    from .layers import _Recurrent

    if not isinstance(layer, _Recurrent):
        msg = f"layer must be a fastsim.LSTM, GRU or RNN; got {type(layer).__name__}"
        raise TypeError(msg)
    return layer.cell


def _states(value, names, shape, dt, n_states, what):
    if value is None:
        return tuple(np.zeros(shape, dtype=dt) for _ in range(n_states))
    if n_states == 2:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            msg = f"{what} must be a tuple {names} for an LSTM"
            raise TypeError(msg)
        values = tuple(value)
    else:
        values = (value,)
    out = []
    for v, name in zip(values, names):
        if v is None:
            out.append(np.zeros(shape, dtype=dt))
            continue
        arr = as_float_array(v, name, ndim=3)
        check_shape(arr, shape, name, "(num_layers * directions, B, hidden_size)")
        out.append(np.ascontiguousarray(arr, dtype=dt))
    return tuple(out)


def recurrent_forward_train(layer, x, lengths=None, initial_state=None, *, backend="auto"):
    """Run ``layer`` over ``x`` as ``layer(x, lengths, initial_state)`` does, keeping the workspace.

    Parameters
    ----------
    layer : fastsim.LSTM, fastsim.GRU or fastsim.RNN
    x : array_like, shape (B, T, input_size) (time-major when ``layer.batch_first`` is False)
    lengths : array_like of int, shape (B,), optional
        Packed-sequence semantics, each within 1..T.
    initial_state : as for the layer's call, optional
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    outputs, state, tape
        ``outputs`` and ``state`` as the layer's call returns them, and the
        :class:`RecurrentTape` for :func:`recurrent_backward`.
    """
    cell = _cell_of(layer)
    n_states = cell.n_states
    dt = layer.dtype
    x = as_float_array(x, "x", ndim=3)
    T, B = (x.shape[1], x.shape[0]) if layer.batch_first else x.shape[:2]
    if x.shape[2] != layer.input_size:
        msg = f"x has {x.shape[2]} features per step; this layer expects input_size = {layer.input_size}"
        raise ValueError(msg)
    if T == 0 or B == 0:
        msg = f"x must hold at least one sequence of at least one step for a training pass; got shape {x.shape}"
        raise ValueError(msg)
    x = np.ascontiguousarray(x, dtype=dt)
    lengths = np.full(B, T, dtype=np.int64) if lengths is None else check_lengths(lengths, B, T)
    n = layer.num_layers * layer.num_directions
    state_shape = (n, B, layer.hidden_size)
    names = ("h0", "c0") if n_states == 2 else ("initial_state",)
    initial = _states(initial_state, names, state_shape, dt, n_states, "initial_state")
    be = _backend.resolve(backend, kernels.SUPPORTED)
    weights = layer.weights  # read-only, C-contiguous: the kernels take them as they are
    outputs, finals, tape = train_forward(be, cell, x, weights, initial, lengths, layer.batch_first)
    outputs = np.ascontiguousarray(outputs)
    record = RecurrentTape(be, cell, weights, tape, outputs.shape, state_shape, dt)
    state = tuple(finals) if n_states == 2 else finals[0]
    return outputs, state, record


def recurrent_backward(tape, d_outputs=None, d_state=None) -> RecurrentGradients:
    """Gradients of a scalar loss given its gradients with respect to the outputs and the final state.

    Parameters
    ----------
    tape : RecurrentTape
        From :func:`recurrent_forward_train`; it can be used more than once.
    d_outputs : array_like, shape of ``outputs``, optional
        Zeros when omitted.  Entries at padded steps are ignored (those
        outputs are constants).
    d_state : as ``state``, optional
        ``(d_h_n, d_c_n)`` for an LSTM (either may be None), ``d_h_n``
        otherwise; zeros when omitted.

    Returns
    -------
    RecurrentGradients
    """
    if not isinstance(tape, RecurrentTape):
        msg = f"tape must be the RecurrentTape of recurrent_forward_train; got {type(tape).__name__}"
        raise TypeError(msg)
    dt = tape.dtype
    if d_outputs is None:
        d_out = np.zeros(tape._out_shape, dtype=dt)
    else:
        d_out = as_float_array(d_outputs, "d_outputs", ndim=3)
        check_shape(d_out, tape._out_shape, "d_outputs", "the shape of the outputs")
        d_out = np.ascontiguousarray(d_out, dtype=dt)
    n_states = tape._cell.n_states
    names = ("d_h_n", "d_c_n") if n_states == 2 else ("d_state",)
    d_finals = _states(d_state, names, tape._state_shape, dt, n_states, "d_state")
    dx, d_weights, d_initial = train_backward(tape._be, tape._cell, tape._tape, tape._weights, d_out, d_finals)
    weights = tuple(tuple(RecurrentWeights(*g) for g in dirs) for dirs in d_weights)
    initial = tuple(d_initial) if n_states == 2 else d_initial[0]
    return RecurrentGradients(np.ascontiguousarray(dx), weights, initial)
