"""Recurrent forward passes (LSTM, GRU, vanilla RNN), reference semantics.

Layouts and gate orders are PyTorch's:

* LSTM: ``W_ih`` (4H, D), ``W_hh`` (4H, H), gates i, f, g, o::

      i = sigmoid(W_ii x + W_hi h + b_i)      f = sigmoid(W_if x + W_hf h + b_f)
      g = tanh(W_ig x + W_hg h + b_g)         o = sigmoid(W_io x + W_ho h + b_o)
      c' = f * c + i * g                      h' = o * tanh(c')

  with ``b = b_ih + b_hh``.
* GRU: ``W_ih`` (3H, D), ``W_hh`` (3H, H), gates r, z, n::

      r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
      z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
      n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
      h' = (1 - z) * n + z * h

* RNN: ``W_ih`` (H, D), ``W_hh`` (H, H); ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``
  with ``act`` tanh or relu.

Variable lengths follow PyTorch's packed sequences: sequence ``b`` is active at
time step ``t`` exactly when ``t < lengths[b]``.  Past its length a sequence's
outputs are 0 and its state is frozen, so the final state is the state at step
``lengths[b] - 1``.  The backward direction of a bidirectional layer walks
``t = T-1, ..., 0`` under the same rule, so it starts at each sequence's own
last element (step ``lengths[b] - 1``) from the initial state and ends at step 0.

The layer functions work on time-major arrays: ``x`` (T, B, D), states (B, H).
The stacked forms (:func:`lstm`, :func:`gru`, :func:`rnn`) take the user's
layout and a list of per-layer, per-direction weights, and run the layer
functions through the stacked driver every backend shares
(:mod:`fastsim.rnn.driver`, which only orders the work).
"""

from __future__ import annotations

import numpy as np

from ..rnn import driver


# Below this argument the logistic function is exactly 0 (its value is under
# 1.8e-35) in every backend: the compiled kernels clamp exp's argument and
# would otherwise return a tiny number there, which only matters against an
# infinite state, where 0 * inf is NaN and tiny * inf is inf.
SIGMOID_ZERO_BELOW = -80.0


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-z))``, exactly 0 below ``SIGMOID_ZERO_BELOW``."""
    # exp(-z) overflows to inf for very negative z, and 1 / inf = 0 is the right limit
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(z < SIGMOID_ZERO_BELOW, 0.0, 1.0 / (1.0 + np.exp(-z))).astype(z.dtype, copy=False)


def _ieee():
    """NaN and inf follow IEEE arithmetic without warnings, as in the compiled backends.

    (Overflow in a product and inf - inf are data, documented per function, not errors.)
    """
    return np.errstate(over="ignore", invalid="ignore", under="ignore")


def _time_steps(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _full_lengths(lengths, B: int, T: int) -> np.ndarray:
    return np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths)


# --------------------------------------------------------------------------- cells


def lstm_cell(x_t, h, c, W_ih, W_hh, bias):
    """One LSTM step for a batch: ``x_t`` (B, D), ``h``, ``c`` (B, H) -> ``(h', c')``."""
    with _ieee():
        gates = x_t @ W_ih.T + h @ W_hh.T + bias
        i, f, g, o = np.split(gates, 4, axis=1)
        i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
    return h_new, c_new


def gru_cell(x_t, h, W_ih, W_hh, b_ih, b_hh):
    """One GRU step for a batch: ``x_t`` (B, D), ``h`` (B, H) -> ``h'``."""
    with _ieee():
        x_r, x_z, x_n = np.split(x_t @ W_ih.T + b_ih, 3, axis=1)
        h_r, h_z, h_n = np.split(h @ W_hh.T + b_hh, 3, axis=1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = np.tanh(x_n + r * h_n)
        return (1.0 - z) * n + z * h


def rnn_cell(x_t, h, W_ih, W_hh, bias, nonlinearity="tanh"):
    """One vanilla RNN step for a batch: ``x_t`` (B, D), ``h`` (B, H) -> ``h'``."""
    with _ieee():
        a = x_t @ W_ih.T + h @ W_hh.T + bias
        return np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0.0)


# --------------------------------------------------------------------------- one layer, one direction


def lstm_layer(x, W_ih, W_hh, bias, h0, c0, lengths=None, reverse=False):
    """Run one LSTM direction over time-major ``x`` (T, B, D).

    ``bias`` is ``b_ih + b_hh`` (4H,).  Returns ``(out (T, B, H), h_n (B, H), c_n (B, H))``.
    """
    T, B = x.shape[:2]
    H = W_hh.shape[1]
    lengths = _full_lengths(lengths, B, T)
    h, c = h0.copy(), c0.copy()
    out = np.zeros((T, B, H), dtype=h.dtype)
    for t in _time_steps(T, reverse):
        h_new, c_new = lstm_cell(x[t], h, c, W_ih, W_hh, bias)
        active = (t < lengths)[:, None]
        h = np.where(active, h_new, h)
        c = np.where(active, c_new, c)
        out[t] = np.where(active, h_new, 0.0)
    return out, h, c


