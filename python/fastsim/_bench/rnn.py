"""Recurrent-layer cases: fastsim's backends against the NumPy reference and PyTorch.

The baseline ``"numpy"`` is fastsim's reference backend (a per-step loop of
NumPy matmuls and elementwise gates).  ``"torch"`` is ``nn.LSTM`` / ``nn.GRU``
with the same weights in inference mode, on as many threads as fastsim uses.
"""

from __future__ import annotations

import importlib.util

import numpy as np

import fastsim
from fastsim import rnn as _rnn
from fastsim.rnn.cells import cell
from fastsim._reference import rnn as ref

from .common import Case

_CLASSES = {"lstm": _rnn.LSTM, "gru": _rnn.GRU, "rnn": _rnn.RNN}
_REFERENCE = {"lstm": ref.lstm, "gru": ref.gru, "rnn": ref.rnn}


def flops(kind: str, B: int, T: int, D: int, H: int) -> float:
    """Multiply-adds of the input and recurrent products, counted twice: 2 T B G H (D + H)."""
    return 2.0 * T * B * cell(kind).gates * H * (D + H)


def _torch_module(kind, layer):
    """A torch module holding ``layer``'s weights, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(fastsim.get_num_threads())
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    extra = {"nonlinearity": layer.nonlinearity} if kind == "rnn" else {}
    module = cls(layer.input_size, layer.hidden_size, layer.num_layers, batch_first=True,
                 bidirectional=layer.bidirectional, **extra)
    dtype = torch.float64 if layer.dtype == np.float64 else torch.float32
    module = module.to(dtype).eval()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    return module


def _outputs(result):
    """The per-step outputs of a layer call (the final states are checked by the tests)."""
    return result[0]


def make_case(kind: str, B: int, T: int, D: int, H: int, dtype, seed: int = 0) -> Case:
    dtype = np.dtype(dtype)

    def make():
        rng = np.random.default_rng(seed)
        layer = _CLASSES[kind](D, H, dtype=dtype, seed=rng)
        x = rng.standard_normal((B, T, D)).astype(dtype)
        inputs = {"layer": layer, "x": x}
        module = _torch_module(kind, layer)
        if module is not None:
            import torch

            inputs["torch"] = (module, torch.from_numpy(x))
        return inputs

    runners = {"numpy": lambda i: _outputs(i["layer"](i["x"], backend="numpy"))}
    for be in ("numba", "cpp"):
        if be in _rnn._SUPPORTED and be in fastsim.available_backends():
            runners[be] = lambda i, be=be: _outputs(i["layer"](i["x"], backend=be))
    if importlib.util.find_spec("torch") is not None:
        runners["torch"] = _torch_runner

    def reference(i):
        w = [[tuple(np.asarray(a, np.float64) for a in d) for d in dirs] for dirs in i["layer"].weights]
        return _REFERENCE[kind](i["x"].astype(np.float64), w)[0]

    return Case(
        op=kind,
        shape=f"B={B} T={T} D={D} H={H}",
        dtype=dtype.name,
        flops=flops(kind, B, T, D, H),
        make_inputs=make,
        runners=runners,
        reference=reference,
        min_repeats=3,
    )


def _torch_runner(inputs):
    import torch

    module, xt = inputs["torch"]
    with torch.inference_mode():
        return module(xt)[0].numpy()


def cases(full: bool) -> list[Case]:
    out = [
        make_case("lstm", 64, 64, 128, 256, np.float32),
        make_case("lstm", 1, 50, 128, 128, np.float32),
    ]
    if full:
        out += [
            make_case("lstm", 256, 50, 300, 256, np.float32),
            make_case("gru", 64, 64, 128, 256, np.float32),
            make_case("lstm", 64, 64, 128, 256, np.float64),
        ]
    return out
