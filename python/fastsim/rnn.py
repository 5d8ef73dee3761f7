"""Recurrent forward passes: LSTM, GRU and the vanilla RNN.

Functional single-layer forms (:func:`lstm_forward`, :func:`gru_forward`,
:func:`rnn_forward`) and layer objects (:class:`LSTM`, :class:`GRU`,
:class:`RNN`) that are stacked, optionally bidirectional, take variable
lengths with PyTorch's packed-sequence semantics, and import weights from
PyTorch, Keras and ONNX layouts.  Layouts, gate orders and equations are
PyTorch's; :mod:`fastsim._reference.rnn` is the executable specification.

Backend dispatch
----------------
Every backend kernel is reached through one internal function per cell type.
Each runs one layer in one direction on C-contiguous, time-major arrays of a
single dtype (float32 or float64)::

    _run_lstm_layer(be, x, w_ih_t, w_hh_t, bias, h0, c0, lengths, reverse) -> (out, h_n, c_n)
    _run_gru_layer(be, x, w_ih_t, w_hh_t, bias, bias_hn, h0, lengths, reverse) -> (out, h_n)
    _run_rnn_layer(be, x, w_ih_t, w_hh_t, bias, h0, lengths, reverse, relu) -> (out, h_n)

* ``x`` (T, B, D): the layer's input, time-major.
* ``w_ih_t`` (D, G*H) and ``w_hh_t`` (H, G*H): the transposed PyTorch weights
  ``W_ih.T`` and ``W_hh.T``; columns in PyTorch's gate order (LSTM i, f, g, o
  with G = 4; GRU r, z, n with G = 3; RNN G = 1).  Prepared once per layer
  object and reused across calls.
* ``bias`` (G*H,): fused, ``b_ih + b_hh`` for the LSTM and the RNN,
  ``b_ih + [b_hr, b_hz, 0]`` for the GRU; ``bias_hn`` (H,) is the GRU's
  ``b_hn``, which stays inside ``r * (W_hn h + b_hn)``.
* ``h0``, ``c0`` (B, H): initial states.
* ``lengths`` int64 (B,), each within 1..T (all T when the caller gave none).
* ``reverse`` (bool): walk t = T-1 .. 0 (the backward direction);
  ``relu`` (bool): ReLU instead of tanh.

They return new arrays: ``out`` (T, B, H), zero wherever ``t >= lengths[b]``,
and the final states (B, H).  The compiled kernel for ``be == "cpp"`` is reached
differently: ``_Prepared.core_layer`` builds a ``_core.RnnLayer`` once per
layer and direction (weights permuted for the fused gate epilogue and packed
for the GEMM engine), and ``_forward_cpp`` runs the layers in the caller's
layout (batch- or time-major), each direction writing its columns of one
output array.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _backend
from ._reference import rnn as _ref
from ._validation import (as_float_array, check_bool, check_choice, check_float_dtype, check_lengths,
                          check_positive_int, check_shape, result_dtype)

__all__ = ["GRU", "LSTM", "RNN", "RecurrentWeights", "gru_forward", "lstm_forward", "rnn_forward"]

_SUPPORTED = ("numpy", "numba", "cpp")

_CORE_LOCK = threading.Lock()  # guards the lazy creation of compiled layers
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


# --------------------------------------------------------------------------- per-layer dispatch


def _run_lstm_layer(be, x, w_ih_t, w_hh_t, bias, h0, c0, lengths, reverse):
    if be == "numpy":
        return _ref.lstm_layer(x, w_ih_t.T, w_hh_t.T, bias, h0, c0, lengths, reverse)
    return _backend.numba_module("rnn").lstm_layer(x, w_ih_t, w_hh_t, bias, h0, c0, lengths, reverse)


def _run_gru_layer(be, x, w_ih_t, w_hh_t, bias, bias_hn, h0, lengths, reverse):
    if be == "numpy":
        H = h0.shape[1]
        b_hh = np.concatenate([np.zeros(2 * H, dtype=bias.dtype), bias_hn])
        return _ref.gru_layer(x, w_ih_t.T, w_hh_t.T, bias, b_hh, h0, lengths, reverse)
    return _backend.numba_module("rnn").gru_layer(x, w_ih_t, w_hh_t, bias, bias_hn, h0, lengths, reverse)


def _run_rnn_layer(be, x, w_ih_t, w_hh_t, bias, h0, lengths, reverse, relu):
    if be == "numpy":
        nonlinearity = "relu" if relu else "tanh"
        return _ref.rnn_layer(x, w_ih_t.T, w_hh_t.T, bias, h0, lengths, reverse, nonlinearity)
    return _backend.numba_module("rnn").rnn_layer(x, w_ih_t, w_hh_t, bias, h0, lengths, reverse, relu)


# --------------------------------------------------------------------------- prepared weights


class RecurrentWeights(NamedTuple):
    """One layer's weights for one direction, in PyTorch layout (read-only views).

    Attributes
    ----------
    W_ih : ndarray, shape (G*H, D)
    W_hh : ndarray, shape (G*H, H)
    b_ih, b_hh : ndarray, shape (G*H,)
        Zeros for a layer built with ``bias=False``.
    """

    W_ih: np.ndarray
    W_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray


class _Prepared:
    """Weights of one layer and direction in the kernels' layout."""

    __slots__ = ("_core_layer", "_table", "b_hh", "b_ih", "bias", "bias_hn", "kind", "w_hh_t", "w_ih_t")

    def __init__(self, kind, W_ih, W_hh, b_ih, b_hh):
        self.kind = kind
        self._core_layer: dict[bool, Any] = {}
        self._table = None
        # always copies: later changes to the caller's arrays must not reach the layer
        self.w_ih_t = np.array(W_ih.T, order="C")
        self.w_hh_t = np.array(W_hh.T, order="C")
        self.b_ih = b_ih.copy()
        self.b_hh = b_hh.copy()
        if kind == "gru":
            H = W_hh.shape[1]
            self.bias = b_ih.copy()
            self.bias[: 2 * H] += b_hh[: 2 * H]
            self.bias_hn = b_hh[2 * H :].copy()
        else:
            self.bias = b_ih + b_hh
            self.bias_hn = None

    def core_layer(self, relu: bool):
        """The compiled layer: weights permuted and packed once, on first use.

        Made under a lock, so threads sharing these weights share one layer
        (and so one projected input table, see :meth:`input_table`).
        """
        layer = self._core_layer.get(relu)
        if layer is None:
            with _CORE_LOCK:
                layer = self._core_layer.get(relu)
                if layer is None:
                    cell = {"lstm": 0, "gru": 1}.get(self.kind, 3 if relu else 2)
                    layer = _backend.core().RnnLayer(
                        cell, np.ascontiguousarray(self.w_ih_t.T), np.ascontiguousarray(self.w_hh_t.T), self.b_ih, self.b_hh
                    )
                    self._core_layer[relu] = layer
        return layer

    def input_table(self, core, embedding: np.ndarray):
        """The compiled layer's projection of ``embedding`` (V, D), kept for the next call.

        Kept by identity of ``embedding`` (which must not change: the encoder
        passes its private read-only copy) and remade when the layer repacks
        its weights for another SIMD level.  ``core`` is this direction's
        :meth:`core_layer`.  One table per direction: the last embedding wins
        (encoders sharing a layer each remake it in turn).
        """
        kept = self._table  # one read: other threads may replace it
        if kept is not None and kept[0] is embedding and kept[1] is core and core.is_current(kept[2]):
            return kept[2]
        table = core.project(embedding)
        self._table = (embedding, core, table)
        return table

    def public(self) -> RecurrentWeights:
        views = []
        for a in (self.w_ih_t.T, self.w_hh_t.T, self.b_ih, self.b_hh):
            v = a.view()
            v.flags.writeable = False
            views.append(v)
        return RecurrentWeights(*views)