def gru_layer(x, W_ih, W_hh, b_ih, b_hh, h0, lengths=None, reverse=False):
    """Run one GRU direction over time-major ``x`` (T, B, D).  Returns ``(out, h_n)``."""
    T, B = x.shape[:2]
    H = W_hh.shape[1]
    lengths = _full_lengths(lengths, B, T)
    h = h0.copy()
    out = np.zeros((T, B, H), dtype=h.dtype)
    for t in _time_steps(T, reverse):
        h_new = gru_cell(x[t], h, W_ih, W_hh, b_ih, b_hh)
        active = (t < lengths)[:, None]
        h = np.where(active, h_new, h)
        out[t] = np.where(active, h_new, 0.0)
    return out, h


def rnn_layer(x, W_ih, W_hh, bias, h0, lengths=None, reverse=False, nonlinearity="tanh"):
    """Run one vanilla RNN direction over time-major ``x`` (T, B, D).  Returns ``(out, h_n)``."""
    T, B = x.shape[:2]
    H = W_hh.shape[1]
    lengths = _full_lengths(lengths, B, T)
    h = h0.copy()
    out = np.zeros((T, B, H), dtype=h.dtype)
    for t in _time_steps(T, reverse):
        h_new = rnn_cell(x[t], h, W_ih, W_hh, bias, nonlinearity)
        active = (t < lengths)[:, None]
        h = np.where(active, h_new, h)
        out[t] = np.where(active, h_new, 0.0)
    return out, h


# --------------------------------------------------------------------------- stacked, bidirectional


def _stacked(run_direction, x, weights, initial, lengths, batch_first):
    """The stacked walk of :mod:`fastsim.rnn.driver`, time-major, over ``run_direction``.

    ``run_direction(seq, w, states, lengths, reverse) -> (out, *finals)`` is
    one of the layer functions above; ``weights[layer][direction]`` is its
    ``w``; ``initial`` a tuple of arrays of shape (layers * directions, B, H).
    Returns ``(outputs, final states)``.
    """
    seq = np.swapaxes(x, 0, 1) if batch_first else x
    T, B = seq.shape[:2]
    H = weights[0][0][1].shape[1]  # W_hh is (G*H, H)

    def direction(w, seq, states, lengths, reverse, sink):
        out, *finals = run_direction(seq, w, states, lengths, reverse)
        sink.put(out)
        return tuple(finals), None

    outputs, finals, _ = driver.forward(weights, seq, False, tuple(initial), _full_lengths(lengths, B, T), direction,
                                        hidden_size=H, steps=T, batch=B, dtype=initial[0].dtype)
    return (np.swapaxes(outputs, 0, 1) if batch_first else outputs), finals


def _zeros_initial(x, weights, n_states, batch_first):
    B = x.shape[0] if batch_first else x.shape[1]
    H = weights[0][0][1].shape[1]
    n = len(weights) * len(weights[0])
    return tuple(np.zeros((n, B, H), dtype=x.dtype) for _ in range(n_states))


def lstm(x, weights, h0=None, c0=None, lengths=None, batch_first=True):
    """Stacked, optionally bidirectional LSTM.

    Parameters
    ----------
    x : ndarray, shape (B, T, D) if ``batch_first`` else (T, B, D)
    weights : list over layers of list over directions of ``(W_ih, W_hh, b_ih, b_hh)``
        One direction per layer, or two (forward, backward).  Layer ``k > 0``
        takes the previous layer's output (H or 2H features) as input.
    h0, c0 : ndarray, shape (layers * directions, B, H), optional
        Zeros when omitted.
    lengths : ndarray, shape (B,), optional

    Returns
    -------
    outputs : ndarray, shape (B, T, directions * H) (or time-major)
        ``[forward, backward]`` features.
    (h_n, c_n) : ndarrays, shape (layers * directions, B, H)
    """
    zeros = _zeros_initial(x, weights, 2, batch_first)
    initial = (zeros[0] if h0 is None else h0, zeros[1] if c0 is None else c0)

    def run(seq, w, states, lengths, reverse):
        W_ih, W_hh, b_ih, b_hh = w
        return lstm_layer(seq, W_ih, W_hh, b_ih + b_hh, states[0], states[1], lengths, reverse)

    outputs, (h_n, c_n) = _stacked(run, x, weights, initial, lengths, batch_first)
    return outputs, (h_n, c_n)


def gru(x, weights, h0=None, lengths=None, batch_first=True):
    """Stacked, optionally bidirectional GRU; as :func:`lstm` without the cell state.

    Returns ``(outputs, h_n)``.
    """
    initial = (_zeros_initial(x, weights, 1, batch_first)[0] if h0 is None else h0,)

    def run(seq, w, states, lengths, reverse):
        W_ih, W_hh, b_ih, b_hh = w
        return gru_layer(seq, W_ih, W_hh, b_ih, b_hh, states[0], lengths, reverse)

    outputs, (h_n,) = _stacked(run, x, weights, initial, lengths, batch_first)
    return outputs, h_n


def rnn(x, weights, h0=None, lengths=None, batch_first=True, nonlinearity="tanh"):
    """Stacked, optionally bidirectional vanilla RNN (tanh or relu).  Returns ``(outputs, h_n)``."""
    initial = (_zeros_initial(x, weights, 1, batch_first)[0] if h0 is None else h0,)

    def run(seq, w, states, lengths, reverse):
        W_ih, W_hh, b_ih, b_hh = w
        return rnn_layer(seq, W_ih, W_hh, b_ih + b_hh, states[0], lengths, reverse, nonlinearity)

    outputs, (h_n,) = _stacked(run, x, weights, initial, lengths, batch_first)
    return outputs, h_n
