"""fastsim.torch.LSTM / GRU / RNN: drop-in torch.nn modules running fastsim's forward and backward.

Oracles: torch.autograd.gradcheck (float64 finite differences) and torch.nn's
own modules with the same weights (outputs, gradients, and 20 Adam steps).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastsim.torch")

from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

KINDS = [("lstm", {}), ("gru", {}), ("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "relu"})]
KIND_IDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
FAST = {"lstm": ft.LSTM, "gru": ft.GRU, "rnn": ft.RNN}


def _pair(kind, extra, D, H, dtype, backend="auto", **options):
    """A fastsim module and a torch.nn module holding the same (torch-initialized) weights."""
    fast = FAST[kind](D, H, dtype=dtype, backend=backend, **extra, **options)
    ref = TORCH[kind](D, H, dtype=dtype, **extra, **options)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _initial(kind, n, B, H, dtype, gen):
    h0 = torch.randn(n, B, H, dtype=dtype, generator=gen, requires_grad=True)
    if kind == "lstm":
        return (h0, torch.randn(n, B, H, dtype=dtype, generator=gen, requires_grad=True))
    return h0


def _states(hx):
    return list(hx) if isinstance(hx, tuple) else [hx]


# --------------------------------------------------------------------------- gradcheck


OPTIONS = list(itertools.product([1, 2], [False, True], [False, True], [False, True]))  # layers, bidir, batch_first, bias


@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("form", ["padded", "lengths", "packed"])
@pytest.mark.parametrize(("layers", "bidirectional", "batch_first", "bias"), OPTIONS,
                         ids=[f"L{o[0]}-{'bi' if o[1] else 'uni'}-{'bf' if o[2] else 'tm'}-{'bias' if o[3] else 'nobias'}"
                              for o in OPTIONS])
@pytest.mark.parametrize(("kind", "extra"), KINDS, ids=KIND_IDS)
def test_gradcheck(kind, extra, layers, bidirectional, batch_first, bias, form, with_hx):
    """Every option combination (fast-mode gradcheck: random projections of the Jacobian)."""
    _gradcheck(kind, extra, layers, bidirectional, batch_first, bias, form, with_hx, fast_mode=True)


@pytest.mark.parametrize("form", ["lengths", "packed"])
@pytest.mark.parametrize(("kind", "extra"), KINDS, ids=KIND_IDS)
def test_gradcheck_full_jacobian(kind, extra, form):
    """The whole Jacobian, entry by entry, on the richest option set."""
    _gradcheck(kind, extra, 2, True, True, True, form, True, fast_mode=False)


def _gradcheck(kind, extra, layers, bidirectional, batch_first, bias, form, with_hx, *, fast_mode):
    gen = torch.Generator().manual_seed(7)
    B, T, D, H = 3, 4, 2, 2
    m = FAST[kind](D, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
                   dtype=torch.float64, **extra)
    x = torch.randn((B, T, D) if batch_first else (T, B, D), dtype=torch.float64, generator=gen, requires_grad=True)
    n = layers * (2 if bidirectional else 1)
    hx = _initial(kind, n, B, H, torch.float64, gen) if with_hx else None
    states = _states(hx) if with_hx else []
    lengths = torch.tensor([4, 1, 3])
    params = list(m.parameters())

    def run(x, *rest):
        hx_in = None
        if with_hx:
            hx_in = (rest[0], rest[1]) if kind == "lstm" else rest[0]
        if form == "packed":
            out, h = m(pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False), hx_in)
            out = out.data
        else:
            out, h = m(x, hx_in, lengths=lengths if form == "lengths" else None)
        return (out, *_states(h))

    # the parameters are inputs of the module's graph; gradcheck perturbs them in place
    assert torch.autograd.gradcheck(run, (x, *states, *params), fast_mode=fast_mode, atol=1e-7, rtol=1e-6)


# --------------------------------------------------------------------------- against torch.nn


BACKENDS = [pytest.param("numpy", id="numpy"),
            pytest.param("cpp", id="cpp", marks=pytest.mark.skipif(
                "cpp" not in __import__("fastsim").available_backends(), reason="compiled core not available"))]
ALL_BACKENDS = [*BACKENDS, pytest.param("numba", id="numba", marks=pytest.mark.skipif(
    "numba" not in __import__("fastsim").available_backends(), reason="numba not available"))]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", ["padded", "lengths", "packed"])
@pytest.mark.parametrize(("kind", "extra"), KINDS, ids=KIND_IDS)
def test_matches_torch_nn(kind, extra, form, dtype, backend):
    B, T, D, H = 5, 6, 4, 3
    fast, ref = _pair(kind, extra, D, H, dtype, backend, num_layers=2, bidirectional=True, batch_first=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, D, dtype=dtype, generator=gen)
    hx = _initial(kind, 4, B, H, dtype, gen)
    lengths = torch.tensor([6, 2, 5, 1, 6])
    results = []
    for m in (fast, ref):
        xi = x.clone().requires_grad_(True)
        hi = tuple(s.detach().clone().requires_grad_(True) for s in _states(hx))
        hx_in = hi if kind == "lstm" else hi[0]
        if form == "packed":
            out, h = m(pack_padded_sequence(xi, lengths, batch_first=True, enforce_sorted=False), hx_in)
            assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
            assert out.sorted_indices is not None
            padded, _ = pad_packed_sequence(out, batch_first=True)
            data, sizes = out.data, out.batch_sizes
        elif form == "lengths":
            if m is fast:
                padded, h = m(xi, hx_in, lengths=lengths)
            else:
                out, h = m(pack_padded_sequence(xi, lengths, batch_first=True, enforce_sorted=False), hx_in)
                padded, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
            data, sizes = padded, None
        else:
            padded, h = m(xi, hx_in)
            data, sizes = padded, None
        finals = _states(h)
        loss = (padded.sin().sum() + sum((f * f).sum() for f in finals))
        grads = torch.autograd.grad(loss, [xi, *hi, *m.parameters()])
        results.append((data, sizes, finals, grads))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    (d1, s1, f1, g1), (d2, s2, f2, g2) = results
    assert d1.dtype == dtype
    torch.testing.assert_close(d1, d2, **tol)
    if s1 is not None:
        assert torch.equal(s1, s2)
    for a, b in zip(f1, f2):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("kind", "extra"), KINDS, ids=KIND_IDS)
def test_adam_steps_match_torch_nn(kind, extra, dtype, backend):
    """20 Adam steps from the same weights and batches: the losses agree at every step."""
    D, H, B, T = 6, 8, 6, 7
    fast, ref = _pair(kind, extra, D, H, dtype, backend, num_layers=2, bidirectional=True, batch_first=True)
    head_fast = torch.nn.Linear(2 * H, 1, dtype=dtype)
    head_ref = torch.nn.Linear(2 * H, 1, dtype=dtype)
    head_ref.load_state_dict(head_fast.state_dict())
    opt_fast = torch.optim.Adam([*fast.parameters(), *head_fast.parameters()], lr=0.01)
    opt_ref = torch.optim.Adam([*ref.parameters(), *head_ref.parameters()], lr=0.01)
    gen = torch.Generator().manual_seed(5)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for step in range(20):
        x = torch.randn(B, T, D, dtype=dtype, generator=gen)
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        target = torch.randn(B, 1, dtype=dtype, generator=gen)
        losses = []
        for m, head, opt in ((fast, head_fast, opt_fast), (ref, head_ref, opt_ref)):
            out, _ = m(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            padded, lens = pad_packed_sequence(out, batch_first=True, total_length=T)
            pooled = padded.sum(dim=1) / lens[:, None].to(dtype)
            loss = ((head(pooled) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= tol * max(1.0, abs(losses[1])), f"step {step}: {losses}"


def test_state_dict_and_names_are_torch_nn():
    fast = ft.LSTM(5, 7, num_layers=2, bidirectional=True, bias=True)
    ref = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True)
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert "weight_hh_l1_reverse" in dict(fast.named_parameters())
    ref.load_state_dict(fast.state_dict())  # strict: the same keys and shapes
    fast.load_state_dict(ref.state_dict())
    assert isinstance(fast, torch.nn.LSTM)


def test_unbatched_and_eval_dropout():
    fast, ref = _pair("gru", {}, 3, 4, torch.float64, num_layers=2, dropout=0.5)
    fast.eval()
    ref.eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    h0 = torch.randn(2, 4, dtype=torch.float64)
    a, ha = fast(x, h0)
    b, hb = ref(x, h0)
    assert a.shape == b.shape == (5, 4) and ha.shape == hb.shape == (2, 4)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ha, hb, rtol=1e-12, atol=1e-12)


def test_training_dropout_between_layers():
    """In training mode dropout acts on every layer's output but the last: with p close to 1 the
    second layer sees (almost surely) zeros, so its output is the output for a zero input."""
    fast = ft.RNN(3, 4, num_layers=2, dropout=0.999999, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    out, h = fast(x)
    top = torch.nn.RNN(4, 4, dtype=torch.float64)
    top.weight_ih_l0.data.copy_(fast.weight_ih_l1.data)
    top.weight_hh_l0.data.copy_(fast.weight_hh_l1.data)
    top.bias_ih_l0.data.copy_(fast.bias_ih_l1.data)
    top.bias_hh_l0.data.copy_(fast.bias_hh_l1.data)
    want, _ = top(torch.zeros(6, 2, 4, dtype=torch.float64))
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert x.grad is not None and torch.all(x.grad == 0)


# --------------------------------------------------------------------------- bad input


def test_bad_input():
    m = ft.LSTM(3, 4, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="input must have the parameters' dtype"):
        m(x.float())
    with pytest.raises(ValueError, match="input_size"):
        m(torch.randn(2, 5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="input must be 3-D"):
        m(torch.randn(2, 5, 3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="lengths must lie within 1..5"):
        m(x, lengths=torch.tensor([6, 1]))
    with pytest.raises(ValueError, match="lengths must have shape"):
        m(x, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="h0 must have shape"):
        m(x, (torch.zeros(1, 3, 4, dtype=torch.float64), torch.zeros(1, 2, 4, dtype=torch.float64)))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        m(x, torch.zeros(1, 2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        m(np.zeros((2, 5, 3)))
    packed = pack_padded_sequence(x, torch.tensor([5, 2]), batch_first=True)
    with pytest.raises(ValueError, match="lengths must be None"):
        m(packed, lengths=[5, 2])
    with pytest.raises(ValueError, match="proj_size"):
        ft.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="backend"):
        ft.GRU(3, 4, backend="fortran")
    g = ft.GRU(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="hx must have shape"):
        g(torch.randn(5, 2, 3, dtype=torch.float64), torch.zeros(2, 2, 4, dtype=torch.float64))


# --------------------------------------------------------------------------- the Siamese encoder


@pytest.mark.parametrize("pooling", ["mean", "masked_mean", "last"])
def test_siamese_encoder_matches_torch_nn(pooling):
    V, E, H, B, T = 50, 6, 5, 4, 7
    enc = ft.SiameseEncoder(V, E, H, pooling=pooling, dtype=torch.float64)
    ids = torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([7, 3, 5, 1])
    ids[torch.arange(T)[None, :] >= lengths[:, None]] = 0
    emb = torch.nn.Embedding(V, E, dtype=torch.float64)
    lstm = torch.nn.LSTM(E, H, batch_first=True, dtype=torch.float64)
    emb.load_state_dict(enc.embedding.state_dict())
    lstm.load_state_dict(enc.lstm.state_dict())
    out, (h, _) = lstm(emb(ids))
    if pooling == "mean":
        want = out.mean(dim=1)
    elif pooling == "masked_mean":
        mask = (torch.arange(T)[None, :] < lengths[:, None]).to(out.dtype)
        want = (out * mask[:, :, None]).sum(dim=1) / lengths[:, None]
    else:  # the output at the last real token (no lengths: the LSTM ran over the padding too)
        want = out[torch.arange(B), lengths - 1]
    want = torch.nn.functional.normalize(want, dim=1)
    got = enc(ids)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # gradients reach the embedding and the LSTM weights, equal to torch.nn's
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(enc.embedding.weight.grad, emb.weight.grad, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(enc.lstm.weight_hh_l0.grad, lstm.weight_hh_l0.grad, rtol=1e-11, atol=1e-12)
    # the trained weights move to fastsim's inference encoder
    np.testing.assert_allclose(enc.to_fastsim().encode(ids.numpy()), got.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_siamese_encoder_with_lengths_and_triplet_loss():
    enc = ft.SiameseEncoder(30, 4, 3, pooling="masked_mean", dtype=torch.float64)
    q1 = torch.randint(1, 30, (5, 6), generator=torch.Generator().manual_seed(4))
    q2 = torch.randint(1, 30, (5, 6), generator=torch.Generator().manual_seed(5))
    lengths = torch.tensor([6, 2, 3, 6, 1])
    loss = ft.ModifiedTripletLoss()(enc(q1, lengths), enc(q2, lengths))
    loss.backward()
    assert torch.isfinite(loss) and enc.lstm.weight_ih_l0.grad is not None
    with pytest.raises(TypeError, match="ids must be a 2-D integer tensor"):
        enc(torch.zeros(5, 6))
    with pytest.raises(ValueError, match="pooling must be one of"):
        ft.SiameseEncoder(30, pooling="max")
