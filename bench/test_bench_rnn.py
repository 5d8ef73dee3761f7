"""pytest-benchmark groups for the recurrent layers; the NumPy reference backend in every group.

``torch`` is ``nn.LSTM`` / ``nn.GRU`` with the same weights, in inference
mode, on ``fastsim.get_num_threads()`` threads.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import fastsim
from fastsim import rnn as R
from fastsim._bench.rnn import flops, make_case

RUNNERS = ["numpy"] + [b for b in ("numba", "cpp") if b in R._SUPPORTED and b in fastsim.available_backends()]
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    RUNNERS.append("torch")

CASES = [  # (kind, B, T, D, H, dtype)
    ("lstm", 64, 64, 128, 256, np.float32),
    ("lstm", 1, 50, 128, 128, np.float32),
    ("lstm", 32, 32, 128, 128, np.float64),
    ("gru", 32, 32, 128, 128, np.float32),
]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


@functools.lru_cache(maxsize=None)
def _prepared(case):
    """Inputs and the float64 reference outputs of one case, built once per session."""
    c = make_case(*case)
    inputs = c.make_inputs()
    return c, inputs, c.reference(inputs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-B{c[1]}T{c[2]}D{c[3]}H{c[4]}-{np.dtype(c[5]).name}")
@pytest.mark.parametrize("runner", RUNNERS)
def test_rnn_forward(benchmark, case, runner):
    c, inputs, want = _prepared(case)
    kind, B, T, D, H, dtype = case
    benchmark.group = f"{kind} B={B} T={T} D={D} H={H} {np.dtype(dtype).name}"
    benchmark.extra_info["gflop"] = flops(kind, B, T, D, H) / 1e9
    fn = c.runners[runner]
    result = benchmark.pedantic(fn, args=(inputs,), rounds=5, iterations=1, warmup_rounds=1)
    assert result.shape == want.shape
    assert np.max(np.abs(result - want)) < TOL[np.dtype(dtype)] * 4  # 32-64 accumulated steps
