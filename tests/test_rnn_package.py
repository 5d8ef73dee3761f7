"""The recurrent package's shared parts: the cell description, the pooled and token-id forms, the one layout.

* ``pool_until`` (the sums of the last layer's outputs over each row's first
  steps) and :meth:`run_ids` (layer 0 from an :class:`EmbeddingProjection`)
  on every backend against the float64 NumPy reference of the plain call,
  parametrized over backend x dtype x cell x stacking, with hypothesis for
  shapes and counts;
* the cell description against what the layers, the importers and the
  compiled core do with it;
* the weights a layer hands out are its own read-only arrays, in the one
  layout every kernel reads;
* bad input to the new forms.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastsim
from fastsim import rnn as R
from fastsim.rnn import cells

from .conftest import DTYPES, assert_close, backend_params
from .test_rnn import make_layer, reference, weights64

BACKENDS = backend_params(R._SUPPORTED)
KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _pooled_reference(kind, layer, x, lengths, until):
    out, _ = reference(kind, weights64(layer), x, lengths, batch_first=True)
    steps = np.arange(out.shape[1])[None, :] < np.asarray(until)[:, None]
    return (out * steps[:, :, None]).sum(axis=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("num_layers", "bidirectional"), [(1, False), (2, True)], ids=["1-uni", "2-bi"])
def test_pool_until_is_the_sum_of_the_outputs(backend, dtype, kind, num_layers, bidirectional):
    rng = np.random.default_rng(7)
    B, T, D, H = 6, 9, 5, 11
    layer = make_layer(kind, D, H, num_layers, bidirectional, dtype=dtype, seed=3)
    x = rng.standard_normal((B, T, D))
    lengths = np.array([9, 1, 4, 9, 2, 7])
    for lens, until in ((None, [9, 0, 3, 9, 1, 5]), (lengths, lengths), (lengths, [9, 9, 9, 0, 0, 9])):
        pooled, state = layer(x, lens, pool_until=until, backend=backend)
        want = _pooled_reference(kind, layer, x, lens, until)
        assert pooled.shape == (B, (2 if bidirectional else 1) * H) and pooled.dtype == dtype
        assert_close(pooled, want, dtype, scale=10)
        # the states are those of the plain call
        _, plain_state = layer(x, lens, backend="numpy")
        for got, exp in zip(np.atleast_1d(state) if not isinstance(state, tuple) else state,
                            np.atleast_1d(plain_state) if not isinstance(plain_state, tuple) else plain_state):
            assert_close(got, exp, dtype, scale=10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_run_ids_is_the_call_on_gathered_rows(backend, dtype, kind, bidirectional):
    rng = np.random.default_rng(11)
    V, B, T, D, H = 23, 5, 7, 6, 9
    layer = make_layer(kind, D, H, 2, bidirectional, dtype=dtype, seed=5)
    emb = rng.standard_normal((V, D))
    table = layer.project_embedding(emb)
    ids = rng.integers(0, V, size=(B, T))
    lengths = np.array([7, 3, 1, 7, 5])
    for lens in (None, lengths):
        want, want_state = reference(kind, weights64(layer), emb[ids], lens, batch_first=True)
        for _ in range(2):  # the compiled backend makes its tables on the first call and reuses them
            out, state = layer.run_ids(ids, table, lens, backend=backend)
            assert_close(out, want, dtype, scale=10)
        pooled, _ = layer.run_ids(ids, table, lens, pool_until=[7, 7, 0, 2, 4], backend=backend)
        steps = np.arange(T)[None, :] < np.array([7, 7, 0, 2, 4])[:, None]
        assert_close(pooled, (want * steps[:, :, None]).sum(axis=1), dtype, scale=10)
        got_h = state[0] if isinstance(state, tuple) else state
        want_h = want_state[0] if isinstance(want_state, tuple) else want_state
        assert_close(got_h, want_h, dtype, scale=10)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 9), T=st.integers(1, 12), D=st.integers(1, 7), H=st.integers(1, 13),
       kind=st.sampled_from(KINDS), bidirectional=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_pooled_and_id_forms_hypothesis(B, T, D, H, kind, bidirectional, seed):
    rng = np.random.default_rng(seed)
    V = int(rng.integers(2, 30))
    layer = make_layer(kind, D, H, 1, bidirectional, dtype=np.float64, seed=seed % 1000)
    emb = rng.standard_normal((V, D))
    ids = rng.integers(0, V, size=(B, T))
    lengths = rng.integers(1, T + 1, size=B)
    until = rng.integers(0, T + 1, size=B)
    want = _pooled_reference(kind, layer, emb[ids], lengths, until)
    table = layer.project_embedding(emb)
    for be in fastsim.available_backends():
        got, _ = layer.run_ids(ids, table, lengths, pool_until=until, backend=be)
        assert_close(got, want, np.float64, scale=10, err_msg=be)
        got, _ = layer(emb[ids], lengths, pool_until=until, backend=be)
        assert_close(got, want, np.float64, scale=10, err_msg=be)


def test_time_major_layers_pool_and_read_ids_batch_major():
    rng = np.random.default_rng(2)
    layer = R.GRU(4, 6, bidirectional=True, batch_first=False, dtype=np.float64, seed=1)
    emb = rng.standard_normal((10, 4))
    ids = rng.integers(0, 10, size=(3, 5))
    want, _ = layer(np.swapaxes(emb[ids], 0, 1), backend="numpy")  # (T, B, F)
    for be in fastsim.available_backends():
        out, _ = layer.run_ids(ids, layer.project_embedding(emb), backend=be)
        assert_close(out, np.swapaxes(want, 0, 1), np.float64, err_msg=be)  # batch-major
        pooled, _ = layer(np.swapaxes(emb[ids], 0, 1), pool_until=[5, 2, 0], backend=be)
        steps = np.arange(5)[:, None] < np.array([5, 2, 0])[None, :]
        assert_close(pooled, (want * steps[:, :, None]).sum(axis=0), np.float64, err_msg=be)


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="cpp backend not available here")
def test_projection_follows_replaced_weights():
    rng = np.random.default_rng(4)
    layer = R.LSTM(5, 7, bidirectional=True, dtype=np.float64, seed=2)
    emb = rng.standard_normal((12, 5))
    table = layer.project_embedding(emb)
    ids = rng.integers(0, 12, size=(4, 6))
    assert not table.ready
    layer.run_ids(ids, table, backend="cpp")
    assert table.ready and table.nbytes == 12 * 4 * 7 * 2 * 8
    layer.set_weights(0, 1, *[rng.uniform(-0.5, 0.5, a.shape) for a in layer.weights[0][1]])
    assert not table.ready  # the backward direction's table belongs to the old weights
    out, _ = layer.run_ids(ids, table, backend="cpp")
    want, _ = reference("lstm", weights64(layer), emb[ids])
    assert_close(out, want, np.float64)
    assert table.ready and len(table._tables) == 2  # the stale table was dropped


def test_projection_keeps_its_own_embedding():
    rng = np.random.default_rng(5)
    layer = R.RNN(3, 4, dtype=np.float32, seed=0)
    emb = rng.standard_normal((6, 3)).astype(np.float32)
    table = layer.project_embedding(emb)
    assert table.embedding is not emb and not table.embedding.flags.writeable
    ids = np.array([[1, 2, 3]])
    before, _ = layer.run_ids(ids, table)
    emb[:] = 0  # the caller's array may change: the projection holds a copy
    after, _ = layer.run_ids(ids, table)
    np.testing.assert_array_equal(before, after)
    frozen = np.array(emb)
    frozen.flags.writeable = False
    assert layer.project_embedding(frozen).embedding is frozen  # read-only and in the layer's dtype: kept


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_pooled_and_id_input(backend):
    layer = R.LSTM(3, 4, dtype=np.float64, seed=0)
    other = R.LSTM(3, 4, dtype=np.float64, seed=1)
    x = np.zeros((2, 5, 3))
    with pytest.raises(ValueError, match="pool_until"):
        layer(x, pool_until=[1, 2, 3], backend=backend)
    with pytest.raises(ValueError, match="pool_until"):
        layer(x, pool_until=[1, 6], backend=backend)
    with pytest.raises(ValueError, match="pool_until"):
        layer(x, pool_until=[-1, 2], backend=backend)
    with pytest.raises(TypeError, match="pool_until"):
        layer(x, pool_until=[1.5, 2], backend=backend)
    emb = np.zeros((4, 3))
    with pytest.raises(ValueError, match="embedding"):
        layer.project_embedding(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="embedding"):
        layer.project_embedding(np.zeros(4))
    table = layer.project_embedding(emb)
    with pytest.raises(TypeError, match="table"):
        other.run_ids(np.zeros((1, 2), dtype=int), table, backend=backend)
    with pytest.raises(TypeError, match="table"):
        layer.run_ids(np.zeros((1, 2), dtype=int), emb, backend=backend)
    for bad in (4, -1):
        with pytest.raises(ValueError, match="ids"):
            layer.run_ids(np.array([[0, bad]]), table, backend=backend)
    with pytest.raises(ValueError, match="ids"):
        layer.run_ids(np.zeros(3, dtype=int), table, backend=backend)
    with pytest.raises(TypeError, match="ids"):
        layer.run_ids(np.zeros((1, 2)), table, backend=backend)
    with pytest.raises(ValueError, match="lengths"):
        layer.run_ids(np.zeros((1, 2), dtype=int), table, [3], backend=backend)


# --------------------------------------------------------------------------- one description, one layout


def test_cell_description_matches_the_layers_and_the_core():
    shapes = {"lstm": R.LSTM, "gru": R.GRU}
    for (kind, nonlinearity), c in cells.CELLS.items():
        assert cells.cell(kind, nonlinearity) is c
        layer = (R.RNN(3, 5, nonlinearity=nonlinearity) if kind == "rnn" else shapes[kind](3, 5))
        assert layer.cell is c
        assert layer.weights[0][0].W_ih.shape == (c.gates * 5, 3)
        assert c.n_states == (2 if kind == "lstm" else 1)
        assert sorted(c.keras_order) == list(range(c.gates)) == sorted(c.onnx_order)
        for mode in c.torch_modes:
            assert cells.of_torch_mode(mode).kind == kind
    assert cells.cell("lstm", "relu") is cells.cell("lstm")  # only the RNN has a choice
    assert len({c.core_id for c in cells.CELLS.values()}) == len(cells.CELLS)


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="cpp backend not available here")
def test_core_knows_the_cells_by_the_same_numbers():
    core = fastsim._backend.core()
    H, D = 3, 2
    for c in cells.CELLS.values():
        W_ih, W_hh = np.ones((c.gates * H, D)), np.ones((c.gates * H, H))
        core.RnnLayer(c.core_id, W_ih, W_hh, None, None)  # accepted with this cell's gate count
        wrong = 3 if c.gates == 4 else 4
        with pytest.raises(ValueError, match="gates"):
            core.RnnLayer(c.core_id, np.ones((wrong * H, D)), np.ones((wrong * H, H)), None, None)
    with pytest.raises(ValueError, match="cell must be"):
        core.RnnLayer(4, np.ones((H, D)), np.ones((H, H)), None, None)
    with pytest.raises(ValueError, match="cell must be"):
        core.RnnLayer(-1, np.ones((H, D)), np.ones((H, H)), None, None)


def test_weights_are_the_layers_own_read_only_arrays():
    layer = R.GRU(4, 3, 2, bidirectional=True, dtype=np.float32, seed=0)
    first, again = layer.weights, layer.weights
    for dirs_a, dirs_b in zip(first, again):
        for wa, wb in zip(dirs_a, dirs_b):
            for a, b in zip(wa, wb):
                assert a is b  # no copy per access: the one layout is what the kernels read
                assert not a.flags.writeable and a.flags.c_contiguous and a.dtype == np.float32
    with pytest.raises(ValueError):
        first[0][0].W_ih[0, 0] = 1.0
    src = np.ones((9, 4))
    layer.set_weights(0, 0, src, np.ones((9, 3)))
    src[:] = 2.0  # the layer copied it
    assert float(layer.weights[0][0].W_ih.max()) == 1.0


def test_rnn_nonlinearity_is_fixed_at_construction():
    layer = R.RNN(2, 3, nonlinearity="relu")
    assert layer.nonlinearity == "relu" and layer.cell.relu
    with pytest.raises(AttributeError):
        layer.nonlinearity = "tanh"


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="cpp backend not available here")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B", [56, 61, 100])
def test_training_kernels_do_not_depend_on_the_thread_count(kind, B):
    # The per-thread batch slices start at multiples of the register tile's
    # rows, so every thread count gives one thread's bits (B = 56 on 3 threads
    # once differed in the last bit: slices at multiples of 8 rows, tiles of 6).
    rng = np.random.default_rng(B)
    layer = make_layer(kind, 8, 15, 1, True, dtype=np.float64, seed=B)
    x = rng.standard_normal((B, 2, 8))
    d_out = rng.standard_normal((B, 2, 30))
    results = []
    before = fastsim.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fastsim.set_num_threads(threads)
            out, _, tape = fastsim.recurrent_forward_train(layer, x, backend="cpp")
            grads = fastsim.recurrent_backward(tape, d_out)
            flat = [out, grads.x] + [a for dirs in grads.weights for w in dirs for a in w]
            results.append(flat)
    finally:
        fastsim.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