def _check_weights(kind, W_ih, W_hh, b_ih, b_hh, *, dtype=None, input_size=None, hidden_size=None, prefix=""):
    """Convert and check one layer's PyTorch-layout weights; biases default to zeros.

    ``hidden_size`` defaults to ``W_hh.shape[1]`` and ``input_size`` to
    ``W_ih.shape[1]``.  Returns the four arrays in ``dtype`` (or their common
    result dtype).
    """
    G = _GATES[kind]
    gates = f"{G}H" if G > 1 else "H"
    names = [prefix + n for n in ("W_ih", "W_hh", "b_ih", "b_hh")]
    W_hh = as_float_array(W_hh, names[1], ndim=2)
    W_ih = as_float_array(W_ih, names[0], ndim=2)
    b_ih = None if b_ih is None else as_float_array(b_ih, names[2], ndim=1)
    b_hh = None if b_hh is None else as_float_array(b_hh, names[3], ndim=1)
    H = W_hh.shape[1] if hidden_size is None else hidden_size
    if H < 1:
        msg = f"{names[1]} must have shape ({gates}, H) with H >= 1; got {W_hh.shape}"
        raise ValueError(msg)
    check_shape(W_hh, (G * H, H), names[1], f"({gates}, H) with H = {H}")
    D = W_ih.shape[1] if input_size is None else input_size
    check_shape(W_ih, (G * H, D), names[0], f"({gates}, D) with H = {H}, D = {D}")
    for b, name in ((b_ih, names[2]), (b_hh, names[3])):
        if b is not None:
            check_shape(b, (G * H,), name, f"({gates},) with H = {H}")
    dt = np.dtype(dtype) if dtype is not None else result_dtype(W_ih, W_hh, b_ih, b_hh)
    zeros = np.zeros(G * H, dtype=dt)
    return (
        W_ih.astype(dt, copy=False),
        W_hh.astype(dt, copy=False),
        zeros if b_ih is None else b_ih.astype(dt, copy=False),
        zeros if b_hh is None else b_hh.astype(dt, copy=False),
    )


# --------------------------------------------------------------------------- stacked driver


def _run_direction(kind, be, seq, p: _Prepared, states, lengths, reverse, relu):
    if kind == "lstm":
        return _run_lstm_layer(be, seq, p.w_ih_t, p.w_hh_t, p.bias, states[0], states[1], lengths, reverse)
    if kind == "gru":
        return _run_gru_layer(be, seq, p.w_ih_t, p.w_hh_t, p.bias, p.bias_hn, states[0], lengths, reverse)
    return _run_rnn_layer(be, seq, p.w_ih_t, p.w_hh_t, p.bias, states[0], lengths, reverse, relu)


def _forward(kind, be, x_tm, cells, initial, lengths, *, relu=False):
    """Layer after layer, each direction over the previous layer's output.

    ``x_tm`` (T, B, D) C-contiguous; ``cells[layer][direction]`` prepared
    weights; ``initial`` a list of state arrays (layers * directions, B, H);
    ``lengths`` int64 (B,).  Returns ``(outputs (T, B, dirs * H), finals)``.
    """
    T, B, _ = x_tm.shape
    num_dirs = len(cells[0])
    H = cells[0][0].w_hh_t.shape[0]
    dt = x_tm.dtype
    if T == 0 or B == 0:  # nothing to run: every state stays at its initial value
        return np.zeros((T, B, num_dirs * H), dtype=dt), [s.copy() for s in initial]
    finals = [np.empty_like(s) for s in initial]
    seq = x_tm
    for layer, directions in enumerate(cells):
        outs = []
        for d, p in enumerate(directions):
            k = layer * num_dirs + d
            out, *last = _run_direction(kind, be, seq, p, [s[k] for s in initial], lengths, d == 1, relu)
            outs.append(out)
            for f, value in zip(finals, last):
                f[k] = value
        seq = outs[0] if num_dirs == 1 else np.concatenate(outs, axis=2)
    return seq, finals


