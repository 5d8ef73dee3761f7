"""Training form of the recurrent layers: forward with workspace, backward, per backend.

This room owns the dispatch between the backends' training kernels.  It may
call :mod:`fastsim._reference.rnn_backward` (the spec), the compiled core and
the Numba kernels; it checks nothing (callers hand it arrays of one float
dtype and lengths within 1..T) and knows nothing of PyTorch.

``forward(be, kind, x, weights, initial, lengths, batch_first, nonlinearity)``
returns ``(outputs, finals, tape)``; ``backward(be, tape, weights, d_outputs,
d_finals)`` returns ``(dx, d_weights, d_initial)``, shapes as in
:func:`fastsim._reference.rnn_backward.backward`.  ``weights`` is a list over
layers of a list over directions of ``(W_ih, W_hh, b_ih, b_hh)`` in PyTorch
layout; the tape is opaque to the caller and belongs to the backend that made it.
"""

from __future__ import annotations

from ._reference import rnn_backward as _ref

SUPPORTED = ("numpy",)


def forward(be, kind, x, weights, initial, lengths, batch_first, nonlinearity="tanh"):
    return _ref.forward(kind, x, weights, initial, lengths, batch_first, nonlinearity)


def backward(be, tape, weights, d_outputs, d_finals):
    return _ref.backward(tape, weights, d_outputs, d_finals)
