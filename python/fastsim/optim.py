"""Optimizers for the native trainer: SGD with momentum, Adam, lazy row-wise Adam, clipping, schedules.

This room owns the update rules that :mod:`fastsim.trainer` applies to its
parameters (NumPy arrays updated in place) and the state that goes into a
checkpoint.  It may call NumPy and, for Adam, the compiled core's update
loops (``adam_dense``, ``adam_rows``; :mod:`fastsim._backend`).  The arithmetic follows PyTorch's
``torch.optim.SGD``, ``torch.optim.Adam`` and ``torch.optim.SparseAdam``
step for step, and ``torch.nn.utils.clip_grad_norm_``, so a model trained
here and the same model trained with those optimizers give the same numbers
(to rounding).

Parameters are a ``dict`` name -> ndarray.  A gradient is a dense array of
the parameter's shape or a :class:`RowGradient` (the rows of an embedding
that a batch used, and their gradients).

Examples
--------
>>> opt = Adam(params, lr=1e-3)
>>> total = clip_grad_norm(grads, max_norm=1.0)
>>> opt.step(grads, lr=1e-3 * lr_factor("cosine", step, total_steps, warmup=100))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

__all__ = ["SCHEDULES", "SGD", "Adam", "RowGradient", "clip_grad_norm", "lr_factor", "make_optimizer"]

SCHEDULES = ("constant", "linear", "cosine")


class RowGradient(NamedTuple):
    """The gradient of a (V, E) embedding that only some rows received.

    Attributes
    ----------
    rows : ndarray of int64, shape (n,)
        Distinct row indices, ascending.
    values : ndarray, shape (n, E)
        The gradient of each of those rows; every other row's is zero.
    """

    rows: np.ndarray
    values: np.ndarray

    def dense(self, shape: tuple[int, ...]) -> np.ndarray:
        """The full gradient, zeros outside ``rows``."""
        out = np.zeros(shape, dtype=self.values.dtype)
        out[self.rows] = self.values
        return out


def _squared_norm(g) -> float:
    v = g.values if isinstance(g, RowGradient) else g
    flat = v.reshape(-1)
    return float(np.dot(flat, flat))


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place so that their joint L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the norm is taken over all
    gradients together, and every gradient is multiplied by
    ``min(1, max_norm / (norm + 1e-6))``.  Returns the norm before clipping.
    """
    max_norm = float(max_norm)
    if not math.isfinite(max_norm) or max_norm <= 0:
        msg = f"max_norm must be a positive finite number; got {max_norm}"
        raise ValueError(msg)
    total = math.sqrt(sum(_squared_norm(g) for g in grads.values()))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            v = g.values if isinstance(g, RowGradient) else g
            v *= v.dtype.type(coef)
    return total