def _forward_cpp(kind, x, batch_first, cells, initial, lengths, *, relu=False, ids=None, embedding=None, pool_until=None):
    """The compiled layers, in the caller's layout: no time-major copies.

    ``x`` (B, T, D) when ``batch_first`` else (T, B, D), C-contiguous; each
    direction writes its H columns of one output array of the same layout (so
    a bidirectional layer needs no concatenation).  With ``ids`` (B, T) int64
    (batch-major) and ``embedding`` (V, D) instead of ``x``, layer 0 reads the
    rows of its projected embedding table picked by the ids (see
    ``_Prepared.input_table`` and ``_core.RnnLayer.run_ids``).  Returns ``(outputs, finals)`` as
    :func:`_forward` does, outputs in the input's layout; with ``pool_until``
    (B,) int64 the last layer writes no outputs and ``outputs`` is instead
    (B, F): the sum of each row's outputs over its steps t < pool_until.
    """
    if ids is not None:
        B, T = ids.shape
    else:
        T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    num_dirs = len(cells[0])
    H = cells[0][0].w_hh_t.shape[0]
    dt = initial[0].dtype
    shape = (B, T, num_dirs * H) if batch_first else (T, B, num_dirs * H)
    if T == 0 or B == 0:
        empty = np.zeros((B, num_dirs * H) if pool_until is not None else shape, dtype=dt)
        return empty, [s.copy() for s in initial]
    finals = [np.empty_like(s) for s in initial]
    seq = x
    pooled = until = None
    for layer, directions in enumerate(cells):
        if layer == len(cells) - 1 and pool_until is not None:
            out = None
            pooled = np.zeros((B, num_dirs * H), dtype=dt)
            until = pool_until
        else:
            out = np.zeros(shape, dtype=dt)
        for d, p in enumerate(directions):
            k = layer * num_dirs + d
            core = p.core_layer(relu)
            h = np.array(initial[0][k], dtype=dt, order="C")
            c = np.array(initial[1][k], dtype=dt, order="C") if kind == "lstm" else None
            if layer == 0 and ids is not None:
                table = p.input_table(core, embedding)
                core.run_ids(table, ids, B, T, lengths, d == 1, h, c, out, num_dirs * H, d * H, pooled, until)
            else:
                core.run(seq, B, T, batch_first, lengths, d == 1, h, c, out, num_dirs * H, d * H, pooled, until)
            finals[0][k] = h
            if c is not None:
                finals[1][k] = c
        seq = out
    return (seq if pooled is None else pooled), finals


def _kernel_array(a, dt):
    """C-contiguous, aligned and writeable: kernels are compiled for exactly that kind of array."""
    return np.require(a, dtype=dt, requirements=["C", "A", "W"])


def _to_time_major(x, batch_first, dt):
    return _kernel_array(np.swapaxes(x, 0, 1) if batch_first else x, dt)


def _from_time_major(out, batch_first):
    return np.ascontiguousarray(np.swapaxes(out, 0, 1)) if batch_first else out


def _lengths_or_full(lengths, B, T):
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    return _kernel_array(check_lengths(lengths, B, T), np.int64)


def _state(value, name, shape, dt):
    if value is None:
        return np.zeros(shape, dtype=dt)
    arr = as_float_array(value, name, ndim=len(shape))
    check_shape(arr, shape, name, "(B, H)" if len(shape) == 2 else "(layers * directions, B, H)")
    return _kernel_array(arr, dt)


# --------------------------------------------------------------------------- functional forms


def _functional(kind, x, W_ih, W_hh, b_ih, b_hh, states, lengths, batch_first, backend, relu=False):
    batch_first = check_bool(batch_first, "batch_first")
    x = as_float_array(x, "x", ndim=3)
    W_ih, W_hh, b_ih, b_hh = _check_weights(kind, W_ih, W_hh, b_ih, b_hh)
    H = W_hh.shape[1]
    D = W_ih.shape[1]
    T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    if x.shape[2] != D:
        msg = f"x has {x.shape[2]} features per step but W_ih expects D = {D} (W_ih has shape {W_ih.shape})"
        raise ValueError(msg)
    given = [as_float_array(s, name) for name, s in states if s is not None]
    dt = result_dtype(x, W_ih, W_hh, b_ih, b_hh, *given)
    initial = [_state(s, name, (B, H), dt)[None] for name, s in states]
    lengths = _lengths_or_full(lengths, B, T)
    be = _backend.resolve(backend, _SUPPORTED)
    cells = [[_Prepared(kind, *(a.astype(dt, copy=False) for a in (W_ih, W_hh, b_ih, b_hh)))]]
    if be == "cpp":
        out, finals = _forward_cpp(kind, _kernel_array(x, dt), batch_first, cells, initial, lengths, relu=relu)
        return out, [f[0] for f in finals]
    out, finals = _forward(kind, be, _to_time_major(x, batch_first, dt), cells, initial, lengths, relu=relu)
    return _from_time_major(out, batch_first), [f[0] for f in finals]


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
    out, (h,) = _functional(
        "rnn", x, W_ih, W_hh, b_ih, b_hh, (("h0", h0),), lengths, batch_first, backend, relu=nonlinearity == "relu"
    )
    return out, h


# --------------------------------------------------------------------------- importer internals


def _to_numpy(value, name):
    """A framework tensor or array as a NumPy array, without importing the framework."""
    if hasattr(value, "detach"):  # a torch tensor, possibly requiring grad
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    if hasattr(value, "numpy"):
        try:
            value = value.numpy()
        except TypeError:  # dtypes NumPy lacks (bfloat16): widen first
            value = value.float().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        msg = f"{name} must be an array or tensor: {exc}"
        raise TypeError(msg) from None


def _import_dtype(dtype, arrays):
    if dtype is not None:
        return check_float_dtype(dtype)
    return result_dtype(*(as_float_array(a, "weights") for a in arrays))


def _blocks(a, order, axis):
    """Reorder the gate blocks of ``a`` along ``axis``: new block i is old block ``order[i]``."""
    parts = np.split(a, len(order), axis=axis)
    return np.concatenate([parts[i] for i in order], axis=axis)


_TORCH_KEY = re.compile(
    r"^(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(?P<layer>\d+)(?P<rev>_reverse)?$"
)


