"""The stacked driver of the recurrent layers: the one walk over layers and directions, forward and backward.

This room owns the order of work in a stacked, optionally bidirectional run:
layer after layer, each direction over the previous layer's whole output,
the state arrays indexed ``layer * directions + direction`` (PyTorch's
order), the layout (batch-first or time-major) and, backwards, the mirror
walk that sums the directions' input gradients.  It calls only NumPy and the
per-direction kernels it is handed, so the inference forward of every
backend, the training forward that keeps a workspace and the backward all
run through these two functions; the kernels (:mod:`fastsim.rnn.kernels`,
the reference's :mod:`fastsim._reference.rnn`) know nothing of stacking.

Direction kernels
-----------------
``forward`` calls ``direction(w, seq, states, lengths, reverse, sink)`` for
each layer and direction, where ``w`` is ``cells[layer][direction]``,
``seq`` the layer's input, ``states`` a tuple of (B, H) initial states,
``lengths`` int64 (B,) and ``sink`` a :class:`Sink` saying where this
direction's H output columns go.  It returns ``(finals, tape)``: the final
states and whatever its backward needs (None for inference).

``backward`` calls ``direction(w, tape, d_out, d_finals)`` with the
direction's output gradient (T, B, H) (time-major) and final-state
gradients; it returns ``(dx, d_weights, d_initial)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Sink", "backward", "forward"]


class Sink(NamedTuple):
    """Where one direction's outputs go.

    ``out`` is the layer's output array, (T, B, F) time-major or (B, T, F),
    F = directions * H; the direction writes columns ``col .. col + H``.
    With ``pooled`` (B, F) (the last layer of a pooled run) ``out`` is None:
    the direction adds, for each row ``b``, its outputs of the steps
    ``t < until[b]`` to the same columns of ``pooled`` instead.
    """

    out: np.ndarray | None
    col: int
    batch_first: bool
    pooled: np.ndarray | None = None
    until: np.ndarray | None = None

    def put(self, out_tm: np.ndarray) -> None:
        """Store a direction's time-major outputs (T, B, H) (for kernels that return them)."""
        H = out_tm.shape[2]
        if self.pooled is not None:
            T = out_tm.shape[0]
            steps = np.arange(T)[:, None] < self.until[None, :]
            self.pooled[:, self.col : self.col + H] += np.einsum("tbh,tb->bh", out_tm, steps.astype(out_tm.dtype))
        elif self.batch_first:
            self.out[:, :, self.col : self.col + H] = np.swapaxes(out_tm, 0, 1)
        else:
            self.out[:, :, self.col : self.col + H] = out_tm


def forward(cells, x, batch_first: bool, initial, lengths, direction, *, hidden_size: int, steps: int,
            batch: int, dtype, pool_until=None) -> tuple[Any, tuple, list]:
    """Run a stack.

    Parameters
    ----------
    cells : list over layers of list over directions
        Handed to ``direction`` as its ``w``.
    x : ndarray or any
        Layer 0's input as ``direction`` takes it, (B, T, D) when
        ``batch_first`` else (T, B, D); the outputs of a layer, in the same
        layout, feed the next.
    initial : tuple of arrays, shape (layers * directions, B, H)
        One per state (``(h0, c0)`` or ``(h0,)``).
    lengths : int64 array, shape (B,), each within 1..T
    direction : callable
        See the module's docstring.
    hidden_size, steps, batch, dtype
        H, T, B and the dtype of the outputs.
    pool_until : int64 array (B,), optional
        The last layer's outputs are not kept: the result is instead the sum
        of each row's outputs over its steps ``t < pool_until[b]``, (B, F).

    Returns
    -------
    outputs, finals, tapes
        ``outputs`` in the input's layout (or the pooled sums), ``finals`` a
        tuple like ``initial``, ``tapes[layer][direction]``.
    """
    H, T, B = hidden_size, steps, batch
    num_dirs = len(cells[0])
    F = num_dirs * H
    shape = (B, T, F) if batch_first else (T, B, F)
    finals = tuple(np.empty_like(s) for s in initial)
    if T == 0 or B == 0:  # nothing to run: every state stays at its initial value
        for f, s in zip(finals, initial):
            f[...] = s
        return np.zeros((B, F) if pool_until is not None else shape, dtype=dtype), finals, []
    seq = x
    pooled = None
    tapes = []
    for layer, directions in enumerate(cells):
        last = layer == len(cells) - 1
        if last and pool_until is not None:
            out = None
            pooled = np.zeros((B, F), dtype=dtype)
        else:
            out = np.zeros(shape, dtype=dtype)
        layer_tapes = []
        for d, w in enumerate(directions):
            k = layer * num_dirs + d
            sink = Sink(out, d * H, batch_first, pooled, pool_until if out is None else None)
            last_states, tape = direction(w, seq, tuple(s[k] for s in initial), lengths, d == 1, sink)
            for f, value in zip(finals, last_states):
                f[k] = value
            layer_tapes.append(tape)
        tapes.append(layer_tapes)
        seq = out
    return (seq if pooled is None else pooled), finals, tapes


def backward(cells, tapes, d_outputs, d_finals, direction, *, hidden_size: int):
    """Gradients of a stack from those of its time-major outputs (T, B, F) and final states.

    ``cells`` and ``tapes`` as :func:`forward` took and returned them;
    ``d_finals`` a tuple of (layers * directions, B, H) arrays.  Returns
    ``(dx (T, B, D), d_weights[layer][direction], d_initial)``, ``d_initial``
    like ``d_finals``.
    """
    H = hidden_size
    num_dirs = len(cells[0])
    d_initial = tuple(np.zeros_like(g) for g in d_finals)
    d_weights = [[None] * num_dirs for _ in cells]
    d_seq = d_outputs
    for layer in range(len(cells) - 1, -1, -1):
        d_input = None
        for d in range(num_dirs):
            k = layer * num_dirs + d
            dx, grads, d_first = direction(cells[layer][d], tapes[layer][d], d_seq[:, :, d * H : (d + 1) * H],
                                           tuple(g[k] for g in d_finals))
            d_weights[layer][d] = grads
            for g, value in zip(d_initial, d_first):
                g[k] = value
            d_input = dx if d_input is None else d_input + dx
        d_seq = d_input
    return d_seq, d_weights, d_initial
