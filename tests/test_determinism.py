"""Determinism: every public operation on every backend, call after call and across thread counts.

* The same input on the same backend and thread count gives bitwise identical
  output, call after call.
* ``cpp``: the README says results do not depend on the number of threads
  (rows or columns are split between threads, never a dot product or a row's
  reduction), so outputs with 1, 2 and 3 threads must be bitwise identical.
* ``numba``: ``set_num_threads`` sets the size of Numba's thread pool; rows
  are split between threads the same way, and the README claims agreement
  within the dtype's tolerance (measured: bitwise).
* ``numpy``: ``set_num_threads`` does not apply; results must not change.

The inputs are large enough that the cpp kernels really split the work (the
GEMM engine uses more than one thread above ~4 MFLOP per thread, the row
passes above 2^18 elements).  :data:`OPS` is shared with
``tests/test_concurrency.py``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

import fastsim

from .conftest import assert_close, backend_params

# --------------------------------------------------------------------------- inputs and operations


def _inputs(dtype=np.float32):
    rng = np.random.default_rng(2024)

    def m(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x = {}
    x["a"], x["b"] = m(300, 48), m(700, 48)
    x["rows_a"], x["rows_b"] = m(3000, 100), m(3000, 100)
    x["u"], x["v"] = m(257), m(257)
    x["q"], x["c"] = m(150, 40), m(2500, 40)
    x["sim"] = np.clip(m(600, 600) * 0.3, -1, 1)
    x["v1"], x["v2"] = m(400, 64), m(400, 64)
    x["anchor"], x["pos"], x["neg"] = m(500, 32), m(500, 32), m(500, 32)
    H, D = 64, 24
    x["seq"] = m(24, 20, D)
    x["lengths"] = rng.integers(1, 21, size=24)
    k = 1 / np.sqrt(H)
    for kind, G in (("lstm", 4), ("gru", 3), ("rnn", 1)):
        x[kind] = [(rng.uniform(-k, k, s)).astype(dtype) for s in ((G * H, D), (G * H, H), (G * H,), (G * H,))]
    x["ids"] = rng.integers(0, 50, size=(40, 12))
    x["ids"][:, 9:] = 0
    return x


_X = {np.dtype(np.float32): _inputs(np.float32), np.dtype(np.float64): _inputs(np.float64)}
_ENCODERS = {}


def _encoder(dtype):
    """A shared encoder per dtype, warmed up so the cpp backend already uses its projected table."""
    key = np.dtype(dtype)
    if key not in _ENCODERS:
        enc = fastsim.SiameseEncoder.random(50, 24, 32, bidirectional=True, cell="GRU", pooling="masked_mean",
                                            dtype=dtype, seed=3)
        enc.encode(np.ones((10, 10), dtype=np.int64), backend="cpp" if "cpp" in fastsim.available_backends()
                   else "auto")
        _ENCODERS[key] = enc
    return _ENCODERS[key]


def _lstm(x, be):
    W = x["lstm"]
    return fastsim.lstm_forward(x["seq"], *W, lengths=x["lengths"], backend=be)


OPS = {
    "cosine_similarity": lambda x, be: fastsim.cosine_similarity(x["u"], x["v"], backend=be),
    "cosine_similarity_rows": lambda x, be: fastsim.cosine_similarity_rows(x["rows_a"], x["rows_b"], backend=be),
    "cosine_similarity_matrix": lambda x, be: fastsim.cosine_similarity_matrix(x["a"], x["b"], backend=be),
    "cosine_similarity_matrix_self": lambda x, be: fastsim.cosine_similarity_matrix(x["b"], backend=be),
    "top_k": lambda x, be: fastsim.top_k(x["q"], x["c"], 10, backend=be),
    "top_k_exclude_self": lambda x, be: fastsim.top_k(x["c"][:600], x["c"][:600], 5, exclude_self=True, backend=be),
    "hard_negatives": lambda x, be: fastsim.hard_negatives(x["sim"], backend=be),
    "modified_triplet_loss": lambda x, be: fastsim.modified_triplet_loss(
        x["v1"], x["v2"], 0.25, return_parts=True, backend=be),
    "modified_triplet_loss_grad": lambda x, be: fastsim.modified_triplet_loss_grad(
        x["v1"], x["v2"], 0.25, reduction="mean", backend=be),
    "triplet_loss": lambda x, be: fastsim.triplet_loss(x["anchor"], x["pos"], x["neg"], 0.5, reduction="none",
                                                       backend=be),
    "lstm_forward": _lstm,
    "gru_forward": lambda x, be: fastsim.gru_forward(x["seq"], *x["gru"], lengths=x["lengths"], backend=be),
    "rnn_forward": lambda x, be: fastsim.rnn_forward(x["seq"], *x["rnn"], nonlinearity="relu", backend=be),
    "SiameseEncoder.encode": lambda x, be: _encoder(x["a"].dtype).encode(x["ids"], backend=be),
    "similarity": lambda x, be: fastsim.similarity(x["rows_a"], x["rows_b"], backend=be),
}


def run(op, backend, dtype=np.float32):
    return flatten(OPS[op](_X[np.dtype(dtype)], backend))


def flatten(result) -> list[np.ndarray]:
    """Every array of a result (tuples, dataclasses, scalars) in a fixed order."""
    if dataclasses.is_dataclass(result):
        return [a for f in dataclasses.fields(result) for a in flatten(getattr(result, f.name))]
    if isinstance(result, (tuple, list)):
        return [a for item in result for a in flatten(item)]
    return [np.asarray(result)]


def assert_bitwise(got: list[np.ndarray], want: list[np.ndarray], what: str = ""):
    """Same dtypes, shapes and bytes (NaN payloads and signed zeros included)."""
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what} part {i}: {g.dtype}{g.shape} != {w.dtype}{w.shape}"
        if g.tobytes() != w.tobytes():
            diff = np.flatnonzero(g.reshape(-1).view(np.uint8) != w.reshape(-1).view(np.uint8))
            raise AssertionError(f"{what} part {i}: {diff.size} bytes differ, first at byte {diff[0]}")


def assert_close_parts(got, want, dtype, what=""):
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what} part {i}"
        if g.dtype.kind in "fc":
            assert_close(g, w, dtype, scale=10, err_msg=f"{what} part {i}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"{what} part {i}")


@pytest.fixture
def restore_threads():
    before = fastsim.get_num_threads()
    yield
    fastsim.set_num_threads(before)


def _numba_pool_size():
    import numba

    return numba.config.NUMBA_NUM_THREADS


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("op", list(OPS))
def test_same_input_same_threads_bitwise(op, dtype, backend, restore_threads):
    fastsim.set_num_threads(2)
    first = run(op, backend, dtype)
    for _ in range(2):
        assert_bitwise(run(op, backend, dtype), first, f"{op} [{backend}] repeated")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("backend", backend_params())
def test_thread_counts(backend, op, dtype, restore_threads):
    if backend == "numba" and _numba_pool_size() < 2:
        pytest.skip("Numba's pool has one thread here (NUMBA_NUM_THREADS=1): no other count to compare")
    fastsim.set_num_threads(1)
    one = run(op, backend, dtype)
    for n in (2, 3):
        fastsim.set_num_threads(n)
        got = run(op, backend, dtype)
        if backend == "numba":
            assert_close_parts(got, one, dtype, f"{op} [numba] {n} threads vs 1")
        else:  # cpp: documented bitwise; numpy: set_num_threads does not apply
            assert_bitwise(got, one, f"{op} [{backend}] {n} threads vs 1")



@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not available")
def test_tall_products_are_bitwise_across_thread_counts(restore_threads):
    # 2100+ rows per thread: the row split packs B privately per thread, with
    # no barrier per block; k = 256 makes n = 1500 span several blocks.
    rng = np.random.default_rng(7)
    a = rng.standard_normal((4200, 256)).astype(np.float32)
    b = rng.standard_normal((1500, 256)).astype(np.float32)
    v1 = rng.standard_normal((2300, 256)).astype(np.float32)
    v2 = rng.standard_normal((2300, 256)).astype(np.float32)

    def run():
        return (fastsim.cosine_similarity_matrix(a, b, backend="cpp"),
                fastsim.modified_triplet_loss_grad(v1, v2, backend="cpp"))

    fastsim.set_num_threads(1)
    one = run()
    for n in (2, 3):
        fastsim.set_num_threads(n)
        got = run()
        np.testing.assert_array_equal(got[0], one[0])
        for g, w in zip(got[1], one[1]):
            np.testing.assert_array_equal(g, w)
    ref = (a.astype(np.float64) / np.linalg.norm(a, axis=1, keepdims=True).astype(np.float64)) @ (
        b.astype(np.float64) / np.linalg.norm(b, axis=1, keepdims=True).astype(np.float64)).T
    assert np.abs(one[0] - ref).max() < 1e-5


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not available")
@pytest.mark.parametrize("project", ["0", "1"], ids=["x-in-step", "projected"])
@pytest.mark.parametrize("cell", ["LSTM", "RNN"])
def test_small_batch_steps_shared_by_threads(cell, project, rnn_projection, restore_threads):
    # A few sequences with a wide hidden state: each step is too small for a
    # GEMM to fork threads by itself, so the threads are started once per
    # direction and split W_hh's columns with a barrier per step.  H = 160 for
    # the RNN gives 3 column panels (an uneven split); lengths make sequences
    # end early in both directions; the encoder reads a projected table.  With
    # x multiplied in the step, each member also stages its rows of x_{t+1}.
    rnn_projection(int(project))
    rng = np.random.default_rng(11)
    H = 128 if cell == "LSTM" else 160
    layer_cls = fastsim.LSTM if cell == "LSTM" else fastsim.RNN
    layer = layer_cls(40, H, num_layers=2, bidirectional=True, seed=5)
    x = rng.standard_normal((3, 17, 40)).astype(np.float32)
    lengths = np.array([17, 4, 11])
    enc = fastsim.SiameseEncoder.random(60, 40, H, cell=cell, pooling="masked_mean", seed=6)
    ids = rng.integers(1, 60, size=(2, 13))
    ids[1, 7:] = 0
    # The encoder switches to its projected table once it has seen V tokens:
    # get there first, so every compared run takes the same path.
    while enc._tokens_encoded < enc.vocab_size:
        enc.encode(ids, backend="cpp")

    def run():
        out, state = layer(x, lengths, backend="cpp")
        return [out, *flatten(state), enc.encode(ids, backend="cpp")]

    fastsim.set_num_threads(1)
    one = run()
    for n in (2, 3):
        fastsim.set_num_threads(n)
        assert_bitwise(run(), one, f"{cell} small batch, {n} threads vs 1")
    ref = layer_cls(40, H, num_layers=2, bidirectional=True, dtype=np.float64)
    for k, dirs in enumerate(layer.weights):
        for d, w in enumerate(dirs):
            ref.set_weights(k, d, *(a.astype(np.float64) for a in w))
    out, state = ref(x.astype(np.float64), lengths, backend="numpy")
    want = [out, *flatten(state)]
    for g, w in zip(one, want):
        assert_close(g, w, np.float32, err_msg=f"{cell} small batch vs the float64 reference")
    assert_close(one[-1], enc.encode(ids, backend="numpy"), np.float32, err_msg=f"{cell} encoder vs NumPy")


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not available")
@pytest.mark.parametrize("project", ["0", "1"], ids=["x-in-step", "projected"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_large_batch_runs_in_lanes(cell, project, rnn_projection, restore_threads):
    # Enough sequences to run in lanes of rows: 131 rows (not a multiple of
    # the 6-row register tile) make three lanes on two threads and four on
    # three, which the threads take one step at a time (T = 9).  The lanes
    # must see their own rows of x, lengths, initial states, outputs and
    # pooled sums, in both directions and both step forms.
    rnn_projection(int(project))
    rng = np.random.default_rng(12)
    B, T, D, H = 131, 9, 24, 40
    layer_cls = {"LSTM": fastsim.LSTM, "GRU": fastsim.GRU, "RNN": fastsim.RNN}[cell]
    layer = layer_cls(D, H, num_layers=2, bidirectional=True, seed=8)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=B)
    h0 = rng.standard_normal((4, B, H)).astype(np.float32)
    initial = (h0, rng.standard_normal((4, B, H)).astype(np.float32)) if cell == "LSTM" else h0
    enc = fastsim.SiameseEncoder.random(300, D, H, cell="LSTM" if cell == "GRU" else cell,
                                        pooling="masked_mean", seed=9)
    ids = rng.integers(1, 300, size=(B, T))
    for i, n in enumerate(lengths):
        ids[i, n:] = 0

    def run():
        out, state = layer(x, lengths, initial, backend="cpp")
        return [out, *flatten(state), enc.encode(ids, backend="cpp")]

    fastsim.set_num_threads(1)
    one = run()
    for n in (2, 3):
        fastsim.set_num_threads(n)
        assert_bitwise(run(), one, f"{cell} large batch, {n} threads vs 1")
    ref = layer_cls(D, H, num_layers=2, bidirectional=True, dtype=np.float64)
    for k, dirs in enumerate(layer.weights):
        for d, w in enumerate(dirs):
            ref.set_weights(k, d, *(a.astype(np.float64) for a in w))
    init64 = tuple(a.astype(np.float64) for a in initial) if cell == "LSTM" else h0.astype(np.float64)
    out, state = ref(x.astype(np.float64), lengths, init64, backend="numpy")
    for g, w in zip(one, [out, *flatten(state)]):
        assert_close(g, w, np.float32, err_msg=f"{cell} large batch vs the float64 reference")
    assert_close(one[-1], enc.encode(ids, backend="numpy"), np.float32, err_msg=f"{cell} encoder vs NumPy")


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not available")
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_lanes_taken_in_slices_of_steps(cell, restore_threads):
    # Lanes are run a slice of ceil(T / 16) steps at a time, by whichever
    # thread takes them next: with T = 37 a slice is 3 steps, so sequences
    # end inside a slice and the reverse direction starts inside one.  The
    # state handed from slice to slice must be exact: bitwise the result of
    # one thread, and the float64 reference within float32 tolerance.
    rng = np.random.default_rng(31)
    B, T, D, H = 70, 37, 12, 20
    layer_cls = {"LSTM": fastsim.LSTM, "GRU": fastsim.GRU}[cell]
    layer = layer_cls(D, H, bidirectional=True, seed=4)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[:3] = T

    def run():
        out, state = layer(x, lengths, backend="cpp")
        return [out, *flatten(state)]

    fastsim.set_num_threads(1)
    one = run()
    for n in (2, 3):
        fastsim.set_num_threads(n)
        for _ in range(3):
            assert_bitwise(run(), one, f"{cell} lanes in slices, {n} threads vs 1")
    ref = layer_cls(D, H, bidirectional=True, dtype=np.float64)
    for k, dirs in enumerate(layer.weights):
        for d, w in enumerate(dirs):
            ref.set_weights(k, d, *(a.astype(np.float64) for a in w))
    out, state = ref(x.astype(np.float64), lengths, backend="numpy")
    for g, w in zip(one, [out, *flatten(state)]):
        assert_close(g, w, np.float32, err_msg=f"{cell} lanes in slices vs the float64 reference")


_FEWER_THREADS_SCRIPT = """
import numpy as np
import fastsim
fastsim.set_num_threads(2)
rng = np.random.default_rng(3)
B, T, D, H = 131, 7, 16, 24
x = rng.standard_normal((B, T, D)).astype(np.float32)
lengths = rng.integers(1, T + 1, size=B)
worst = 0.0
for cls in (fastsim.LSTM, fastsim.GRU, fastsim.RNN):
    layer = cls(D, H, bidirectional=True, seed=4)
    ref = cls(D, H, bidirectional=True, dtype=np.float64)
    for d, w in enumerate(layer.weights[0]):
        ref.set_weights(0, d, *(a.astype(np.float64) for a in w))
    got, _ = layer(x, lengths, backend="cpp")
    want, _ = ref(x.astype(np.float64), lengths, backend="numpy")
    worst = max(worst, float(np.abs(got - want).max()))
print(worst)
"""


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not available")
def test_fewer_openmp_threads_than_asked():
    # OMP_THREAD_LIMIT=1: every parallel region gets one thread although
    # fastsim asks for two, so work planned for two threads (the lanes of a
    # large recurrent batch) must still all be done by the one.
    import subprocess
    import sys

    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    done = subprocess.run([sys.executable, "-c", _FEWER_THREADS_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) < 1e-5, done.stdout