def _torch_weights(kind, obj):
    """Parse a PyTorch ``nn.LSTM``/``nn.GRU``/``nn.RNN`` or its state dict.

    Returns ``(weights[layer][direction] = (W_ih, W_hh, b_ih, b_hh), has_bias, module_attrs)``.
    """
    attrs = {}
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        for a in ("mode", "batch_first", "nonlinearity", "proj_size", "bidirectional", "num_layers"):
            if hasattr(obj, a):
                attrs[a] = getattr(obj, a)
        sd = obj.state_dict()
    elif hasattr(obj, "keys"):
        sd = obj
    else:
        what = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[kind]
        msg = f"module_or_state_dict must be a torch.nn.{what} module or its state dict; got {type(obj).__name__}"
        raise TypeError(msg)
    if attrs.get("proj_size", 0):
        msg = "LSTM with proj_size > 0 is not supported (module_or_state_dict has proj_size set)"
        raise ValueError(msg)
    mode = attrs.get("mode")
    want = {"lstm": ("LSTM",), "gru": ("GRU",), "rnn": ("RNN_TANH", "RNN_RELU")}[kind]
    if mode is not None and mode not in want:
        msg = f"module_or_state_dict is a torch {mode} module; expected {' or '.join(want)}"
        raise ValueError(msg)
    found = {}
    prefixes = set()
    for key in sd.keys():
        m = _TORCH_KEY.match(str(key))
        if m is None:
            continue
        prefixes.add(m["prefix"])
        found[(m["prefix"], m["kind"], int(m["layer"]), bool(m["rev"]))] = sd[key]
    if not found:
        msg = "module_or_state_dict holds no recurrent weights (keys like 'weight_ih_l0')"
        raise ValueError(msg)
    if len(prefixes) > 1:
        msg = f"module_or_state_dict holds several recurrent modules {sorted(prefixes)}; pass one module's state dict"
        raise ValueError(msg)
    found = {k[1:]: v for k, v in found.items()}
    if any(k[0] == "weight_hr" for k in found):
        msg = "LSTM with proj_size > 0 is not supported (module_or_state_dict has weight_hr_l* keys)"
        raise ValueError(msg)
    num_layers = 1 + max(k[1] for k in found)
    bidirectional = any(k[2] for k in found)
    has_bias = ("bias_ih", 0, False) in found
    weights = []
    for layer in range(num_layers):
        dirs = []
        for rev in (False, True)[: 1 + bidirectional]:
            suffix = f"_l{layer}{'_reverse' if rev else ''}"
            arrays = []
            for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                value = found.get((part, layer, rev))
                if value is None and (part.startswith("weight") or has_bias):
                    msg = f"module_or_state_dict is missing '{part}{suffix}'"
                    raise ValueError(msg)
                arrays.append(None if value is None else _to_numpy(value, part + suffix))
            dirs.append(tuple(arrays))
        weights.append(dirs)
    G = _GATES[kind]
    W_hh0 = weights[0][0][1]
    if W_hh0.ndim == 2 and W_hh0.shape[1] > 0 and W_hh0.shape[0] != G * W_hh0.shape[1]:
        gates = W_hh0.shape[0] / W_hh0.shape[1]
        msg = (
            f"module_or_state_dict has weight_hh_l0 of shape {W_hh0.shape} ({gates:g} gates); "
            f"a {kind.upper()} has {G} gates (another kind of recurrent module?)"
        )
        raise ValueError(msg)
    return weights, has_bias, attrs


def _is_keras_layer(obj):
    return hasattr(obj, "get_weights") and callable(obj.get_weights)


def _activation_name(fn):
    return getattr(fn, "__name__", str(fn))


# --------------------------------------------------------------------------- layer objects