def lr_factor(schedule: str, step: int, total_steps: int, warmup: int = 0) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based) of ``total_steps``.

    ``warmup`` steps rise linearly, ``(step + 1) / warmup``; after them
    ``"constant"`` stays at 1, ``"linear"`` falls linearly towards 0 at
    ``total_steps`` and ``"cosine"`` follows half a cosine down to 0.  Usable
    as the ``lr_lambda`` of ``torch.optim.lr_scheduler.LambdaLR``.
    """
    if schedule not in SCHEDULES:
        msg = f"schedule must be one of {SCHEDULES}; got {schedule!r}"
        raise ValueError(msg)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_lr(lr) -> float:
    lr = float(lr)
    if not math.isfinite(lr) or lr < 0:
        msg = f"lr must be a non-negative finite number; got {lr}"
        raise ValueError(msg)
    return lr


class _Optimizer:
    """Shared bookkeeping: the parameters, per-parameter state arrays, the step count."""

    _STATE: tuple[str, ...] = ()

    def __init__(self, params: Mapping[str, np.ndarray], lr: float) -> None:
        if not isinstance(params, Mapping) or not params:
            msg = "params must be a non-empty dict of name -> ndarray"
            raise TypeError(msg)
        self.params = dict(params)
        self.lr = _check_lr(lr)
        self.steps = 0
        self.state: dict[str, dict[str, np.ndarray]] = {name: {} for name in self.params}

    def _grads(self, grads: Mapping) -> dict:
        unknown = set(grads) - set(self.params)
        if unknown:
            msg = f"grads has entries for unknown parameters {sorted(unknown)}"
            raise ValueError(msg)
        return dict(grads)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat arrays (``"steps"``, ``"<param>/<key>"``) for a checkpoint file."""
        out = {"steps": np.array(self.steps, dtype=np.int64)}
        for name, st in self.state.items():
            for key, value in st.items():
                out[f"{name}/{key}"] = value
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`; arrays must match the parameters' shapes."""
        if "steps" not in state:
            msg = "optimizer state has no 'steps' entry"
            raise ValueError(msg)
        restored: dict[str, dict[str, np.ndarray]] = {name: {} for name in self.params}
        for key, value in state.items():
            if key == "steps":
                continue
            name, _, part = key.rpartition("/")
            if name not in self.params or part not in self._STATE:
                msg = f"optimizer state entry {key!r} does not belong to this optimizer's parameters"
                raise ValueError(msg)
            p = self.params[name]
            if part == "step":  # a parameter's own step count
                if value.shape != () or int(value) < 0:
                    msg = f"optimizer state {key!r} must be a non-negative count; got shape {value.shape}"
                    raise ValueError(msg)
                restored[name][part] = np.array(int(value), dtype=np.int64)
                continue
            if value.shape != p.shape:
                msg = f"optimizer state {key!r} has shape {value.shape}; the parameter has {p.shape}"
                raise ValueError(msg)
            restored[name][part] = np.array(value, dtype=p.dtype)
        for name, st in restored.items():
            moments = [k for k in ("exp_avg", "exp_avg_sq") if k in self._STATE]
            if moments and any(k in st for k in moments) and not all(k in st for k in moments):
                msg = f"optimizer state of {name!r} must hold all of {moments} or none"
                raise ValueError(msg)
        self.steps = int(state["steps"])
        self.state = restored


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` on the first
    step), then ``p -= lr * (g + momentum * buf if nesterov else buf)``;
    ``weight_decay`` adds ``weight_decay * p`` to ``g`` first.  A
    :class:`RowGradient` without momentum or weight decay updates its rows
    only.
    """

    _STATE = ("momentum",)

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, *, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        if not 0.0 <= momentum < 1.0:
            msg = f"momentum must lie in [0, 1); got {momentum}"
            raise ValueError(msg)
        if nesterov and (momentum <= 0 or dampening != 0):
            msg = "nesterov=True needs momentum > 0 and dampening = 0"
            raise ValueError(msg)
        if weight_decay < 0:
            msg = f"weight_decay must be >= 0; got {weight_decay}"
            raise ValueError(msg)
        self.momentum, self.dampening, self.nesterov, self.weight_decay = momentum, dampening, nesterov, weight_decay

    def step(self, grads: Mapping, lr: float | None = None) -> None:
        lr = self.lr if lr is None else _check_lr(lr)
        for name, g in self._grads(grads).items():
            p = self.params[name]
            if isinstance(g, RowGradient):
                if self.momentum == 0 and self.weight_decay == 0:
                    p[g.rows] -= p.dtype.type(lr) * g.values
                    continue
                g = g.dense(p.shape)
            d = g + self.weight_decay * p if self.weight_decay else g
            if self.momentum:
                buf = self.state[name].get("momentum")
                if buf is None:
                    buf = np.array(d, dtype=p.dtype)
                    self.state[name]["momentum"] = buf
                else:
                    buf *= self.momentum
                    buf += (1.0 - self.dampening) * d
                d = d + self.momentum * buf if self.nesterov else buf
            p -= p.dtype.type(lr) * d
        self.steps += 1


class Adam(_Optimizer):
    """Adam, as ``torch.optim.Adam`` (``amsgrad=False``); ``lazy`` parameters as ``torch.optim.SparseAdam``.

    Dense parameters: ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``; every
    row moves every step, as torch's Adam on a dense embedding gradient.

    Parameters named in ``lazy`` (the embedding) take :class:`RowGradient`
    and are updated only at those rows, moments included:
    ``p[rows] -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``
    as ``torch.optim.SparseAdam``.  t is each parameter's own count of the
    steps it took part in, as in torch.
    """

    _STATE = ("exp_avg", "exp_avg_sq", "step")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *,
                 weight_decay: float = 0.0, lazy: tuple[str, ...] = (), backend: str = "auto") -> None:
        super().__init__(params, lr)
        from . import _backend

        # the compiled loops (one pass per parameter, threaded) or NumPy's expressions; the same arithmetic
        self._core = _backend.core() if _backend.resolve(backend) == "cpp" else None
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            msg = f"betas must each lie in [0, 1); got {betas}"
            raise ValueError(msg)
        if not eps > 0:
            msg = f"eps must be > 0; got {eps}"
            raise ValueError(msg)
        if weight_decay < 0:
            msg = f"weight_decay must be >= 0; got {weight_decay}"
            raise ValueError(msg)
        unknown = set(lazy) - set(self.params)
        if unknown:
            msg = f"lazy names unknown parameters {sorted(unknown)}"
            raise ValueError(msg)
        if lazy and weight_decay:
            msg = "weight_decay is not defined for lazy (row-wise) parameters, as in torch.optim.SparseAdam"
            raise ValueError(msg)
        self.betas, self.eps, self.weight_decay, self.lazy = (b1, b2), float(eps), float(weight_decay), tuple(lazy)

    def _moments(self, name, p):
        st = self.state[name]
        if "exp_avg" not in st:
            st["exp_avg"] = np.zeros_like(p)
            st["exp_avg_sq"] = np.zeros_like(p)
        return st["exp_avg"], st["exp_avg_sq"]

    def step(self, grads: Mapping, lr: float | None = None) -> None:
        """One step for every parameter in ``grads``; each counts its own steps (its bias correction), as torch."""
        lr = self.lr if lr is None else _check_lr(lr)
        b1, b2 = self.betas
        grads = self._grads(grads)
        for name, g in grads.items():  # every check before any update
            if name in self.lazy and not isinstance(g, RowGradient):
                msg = f"the lazy parameter {name!r} takes a RowGradient; got {type(g).__name__}"
                raise TypeError(msg)
        for name, g in grads.items():
            p = self.params[name]
            lazy = name in self.lazy
            if isinstance(g, RowGradient):
                g = RowGradient(np.ascontiguousarray(g.rows, np.int64), np.ascontiguousarray(g.values, p.dtype))
            else:
                g = np.ascontiguousarray(g, p.dtype)  # the arithmetic is in the parameter's dtype
            m, v = self._moments(name, p)
            st = self.state[name]
            t = int(st.get("step", 0)) + 1
            st["step"] = np.array(t, dtype=np.int64)
            bc1 = 1.0 - b1**t
            bc2 = 1.0 - b2**t
            core = self._core if p.flags.c_contiguous and p.dtype in (np.float32, np.float64) else None
            if core is not None and isinstance(g, RowGradient) and p.ndim == 2 and not self.weight_decay:
                core.adam_rows(p, m, v, g.rows, g.values, lr * math.sqrt(bc2) / bc1 if lazy else lr / bc1, b1, b2,
                               self.eps, math.sqrt(bc2), lazy)
                continue
            if core is not None and not isinstance(g, RowGradient):
                core.adam_dense(p, m, v, g, lr / bc1, b1, b2, self.eps, math.sqrt(bc2), self.weight_decay)
                continue
            if lazy:
                rows, gv = g.rows, g.values
                m_old, v_old = m[rows], v[rows]
                m_new = m_old + (gv - m_old) * (1.0 - b1)
                v_new = v_old + (gv * gv - v_old) * (1.0 - b2)
                m[rows] = m_new
                v[rows] = v_new
                step_size = lr * math.sqrt(bc2) / bc1
                p[rows] -= step_size * (m_new / (np.sqrt(v_new) + self.eps))
                continue
            if isinstance(g, RowGradient):
                g = g.dense(p.shape)
            if self.weight_decay:
                g = g + self.weight_decay * p
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            denom = np.sqrt(v)
            denom /= math.sqrt(bc2)
            denom += self.eps
            p -= (lr / bc1) * (m / denom)
        self.steps += 1


OPTIMIZERS = ("adam", "sparse_adam", "sgd")


def make_optimizer(name: str, params: Mapping[str, np.ndarray], *, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0, embedding: str = "embedding.weight", backend: str = "auto"):
    """``"adam"`` (every parameter dense), ``"sparse_adam"`` (the embedding lazy) or ``"sgd"`` (with momentum)."""
    if name == "adam":
        return Adam(params, lr, weight_decay=weight_decay, backend=backend)
    if name == "sparse_adam":
        return Adam(params, lr, lazy=(embedding,), weight_decay=weight_decay, backend=backend)
    if name == "sgd":
        return SGD(params, lr, momentum, weight_decay=weight_decay)
    msg = f"optimizer must be one of {OPTIMIZERS}; got {name!r}"
    raise ValueError(msg)
