"""fastsim.optim against PyTorch's optimizers, clipping and LambdaLR; its state round trip; the compiled loops.

Oracles: ``torch.optim.SGD``, ``torch.optim.Adam``, ``torch.optim.SparseAdam``,
``torch.nn.utils.clip_grad_norm_`` and ``torch.optim.lr_scheduler.LambdaLR``
(float64, several steps, to 1e-12), and for float32 the NumPy backend against
the compiled one.  The compiled loops (``fastsim._core.adam_dense``,
``adam_rows``, ``segment_sum_rows``) are also called directly, with bad
arrays, which must raise and leave their outputs untouched.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastsim
from fastsim import optim
from fastsim.optim import SGD, Adam, RowGradient, clip_grad_norm, lr_factor, make_optimizer

from .conftest import tol

HAS_CPP = "cpp" in fastsim.available_backends()
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="compiled core not available")
BACKENDS = [pytest.param("numpy", id="numpy"), pytest.param("cpp", id="cpp", marks=needs_cpp)]

V, E = 12, 4  # the embedding
RTOL = ATOL = 1e-12  # float64 against torch
STEPS = 6
LR = 0.01


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


# --------------------------------------------------------------------------- data and comparisons


def _params(rng, dtype=np.float64):
    """A 1-D bias, a 2-D weight and a (V, E) embedding."""
    return {
        "bias": rng.standard_normal(5).astype(dtype),
        "weight": rng.standard_normal((4, 6)).astype(dtype),
        "emb": rng.standard_normal((V, E)).astype(dtype),
    }


def _rows(rng, n=None):
    """Distinct ascending rows of the embedding; by default 1..V-1 of them, so some are always left out."""
    n = int(rng.integers(1, V)) if n is None else n
    return np.sort(rng.choice(V, size=n, replace=False)).astype(np.int64)


def _grad_seq(rng, params, row_names=(), steps=STEPS, empty_step=None):
    """``steps`` gradient dicts; ``row_names`` get a RowGradient (no rows at all in step ``empty_step``)."""
    seq = []
    for k in range(steps):
        grads = {}
        for name, p in params.items():
            if name in row_names:
                rows = _rows(rng, 0 if k == empty_step else None)
                grads[name] = RowGradient(rows, rng.standard_normal((rows.size, p.shape[1])).astype(p.dtype))
            else:
                grads[name] = rng.standard_normal(p.shape).astype(p.dtype)
        seq.append(grads)
    return seq


def _copy(grads):
    return {k: RowGradient(g.rows.copy(), g.values.copy()) if isinstance(g, RowGradient) else g.copy()
            for k, g in grads.items()}


def _dense(g, shape):
    return g.dense(shape) if isinstance(g, RowGradient) else g


def _torch_params(torch, params):
    return {name: torch.tensor(p, requires_grad=True) for name, p in params.items()}


def _torch_grad(torch, g, shape, sparse):
    if sparse:
        return torch.sparse_coo_tensor(torch.from_numpy(g.rows.copy())[None], torch.from_numpy(g.values.copy()),
                                       size=shape, check_invariants=True)
    return torch.from_numpy(np.array(_dense(g, shape)))


def _against_torch(torch, opt, torch_opts, params, tparams, grad_seq, *, sparse=(), lrs=None):
    """Step ``opt`` and ``torch_opts`` on the same gradients; the parameters agree after every step."""
    base = [[group["lr"] for group in o.param_groups] for o in torch_opts]
    steps = opt.steps
    for k, grads in enumerate(grad_seq):
        lr = None if lrs is None else lrs[k]
        for o, lrs0 in zip(torch_opts, base):
            for group, lr0 in zip(o.param_groups, lrs0):
                group["lr"] = lr0 if lr is None else lr
        for name, g in grads.items():
            tparams[name].grad = _torch_grad(torch, g, params[name].shape, name in sparse)
        opt.step(_copy(grads), lr)
        for o in torch_opts:
            o.step()
        for name, p in params.items():
            np.testing.assert_allclose(p, tparams[name].detach().numpy(), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} after step {k}")
    assert opt.steps == steps + len(grad_seq)


def _check_backend(opt, backend):
    # the cpp cases must really run the compiled loops, not fall back to NumPy
    assert (opt._core is not None) == (backend == "cpp")


# --------------------------------------------------------------------------- SGD against torch

SGD_CONFIGS = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "dampening": {"momentum": 0.9, "dampening": 0.3},
    "weight_decay": {"weight_decay": 0.01},
    "momentum_weight_decay": {"momentum": 0.5, "weight_decay": 0.02, "nesterov": True},
}


@pytest.mark.parametrize("config", list(SGD_CONFIGS.values()), ids=list(SGD_CONFIGS))
def test_sgd_matches_torch(torch, rng, config):
    # the embedding's gradient is a RowGradient (rows only without momentum and decay); torch's is dense
    params = _params(rng)
    tparams = _torch_params(torch, params)
    opt = SGD(params, lr=0.1, **config)
    topt = torch.optim.SGD(list(tparams.values()), lr=0.1, **config)
    seq = _grad_seq(rng, params, row_names=("emb",))
    _against_torch(torch, opt, [topt], params, tparams, seq, lrs=[None, 0.05, None, 0.2, 0.0, None])


def test_sgd_without_momentum_moves_only_the_given_rows(rng):
    params = _params(rng)
    before = params["emb"].copy()
    rows = np.array([1, 4, 7], dtype=np.int64)
    vals = rng.standard_normal((3, E))
    SGD(params, lr=0.5).step({"emb": RowGradient(rows, vals)})
    others = np.setdiff1d(np.arange(V), rows)
    assert np.array_equal(params["emb"][others], before[others])
    np.testing.assert_allclose(params["emb"][rows], before[rows] - 0.5 * vals, rtol=RTOL, atol=ATOL)


def test_sgd_parameter_without_gradient_is_left_alone_as_in_torch(torch, rng):
    params = _params(rng)
    tparams = _torch_params(torch, params)
    opt = SGD(params, lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(list(tparams.values()), lr=0.1, momentum=0.9)
    seq = _grad_seq(rng, params)
    del seq[2]["bias"], seq[3]["weight"]
    for k, grads in enumerate(seq):
        for name, t in tparams.items():
            t.grad = torch.from_numpy(grads[name].copy()) if name in grads else None
        opt.step(_copy(grads))
        topt.step()
        for name, p in params.items():
            np.testing.assert_allclose(p, tparams[name].detach().numpy(), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} after step {k}")


# --------------------------------------------------------------------------- Adam against torch

ADAM_CONFIGS = {
    "default": {},
    "betas_eps": {"betas": (0.8, 0.95), "eps": 1e-4},
    "weight_decay": {"weight_decay": 0.05},
    "all": {"betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.1},
}
LAZY_CONFIGS = {k: v for k, v in ADAM_CONFIGS.items() if "weight_decay" not in v}
LRS = [None, 0.02, None, 0.005, None, None]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", list(ADAM_CONFIGS.values()), ids=list(ADAM_CONFIGS))
def test_adam_matches_torch(torch, rng, config, backend):
    params = _params(rng)
    tparams = _torch_params(torch, params)
    opt = Adam(params, lr=LR, backend=backend, **config)
    _check_backend(opt, backend)
    topt = torch.optim.Adam(list(tparams.values()), lr=LR, **config)
    _against_torch(torch, opt, [topt], params, tparams, _grad_seq(rng, params), lrs=LRS)
    for name, t in tparams.items():
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(opt.state[name][key], topt.state[t][key].numpy(), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name}/{key}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", list(LAZY_CONFIGS.values()), ids=list(LAZY_CONFIGS))
def test_lazy_adam_matches_torch_sparse_adam(torch, rng, config, backend):
    # dense parameters as torch.optim.Adam, the lazy embedding as torch.optim.SparseAdam on a sparse COO gradient
    params = _params(rng)
    tparams = _torch_params(torch, params)
    opt = Adam(params, lr=LR, lazy=("emb",), backend=backend, **config)
    _check_backend(opt, backend)
    dense_opt = torch.optim.Adam([tparams["bias"], tparams["weight"]], lr=LR, **config)
    sparse_opt = torch.optim.SparseAdam([tparams["emb"]], lr=LR, **config)
    seq = _grad_seq(rng, params, row_names=("emb",), empty_step=3)
    _against_torch(torch, opt, [dense_opt, sparse_opt], params, tparams, seq, sparse=("emb",), lrs=LRS)
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_allclose(opt.state["emb"][key], sparse_opt.state[tparams["emb"]][key].numpy(), rtol=RTOL,
                                   atol=ATOL, err_msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lazy_adam_leaves_untouched_rows_and_their_moments_alone(rng, backend):
    params = _params(rng)
    opt = Adam(params, lr=LR, lazy=("emb",), backend=backend)
    for k, grads in enumerate(_grad_seq(rng, params, row_names=("emb",))):
        before = params["emb"].copy()
        moments = [opt.state["emb"][key].copy() for key in ("exp_avg", "exp_avg_sq")] if k else None
        opt.step(grads)
        untouched = np.setdiff1d(np.arange(V), grads["emb"].rows)
        assert untouched.size > 0
        assert np.array_equal(params["emb"][untouched], before[untouched])
        assert not np.any(params["emb"][grads["emb"].rows] == before[grads["emb"].rows])
        if moments is not None:
            for key, old in zip(("exp_avg", "exp_avg_sq"), moments):
                assert np.array_equal(opt.state["emb"][key][untouched], old[untouched]), key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", list(ADAM_CONFIGS.values()), ids=list(ADAM_CONFIGS))
def test_dense_adam_on_a_row_gradient_matches_torch_adam_on_the_dense_gradient(torch, rng, config, backend):
    params = _params(rng)
    tparams = _torch_params(torch, params)
    opt = Adam(params, lr=LR, backend=backend, **config)
    topt = torch.optim.Adam(list(tparams.values()), lr=LR, **config)
    seq = _grad_seq(rng, params, row_names=("emb",), empty_step=3)
    # a row with a gradient in the first step and none in the last one
    row = int(np.setdiff1d(seq[0]["emb"].rows, seq[-1]["emb"].rows)[0])
    _against_torch(torch, opt, [topt], params, tparams, seq[:-1], lrs=LRS[:-1])
    before = params["emb"][row].copy()
    _against_torch(torch, opt, [topt], params, tparams, seq[-1:])
    # the untouched row still moved by momentum, as in torch
    assert np.all(params["emb"][row] != before)


@pytest.mark.parametrize("backend", [
    pytest.param("numpy", id="numpy"),
    pytest.param("cpp", id="cpp", marks=needs_cpp),
])
def test_adam_takes_a_gradient_of_another_dtype_in_the_parameters_dtype(rng, backend):
    # float32 gradients of float64 parameters: the same steps as their (exact) float64 copies
    params = {"weight": rng.standard_normal((4, 6)), "emb": rng.standard_normal((V, E)),
              "emb2": rng.standard_normal((V, E))}
    ref = {k: v.copy() for k, v in params.items()}
    opt = Adam(params, lazy=("emb",), backend=backend)
    ref_opt = Adam(ref, lazy=("emb",), backend="numpy")
    for grads in _grad_seq(rng, params, row_names=("emb", "emb2"), steps=3):
        low = {k: RowGradient(g.rows, g.values.astype(np.float32)) if isinstance(g, RowGradient)
               else g.astype(np.float32) for k, g in grads.items()}
        exact = {k: RowGradient(g.rows, g.values.astype(np.float64)) if isinstance(g, RowGradient)
                 else g.astype(np.float64) for k, g in low.items()}
        opt.step(low)
        ref_opt.step(exact)
    for name, p in params.items():
        np.testing.assert_allclose(p, ref[name], rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_parameter_without_gradient_matches_torch(torch, rng, backend):
    params = _params(rng)
    tparams = _torch_params(torch, params)
    opt = Adam(params, lr=LR, backend=backend)
    topt = torch.optim.Adam(list(tparams.values()), lr=LR)
    seq = _grad_seq(rng, params, steps=3)
    del seq[1]["bias"]
    for k, grads in enumerate(seq):
        for name, t in tparams.items():
            t.grad = torch.from_numpy(grads[name].copy()) if name in grads else None
        opt.step(_copy(grads))
        topt.step()
        np.testing.assert_allclose(params["bias"], tparams["bias"].detach().numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=f"after step {k}")


@needs_cpp
@pytest.mark.parametrize("mode", ["dense", "row_gradient", "lazy", "weight_decay"])
def test_float32_cpp_and_numpy_backends_agree(rng, mode):
    params = _params(rng, np.float32)
    copies = {k: v.copy() for k, v in params.items()}
    kw = {"lazy": ("emb",)} if mode == "lazy" else {"weight_decay": 0.05} if mode == "weight_decay" else {}
    opts = [Adam(params, lr=LR, backend="cpp", **kw), Adam(copies, lr=LR, backend="numpy", **kw)]
    rows = () if mode == "dense" else ("emb",)
    for grads in _grad_seq(rng, params, row_names=rows):
        for opt in opts:
            opt.step(_copy(grads))
    for name, p in params.items():
        assert p.dtype == np.float32
        for a, b, what in [(p, copies[name], "param"), *((opts[0].state[name][k], opts[1].state[name][k], k)
                                                         for k in ("exp_avg", "exp_avg_sq"))]:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.abs(b).max()), err_msg=f"{name} {what}")


# --------------------------------------------------------------------------- clipping


def _clip_grads(rng, scale):
    grads = {"bias": scale * rng.standard_normal(5), "weight": scale * rng.standard_normal((4, 6))}
    rows = _rows(rng, 5)
    grads["emb"] = RowGradient(rows, scale * rng.standard_normal((5, E)))
    return grads


@pytest.mark.parametrize("ratio", [0.3, 3.0], ids=["clipped", "unclipped"])
def test_clip_grad_norm_matches_torch(torch, rng, ratio):
    grads = _clip_grads(rng, 2.0)
    shapes = {"bias": (5,), "weight": (4, 6), "emb": (V, E)}
    tparams = {name: torch.zeros(shape, dtype=torch.float64, requires_grad=True) for name, shape in shapes.items()}
    for name, g in grads.items():
        tparams[name].grad = torch.from_numpy(np.array(_dense(g, shapes[name])))
    norm = math.sqrt(sum(float(np.sum(_dense(g, (V, E)) ** 2)) for g in grads.values()))
    max_norm = ratio * norm
    before = _copy(grads)
    values = grads["emb"].values
    total = clip_grad_norm(grads, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(list(tparams.values()), max_norm)
    assert isinstance(total, float)
    assert total == pytest.approx(float(expected), rel=RTOL, abs=0)
    assert total == pytest.approx(norm, rel=RTOL, abs=0)
    assert grads["emb"].values is values  # in place
    for name, g in grads.items():
        np.testing.assert_allclose(_dense(g, shapes[name]), tparams[name].grad.numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=name)
        if ratio > 1:
            assert np.array_equal(_dense(g, shapes[name]), _dense(before[name], shapes[name])), name
    if ratio < 1:
        after = math.sqrt(sum(float(np.sum(_dense(g, (V, E)) ** 2)) for g in grads.values()))
        assert after == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_of_a_row_gradient_is_the_norm_of_its_values():
    grads = {"emb": RowGradient(np.array([2], dtype=np.int64), np.array([[3.0, 4.0]]))}
    assert clip_grad_norm(grads, 10.0) == 5.0
    assert np.array_equal(grads["emb"].values, [[3.0, 4.0]])
    assert clip_grad_norm(grads, 1.0) == 5.0
    np.testing.assert_allclose(grads["emb"].values, [[0.6, 0.8]], rtol=1e-6)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan"), float("inf")])
def test_clip_grad_norm_rejects_a_bad_max_norm(rng, max_norm):
    grads = _clip_grads(rng, 1.0)
    before = _copy(grads)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(grads, max_norm)
    for name, g in grads.items():
        assert np.array_equal(_dense(g, (V, E)), _dense(before[name], (V, E)))


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("warmup", [0, 3])
@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_lr_factor_drives_sgd_as_torch_lambda_lr(torch, rng, schedule, warmup):
    total, base = 12, 0.1
    params = {"w": rng.standard_normal(7)}
    tparam = torch.tensor(params["w"], requires_grad=True)
    opt = SGD(params, lr=base, momentum=0.9)
    topt = torch.optim.SGD([tparam], lr=base, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(topt, lambda s: lr_factor(schedule, s, total, warmup))
    for step in range(total):
        lr = base * lr_factor(schedule, step, total, warmup)
        assert topt.param_groups[0]["lr"] == pytest.approx(lr, rel=RTOL, abs=0), step
        g = rng.standard_normal(7)
        tparam.grad = torch.from_numpy(g.copy())
        opt.step({"w": g}, lr=lr)
        topt.step()
        sched.step()
        np.testing.assert_allclose(params["w"], tparam.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=str(step))


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_lr_factor_warmup_ramps_then_decays(schedule):
    total, warmup = 20, 4
    assert [lr_factor(schedule, s, total, warmup) for s in range(warmup)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(schedule, warmup, total, warmup) == 1.0
    after = [lr_factor(schedule, s, total, warmup) for s in range(warmup, total)]
    assert all(0.0 < f <= 1.0 for f in after)
    assert all(b <= a for a, b in zip(after, after[1:]))


def test_lr_factor_values():
    assert lr_factor("constant", 0, 10) == 1.0
    assert lr_factor("constant", 9, 10) == 1.0
    assert lr_factor("linear", 0, 10) == 1.0
    assert lr_factor("linear", 5, 10) == pytest.approx(0.5)
    assert lr_factor("linear", 9, 10) == pytest.approx(0.1)  # the last step
    assert lr_factor("linear", 999, 1000) == pytest.approx(1e-3)  # ends near 0
    assert lr_factor("linear", 10, 10) == 0.0
    assert lr_factor("linear", 50, 10) == 0.0  # not negative past the end
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)  # the midpoint
    assert lr_factor("cosine", 7, 12, warmup=2) == pytest.approx(0.5)  # the midpoint after warmup
    assert lr_factor("cosine", 999, 1000) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.999)))
    assert lr_factor("cosine", 999, 1000) < 1e-5
    assert lr_factor("cosine", 10, 10) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor("linear", 0, 10, warmup=1) == 1.0


@pytest.mark.parametrize("schedule", ["exponential", "Cosine", "", "step"])
def test_lr_factor_rejects_an_unknown_schedule(schedule):
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(schedule, 0, 10)


# --------------------------------------------------------------------------- state_dict round trip

OPTIMIZERS = {
    "sgd_momentum": lambda p, b: SGD(p, lr=0.1, momentum=0.9),
    "sgd_nesterov_decay": lambda p, b: SGD(p, lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01),
    "adam": lambda p, b: Adam(p, lr=LR, backend=b),
    "adam_decay": lambda p, b: Adam(p, lr=LR, betas=(0.8, 0.9), weight_decay=0.1, backend=b),
    "adam_lazy": lambda p, b: Adam(p, lr=LR, lazy=("emb",), backend=b),
}


def _save_load(state):
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", list(OPTIMIZERS.values()), ids=list(OPTIMIZERS))
def test_state_dict_round_trip_continues_bit_for_bit(rng, make, backend):
    params = _params(rng)
    seq = _grad_seq(rng, params, row_names=("emb",), steps=7)
    opt = make(params, backend)
    for grads in seq[:3]:
        opt.step(_copy(grads))
    state = opt.state_dict()
    assert int(state["steps"]) == 3
    assert len(state) > 1
    copies = {k: v.copy() for k, v in params.items()}
    fresh = make(copies, backend)
    fresh.load_state_dict(_save_load(state))
    assert fresh.steps == 3
    for grads in seq[3:]:
        opt.step(_copy(grads), 0.02)
        fresh.step(_copy(grads), 0.02)
    assert fresh.steps == opt.steps == 7
    for name, p in params.items():
        assert np.array_equal(p, copies[name]), name
        assert opt.state[name].keys() == fresh.state[name].keys()
        for key, value in opt.state[name].items():
            assert np.array_equal(value, fresh.state[name][key]), f"{name}/{key}"
            assert value is not fresh.state[name][key]


def _adam_after_two_steps(rng):
    params = _params(rng)
    opt = Adam(params, lr=LR, backend="numpy")
    for grads in _grad_seq(rng, params, steps=2):
        opt.step(grads)
    return opt


@pytest.mark.parametrize(("key", "bad"), [
    ("weight/exp_avg", lambda s: s.update({"weight/exp_avg": np.zeros((6, 4))})),
    ("emb/exp_avg_sq", lambda s: s.update({"emb/exp_avg_sq": np.zeros(V * E)})),
    ("nope/exp_avg", lambda s: s.update({"nope/exp_avg": np.zeros(5)})),
    ("bias/momentum", lambda s: s.update({"bias/momentum": np.zeros(5)})),
    ("bias", lambda s: s.update({"bias": np.zeros(5)})),
    ("steps", lambda s: s.pop("steps")),
], ids=["shape", "flat", "unknown_param", "unknown_part", "no_slash", "no_steps"])
def test_load_state_dict_rejects_a_bad_state_naming_the_key(rng, key, bad):
    opt = _adam_after_two_steps(rng)
    state = {k: v.copy() for k, v in opt.state_dict().items()}
    before = {k: v.copy() for k, v in state.items()}
    bad(state)
    with pytest.raises(ValueError, match=f"'{key}'"):
        opt.load_state_dict(state)
    # nothing restored
    assert opt.steps == 2
    after = opt.state_dict()
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_make_optimizer():
    params = {"embedding.weight": np.zeros((3, 2)), "w": np.zeros(2)}
    adam = make_optimizer("adam", params, lr=0.1, backend="numpy")
    assert isinstance(adam, Adam) and adam.lazy == () and adam.lr == 0.1
    sparse = make_optimizer("sparse_adam", params, lr=0.1, backend="numpy")
    assert isinstance(sparse, Adam) and sparse.lazy == ("embedding.weight",)
    sgd = make_optimizer("sgd", params, lr=0.1, momentum=0.5, weight_decay=0.01)
    assert isinstance(sgd, SGD) and sgd.momentum == 0.5 and sgd.weight_decay == 0.01
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("adagrad", params, lr=0.1)


# --------------------------------------------------------------------------- the compiled loops directly

ADAM_SCALARS = (0.01, 0.9, 0.999, 1e-8, 0.5)  # step_size, beta1, beta2, eps, bc2_sqrt


@pytest.fixture
def core():
    if not HAS_CPP:
        pytest.skip("compiled core not available")
    return fastsim._backend.core()


def _misaligned(a):
    """A C-contiguous, writeable copy of ``a`` one byte off its element alignment."""
    buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned and out.flags.c_contiguous and out.flags.writeable
    return out


def _readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def _strided(a):
    """A non-contiguous view with ``a``'s shape and values."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    out = big[..., ::2]
    out[...] = a
    assert not out.flags.c_contiguous
    return out


