"""Cosine-similarity cases: fastsim's backends against NumPy's ``normalize + @``."""

from __future__ import annotations

import numpy as np

import fastsim
from fastsim._reference import cosine as ref

from .common import Case


def numpy_normalize_matmul(a, b, out=None):
    """What a NumPy user writes: normalize the rows, then one matmul (into
    ``out`` when the caller preallocated one, as ``np.matmul(..., out=)``)."""
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.matmul(an, bn.T, out=out)


def _torch_runner():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(fastsim.get_num_threads())

    def run(inputs):
        ta, tb = inputs["torch"]
        with torch.inference_mode():
            return torch.nn.functional.normalize(ta, dim=1) @ torch.nn.functional.normalize(tb, dim=1).T

    return run


def _matrix_case(m, n, d, dtype, seed=0):
    def make():
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((m, d)).astype(dtype)
        b = rng.standard_normal((n, d)).astype(dtype)
        inputs = {"a": a, "b": b, "out": np.empty((m, n), dtype)}
        try:
            import torch

            inputs["torch"] = (torch.from_numpy(a), torch.from_numpy(b))
        except ImportError:
            pass
        return inputs

    # Every library in the form its users call it, results allocated by the
    # call; then fastsim and NumPy again writing into a preallocated out.
    runners = {"numpy": lambda x: numpy_normalize_matmul(x["a"], x["b"])}
    for be in fastsim.available_backends():
        if be != "numpy":
            runners[be] = lambda x, be=be: fastsim.cosine_similarity_matrix(x["a"], x["b"], backend=be)
    torch_run = _torch_runner()
    if torch_run is not None:
        runners["torch"] = lambda x: torch_run(x).numpy()
    if "cpp" in runners:
        runners["cpp (out=)"] = lambda x: fastsim.cosine_similarity_matrix(x["a"], x["b"], out=x["out"], backend="cpp")
    runners["numpy (out=)"] = lambda x: numpy_normalize_matmul(x["a"], x["b"], out=x["out"])
    return Case(
        op="cosine_matrix",
        shape=f"{m}x{d} @ {n}x{d}",
        dtype=np.dtype(dtype).name,
        flops=2.0 * m * n * d,
        make_inputs=make,
        runners=runners,
        reference=lambda x: ref.cosine_similarity_matrix(x["a"].astype(np.float64), x["b"].astype(np.float64)),
    )


def cases(full: bool) -> list[Case]:
    out = [
        _matrix_case(4096, 4096, 256, np.float32),
        _matrix_case(1024, 1024, 256, np.float32),
        _matrix_case(64, 64, 128, np.float32),
        _matrix_case(1024, 1024, 256, np.float64),
    ]
    if full:
        out += [
            _matrix_case(4096, 4096, 256, np.float64),
            _matrix_case(256, 100_000, 256, np.float32),
            _matrix_case(2048, 2048, 1024, np.float32),
            _matrix_case(64, 64, 128, np.float64),
        ]
    return out
