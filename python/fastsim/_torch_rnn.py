"""PyTorch recurrent modules whose forward and backward run fastsim's kernels under autograd.

This room owns :class:`LSTM`, :class:`GRU` and :class:`RNN` of
:mod:`fastsim.torch` and the ``torch.autograd.Function`` they share.  It may
call :mod:`fastsim.rnn.train` (the training route every fastsim layer takes),
:mod:`fastsim.rnn.cells`, fastsim's validation
helpers and PyTorch; it is imported only by :mod:`fastsim.torch`.

The modules subclass ``torch.nn.LSTM`` / ``GRU`` / ``RNN``: constructor
arguments, parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...),
the state dict and the initialization are PyTorch's own, so a state dict or an
optimizer moves between the two unchanged.  Only ``forward`` differs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from . import _backend
from ._validation import check_lengths
from .rnn import kernels as _kernels
from .rnn import train as _train
from .rnn.cells import of_torch_mode

__all__ = ["GRU", "LSTM", "RNN"]


def _numpy(t):
    return None if t is None else t.detach().cpu().numpy()


class _RecurrentFunction(torch.autograd.Function):
    """One stacked recurrent run: inputs ``x, h0, c0, *weights``; outputs ``out, h_n[, c_n]``.

    The forward keeps fastsim's workspace (gate activations, states per step)
    on ``ctx``; the backward hands it to fastsim's backward kernel.  ``c0``
    is None for the GRU and the RNN.  ``weights`` are flat in the module's
    order (per layer and direction ``W_ih, W_hh[, b_ih, b_hh]``).
    """

    @staticmethod
    def forward(ctx, config, x, h0, c0, *flat):
        cell, batch_first, lengths, be, layers, dirs, has_bias = config
        weights = _unflatten([_numpy(w) for w in flat], layers, dirs, has_bias)
        initial = (_numpy(h0),) if c0 is None else (_numpy(h0), _numpy(c0))
        x_np = _numpy(x)
        if lengths is None:
            B, T = (x_np.shape[0], x_np.shape[1]) if batch_first else (x_np.shape[1], x_np.shape[0])
            lengths = np.full(B, T, dtype=np.int64)
        out, finals, tape = _train.train_forward(be, cell, x_np, weights, initial, lengths, batch_first)
        # the tensors themselves, so that autograd notices an in-place change before backward
        ctx.save_for_backward(x, h0, c0, *flat)
        ctx.fastsim = (config, weights, tape)
        device = x.device
        return tuple(torch.from_numpy(a).to(device) for a in (out, *finals))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h, d_c=None):
        config, weights, tape = ctx.fastsim
        cell, _, _, be, layers, dirs, has_bias = config
        x, h0, c0, *flat = ctx.saved_tensors
        d_finals = (_numpy(d_h),) if c0 is None else (_numpy(d_h), _numpy(d_c))
        dx, d_weights, d_initial = _train.train_backward(be, cell, tape, weights, _numpy(d_out), d_finals)
        flat_grads = []
        for layer in d_weights:
            for direction in layer:
                flat_grads.extend(direction if has_bias else direction[:2])
        device = x.device

        def tensor(a, needed):
            return torch.from_numpy(np.ascontiguousarray(a)).to(device) if needed else None

        needs = ctx.needs_input_grad
        grads = [tensor(dx, needs[1]), tensor(d_initial[0], needs[2])]
        grads.append(tensor(d_initial[1], needs[3]) if c0 is not None else None)
        grads.extend(tensor(g, n) for g, n in zip(flat_grads, needs[4:]))
        return (None, *grads)


def _unflatten(flat, layers, dirs, has_bias):
    per = 4 if has_bias else 2
    out = []
    for layer in range(layers):
        directions = []
        for d in range(dirs):
            chunk = flat[(layer * dirs + d) * per : (layer * dirs + d + 1) * per]
            if not has_bias:
                zeros = np.zeros(chunk[0].shape[0], dtype=chunk[0].dtype)
                chunk = [chunk[0], chunk[1], zeros, zeros]
            directions.append(tuple(chunk))
        out.append(directions)
    return out


class _FastsimRecurrent:
    """The forward shared by the three modules (mixed in before the torch.nn class)."""

    def _fastsim_init(self, backend):
        if getattr(self, "proj_size", 0):
            msg = f"proj_size must be 0 (LSTM projections are not implemented in fastsim); got {self.proj_size}"
            raise ValueError(msg)
        _backend.resolve(backend, _kernels.SUPPORTED)  # an unknown or unavailable backend fails here
        self.backend = backend

    def _check_input(self, x, name="input"):
        if not isinstance(x, torch.Tensor):
            msg = f"{name} must be a torch.Tensor or a PackedSequence; got {type(x).__name__}"
            raise TypeError(msg)
        dtype = self.weight_ih_l0.dtype
        if dtype not in (torch.float32, torch.float64):
            msg = f"fastsim runs float32 and float64 parameters; this module's are {dtype}"
            raise TypeError(msg)
        if x.dtype != dtype:
            msg = f"{name} must have the parameters' dtype {dtype}; got {x.dtype}"
            raise TypeError(msg)

    def forward(self, input, hx=None, lengths=None):  # noqa: A002 - torch.nn's argument name
        """As ``torch.nn.{LSTM,GRU,RNN}.forward``; also takes ``lengths`` (B,) with a padded ``input``.

        With ``lengths`` the padded outputs past each sequence's length are 0 and
        the final state is the state after its last valid step (the semantics
        of a PackedSequence, without packing).
        """
        cell = of_torch_mode(self.mode)
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                msg = "lengths must be None when input is a PackedSequence (it carries its own lengths)"
                raise ValueError(msg)
            sorted_indices, batch_sizes = input.sorted_indices, input.batch_sizes
            x, lens = pad_packed_sequence(input, batch_first=self.batch_first)
            lengths = lens.numpy()
        else:
            x = input
        self._check_input(x)
        unbatched = x.dim() == 2
        if x.dim() not in (2, 3):
            msg = f"input must be 3-D (batched) or 2-D (unbatched); got {x.dim()}-D with shape {tuple(x.shape)}"
            raise ValueError(msg)
        if unbatched:
            x = x.unsqueeze(0 if self.batch_first else 1)
        B, T = (x.shape[0], x.shape[1]) if self.batch_first else (x.shape[1], x.shape[0])
        if x.shape[2] != self.input_size:
            msg = f"input must have {self.input_size} features (input_size); got shape {tuple(x.shape)}"
            raise ValueError(msg)
        if lengths is not None and not packed:
            lengths = check_lengths(_numpy(lengths) if isinstance(lengths, torch.Tensor) else lengths, B, T)
        elif lengths is not None:
            lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        dirs = 2 if self.bidirectional else 1
        n = self.num_layers * dirs
        h0, c0 = self._initial(hx, n, B, x, unbatched)
        be = _backend.resolve(self.backend, _kernels.SUPPORTED)
        flat = [getattr(self, name) for name in self._flat_weights_names]
        if B == 0 or T == 0:
            out = x.new_zeros((B, T, dirs * self.hidden_size) if self.batch_first else (T, B, dirs * self.hidden_size))
            finals = [h0] if c0 is None else [h0, c0]
        elif self.dropout and self.training and self.num_layers > 1:
            out, finals = self._by_layer(cell, lengths, be, x, h0, c0, flat, dirs)
        else:
            config = (cell, self.batch_first, lengths, be, self.num_layers, dirs, self.bias)
            out, *finals = _RecurrentFunction.apply(config, x, h0, c0, *flat)
        if packed:
            out = _repack(out, self.batch_first, sorted_indices, batch_sizes, input.unsorted_indices)
        elif unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            finals = [f.squeeze(1) for f in finals]
        return out, (tuple(finals) if c0 is not None else finals[0])

    def _by_layer(self, cell, lengths, be, x, h0, c0, flat, dirs):
        """Layer after layer with dropout on every layer's output but the last (torch.nn's rule)."""
        per = (4 if self.bias else 2) * dirs
        finals = [[], []]
        seq = x
        for layer in range(self.num_layers):
            rows = slice(layer * dirs, (layer + 1) * dirs)
            config = (cell, self.batch_first, lengths, be, 1, dirs, self.bias)
            seq, *last = _RecurrentFunction.apply(
                config, seq, h0[rows], None if c0 is None else c0[rows], *flat[layer * per : (layer + 1) * per]
            )
            if layer < self.num_layers - 1:
                seq = torch.nn.functional.dropout(seq, self.dropout, training=True)
            for f, value in zip(finals, last):
                f.append(value)
        return seq, [torch.cat(f) for f in finals if f]

    def _initial(self, hx, n, B, x, unbatched):
        shape = (n, B, self.hidden_size)
        is_lstm = self.mode == "LSTM"
        if hx is None:
            zeros = x.new_zeros(shape)
            return zeros, (x.new_zeros(shape) if is_lstm else None)
        if is_lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                msg = "hx must be a tuple (h0, c0) for an LSTM"
                raise TypeError(msg)
            states = list(hx)
            names = ("h0", "c0")
        else:
            states = [hx]
            names = ("hx",)
        out = []
        for s, name in zip(states, names):
            self._check_input(s, name)
            if unbatched:
                s = s.unsqueeze(1)
            if tuple(s.shape) != shape:
                want = f"({n}, {self.hidden_size})" if unbatched else f"{shape} (layers * directions, B, hidden_size)"
                got = tuple(s.shape[:1]) + tuple(s.shape[2:]) if unbatched else tuple(s.shape)
                msg = f"{name} must have shape {want}; got {got}"
                raise ValueError(msg)
            out.append(s)
        return out[0], (out[1] if is_lstm else None)


def _repack(out, batch_first, sorted_indices, batch_sizes, unsorted_indices):
    """Padded outputs (original batch order) as the PackedSequence torch.nn would return."""
    tm = out.transpose(0, 1) if batch_first else out
    if sorted_indices is not None:
        tm = tm.index_select(1, sorted_indices.to(tm.device))
    T, B = tm.shape[:2]
    steps = batch_sizes.shape[0]
    mask = torch.arange(B)[None, :] < batch_sizes[:, None]
    data = tm[:steps][mask.to(tm.device)]
    return PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)


class LSTM(_FastsimRecurrent, torch.nn.LSTM):
    """Drop-in ``torch.nn.LSTM`` whose forward and backward run fastsim's kernels.

    Same constructor arguments (``proj_size`` must be 0), parameters, state
    dict, initialization and return values as ``torch.nn.LSTM``; ``forward``
    also takes ``lengths``.  ``backend`` picks fastsim's kernels
    (``"auto"``, ``"numpy"``, ...).

    Examples
    --------
    >>> lstm = LSTM(128, 128, batch_first=True)
    >>> out, (h, c) = lstm(torch.randn(4, 10, 128), lengths=torch.tensor([10, 7, 3, 1]))
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._fastsim_init(backend)


class GRU(_FastsimRecurrent, torch.nn.GRU):
    """Drop-in ``torch.nn.GRU`` whose forward and backward run fastsim's kernels (see :class:`LSTM`)."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._fastsim_init(backend)


class RNN(_FastsimRecurrent, torch.nn.RNN):
    """Drop-in ``torch.nn.RNN`` (tanh or relu) whose forward and backward run fastsim's kernels."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._fastsim_init(backend)