def _other(dtype):
    return np.float32 if dtype == np.float64 else np.float64


def _dense_args(dtype=np.float64):
    rng = np.random.default_rng(3)
    return {"p": rng.standard_normal((4, 3)).astype(dtype), "m": np.zeros((4, 3), dtype),
            "v": np.zeros((4, 3), dtype), "g": rng.standard_normal((4, 3)).astype(dtype)}


DENSE_BAD = {
    "p_int": (TypeError, "p", lambda a: a["p"].astype(np.int64)),
    "p_float16": (TypeError, "p", lambda a: a["p"].astype(np.float16)),
    "m_dtype": (TypeError, "m", lambda a: a["m"].astype(_other(a["p"].dtype))),
    "g_dtype": (TypeError, "g", lambda a: a["g"].astype(_other(a["p"].dtype))),
    "m_shape": (ValueError, "m", lambda a: np.zeros((3, 4), a["p"].dtype)),
    "v_size": (ValueError, "v", lambda a: np.zeros(12, a["p"].dtype)),
    "g_shape": (ValueError, "g", lambda a: np.zeros((4, 4), a["p"].dtype)),
    "p_readonly": (ValueError, "p", lambda a: _readonly(a["p"])),
    "m_readonly": (ValueError, "m", lambda a: _readonly(a["m"])),
    "v_readonly": (ValueError, "v", lambda a: _readonly(a["v"])),
    "p_strided": (ValueError, "p", lambda a: _strided(a["p"])),
    "p_transposed": (ValueError, "p", lambda a: np.ascontiguousarray(a["p"].T).T),
    "m_strided": (ValueError, "m", lambda a: _strided(a["m"])),
    "g_strided": (ValueError, "g", lambda a: _strided(a["g"])),
    "p_misaligned": (ValueError, "p", lambda a: _misaligned(a["p"])),
    "g_misaligned": (ValueError, "g", lambda a: _misaligned(a["g"])),
    "p_list": (TypeError, "p", lambda a: a["p"].tolist()),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("exc", "name", "make"), list(DENSE_BAD.values()), ids=list(DENSE_BAD))