class _Recurrent:
    """Shared machinery of :class:`LSTM`, :class:`GRU` and :class:`RNN`."""

    _KIND = ""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
        bidirectional: bool = False, batch_first: bool = True, dtype: DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.input_size = check_positive_int(input_size, "input_size", minimum=0)
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.bias = check_bool(bias, "bias")
        self.bidirectional = check_bool(bidirectional, "bidirectional")
        self.batch_first = check_bool(batch_first, "batch_first")
        self.dtype = check_float_dtype(dtype)
        G, H = _GATES[self._KIND], self.hidden_size
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(H)
        self._cells = []
        for layer in range(self.num_layers):
            dirs = []
            for _ in range(self.num_directions):
                D = self._layer_input_size(layer)
                W_ih = rng.uniform(-bound, bound, (G * H, D))
                W_hh = rng.uniform(-bound, bound, (G * H, H))
                b_ih = rng.uniform(-bound, bound, G * H) if self.bias else None
                b_hh = rng.uniform(-bound, bound, G * H) if self.bias else None
                dirs.append(self._prepare(layer, W_ih, W_hh, b_ih, b_hh))
            self._cells.append(dirs)

    # ----------------------------------------------------------------- weights

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.hidden_size * self.num_directions

    def _prepare(self, layer, W_ih, W_hh, b_ih, b_hh, prefix=""):
        if not self.bias and (b_ih is not None or b_hh is not None):
            msg = f"{prefix}b_ih and {prefix}b_hh must be None for a layer built with bias=False"
            raise ValueError(msg)
        arrays = _check_weights(
            self._KIND, W_ih, W_hh, b_ih, b_hh, dtype=self.dtype, input_size=self._layer_input_size(layer),
            hidden_size=self.hidden_size, prefix=prefix,
        )
        return _Prepared(self._KIND, *arrays)

    @property
    def weights(self) -> tuple:
        """``weights[layer][direction]``: :class:`RecurrentWeights` in PyTorch layout (read-only)."""
        return tuple(tuple(p.public() for p in dirs) for dirs in self._cells)

    def set_weights(self, layer, direction, W_ih, W_hh, b_ih=None, b_hh=None):
        """Replace the weights of one layer and direction (PyTorch layout).

        Parameters
        ----------
        layer : int
            0 .. num_layers - 1.
        direction : int
            0 (forward) or 1 (backward, bidirectional layers only).
        W_ih : array_like, shape (G*H, D_layer)
            ``D_layer`` is ``input_size`` for layer 0 and ``directions * H`` above.
        W_hh : array_like, shape (G*H, H)
        b_ih, b_hh : array_like, shape (G*H,), optional
            Zeros when omitted; must be omitted when the layer has ``bias=False``.
        """
        layer = check_positive_int(layer, "layer", minimum=0)
        direction = check_positive_int(direction, "direction", minimum=0)
        if layer >= self.num_layers:
            msg = f"layer must be within 0..{self.num_layers - 1}; got {layer}"
            raise ValueError(msg)
        if direction >= self.num_directions:
            msg = f"direction must be within 0..{self.num_directions - 1}; got {direction}"
            raise ValueError(msg)
        self._cells[layer][direction] = self._prepare(layer, W_ih, W_hh, b_ih, b_hh)

    def state_dict(self) -> dict:
        """The weights under PyTorch's names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), as copies."""
        out = {}
        for layer, dirs in enumerate(self._cells):
            for d, p in enumerate(dirs):
                suffix = f"_l{layer}{'_reverse' if d else ''}"
                out["weight_ih" + suffix] = p.w_ih_t.T.copy()
                out["weight_hh" + suffix] = p.w_hh_t.T.copy()
                if self.bias:
                    out["bias_ih" + suffix] = p.b_ih.copy()
                    out["bias_hh" + suffix] = p.b_hh.copy()
        return out

    def _set_all(self, weights):
        """Replace every layer's weights from ``weights[layer][direction] = (W_ih, W_hh, b_ih, b_hh)``."""
        cells = []
        for layer, dirs in enumerate(weights):
            row = []
            for d, w in enumerate(dirs):
                prefix = f"layer {layer}{' backward' if d else ''}: "
                row.append(self._prepare(layer, *w, prefix=prefix))
            cells.append(row)
        self._cells = cells
        return self

    @classmethod
    def _empty(cls, input_size, hidden_size, num_layers, bidirectional, batch_first, dtype, bias, **extra):
        """An instance whose weights are about to be replaced (no random draws)."""
        obj = cls.__new__(cls)
        obj.input_size = check_positive_int(input_size, "input_size", minimum=0)
        obj.hidden_size = check_positive_int(hidden_size, "hidden_size")
        obj.num_layers = check_positive_int(num_layers, "num_layers")
        obj.bias = bool(bias)
        obj.bidirectional = bool(bidirectional)
        obj.batch_first = check_bool(batch_first, "batch_first")
        obj.dtype = check_float_dtype(dtype)
        for k, v in extra.items():
            setattr(obj, k, v)
        obj._cells = []
        return obj

    @classmethod
    def _from_layer_weights(cls, weights, *, has_bias, batch_first, dtype, **extra):
        """Build from ``weights[layer][direction] = (W_ih, W_hh, b_ih, b_hh)`` (PyTorch layout)."""
        first = [as_float_array(a, n) for a, n in zip(weights[0][0][:2], ("W_ih", "W_hh"))]
        if first[1].ndim != 2 or first[0].ndim != 2:
            msg = f"weights must be 2-D matrices; got W_ih {first[0].shape}, W_hh {first[1].shape}"
            raise ValueError(msg)
        H = first[1].shape[1]
        D = first[0].shape[1]
        flat = [a for dirs in weights for w in dirs for a in w if a is not None]
        dt = _import_dtype(dtype, flat)
        obj = cls._empty(D, H, len(weights), len(weights[0]) == 2, batch_first, dt, has_bias, **extra)
        if not has_bias:
            weights = [[(w[0], w[1], None, None) for w in dirs] for dirs in weights]
        return obj._set_all(weights)

    # ----------------------------------------------------------------- forward

    def _initial_states(self, initial_state, B):
        raise NotImplementedError

    def _run(self, x, lengths, initial_state, backend):
        x = as_float_array(x, "x", ndim=3)
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
        if x.shape[2] != self.input_size:
            msg = f"x has {x.shape[2]} features per step; this layer expects input_size = {self.input_size}"
            raise ValueError(msg)
        initial = self._initial_states(initial_state, B)
        lengths = _lengths_or_full(lengths, B, T)
        be = _backend.resolve(backend, _SUPPORTED)
        if be == "cpp":
            x = _kernel_array(x, self.dtype)
            return _forward_cpp(self._KIND, x, self.batch_first, self._cells, initial, lengths, relu=self._relu())
        x_tm = _to_time_major(x, self.batch_first, self.dtype)
        out, finals = _forward(self._KIND, be, x_tm, self._cells, initial, lengths, relu=self._relu())
        return _from_time_major(out, self.batch_first), finals

    def _run_compiled(self, x, lengths, pool_until=None, *, ids=None, embedding=None):
        """cpp only, batch-major, zero initial states: :func:`_forward_cpp` on this layer's cells.

        ``x`` (B, T, input_size) C-contiguous in the layer's dtype, or ``ids``
        (B, T) int64 C-contiguous within 0..V-1 with ``embedding`` (V,
        input_size) C-contiguous in the layer's dtype: layer 0 then reads rows
        of its projection of ``embedding``, a table kept by identity of that
        array (it must not change).  ``lengths`` int64 (B,) within 1..T.
        Returns ``(out (B, T, F), finals)``, or the pooled sums (B, F) in place
        of ``out`` with ``pool_until``.
        """
        initial = self._initial_states(None, (x if ids is None else ids).shape[0])
        return _forward_cpp(
            self._KIND, x, True, self._cells, initial, lengths, relu=self._relu(), ids=ids, embedding=embedding,
            pool_until=pool_until,
        )

    def _relu(self):
        return False

    def _check_state(self, value, name, B):
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        return _state(value, name, shape, self.dtype)

    def __repr__(self):
        extra = self._repr_extra()
        return (
            f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"bias={self.bias}, bidirectional={self.bidirectional}, batch_first={self.batch_first}{extra}, "
            f"dtype={self.dtype.name})"
        )

    def _repr_extra(self):
        return ""


_CALL_DOC = """
        Parameters
        ----------
        x : array_like, shape (B, T, input_size), or (T, B, input_size) when ``batch_first=False``
            Converted to the layer's dtype.
        lengths : array_like of int, shape (B,), optional
            Valid steps of each sequence, within 1..T.  Past its length a
            sequence's outputs are 0 and its state is frozen; the backward
            direction starts at each sequence's own last valid step (PyTorch
            packed sequences).
        {state_param}
        backend : {{"auto", "numpy", "numba", "cpp"}}

        Returns
        -------
        outputs : ndarray, shape (B, T, directions * H) (or time-major)
            The last layer's hidden states, ``[forward, backward]`` features.
        {state_return}
"""


