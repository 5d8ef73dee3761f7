"""Functional single-layer forms of the recurrent forward passes: :func:`lstm_forward`, :func:`gru_forward`, :func:`rnn_forward`.

This room owns the checks of the functional forms' arguments.  It may call
:mod:`fastsim.rnn.cells`, :mod:`fastsim.rnn.weights` (the weight checks and
layout), :mod:`fastsim.rnn.infer` (the one inference route) and the
validation helpers.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .. import _backend
from .._validation import as_float_array, check_bool, check_choice, result_dtype
from . import infer, kernels
from .cells import cell
from .weights import Prepared, check_weights

__all__ = ["gru_forward", "lstm_forward", "rnn_forward"]


def _functional(kind, x, W_ih, W_hh, b_ih, b_hh, states, lengths, batch_first, backend, nonlinearity="tanh"):
    batch_first = check_bool(batch_first, "batch_first")
    c = cell(kind, nonlinearity)
    x = as_float_array(x, "x", ndim=3)
    W_ih, W_hh, b_ih, b_hh = check_weights(c, W_ih, W_hh, b_ih, b_hh)
    H = W_hh.shape[1]
    D = W_ih.shape[1]
    T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    if x.shape[2] != D:
        msg = f"x has {x.shape[2]} features per step but W_ih expects D = {D} (W_ih has shape {W_ih.shape})"
        raise ValueError(msg)
    given = [as_float_array(s, name) for name, s in states if s is not None]
    dt = result_dtype(x, W_ih, W_hh, b_ih, b_hh, *given)
    initial = [infer.state(s, name, (B, H), dt)[None] for name, s in states]
    lengths = infer.lengths_or_full(lengths, B, T)
    be = _backend.resolve(backend, kernels.SUPPORTED)
    cells = [[Prepared(c, *(a.astype(dt, copy=False) for a in (W_ih, W_hh, b_ih, b_hh)))]]
    out, finals = infer.run(cells, x, batch_first, initial, lengths, be)
    return out, [f[0] for f in finals]


def lstm_forward(
    x: ArrayLike, W_ih: ArrayLike, W_hh: ArrayLike, b_ih: ArrayLike | None = None, b_hh: ArrayLike | None = None, *,
    h0: ArrayLike | None = None, c0: ArrayLike | None = None, lengths: ArrayLike | None = None,
    batch_first: bool = True, backend: str = "auto",
) -> tuple[NDArray[np.floating], tuple[NDArray[np.floating], NDArray[np.floating]]]:
    """One LSTM layer in one direction, PyTorch layout and semantics.

    Parameters
    ----------
    x : array_like, shape (B, T, D), or (T, B, D) when ``batch_first=False``
    W_ih : array_like, shape (4H, D)
        Input weights, gates stacked in the order i, f, g, o.
    W_hh : array_like, shape (4H, H)
        Recurrent weights, same gate order.
    b_ih, b_hh : array_like, shape (4H,), optional
        Zeros when omitted; only their sum matters.
    h0, c0 : array_like, shape (B, H), optional
        Initial hidden and cell state; zeros when omitted.
    lengths : array_like of int, shape (B,), optional
        Valid steps of each sequence, within 1..T.  Past its length a
        sequence's outputs are 0 and its state is frozen (PyTorch packed
        sequences).
    batch_first : bool
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    outputs : ndarray, shape (B, T, H) (or (T, B, H))
        The hidden state after every step.
    (h_n, c_n) : tuple of ndarrays, shape (B, H)
        The state after each sequence's last valid step.

    Notes
    -----
    float64 if any input is float64, else float32.  ``i = sigmoid(.)``,
    ``f = sigmoid(.)``, ``g = tanh(.)``, ``o = sigmoid(.)``,
    ``c' = f * c + i * g``, ``h' = o * tanh(c')``.
    """
    states = (("h0", h0), ("c0", c0))
    out, (h, c) = _functional("lstm", x, W_ih, W_hh, b_ih, b_hh, states, lengths, batch_first, backend)
    return out, (h, c)


def gru_forward(
    x: ArrayLike, W_ih: ArrayLike, W_hh: ArrayLike, b_ih: ArrayLike | None = None, b_hh: ArrayLike | None = None, *,
    h0: ArrayLike | None = None, lengths: ArrayLike | None = None, batch_first: bool = True, backend: str = "auto",
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """One GRU layer in one direction, PyTorch layout and semantics.

    Parameters
    ----------
    x : array_like, shape (B, T, D), or (T, B, D) when ``batch_first=False``
    W_ih : array_like, shape (3H, D)
        Gates stacked in the order r, z, n.
    W_hh : array_like, shape (3H, H)
    b_ih, b_hh : array_like, shape (3H,), optional
        Zeros when omitted.  They are not interchangeable: ``b_hn`` is
        multiplied by the reset gate.
    h0 : array_like, shape (B, H), optional
    lengths : array_like of int, shape (B,), optional
        As in :func:`lstm_forward`.
    batch_first : bool
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    outputs : ndarray, shape (B, T, H) (or (T, B, H))
    h_n : ndarray, shape (B, H)

    Notes
    -----
    ``r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)``, ``z`` likewise,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    """
    out, (h,) = _functional("gru", x, W_ih, W_hh, b_ih, b_hh, (("h0", h0),), lengths, batch_first, backend)
    return out, h


def rnn_forward(
    x: ArrayLike, W_ih: ArrayLike, W_hh: ArrayLike, b_ih: ArrayLike | None = None, b_hh: ArrayLike | None = None, *,
    h0: ArrayLike | None = None, lengths: ArrayLike | None = None, nonlinearity: str = "tanh",
    batch_first: bool = True, backend: str = "auto",
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """One vanilla RNN layer in one direction: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Parameters
    ----------
    x : array_like, shape (B, T, D), or (T, B, D) when ``batch_first=False``
    W_ih : array_like, shape (H, D)
    W_hh : array_like, shape (H, H)
    b_ih, b_hh : array_like, shape (H,), optional
    h0 : array_like, shape (B, H), optional
    lengths : array_like of int, shape (B,), optional
        As in :func:`lstm_forward`.
    nonlinearity : {"tanh", "relu"}
    batch_first : bool
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    outputs : ndarray, shape (B, T, H) (or (T, B, H))
    h_n : ndarray, shape (B, H)
    """
    check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
    out, (h,) = _functional("rnn", x, W_ih, W_hh, b_ih, b_hh, (("h0", h0),), lengths, batch_first, backend,
                            nonlinearity)
    return out, h