def test_adam_dense_rejects_bad_arrays(core, dtype, exc, name, make):
    args = _dense_args(dtype)
    args[name] = make(args)
    before = {k: np.array(v, copy=True) for k, v in args.items()}
    with pytest.raises(exc):
        core.adam_dense(args["p"], args["m"], args["v"], args["g"], *ADAM_SCALARS, 0.0)
    for k, v in args.items():
        assert np.array_equal(np.asarray(v), before[k]), k


def _rows_args(dtype=np.float64):
    rng = np.random.default_rng(4)
    return {"p": rng.standard_normal((V, E)).astype(dtype), "m": np.zeros((V, E), dtype), "v": np.zeros((V, E), dtype),
            "rows": np.array([1, 5, 6], dtype=np.int64), "values": rng.standard_normal((3, E)).astype(dtype)}


ROWS_BAD = {
    "row_negative": (ValueError, "rows", lambda a: np.array([-1, 5, 6], dtype=np.int64)),
    "row_too_large": (ValueError, "rows", lambda a: np.array([1, 5, V], dtype=np.int64)),
    "row_huge": (ValueError, "rows", lambda a: np.array([1, 5, 2**62], dtype=np.int64)),
    "rows_descending": (ValueError, "rows", lambda a: np.array([6, 5, 1], dtype=np.int64)),
    "rows_duplicate": (ValueError, "rows", lambda a: np.array([1, 5, 5], dtype=np.int64)),
    "rows_int32": (TypeError, "rows", lambda a: a["rows"].astype(np.int32)),
    "rows_float": (TypeError, "rows", lambda a: a["rows"].astype(np.float64)),
    "rows_2d": (ValueError, "rows", lambda a: a["rows"][None]),
    "rows_strided": (ValueError, "rows", lambda a: _strided(a["rows"])),
    "values_dtype": (TypeError, "values", lambda a: a["values"].astype(np.float16)),
    "values_rows": (ValueError, "values", lambda a: np.zeros((4, E), a["p"].dtype)),
    "values_cols": (ValueError, "values", lambda a: np.zeros((3, E + 1), a["p"].dtype)),
    "values_1d": (ValueError, "values", lambda a: np.zeros(3 * E, a["p"].dtype)),
    "values_strided": (ValueError, "values", lambda a: _strided(a["values"])),
    "p_1d": (ValueError, "p", lambda a: np.zeros(V * E, a["p"].dtype)),
    "p_int": (TypeError, "p", lambda a: a["p"].astype(np.int64)),
    "p_readonly": (ValueError, "p", lambda a: _readonly(a["p"])),
    "p_strided": (ValueError, "p", lambda a: _strided(a["p"])),
    "p_misaligned": (ValueError, "p", lambda a: _misaligned(a["p"])),
    "m_shape": (ValueError, "m", lambda a: np.zeros((V, E + 1), a["p"].dtype)),
    "v_dtype": (TypeError, "v", lambda a: a["v"].astype(np.float32)),
    "v_float16": (TypeError, "v", lambda a: a["v"].astype(np.float16)),
    "v_readonly": (ValueError, "v", lambda a: _readonly(a["v"])),
}


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "dense"])
@pytest.mark.parametrize(("exc", "name", "make"), list(ROWS_BAD.values()), ids=list(ROWS_BAD))
def test_adam_rows_rejects_bad_arrays(core, lazy, exc, name, make):
    args = _rows_args()
    args[name] = make(args)
    before = {k: np.array(v, copy=True) for k, v in args.items()}
    with pytest.raises(exc):
        core.adam_rows(args["p"], args["m"], args["v"], args["rows"], args["values"], *ADAM_SCALARS, lazy)
    for k, v in args.items():
        assert np.array_equal(v, before[k]), k