class LSTM(_Recurrent):
    """Stacked, optionally bidirectional LSTM with PyTorch's layout and semantics.

    Parameters
    ----------
    input_size : int
        Features per step of the input (D).
    hidden_size : int
        H.
    num_layers : int
        Stacked layers; layer k > 0 takes the previous layer's output.
    bias : bool
        ``False``: the biases are zero (PyTorch's ``bias=False``).
    bidirectional : bool
        Run a backward direction too and concatenate ``[forward, backward]``.
    batch_first : bool
        Input and output are (B, T, .) when True (the default), (T, B, .) otherwise.
    dtype : float32 or float64
        The dtype of the weights and of the computation.
    seed : int or numpy.random.Generator, optional
        Source of the initial weights, drawn like PyTorch's from
        uniform(-1/sqrt(H), 1/sqrt(H)).

    Attributes
    ----------
    weights : tuple of tuples of RecurrentWeights
        ``weights[layer][direction]`` in PyTorch layout (gates i, f, g, o), read-only;
        replace them with :meth:`set_weights`.

    Notes
    -----
    The weights are prepared once (transposed, contiguous, ``b_ih + b_hh``
    fused) and reused by every call.
    """

    _KIND = "lstm"

    def __call__(
        self, x: ArrayLike, lengths: ArrayLike | None = None, initial_state: Any = None, *, backend: str = "auto"
    ) -> tuple[NDArray[np.floating], tuple[NDArray[np.floating], NDArray[np.floating]]]:
        out, (h, c) = self._run(x, lengths, initial_state, backend)
        return out, (h, c)

    __call__.__doc__ = "Run the layers over ``x``.\n" + _CALL_DOC.format(
        state_param=(
            "initial_state : tuple (h0, c0), optional\n"
            "            Each of shape (num_layers * directions, B, H), or None for zeros."
        ),
        state_return=(
            "(h_n, c_n) : ndarrays, shape (num_layers * directions, B, H)\n"
            "            The state after each sequence's last valid step (PyTorch's order:\n"
            "            layer 0 forward, layer 0 backward, layer 1 forward, ...)."
        ),
    )

    def _initial_states(self, initial_state, B):
        if initial_state is None:
            h0 = c0 = None
        else:
            if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
                msg = "initial_state must be a tuple (h0, c0) for an LSTM"
                raise TypeError(msg)
            h0, c0 = initial_state
        return [self._check_state(h0, "h0", B), self._check_state(c0, "c0", B)]

    @classmethod
    def from_torch(cls, module_or_state_dict, *, dtype=None, batch_first=None):
        """Import a PyTorch ``nn.LSTM`` or its ``state_dict()`` (torch is never imported here).

        Parameters
        ----------
        module_or_state_dict : torch.nn.LSTM or mapping
            All layers and ``_reverse`` directions are read; ``bias=False``
            modules work.  Layer count, direction count, sizes and bias come
            from the keys and shapes.  A state dict whose keys carry one common
            prefix (``"encoder.weight_ih_l0"``) is accepted.
        dtype : float32 or float64, optional
            Default: float64 if the weights are float64, else float32.
        batch_first : bool, optional
            Default: the module's own setting; True for a state dict.
        """
        weights, has_bias, attrs = _torch_weights("lstm", module_or_state_dict)
        bf = attrs.get("batch_first", True) if batch_first is None else batch_first
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=bf, dtype=dtype)

    @classmethod
    def from_keras(cls, kernel, recurrent_kernel=None, bias=None, *, dtype=None, batch_first=True):
        """Import Keras LSTM weights (gate order i, f, c, o, the same as PyTorch's i, f, g, o).

        Parameters
        ----------
        kernel : array_like, shape (D, 4H), or a Keras layer, or a list of Keras layers
            A built ``keras.layers.LSTM``, a ``Bidirectional(LSTM(...))``
            (``merge_mode="concat"``), or a list of those for stacked layers.
        recurrent_kernel : array_like, shape (H, 4H)
        bias : array_like, shape (4H,), optional
        dtype : float32 or float64, optional
        batch_first : bool
            Keras layers take (B, T, D), the default here as well.
        """
        weights, has_bias = _keras_weights("lstm", kernel, recurrent_kernel, bias)
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype)

    @classmethod
    def from_onnx(cls, W, R, B=None, *, dtype=None, batch_first=True):
        """Import the inputs of an ONNX ``LSTM`` node (gate order i, o, f, c).

        Parameters
        ----------
        W : array_like, shape (num_directions, 4H, D)
        R : array_like, shape (num_directions, 4H, H)
        B : array_like, shape (num_directions, 8H), optional
            ``[Wb, Rb]`` per direction.
        dtype : float32 or float64, optional
        batch_first : bool
            ONNX's default ``layout=0`` is time-major: pass ``batch_first=False``
            to feed (T, B, D) input unchanged.

        Notes
        -----
        Two directions make a bidirectional layer.  The node's default
        activations (sigmoid, tanh, tanh) are assumed; peepholes, ``clip``
        and ``input_forget`` are not supported, nor ``direction="reverse"``.
        """
        weights, has_bias = _onnx_weights("lstm", W, R, B)
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype)


class GRU(_Recurrent):
    """Stacked, optionally bidirectional GRU with PyTorch's layout and semantics.

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, bidirectional, batch_first, dtype, seed
        As for :class:`LSTM`.

    Attributes
    ----------
    weights : tuple of tuples of RecurrentWeights
        PyTorch layout, gates r, z, n.

    Notes
    -----
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    """

    _KIND = "gru"

    def __call__(
        self, x: ArrayLike, lengths: ArrayLike | None = None, initial_state: ArrayLike | None = None, *,
        backend: str = "auto",
    ) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        out, (h,) = self._run(x, lengths, initial_state, backend)
        return out, h

    __call__.__doc__ = "Run the layers over ``x``.\n" + _CALL_DOC.format(
        state_param=(
            "initial_state : array_like, shape (num_layers * directions, B, H), optional\n"
            "            h0; zeros when omitted."
        ),
        state_return="h_n : ndarray, shape (num_layers * directions, B, H)",
    )

    def _initial_states(self, initial_state, B):
        return [self._check_state(initial_state, "initial_state", B)]

    @classmethod
    def from_torch(cls, module_or_state_dict, *, dtype=None, batch_first=None):
        """Import a PyTorch ``nn.GRU`` or its ``state_dict()``; as :meth:`LSTM.from_torch`."""
        weights, has_bias, attrs = _torch_weights("gru", module_or_state_dict)
        bf = attrs.get("batch_first", True) if batch_first is None else batch_first
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=bf, dtype=dtype)

    @classmethod
    def from_keras(cls, kernel, recurrent_kernel=None, bias=None, *, reset_after=True, dtype=None, batch_first=True):
        """Import Keras GRU weights (gate order z, r, h) with ``reset_after=True``.

        Parameters
        ----------
        kernel : array_like, shape (D, 3H), or a Keras layer, or a list of Keras layers
            As for :meth:`LSTM.from_keras`.
        recurrent_kernel : array_like, shape (H, 3H)
        bias : array_like, shape (2, 3H), optional
            Input and recurrent biases.
        reset_after : bool
            Only ``True`` (the Keras default) is supported: it is PyTorch's
            formulation.  ``reset_after=False`` applies the reset gate before
            the recurrent product, a different function, and raises ValueError.
        dtype : float32 or float64, optional
        batch_first : bool
        """
        if not check_bool(reset_after, "reset_after"):
            msg = (
                "reset_after=False is not supported: Keras then applies the reset gate before the recurrent "
                "matrix product, which PyTorch's GRU (and fastsim's) does not compute"
            )
            raise ValueError(msg)
        weights, has_bias = _keras_weights("gru", kernel, recurrent_kernel, bias)
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype)

    @classmethod
    def from_onnx(cls, W, R, B=None, *, linear_before_reset, dtype=None, batch_first=True):
        """Import the inputs of an ONNX ``GRU`` node (gate order z, r, h).

        Parameters
        ----------
        W : array_like, shape (num_directions, 3H, D)
        R : array_like, shape (num_directions, 3H, H)
        B : array_like, shape (num_directions, 6H), optional
            ``[Wb, Rb]`` per direction.
        linear_before_reset : int
            The node's attribute, stated explicitly because ONNX's default (0)
            is a different function from PyTorch's GRU.  Only 1 (what PyTorch
            exports) is supported; 0 raises ValueError.
        dtype : float32 or float64, optional
        batch_first : bool
        """
        if linear_before_reset != 1:
            msg = (
                f"linear_before_reset must be 1 (PyTorch's GRU); got {linear_before_reset!r}: with 0 the reset gate "
                "multiplies the state before the recurrent product, which fastsim does not compute"
            )
            raise ValueError(msg)
        weights, has_bias = _onnx_weights("gru", W, R, B)
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype)


