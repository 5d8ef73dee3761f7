"""Gradients of the recurrent layers: a forward pass that keeps its workspace, and its backward.

This room owns the public NumPy form of backpropagation through time for
:class:`fastsim.LSTM`, :class:`fastsim.GRU` and :class:`fastsim.RNN`.  It may
call the layers' public surface (``weights``, ``batch_first``, sizes,
``nonlinearity``), fastsim's validation helpers and :mod:`fastsim._rnn_train`
(the kernels of every backend).

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

from . import _backend, _rnn_train
from . import rnn as _rnn
from ._validation import as_float_array, check_lengths, check_shape

__all__ = ["RecurrentGradients", "RecurrentTape", "recurrent_backward", "recurrent_forward_train"]


class RecurrentTape:
    """The workspace of one :func:`recurrent_forward_train` call (opaque; pass it to :func:`recurrent_backward`)."""

    __slots__ = ("_be", "_kind", "_n_states", "_out_shape", "_state_shape", "_tape", "_weights", "dtype")

    def __init__(self, be, kind, weights, tape, out_shape, state_shape, n_states, dtype):
        self._be, self._kind, self._weights, self._tape = be, kind, weights, tape
        self._out_shape, self._state_shape, self._n_states = out_shape, state_shape, n_states
        self.dtype = dtype

    def __repr__(self):
        return f"RecurrentTape({self._kind}, backend={self._be!r}, outputs={self._out_shape}, dtype={self.dtype})"


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


def _kind_of(layer):
    if isinstance(layer, _rnn.LSTM):
        return "lstm", 2
    if isinstance(layer, _rnn.GRU):
        return "gru", 1
    if isinstance(layer, _rnn.RNN):
        return "rnn", 1
    msg = f"layer must be a fastsim.LSTM, GRU or RNN; got {type(layer).__name__}"
    raise TypeError(msg)


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
    kind, n_states = _kind_of(layer)
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
    be = _backend.resolve(backend, _rnn_train.SUPPORTED)
    weights = [[tuple(np.ascontiguousarray(a) for a in w) for w in dirs] for dirs in layer.weights]
    nonlinearity = getattr(layer, "nonlinearity", "tanh")
    outputs, finals, tape = _rnn_train.forward(be, kind, x, weights, initial, lengths, layer.batch_first, nonlinearity)
    outputs = np.ascontiguousarray(outputs)
    record = RecurrentTape(be, kind, weights, tape, outputs.shape, state_shape, n_states, dt)
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
    names = ("d_h_n", "d_c_n") if tape._n_states == 2 else ("d_state",)
    d_finals = _states(d_state, names, tape._state_shape, dt, tape._n_states, "d_state")
    dx, d_weights, d_initial = _rnn_train.backward(tape._be, tape._tape, tape._weights, d_out, d_finals)
    weights = tuple(tuple(_rnn.RecurrentWeights(*g) for g in dirs) for dirs in d_weights)
    initial = tuple(d_initial) if tape._n_states == 2 else d_initial[0]
    return RecurrentGradients(np.ascontiguousarray(dx), weights, initial)
