"""PyTorch front end: fastsim's kernels under autograd.

The modified triplet loss (fused forward and gradient) and drop-in
``torch.nn.LSTM`` / ``GRU`` / ``RNN`` modules whose forward and backward
(backpropagation through time) run fastsim's kernels, and the course's
Siamese encoder built from them (:class:`SiameseEncoder`).

Imported only on request (``import fastsim.torch``); ``import fastsim`` never
imports PyTorch.  The loss runs on the CPU through NumPy views of the tensors,
so CPU tensors cross without a copy; tensors on another device are copied to
the CPU and their gradients copied back.

Examples
--------
>>> import torch
>>> from fastsim.torch import ModifiedTripletLoss
>>> loss_fn = ModifiedTripletLoss(margin=0.25)
>>> v1 = torch.randn(8, 16, requires_grad=True)
>>> v2 = torch.randn(8, 16, requires_grad=True)
>>> loss_fn(v1, v2).backward()
"""

from __future__ import annotations

import numpy as np
import torch

from . import _backend
from . import triplet as _triplet
from ._torch_rnn import GRU, LSTM, RNN
from ._torch_siamese import SiameseEncoder

__all__ = ["GRU", "LSTM", "ModifiedTripletLoss", "RNN", "SiameseEncoder", "modified_triplet_loss"]

_NUMPY_FLOATS = (torch.float32, torch.float64)


def _as_numpy(t: torch.Tensor, name: str) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        msg = f"{name} must be a torch.Tensor; got {type(t).__name__}"
        raise TypeError(msg)
    t = t.detach()
    if t.dtype.is_complex:
        msg = f"{name} must hold real numbers; got dtype {t.dtype}"
        raise TypeError(msg)
    if t.dtype not in _NUMPY_FLOATS:
        # float16, bfloat16, integers and bools are computed in float32, as everywhere in fastsim
        t = t.to(torch.float32)
    return t.cpu().numpy()


class _ModifiedTripletLossFunction(torch.autograd.Function):
    """Forward through fastsim's streaming kernel; backward through its O(b d) gradient kernel."""

    @staticmethod
    def forward(ctx, v1, v2, margin, reduction, empty, backend):
        margin = _triplet._check_options(margin, reduction, empty)
        a1, a2 = _triplet._prepare_pair(_as_numpy(v1, "v1"), _as_numpy(v2, "v2"))
        be = _backend.resolve(backend, _triplet._SUPPORTED)
        parts = _triplet._loss_parts(be, a1, a2, margin, empty, reduction)
        active1, active2 = _triplet._active(parts)
        # the tensors themselves, so that autograd notices an in-place change before backward
        ctx.save_for_backward(v1, v2)
        ctx.state = (be, reduction, parts.closest_index, active1, active2)
        return torch.from_numpy(np.array(parts.cost)).to(device=v1.device)

    @staticmethod
    def backward(ctx, grad_output):
        v1, v2 = ctx.saved_tensors
        be, reduction, closest_index, active1, active2 = ctx.state
        a1, a2 = _triplet._prepare_pair(_as_numpy(v1, "v1"), _as_numpy(v2, "v2"))
        b = a1.shape[0]
        g = grad_output.detach().to(torch.float64).cpu().numpy()
        if reduction == "none":
            weight = np.ascontiguousarray(g)  # one weight per row: a vector-Jacobian product
        else:
            weight = float(g) * (1.0 if reduction == "sum" else 1.0 / b)
        if a1.shape[1] == 0:
            grad_v1, grad_v2 = np.zeros_like(a1), np.zeros_like(a2)
        else:
            grad_v1, grad_v2 = _triplet._backward(be, a1, a2, closest_index, active1, active2, weight)
        out1 = torch.from_numpy(grad_v1).to(device=v1.device, dtype=v1.dtype) if ctx.needs_input_grad[0] else None
        out2 = torch.from_numpy(grad_v2).to(device=v2.device, dtype=v2.dtype) if ctx.needs_input_grad[1] else None
        return out1, out2, None, None, None, None


def modified_triplet_loss(v1: torch.Tensor, v2: torch.Tensor, margin: float = 0.25, *, reduction: str = "sum",
                          empty: str = "shift", backend: str = "auto") -> torch.Tensor:
    """The modified triplet loss of two (b, d) batches as a differentiable tensor.

    Same semantics as :func:`fastsim.modified_triplet_loss`: scores
    ``s[i, j] = cos(v2[i], v1[j])``, ``loss = L1 + L2`` per row, reduced by
    ``reduction`` (``"sum"``, ``"mean"`` or ``"none"``).  Gradients flow to
    ``v1`` and ``v2`` through the normalization.  The result is a float64
    tensor when either input is float64, else float32.
    """
    return _ModifiedTripletLossFunction.apply(v1, v2, margin, reduction, empty, backend)


class ModifiedTripletLoss(torch.nn.Module):
    """The course's modified triplet loss (mean negative + closest negative) as a loss module.

    Parameters
    ----------
    margin : float, default 0.25
    reduction : {"sum", "mean", "none"}, default "sum"
        ``"sum"`` is the course's cost.
    empty : {"shift", "floor"}, default "shift"
        Closest negative of a row with no negative at or below its positive;
        see :func:`fastsim.hard_negatives`.
    backend : {"auto", "numpy", "numba", "cpp"}

    Examples
    --------
    >>> loss_fn = ModifiedTripletLoss()
    >>> cost = loss_fn(v1, v2)   # v1, v2: (b, d) embeddings of duplicate pairs
    """

    def __init__(self, margin: float = 0.25, reduction: str = "sum", empty: str = "shift", backend: str = "auto"):
        super().__init__()
        self.margin = _triplet._check_options(margin, reduction, empty)
        self.reduction = reduction
        self.empty = empty
        _backend.resolve(backend, _triplet._SUPPORTED)  # an unknown or unavailable backend fails here, not mid-training
        self.backend = backend

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        return modified_triplet_loss(v1, v2, self.margin, reduction=self.reduction, empty=self.empty,
                                     backend=self.backend)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}, empty={self.empty!r}"