class RNN(_Recurrent):
    """Stacked, optionally bidirectional Elman RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Parameters
    ----------
    input_size, hidden_size, num_layers
        As for :class:`LSTM`.
    nonlinearity : {"tanh", "relu"}
    bias, bidirectional, batch_first, dtype, seed
        As for :class:`LSTM`.
    """

    _KIND = "rnn"

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, *, nonlinearity: str = "tanh",
        bias: bool = True, bidirectional: bool = False, batch_first: bool = True, dtype: DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.nonlinearity = check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
        super().__init__(
            input_size, hidden_size, num_layers, bias=bias, bidirectional=bidirectional, batch_first=batch_first,
            dtype=dtype, seed=seed,
        )

    def __call__(
        self, x: ArrayLike, lengths: ArrayLike | None = None, initial_state: ArrayLike | None = None, *,
        backend: str = "auto",
    ) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        out, (h,) = self._run(x, lengths, initial_state, backend)
        return out, h

    __call__.__doc__ = GRU.__call__.__doc__

    def _initial_states(self, initial_state, B):
        return [self._check_state(initial_state, "initial_state", B)]

    def _relu(self):
        return self.nonlinearity == "relu"

    def _repr_extra(self):
        return f", nonlinearity={self.nonlinearity!r}"

    @classmethod
    def from_torch(cls, module_or_state_dict, *, nonlinearity=None, dtype=None, batch_first=None):
        """Import a PyTorch ``nn.RNN`` or its ``state_dict()``; as :meth:`LSTM.from_torch`.

        ``nonlinearity`` defaults to the module's, and to "tanh" for a state
        dict (which does not record it).
        """
        weights, has_bias, attrs = _torch_weights("rnn", module_or_state_dict)
        bf = attrs.get("batch_first", True) if batch_first is None else batch_first
        module_nl = attrs.get("nonlinearity")
        if nonlinearity is None:
            nonlinearity = module_nl or "tanh"
        check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
        if module_nl is not None and module_nl != nonlinearity:
            msg = f"nonlinearity={nonlinearity!r} contradicts the module's nonlinearity={module_nl!r}"
            raise ValueError(msg)
        return cls._from_layer_weights(
            weights, has_bias=has_bias, batch_first=bf, dtype=dtype, nonlinearity=nonlinearity
        )

    @classmethod
    def from_keras(cls, kernel, recurrent_kernel=None, bias=None, *, nonlinearity=None, dtype=None, batch_first=True):
        """Import Keras ``SimpleRNN`` weights: kernel (D, H), recurrent_kernel (H, H), bias (H,).

        ``kernel`` may also be a built ``SimpleRNN`` layer (tanh or relu), a
        ``Bidirectional`` of one, or a list of those.  ``nonlinearity``
        defaults to the layers' activation, and to "tanh" for arrays.
        """
        weights, has_bias, found = _keras_weights("rnn", kernel, recurrent_kernel, bias, want_activation=True)
        if nonlinearity is None:
            nonlinearity = found or "tanh"
        check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
        if found is not None and found != nonlinearity:
            msg = f"nonlinearity={nonlinearity!r} contradicts the Keras layers' activation {found!r}"
            raise ValueError(msg)
        return cls._from_layer_weights(
            weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype, nonlinearity=nonlinearity
        )

    @classmethod
    def from_onnx(cls, W, R, B=None, *, nonlinearity="tanh", dtype=None, batch_first=True):
        """Import the inputs of an ONNX ``RNN`` node.

        Parameters
        ----------
        W : array_like, shape (num_directions, H, D)
        R : array_like, shape (num_directions, H, H)
        B : array_like, shape (num_directions, 2H), optional
        nonlinearity : {"tanh", "relu"}
            The node's activation (ONNX's default is tanh).
        dtype, batch_first
            As for :meth:`LSTM.from_onnx`.
        """
        check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
        weights, has_bias = _onnx_weights("rnn", W, R, B)
        return cls._from_layer_weights(
            weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype, nonlinearity=nonlinearity
        )


# --------------------------------------------------------------------------- Keras and ONNX layouts

# new block i (PyTorch order) is block _KERAS_ORDER[kind][i] of the Keras layout
_KERAS_ORDER = {"lstm": (0, 1, 2, 3), "gru": (1, 0, 2), "rnn": (0,)}  # Keras GRU: z, r, h
_ONNX_ORDER = {"lstm": (0, 2, 3, 1), "gru": (1, 0, 2), "rnn": (0,)}  # ONNX LSTM: i, o, f, c; GRU: z, r, h
_KERAS_CLASS = {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}


def _keras_arrays_to_torch(kind, kernel, recurrent_kernel, bias, prefix=""):
    """Keras (kernel, recurrent_kernel, bias) of one direction -> PyTorch (W_ih, W_hh, b_ih, b_hh)."""
    G = _GATES[kind]
    gates = f"{G}H" if G > 1 else "H"
    kernel = as_float_array(kernel, prefix + "kernel", ndim=2)
    recurrent_kernel = as_float_array(recurrent_kernel, prefix + "recurrent_kernel", ndim=2)
    H = recurrent_kernel.shape[0]
    check_shape(recurrent_kernel, (H, G * H), prefix + "recurrent_kernel", f"(H, {gates})")
    if kernel.shape[1] != G * H:
        msg = f"{prefix}kernel must have shape (D, {gates}) with H = {H}; got {kernel.shape}"
        raise ValueError(msg)
    order = _KERAS_ORDER[kind]
    W_ih = _blocks(kernel.T, order, axis=0)
    W_hh = _blocks(recurrent_kernel.T, order, axis=0)
    if bias is None:
        return W_ih, W_hh, None, None
    bias = as_float_array(bias, prefix + "bias")
    if kind == "gru":
        if bias.shape == (G * H,):
            msg = (
                f"{prefix}bias has shape {bias.shape}, the layout of a Keras GRU with reset_after=False, which "
                "computes a different function; only reset_after=True (bias of shape (2, 3H)) is supported"
            )
            raise ValueError(msg)
        check_shape(bias, (2, G * H), prefix + "bias", "(2, 3H): input and recurrent bias, reset_after=True")
        return W_ih, W_hh, _blocks(bias[0], order, axis=0), _blocks(bias[1], order, axis=0)
    check_shape(bias, (G * H,), prefix + "bias", f"({gates},)")
    return W_ih, W_hh, _blocks(bias, order, axis=0), np.zeros_like(bias)


