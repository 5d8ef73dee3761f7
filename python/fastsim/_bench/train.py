"""Training cases: fastsim.torch modules against the same model in plain PyTorch.

``python -m fastsim bench --ops train``.  The baseline of every case is
``"torch"`` (the speedup column reads "vs torch" there):

* ``course_step``: one training step of the course's model: token ids ->
  embedding -> LSTM -> mean -> normalize for both questions of every pair,
  the modified triplet loss, Adam.  ``torch``: ``nn.Embedding`` +
  ``nn.LSTM`` + the loss in torch operations + ``torch.optim.Adam``;
  ``fastsim``: :class:`fastsim.torch.SiameseEncoder` +
  :class:`fastsim.torch.ModifiedTripletLoss` + the same optimizer, from the
  same weights; ``fastsim native``: the same step by
  :class:`fastsim.trainer.SiameseTrainer` (no PyTorch: fastsim's kernels, its
  embedding row gradients and its Adam), from the same weights.
* ``lstm_backward``: the backward pass alone of one LSTM layer (the graph is
  built once and its backward re-run), gradients of the input, the weights
  and the biases, against ``nn.LSTM``'s.

Peak memory: each runner's peak resident set during one call above the
resident set before it (Linux: VmHWM reset through /proc/self/clear_refs),
printed while the case is prepared and saved in the JSON notes.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np

import fastsim

from .common import Case

BASELINE = "torch"


def _peak_above_now(fn) -> float | None:
    """MiB of resident memory that one call of fn adds at its peak (Linux), else None."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024
    except OSError:
        return None


def _status_kib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(key)


def torch_triplet_loss(v1, v2, margin=0.25):
    """The modified triplet loss in torch operations (fastsim's "shift" semantics, reduction "sum")."""
    import torch

    v1 = torch.nn.functional.normalize(v1, dim=1)
    v2 = torch.nn.functional.normalize(v2, dim=1)
    scores = v2 @ v1.T
    b = scores.shape[0]
    positive = scores.diagonal()
    eye = torch.eye(b, dtype=torch.bool)
    mean_negative = (scores.sum(dim=1) - positive) / (b - 1)
    masked = torch.where(eye, torch.full_like(scores, -2.0),
                         torch.where(scores <= positive[:, None], scores, scores - 2.0))
    closest_negative = masked.max(dim=1).values
    l1 = torch.relu(mean_negative - positive + margin)
    l2 = torch.relu(closest_negative - positive + margin)
    return (l1 + l2).sum()


def course_flops(B, T, E, H) -> float:
    """Forward of both sides 2 * 2 T B 4H (E + H), backward twice that."""
    return 3 * 2 * (2.0 * T * B * 4 * H * (E + H))


