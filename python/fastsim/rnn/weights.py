"""The one weight layout of the recurrent layers, checked and prepared once per layer and direction.

This room owns :class:`RecurrentWeights` (the public view), the checks of
user-given weights and :class:`Prepared`, the form every backend's forward and
backward kernels read.  It may call :mod:`fastsim.rnn.cells`, the validation
helpers and the compiled core (to pack a layer once).

One layout everywhere: PyTorch's, ``W_ih`` (G*H, D) and ``W_hh`` (G*H, H)
C-contiguous, gate blocks in PyTorch's order, and ``b_ih``, ``b_hh`` (G*H,).
The NumPy reference and the training kernels of every backend take these
arrays as they are; the inference kernels of Numba and C++ pack a private
copy of their own once per :class:`Prepared` (transposed for Numba's row
loops; permuted by gate and packed for the GEMM engine in C++, see
``cpp/include/fastsim/rnn/weights.hpp``).
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import numpy as np

from .. import _backend
from .._validation import as_float_array, check_shape, result_dtype
from .cells import Cell

__all__ = ["Prepared", "RecurrentWeights", "check_weights"]

_CORE_LOCK = threading.Lock()  # guards the lazy creation of compiled layers


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


def _frozen(a: np.ndarray) -> np.ndarray:
    # always a copy: later changes to the caller's arrays must not reach the layer
    out = np.array(a, order="C")
    out.flags.writeable = False
    return out


class Prepared:
    """Weights of one layer and direction: the PyTorch-layout arrays, the fused biases, the compiled layer.

    ``weights`` holds read-only C-contiguous copies (shared with the public
    :class:`RecurrentWeights` view, which therefore costs nothing).
    ``bias`` is ``b_ih + b_hh`` for the LSTM and the RNN and
    ``b_ih + [b_hr, b_hz, 0]`` for the GRU, whose ``bias_hn`` = ``b_hn``
    stays inside ``r * (W_hn h + b_hn)``.
    """

    __slots__ = ("_core_layer", "_numba", "bias", "bias_hn", "cell", "weights")

    def __init__(self, cell: Cell, W_ih, W_hh, b_ih, b_hh):
        self.cell = cell
        self.weights = RecurrentWeights(*(_frozen(a) for a in (W_ih, W_hh, b_ih, b_hh)))
        self._core_layer: Any = None
        self._numba: tuple | None = None
        if cell.kind == "gru":
            H = self.hidden_size
            self.bias = self.weights.b_ih.copy()
            self.bias[: 2 * H] += self.weights.b_hh[: 2 * H]
            self.bias_hn = self.weights.b_hh[2 * H :]
        else:
            self.bias = self.weights.b_ih + self.weights.b_hh
            self.bias_hn = None

    @property
    def hidden_size(self) -> int:
        return self.weights.W_hh.shape[1]

    def numba_weights(self) -> tuple:
        """``(W_ih.T, W_hh.T)`` C-contiguous: the Numba kernels' packing (their GEMMs stream rows of it), made once."""
        packed = self._numba
        if packed is None:
            packed = (np.ascontiguousarray(self.weights.W_ih.T), np.ascontiguousarray(self.weights.W_hh.T))
            self._numba = packed
        return packed

    def core_layer(self):
        """The compiled layer: weights permuted and packed once, on first use.

        Made under a lock, so threads sharing these weights share one layer.
        """
        layer = self._core_layer
        if layer is None:
            with _CORE_LOCK:
                layer = self._core_layer
                if layer is None:
                    layer = _backend.core().RnnLayer(self.cell.core_id, *self.weights)
                    self._core_layer = layer
        return layer


def check_weights(cell: Cell, W_ih, W_hh, b_ih, b_hh, *, dtype=None, input_size=None, hidden_size=None, prefix=""):
    """Convert and check one layer's PyTorch-layout weights; biases default to zeros.

    ``hidden_size`` defaults to ``W_hh.shape[1]`` and ``input_size`` to
    ``W_ih.shape[1]``.  Returns the four arrays in ``dtype`` (or their common
    result dtype).
    """
    G = cell.gates
    gates = cell.gate_rows
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
