"""Modified triplet loss cases: fastsim's streaming kernels against the course notebook's NumPy code.

Two operations:

* ``triplet_loss``: the cost alone.  Baseline: the notebook's computation
  (normalize, one matmul, diagonal, masks, max), every intermediate (b, b).
* ``triplet_loss+grad``: cost and ``(d cost/d v1, d cost/d v2)``.  Baseline:
  the notebook's forward, then ``G = d cost/d s`` and two more matmuls.

``flops`` counts the GEMMs of the matrix formulation: 2 b^2 d for the loss,
6 b^2 d with the gradient (fastsim's gradient needs no second GEMM, so its
figure for loss + gradient is an effective rate).  Inputs are course-style
batches, ``v2 = v1 + 2 * noise``, where about half of the closest-negative
hinges are active.
"""

from __future__ import annotations

import numpy as np

import fastsim
from fastsim import triplet as _triplet
from fastsim._reference import triplet as ref

from .common import Case

MARGIN = 0.25


def course_batch(b: int, d: int, dtype, seed: int = 0):
    """Duplicate pairs as in the course: ``v2`` is ``v1`` plus noise."""
    rng = np.random.default_rng(seed)
    v1 = rng.standard_normal((b, d))
    v2 = v1 + 2.0 * rng.standard_normal((b, d))
    return v1.astype(dtype), v2.astype(dtype)


def torch_modified_triplet_loss(torch, v1, v2, margin: float = MARGIN):
    """The same loss in PyTorch, written like the course's TensorFlow code (``empty="shift"``, sum)."""
    v1n = v1 / v1.norm(dim=1, keepdim=True)
    v2n = v2 / v2.norm(dim=1, keepdim=True)
    sim = v2n @ v1n.T
    b = sim.shape[0]
    pos = torch.diagonal(sim)
    eye = torch.eye(b, dtype=torch.bool)
    sim_an = sim.masked_fill(eye, 0.0)
    mean_neg = sim_an.sum(dim=1) / (b - 1)
    mask = eye | (sim_an > pos[:, None])
    closest = (sim_an - 2.0 * mask.to(sim.dtype)).max(dim=1).values
    return (torch.relu(mean_neg - pos + margin) + torch.relu(closest - pos + margin)).sum()


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(fastsim.get_num_threads())
    return torch


def _fastsim_backends():
    return [be for be in fastsim.available_backends() if be != "numpy" and be in _triplet._SUPPORTED]


def _loss_case(b, d, dtype, *, reference: bool):
    torch = _torch()

    def make():
        v1, v2 = course_batch(b, d, dtype)
        inputs = {"v1": v1, "v2": v2}
        if torch is not None:
            inputs["torch"] = (torch.from_numpy(v1), torch.from_numpy(v2))
        return inputs

    # costs as 1-element arrays: the error column compares arrays
    runners = {"numpy": lambda x: np.atleast_1d(ref.notebook_modified_triplet_loss(x["v1"], x["v2"], MARGIN))}
    for be in _fastsim_backends():
        runners[be] = lambda x, be=be: np.atleast_1d(fastsim.modified_triplet_loss(x["v1"], x["v2"], MARGIN,
                                                                                   backend=be))
    if torch is not None:
        def run_torch(x):
            with torch.inference_mode():
                return np.atleast_1d(torch_modified_triplet_loss(torch, *x["torch"]).item())

        runners["torch"] = run_torch
    return Case(
        op="triplet_loss",
        shape=f"{b}x{d}",
        dtype=np.dtype(dtype).name,
        flops=2.0 * b * b * d,
        make_inputs=make,
        runners=runners,
        reference=(lambda x: np.atleast_1d(ref.notebook_modified_triplet_loss(x["v1"].astype(np.float64),
                                                                              x["v2"].astype(np.float64), MARGIN)))
        if reference else None,
    )


def _grad_case(b, d, dtype, *, reference: bool):
    torch = _torch()

    def make():
        v1, v2 = course_batch(b, d, dtype)
        return {"v1": v1, "v2": v2}

    def flat(cost, grads):
        return (np.atleast_1d(cost), grads[0], grads[1])

    runners = {"numpy": lambda x: flat(*ref.notebook_value_and_grad(x["v1"], x["v2"], MARGIN))}
    for be in _fastsim_backends():
        runners[be] = lambda x, be=be: flat(*_triplet.value_and_grad(x["v1"], x["v2"], MARGIN, backend=be))
    if torch is not None:
        def run_torch(x):
            t1 = torch.from_numpy(x["v1"]).requires_grad_()
            t2 = torch.from_numpy(x["v2"]).requires_grad_()
            cost = torch_modified_triplet_loss(torch, t1, t2)
            cost.backward()
            return (np.atleast_1d(cost.item()), t1.grad.numpy(), t2.grad.numpy())

        runners["torch"] = run_torch
    return Case(
        op="triplet_loss+grad",
        shape=f"{b}x{d}",
        dtype=np.dtype(dtype).name,
        flops=6.0 * b * b * d,
        exact_flops=False,  # the fused gradient does not perform the second product
        make_inputs=make,
        runners=runners,
        reference=(lambda x: flat(*ref.notebook_value_and_grad(x["v1"].astype(np.float64),
                                                               x["v2"].astype(np.float64), MARGIN)))
        if reference else None,
    )


def cases(full: bool) -> list[Case]:
    out = [
        _loss_case(64, 128, np.float32, reference=True),
        _loss_case(4096, 256, np.float32, reference=True),
        _grad_case(4096, 256, np.float32, reference=True),
    ]
    if full:
        out += [
            _loss_case(64, 128, np.float64, reference=True),
            _loss_case(4096, 256, np.float64, reference=True),
            _grad_case(4096, 256, np.float64, reference=True),
            _grad_case(64, 128, np.float32, reference=True),
            # the float64 reference of b = 16384 would hold several 2 GiB matrices
            _loss_case(16384, 256, np.float32, reference=False),
            _grad_case(16384, 256, np.float32, reference=False),
        ]
    return out