def course_case(V=41699, E=128, H=128, B=256, T=32, dtype=np.float32, seed=0) -> Case:
    def make():
        import torch

        import fastsim.torch as ft

        torch.set_num_threads(fastsim.get_num_threads())
        tdtype = torch.float64 if dtype == np.float64 else torch.float32
        torch.manual_seed(seed)
        fast = ft.SiameseEncoder(V, E, H, dtype=tdtype)
        emb = torch.nn.Embedding(V, E, dtype=tdtype)
        lstm = torch.nn.LSTM(E, H, batch_first=True, dtype=tdtype)
        emb.load_state_dict(fast.embedding.state_dict())
        lstm.load_state_dict(fast.lstm.state_dict())
        g = torch.Generator().manual_seed(seed + 1)
        # token ids with right padding (id 0), as the course's batches
        lengths = torch.randint(4, T + 1, (2, B), generator=g)
        ids = torch.randint(1, V, (2, B, T), generator=g)
        ids[torch.arange(T)[None, None, :] >= lengths[:, :, None]] = 0
        loss_fast = ft.ModifiedTripletLoss()

        def torch_encode(q):
            out, _ = lstm(emb(q))
            return torch.nn.functional.normalize(out.mean(dim=1), dim=1)

        models = {
            "torch": (list(emb.parameters()) + list(lstm.parameters()),
                      lambda: torch_triplet_loss(torch_encode(ids[0]), torch_encode(ids[1]))),
            "fastsim": (list(fast.parameters()), lambda: loss_fast(fast(ids[0]), fast(ids[1]))),
        }
        inputs = {}
        for name, (params, loss_fn) in models.items():
            opt = torch.optim.Adam(params, lr=1e-3)

            def step(opt=opt, loss_fn=loss_fn):
                opt.zero_grad()
                loss = loss_fn()
                loss.backward()
                opt.step()
                return loss.item()

            inputs[name] = step
        # the native trainer: the same model (the LSTM over all T positions, mean over T), weights, batch and Adam
        from fastsim.trainer import SiameseTrainer, TrainConfig

        config = TrainConfig(embedding_dim=E, hidden_size=H, max_length=T, pooling="mean", reduction="sum", lr=1e-3,
                             dtype=np.dtype(dtype).name)
        native = SiameseTrainer(config, V)
        native.load_params({k: v.detach().numpy() for k, v in fast.state_dict().items()})
        both = np.ascontiguousarray(ids.reshape(2 * B, T).numpy())
        full = np.full(2 * B, T, dtype=np.int64)
        # the losses agree before any step (same weights, same batch)
        with torch.no_grad():
            first = {name: float(fn()) for name, (_, fn) in models.items()}
        first["fastsim native"] = native.value_and_grad(both, full)[0]
        inputs["fastsim native"] = lambda: native.step(both, full)
        _report_memory("course_step", inputs)
        inputs["first_losses"] = first
        return inputs

    return Case(op="course_step", shape=f"V={V} B={B}x2 T={T} E=H={H}", dtype=np.dtype(dtype).name,
                flops=course_flops(B, T, E, H), make_inputs=make,
                runners={"torch": lambda i: i["torch"](), "fastsim": lambda i: i["fastsim"](),
                         "fastsim native": lambda i: i["fastsim native"]()},
                reference=None, min_repeats=3, notes={"baseline": BASELINE})


def lstm_backward_case(B, T, D, H, dtype=np.float32, seed=0) -> Case:
    def make():
        import torch

        import fastsim.torch as ft

        torch.set_num_threads(fastsim.get_num_threads())
        tdtype = torch.float64 if dtype == np.float64 else torch.float32
        torch.manual_seed(seed)
        fast = ft.LSTM(D, H, batch_first=True, dtype=tdtype)
        ref = torch.nn.LSTM(D, H, batch_first=True, dtype=tdtype)
        ref.load_state_dict(fast.state_dict())
        x = torch.randn(B, T, D, dtype=tdtype)
        inputs = {}
        for name, m in (("torch", ref), ("fastsim", fast)):
            xi = x.clone().requires_grad_(True)
            out, _ = m(xi)
            grad = torch.ones_like(out)
            wrt = [xi, *m.parameters()]

            def backward(out=out, grad=grad, wrt=wrt):
                return torch.autograd.grad(out, wrt, grad, retain_graph=True)

            inputs[name] = backward
        _report_memory("lstm_backward", inputs)
        return inputs

    def error(result, reference):
        return float("nan")

    def reference(inputs):
        return None

    return Case(op="lstm_backward", shape=f"B={B} T={T} D={D} H={H}", dtype=np.dtype(dtype).name,
                flops=2 * 2.0 * T * B * 4 * H * (D + H), make_inputs=make,
                runners={"torch": lambda i: i["torch"](), "fastsim": lambda i: i["fastsim"]()},
                reference=None, error=error, min_repeats=3, notes={"baseline": BASELINE})


def _report_memory(op, inputs):
    peaks = {}
    for name, fn in inputs.items():
        fn()  # warm-up: allocator pools and packed weights exist before the measured call
        peaks[name] = _peak_above_now(fn)
    text = "  ".join(f"{k} {v:.0f} MiB" for k, v in peaks.items() if v is not None)
    if text:
        print(f"peak memory of one {op} call above the resident set: {text}", file=sys.stdout, flush=True)


def cases(full: bool) -> list[Case]:
    if importlib.util.find_spec("torch") is None:
        return []
    out = [
        course_case(),
        lstm_backward_case(64, 64, 128, 256),
        lstm_backward_case(512, 32, 128, 128),
        lstm_backward_case(1, 50, 128, 128),
    ]
    if full:
        out += [lstm_backward_case(64, 64, 128, 256, np.float64)]
    return out