def _numpy_adam(p, m, v, g, step_size, b1, b2, eps, bc2_sqrt):
    m[...] = b1 * m + (1 - b1) * g
    v[...] = b2 * v + (1 - b2) * g * g
    p -= step_size * (m / (np.sqrt(v) / bc2_sqrt + eps))


@pytest.mark.parametrize("shape", [(V, E), (300, 256)], ids=["small", "threaded"])
def test_adam_rows_dense_equals_adam_dense_on_the_dense_gradient(core, shape):
    # the (300, 256) case is above the loops' threading threshold: the rows are split between threads
    rng = np.random.default_rng(5)
    p = rng.standard_normal(shape)
    m, v = 0.1 * rng.standard_normal(shape), rng.random(shape)
    rows = np.sort(rng.choice(shape[0], size=shape[0] // 3, replace=False)).astype(np.int64)
    vals = rng.standard_normal((rows.size, shape[1]))
    g = RowGradient(rows, vals).dense(shape)
    pr, mr, vr = p.copy(), m.copy(), v.copy()
    core.adam_rows(pr, mr, vr, rows, vals, *ADAM_SCALARS, False)
    pd, md, vd = p.copy(), m.copy(), v.copy()
    core.adam_dense(pd, md, vd, g, *ADAM_SCALARS, 0.0)
    pn, mn, vn = p.copy(), m.copy(), v.copy()
    _numpy_adam(pn, mn, vn, g, *ADAM_SCALARS)
    for a, b, c in ((pr, pd, pn), (mr, md, mn), (vr, vd, vn)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(a, c, rtol=RTOL, atol=ATOL)
    # lazy: only the rows move, as SparseAdam
    pl, ml, vl = p.copy(), m.copy(), v.copy()
    core.adam_rows(pl, ml, vl, rows, vals, *ADAM_SCALARS, True)
    others = np.setdiff1d(np.arange(shape[0]), rows)
    for a, b in ((pl, p), (ml, m), (vl, v)):
        assert np.array_equal(a[others], b[others])
    m_new = m[rows] + (vals - m[rows]) * (1 - 0.9)
    v_new = v[rows] + (vals * vals - v[rows]) * (1 - 0.999)
    np.testing.assert_allclose(ml[rows], m_new, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(vl[rows], v_new, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(pl[rows], p[rows] - 0.01 * m_new / (np.sqrt(v_new) + 1e-8), rtol=RTOL, atol=ATOL)


@st.composite
def _segments(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    m = draw(st.integers(1, 12))
    e = draw(st.integers(0, 5))
    total = draw(st.integers(0, 30))
    order = draw(st.lists(st.integers(0, m - 1), min_size=total, max_size=total))
    cuts = draw(st.sets(st.integers(1, total - 1), max_size=max(0, total - 1))) if total > 1 else set()
    starts = [0, *sorted(cuts)] if total else []
    seed = draw(st.integers(0, 2**32 - 1))
    src = np.random.default_rng(seed).standard_normal((m, e)).astype(dtype)
    return src, np.array(order, dtype=np.int64), np.array(starts, dtype=np.int64)


@needs_cpp
@given(_segments())
def test_segment_sum_rows_matches_reduceat(data):
    src, order, starts = data
    out = fastsim._backend.core().segment_sum_rows(src, order, starts)
    assert out.dtype == src.dtype and out.shape == (starts.size, src.shape[1])
    if order.size:
        expected = np.add.reduceat(src[order].astype(np.float64), starts, axis=0)
        np.testing.assert_allclose(out, expected, rtol=0, atol=tol(src.dtype, 10))


def test_segment_sum_rows_threaded(core):
    # above the threading threshold (total * E >= 2**15)
    rng = np.random.default_rng(6)
    src = rng.standard_normal((500, 64))
    order = rng.integers(0, 500, size=2000).astype(np.int64)
    starts = np.concatenate([[0], np.sort(rng.choice(np.arange(1, 2000), size=300, replace=False))]).astype(np.int64)
    out = core.segment_sum_rows(src, order, starts)
    np.testing.assert_allclose(out, np.add.reduceat(src[order], starts, axis=0), rtol=RTOL, atol=ATOL)


SEGMENT_BAD = {
    "order_negative": (ValueError, lambda: (np.zeros((3, 2)), [0, -1, 2], [0, 2])),
    "order_too_large": (ValueError, lambda: (np.zeros((3, 2)), [0, 3, 2], [0, 2])),
    "order_int32": (TypeError, lambda: (np.zeros((3, 2)), np.array([0, 1], np.int32), [0])),
    "order_2d": (ValueError, lambda: (np.zeros((3, 2)), np.array([[0, 1]]), [0])),
    "starts_not_at_zero": (ValueError, lambda: (np.zeros((3, 2)), [0, 1, 2], [1, 2])),
    "starts_negative": (ValueError, lambda: (np.zeros((3, 2)), [0, 1, 2], [-1, 2])),
    "starts_equal": (ValueError, lambda: (np.zeros((3, 2)), [0, 1, 2], [0, 1, 1])),
    "starts_falling": (ValueError, lambda: (np.zeros((3, 2)), [0, 1, 2], [0, 2, 1])),
    "starts_at_end": (ValueError, lambda: (np.zeros((3, 2)), [0, 1, 2], [0, 3])),
    "starts_past_end": (ValueError, lambda: (np.zeros((3, 2)), [0, 1, 2], [0, 5])),
    "starts_empty": (ValueError, lambda: (np.zeros((3, 2)), [0, 1, 2], [])),
    "starts_for_empty_order": (ValueError, lambda: (np.zeros((3, 2)), [], [0])),
    "starts_int32": (TypeError, lambda: (np.zeros((3, 2)), [0, 1], np.array([0], np.int32))),
    "src_1d": (ValueError, lambda: (np.zeros(3), [0, 1], [0])),
    "src_int": (TypeError, lambda: (np.zeros((3, 2), np.int64), [0, 1], [0])),
    "src_strided": (ValueError, lambda: (_strided(np.zeros((3, 2))), [0, 1], [0])),
    "src_misaligned": (ValueError, lambda: (_misaligned(np.zeros((3, 2))), [0, 1], [0])),
}


@pytest.mark.parametrize(("exc", "make"), list(SEGMENT_BAD.values()), ids=list(SEGMENT_BAD))
def test_segment_sum_rows_rejects_bad_inputs(core, exc, make):
    src, order, starts = make()
    order = order if isinstance(order, np.ndarray) else np.array(order, dtype=np.int64)
    starts = starts if isinstance(starts, np.ndarray) else np.array(starts, dtype=np.int64)
    with pytest.raises(exc):
        core.segment_sum_rows(src, order, starts)


def test_segment_sum_rows_empty(core):
    out = core.segment_sum_rows(np.zeros((3, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert out.shape == (0, 2)


# --------------------------------------------------------------------------- argument validation

BAD_CONSTRUCTORS = {
    "sgd_negative_lr": lambda p: SGD(p, lr=-0.1),
    "sgd_nan_lr": lambda p: SGD(p, lr=float("nan")),
    "sgd_inf_lr": lambda p: SGD(p, lr=float("inf")),
    "sgd_momentum_1": lambda p: SGD(p, momentum=1.0),
    "sgd_momentum_above_1": lambda p: SGD(p, momentum=1.5),
    "sgd_negative_momentum": lambda p: SGD(p, momentum=-0.1),
    "sgd_nesterov_without_momentum": lambda p: SGD(p, nesterov=True),
    "sgd_nesterov_with_dampening": lambda p: SGD(p, momentum=0.9, nesterov=True, dampening=0.1),
    "sgd_negative_weight_decay": lambda p: SGD(p, weight_decay=-0.01),
    "adam_negative_lr": lambda p: Adam(p, lr=-1e-3),
    "adam_beta1_1": lambda p: Adam(p, betas=(1.0, 0.999)),
    "adam_beta2_1": lambda p: Adam(p, betas=(0.9, 1.0)),
    "adam_negative_beta1": lambda p: Adam(p, betas=(-0.1, 0.999)),
    "adam_negative_beta2": lambda p: Adam(p, betas=(0.9, -0.5)),
    "adam_beta_above_1": lambda p: Adam(p, betas=(0.9, 1.5)),
    "adam_eps_0": lambda p: Adam(p, eps=0.0),
    "adam_negative_eps": lambda p: Adam(p, eps=-1e-8),
    "adam_nan_eps": lambda p: Adam(p, eps=float("nan")),
    "adam_negative_weight_decay": lambda p: Adam(p, weight_decay=-0.1),
    "adam_lazy_unknown": lambda p: Adam(p, lazy=("nope",)),
    "adam_lazy_with_weight_decay": lambda p: Adam(p, lazy=("emb",), weight_decay=0.1),
    "adam_unknown_backend": lambda p: Adam(p, backend="gpu"),
}


@pytest.mark.parametrize("make", list(BAD_CONSTRUCTORS.values()), ids=list(BAD_CONSTRUCTORS))
def test_optimizers_reject_bad_arguments(rng, make):
    with pytest.raises(ValueError):
        make(_params(rng))


@pytest.mark.parametrize("params", [{}, [np.zeros(3)], None], ids=["empty", "list", "none"])
@pytest.mark.parametrize("cls", [SGD, Adam])
def test_optimizers_reject_empty_params(cls, params):
    with pytest.raises(TypeError, match="non-empty"):
        cls(params)


OPTIMIZERS_BY_BACKEND = [
    pytest.param(lambda p: SGD(p, momentum=0.9), id="sgd"),
    pytest.param(lambda p: Adam(p, backend="numpy"), id="adam-numpy"),
    pytest.param(lambda p: Adam(p, backend="cpp"), id="adam-cpp", marks=needs_cpp),
    pytest.param(lambda p: Adam(p, lazy=("emb",), backend="numpy"), id="lazy-numpy"),
    pytest.param(lambda p: Adam(p, lazy=("emb",), backend="cpp"), id="lazy-cpp", marks=needs_cpp),
]


@pytest.mark.parametrize("make", OPTIMIZERS_BY_BACKEND)
def test_step_rejects_unknown_gradients_and_a_bad_lr(rng, make):
    params = _params(rng)
    before = {k: v.copy() for k, v in params.items()}
    opt = make(params)
    grads = _grad_seq(rng, params, row_names=("emb",), steps=1)[0]
    with pytest.raises(ValueError, match="unknown"):
        opt.step({**grads, "nope": np.zeros(3)})
    with pytest.raises(ValueError, match="lr"):
        opt.step(grads, lr=-1.0)
    with pytest.raises(ValueError, match="lr"):
        opt.step(grads, lr=float("nan"))
    assert opt.steps == 0
    assert all(np.array_equal(params[k], before[k]) for k in params)
    opt.step(grads)
    assert opt.steps == 1


@pytest.mark.parametrize("backend", [
    pytest.param("numpy", id="numpy"),
    pytest.param("cpp", id="cpp", marks=needs_cpp),
])
def test_lazy_parameter_rejects_a_dense_gradient(rng, backend):
    params = {"emb": rng.standard_normal((V, E))}
    before = params["emb"].copy()
    opt = Adam(params, lazy=("emb",), backend=backend)
    with pytest.raises(TypeError, match="RowGradient"):
        opt.step({"emb": rng.standard_normal((V, E))})
    assert np.array_equal(params["emb"], before)