def _keras_plain_layer(kind, layer, prefix, backward=False):
    cls_name = type(layer).__name__
    if cls_name != _KERAS_CLASS[kind]:
        msg = f"{prefix}layer is a Keras {cls_name}; expected {_KERAS_CLASS[kind]}"
        raise ValueError(msg)
    if bool(getattr(layer, "go_backwards", False)) != backward:
        msg = f"{prefix}layer has go_backwards={not backward}; only Bidirectional wrappers may run backwards"
        raise ValueError(msg)
    activation = _activation_name(getattr(layer, "activation", None))
    allowed = ("tanh", "relu") if kind == "rnn" else ("tanh",)
    if activation not in allowed:
        msg = f"{prefix}layer has activation {activation!r}; supported: {allowed}"
        raise ValueError(msg)
    if kind != "rnn":
        recurrent = _activation_name(getattr(layer, "recurrent_activation", None))
        if recurrent != "sigmoid":
            msg = f"{prefix}layer has recurrent_activation {recurrent!r}; only 'sigmoid' is supported"
            raise ValueError(msg)
    if kind == "gru" and not getattr(layer, "reset_after", True):
        msg = (
            f"{prefix}layer has reset_after=False, which computes a different function from PyTorch's GRU; "
            "only reset_after=True (the Keras default) is supported"
        )
        raise ValueError(msg)
    arrays = [_to_numpy(a, prefix + "weight") for a in layer.get_weights()]
    if len(arrays) not in (2, 3):
        msg = f"{prefix}layer must be built (2 or 3 weight arrays); got {len(arrays)}"
        raise ValueError(msg)
    kernel, recurrent_kernel, *rest = arrays
    w = _keras_arrays_to_torch(kind, kernel, recurrent_kernel, rest[0] if rest else None, prefix)
    return [w], activation



def _keras_weights(kind, kernel, recurrent_kernel, bias, *, want_activation=False):
    """Keras arrays, layer, or list of layers -> (weights[layer][direction], has_bias[, nonlinearity])."""
    if _is_keras_layer(kernel) or (
        isinstance(kernel, (list, tuple)) and kernel and all(_is_keras_layer(k) for k in kernel)
    ):
        if recurrent_kernel is not None or bias is not None:
            msg = "recurrent_kernel and bias must be omitted when a Keras layer is passed"
            raise TypeError(msg)
        layers = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel]
        weights, activations = [], set()
        for i, layer in enumerate(layers):
            prefix = f"layer {i}: " if len(layers) > 1 else ""
            if hasattr(layer, "forward_layer") and hasattr(layer, "backward_layer"):
                mode = getattr(layer, "merge_mode", "concat")
                if mode != "concat":
                    msg = f"{prefix}Bidirectional layer has merge_mode={mode!r}; only 'concat' is supported"
                    raise ValueError(msg)
                fwd, a1 = _keras_plain_layer(kind, layer.forward_layer, prefix + "forward ")
                bwd, a2 = _keras_plain_layer(kind, layer.backward_layer, prefix + "backward ", backward=True)
                weights.append(fwd + bwd)
                activations.update((a1, a2))
            else:
                w, a = _keras_plain_layer(kind, layer, prefix)
                weights.append(w)
                activations.add(a)
        if len({len(dirs) for dirs in weights}) != 1:
            msg = "stacked Keras layers must be all bidirectional or all unidirectional"
            raise ValueError(msg)
        if len(activations) != 1:
            msg = f"stacked Keras layers must share one activation; got {sorted(activations)}"
            raise ValueError(msg)
        nonlinearity = activations.pop()
    else:
        if recurrent_kernel is None:
            msg = "recurrent_kernel is required when kernel is an array"
            raise TypeError(msg)
        weights = [[_keras_arrays_to_torch(kind, kernel, recurrent_kernel, bias)]]
        nonlinearity = None  # arrays do not record the activation
    has_bias = all(w[2] is not None for dirs in weights for w in dirs)
    if not has_bias:
        weights = [[(w[0], w[1], None, None) for w in dirs] for dirs in weights]
    if want_activation:
        return weights, has_bias, nonlinearity
    return weights, has_bias


def _onnx_weights(kind, W, R, B):
    """ONNX W, R, B of one node -> ([[direction weights]], has_bias) in PyTorch layout."""
    G = _GATES[kind]
    gates = f"{G}H" if G > 1 else "H"
    W = as_float_array(W, "W", ndim=3)
    R = as_float_array(R, "R", ndim=3)
    num_dirs, GH, H = R.shape
    if num_dirs not in (1, 2):
        msg = f"R must have 1 or 2 directions (axis 0); got shape {R.shape}"
        raise ValueError(msg)
    check_shape(R, (num_dirs, G * H, H), "R", f"(num_directions, {gates}, H)")
    if W.shape[:2] != (num_dirs, G * H):
        msg = f"W must have shape ({num_dirs}, {G * H}, D) (num_directions, {gates}, D) with H = {H}; got {W.shape}"
        raise ValueError(msg)
    if B is not None:
        B = as_float_array(B, "B", ndim=2)
        check_shape(B, (num_dirs, 2 * G * H), "B", f"(num_directions, {2 * G}H): [Wb, Rb]")
    order = _ONNX_ORDER[kind]
    dirs = []
    for d in range(num_dirs):
        W_ih = _blocks(W[d], order, axis=0)
        W_hh = _blocks(R[d], order, axis=0)
        if B is None:
            dirs.append((W_ih, W_hh, None, None))
        else:
            dirs.append((W_ih, W_hh, _blocks(B[d, : G * H], order, 0), _blocks(B[d, G * H :], order, 0)))
    return [dirs], B is not None
