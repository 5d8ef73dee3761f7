"""pytest-benchmark groups for the Siamese encoder: the NumPy backend in every group.

ids -> embedding -> LSTM -> mean over T -> normalize, each recurrent backend
against the same model in PyTorch (inference mode) when torch is installed.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastsim
from fastsim._bench.pipeline import torch_encoder

rnn = pytest.importorskip("fastsim.rnn", reason="fastsim.rnn is not available")

BACKENDS = [b for b in ("numba", "cpp") if b in fastsim.available_backends() and b in rnn._SUPPORTED]
try:
    import torch
except ImportError:
    torch = None

SIZES = [  # (V, E, H, T, B)
    (10_000, 128, 256, 32, 256),
    (5_000, 64, 128, 16, 1024),
]


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


_CACHE: dict = {}


def _setup(V, E, H, T, B, dtype):
    key = (V, E, H, T, B, np.dtype(dtype).name)
    if key not in _CACHE:
        _CACHE.clear()
        enc = fastsim.SiameseEncoder.random(V, E, H, dtype=dtype, seed=0)
        ids = np.random.default_rng(1).integers(1, V, (B, T))
        layer = rnn.LSTM.from_torch(enc.layers[0].state_dict(), dtype=np.float64, batch_first=True)
        ref = fastsim.SiameseEncoder(np.array(enc.embedding, dtype=np.float64), layer).encode(ids, backend="numpy")
        _CACHE[key] = (enc, ids, ref)
    return _CACHE[key]


@pytest.mark.parametrize(("V", "E", "H", "T", "B"), SIZES, ids=[f"V{v}-E{e}-H{h}-T{t}-B{b}" for v, e, h, t, b in SIZES])
@pytest.mark.parametrize("runner", ["numpy", *BACKENDS, "torch"])
def test_encoder(benchmark, runner, V, E, H, T, B, dtype):
    if runner == "torch" and torch is None:
        pytest.skip("torch is not installed")
    enc, ids, want = _setup(V, E, H, T, B, dtype)
    benchmark.group = f"siamese_encoder V={V} E={E} H={H} T={T} B={B} {np.dtype(dtype).name}"
    benchmark.extra_info["sequences_per_call"] = B
    benchmark.extra_info["gflop"] = 2.0 * T * B * 4 * H * (E + H) * 1e-9
    if runner == "torch":
        run = torch_encoder(enc)
        t_ids = torch.from_numpy(ids)
        got = benchmark.pedantic(run, (t_ids,), rounds=5, iterations=1, warmup_rounds=1)
    else:
        got = benchmark.pedantic(enc.encode, (ids,), {"backend": runner}, rounds=5, iterations=1, warmup_rounds=1)
    assert got.shape == (B, H)
    # unit vectors, so absolute tolerances; float32 error grows a little over T steps
    atol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
