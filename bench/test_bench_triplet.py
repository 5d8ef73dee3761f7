"""pytest-benchmark groups for the modified triplet loss: the course notebook's NumPy code in every group.

Two groups per size: the loss alone, and the loss with its gradient.  PyTorch
(the same formula; inference mode for the loss, autograd for the gradient)
joins the groups when it is installed.  Each benchmark checks its result
against a float64 run of the notebook's code.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastsim
from fastsim import triplet as fs_triplet
from fastsim._bench.triplet import MARGIN, course_batch, torch_modified_triplet_loss
from fastsim._reference import triplet as ref

BACKENDS = [b for b in ("numba", "cpp") if b in fastsim.available_backends() and b in fs_triplet._SUPPORTED]
try:
    import torch
except ImportError:
    torch = None

SIZES = [(64, 128), (1024, 256), (4096, 256)]
RUNNERS = ["numpy", *BACKENDS, "torch"]


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


_CACHE: dict = {}


def _inputs(b, d, dtype):
    """Inputs and the float64 notebook's cost and gradient, computed once per size."""
    key = (b, d, np.dtype(dtype).name)
    if key not in _CACHE:
        _CACHE.clear()
        v1, v2 = course_batch(b, d, dtype)
        cost, grads = ref.notebook_value_and_grad(v1.astype(np.float64), v2.astype(np.float64), MARGIN)
        _CACHE[key] = (v1, v2, cost, grads)
    return _CACHE[key]


def _check(dtype, b, cost, grads, want_cost, want_grads):
    # float32 rounding can move a hinge that sits at 0 to either side: allow a
    # little relative slack on the sums, none on the float64 runs
    rel = 1e-4 if dtype == np.float32 else 1e-10
    assert abs(float(cost) - want_cost) <= rel * max(1.0, abs(want_cost))
    if grads is not None:
        for g, w in zip(grads, want_grads):
            assert g.shape == w.shape
            assert np.linalg.norm(g - w) <= 100 * rel * max(1e-3, np.linalg.norm(w))


def _skip_torch(runner):
    if runner == "torch" and torch is None:
        pytest.skip("torch is not installed")


@pytest.mark.parametrize(("b", "d"), SIZES, ids=[f"{b}x{d}" for b, d in SIZES])
@pytest.mark.parametrize("runner", RUNNERS)
def test_loss(benchmark, runner, b, d, dtype):
    _skip_torch(runner)
    v1, v2, want_cost, want_grads = _inputs(b, d, dtype)
    benchmark.group = f"triplet_loss {b}x{d} {np.dtype(dtype).name}"
    benchmark.extra_info["gflop"] = 2.0 * b * b * d * 1e-9
    if runner == "numpy":
        cost = benchmark(ref.notebook_modified_triplet_loss, v1, v2, MARGIN)
    elif runner == "torch":
        t1, t2 = torch.from_numpy(v1), torch.from_numpy(v2)

        def run():
            with torch.inference_mode():
                return torch_modified_triplet_loss(torch, t1, t2, MARGIN).item()

        cost = benchmark(run)
    else:
        cost = benchmark(fastsim.modified_triplet_loss, v1, v2, MARGIN, backend=runner)
    _check(dtype, b, cost, None, want_cost, want_grads)


@pytest.mark.parametrize(("b", "d"), SIZES, ids=[f"{b}x{d}" for b, d in SIZES])
@pytest.mark.parametrize("runner", RUNNERS)
def test_loss_and_grad(benchmark, runner, b, d, dtype):
    _skip_torch(runner)
    v1, v2, want_cost, want_grads = _inputs(b, d, dtype)
    benchmark.group = f"triplet_loss+grad {b}x{d} {np.dtype(dtype).name}"
    benchmark.extra_info["gflop"] = 6.0 * b * b * d * 1e-9  # the three GEMMs of the matrix formulation
    if runner == "numpy":
        cost, grads = benchmark(ref.notebook_value_and_grad, v1, v2, MARGIN)
    elif runner == "torch":
        def run():
            t1 = torch.from_numpy(v1).requires_grad_()
            t2 = torch.from_numpy(v2).requires_grad_()
            out = torch_modified_triplet_loss(torch, t1, t2, MARGIN)
            out.backward()
            return out.item(), (t1.grad.numpy(), t2.grad.numpy())

        cost, grads = benchmark(run)
    else:
        cost, grads = benchmark(fs_triplet.value_and_grad, v1, v2, MARGIN, backend=runner)
    _check(dtype, b, cost, grads, want_cost, want_grads)
