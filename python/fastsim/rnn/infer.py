"""The inference route of the recurrent layers: layout, backend and the stacked driver, in one place.

This room owns :func:`run`, which every forward call of :mod:`fastsim.rnn`
reaches (the layers, their pooled and token-id forms, the functional
forms), and the small array helpers they share.  It may call
:mod:`fastsim.rnn.driver`, :mod:`fastsim.rnn.kernels` and the validation
helpers; it checks nothing the callers have not (arrays of the layer's dtype,
int64 lengths within 1..T, states of the right shapes).
"""

from __future__ import annotations

import numpy as np

from .._validation import as_float_array, check_lengths, check_shape
from . import driver, kernels

__all__ = ["kernel_array", "lengths_or_full", "run", "state"]


def kernel_array(a, dt):
    """C-contiguous, aligned and writeable: kernels are compiled for exactly that kind of array."""
    return np.require(a, dtype=dt, requirements=["C", "A", "W"])


def lengths_or_full(lengths, B, T):
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    return kernel_array(check_lengths(lengths, B, T), np.int64)


def state(value, name, shape, dt):
    if value is None:
        return np.zeros(shape, dtype=dt)
    arr = as_float_array(value, name, ndim=len(shape))
    check_shape(arr, shape, name, "(B, H)" if len(shape) == 2 else "(layers * directions, B, H)")
    return kernel_array(arr, dt)


def run(cells, x, batch_first, initial, lengths, be, *, pool_until=None, ids=None):
    """Run prepared layers ``cells[layer][direction]`` on backend ``be``.

    ``x`` (B, T, D) when ``batch_first`` else (T, B, D), in the layers' dtype;
    or, instead of ``x``, ``ids`` a :class:`fastsim.rnn.kernels.IdsInput`
    (cpp only; the callers gather ``embedding[ids]`` for the other
    backends).  ``initial`` a list of (layers * directions, B, H) states;
    ``lengths`` int64 (B,) within 1..T.  Returns ``(outputs, finals)``,
    outputs in the input's layout, or the (B, F) sums of the last layer's
    outputs over the steps ``t < pool_until[b]`` when ``pool_until`` is given.

    The compiled layers read and write the caller's layout (each direction
    writes its columns of one output array, and pools inside its steps); the
    NumPy and Numba kernels walk time-major copies.
    """
    dt = initial[0].dtype
    H = cells[0][0].hidden_size
    if ids is not None:
        B, T = ids.ids.shape
    else:
        T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    common = dict(hidden_size=H, steps=T, batch=B, dtype=dt, pool_until=pool_until)
    direction = kernels.INFER[be]
    if be == "cpp":
        out, finals, _ = driver.forward(cells, kernel_array(x, dt) if ids is None else ids, batch_first, tuple(initial), lengths,
                                        direction, **common)
        return out, finals
    seq = kernel_array(np.swapaxes(x, 0, 1) if batch_first else x, dt)
    out, finals, _ = driver.forward(cells, seq, False, tuple(initial), lengths, direction, **common)
    if batch_first and pool_until is None:
        out = np.ascontiguousarray(np.swapaxes(out, 0, 1))
    return out, finals
