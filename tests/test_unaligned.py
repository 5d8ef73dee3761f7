"""Arrays whose elements sit at odd byte offsets (views into byte buffers).

NumPy lets such arrays be C-contiguous; their elements straddle their natural
boundaries.  Every public function accepts them, as inputs and as ``out``,
and gives the results of aligned copies; the compiled core refuses them when
called directly (its scalar loads of misaligned elements would be undefined
behaviour, which the sanitizer build of CI reports).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastsim

from .conftest import DTYPES, backend_params


def unaligned(values: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``values`` starting one byte into a buffer."""
    raw = np.zeros(values.nbytes + 1, np.uint8)
    arr = raw[1:].view(values.dtype).reshape(values.shape)
    arr[...] = values
    assert arr.flags.c_contiguous and not arr.flags.aligned
    return arr


@pytest.fixture
def rng():
    return np.random.default_rng(11)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_matrix_with_unaligned_inputs_and_out(backend, dtype, rng):
    a = rng.standard_normal((13, 9)).astype(dtype)
    b = rng.standard_normal((7, 9)).astype(dtype)
    want = fastsim.cosine_similarity_matrix(a, b, backend=backend)
    np.testing.assert_array_equal(fastsim.cosine_similarity_matrix(unaligned(a), unaligned(b), backend=backend), want)
    out = unaligned(np.zeros((13, 7), dtype))
    got = fastsim.cosine_similarity_matrix(a, b, out=out, backend=backend)
    assert got is out
    np.testing.assert_array_equal(out, want)
    self_want = fastsim.cosine_similarity_matrix(a, backend=backend)
    np.testing.assert_array_equal(fastsim.cosine_similarity_matrix(unaligned(a), backend=backend), self_want)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_rows_with_unaligned_inputs_and_out(backend, dtype, rng):
    a = rng.standard_normal((13, 9)).astype(dtype)
    b = rng.standard_normal((13, 9)).astype(dtype)
    want = fastsim.cosine_similarity_rows(a, b, backend=backend)
    out = unaligned(np.zeros(13, dtype))
    got = fastsim.cosine_similarity_rows(unaligned(a), unaligned(b), out=out, backend=backend)
    assert got is out
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("backend", backend_params())
def test_top_k_triplet_and_lstm_with_unaligned_inputs(backend, rng):
    q = rng.standard_normal((5, 8)).astype(np.float32)
    c = rng.standard_normal((40, 8)).astype(np.float32)
    for got, want in zip(fastsim.top_k(unaligned(q), unaligned(c), 3, backend=backend),
                         fastsim.top_k(q, c, 3, backend=backend)):
        np.testing.assert_array_equal(got, want)
    v1 = rng.standard_normal((6, 8)).astype(np.float32)
    v2 = v1 + 0.5 * rng.standard_normal((6, 8)).astype(np.float32)
    assert (fastsim.modified_triplet_loss(unaligned(v1), unaligned(v2), backend=backend)
            == fastsim.modified_triplet_loss(v1, v2, backend=backend))
    layer = fastsim.LSTM(8, 5, dtype=np.float32, seed=np.random.default_rng(3))
    x = rng.standard_normal((3, 4, 8)).astype(np.float32)
    lengths = np.array([4, 2, 3], np.int64)
    out, (h, c_n) = layer(unaligned(x), lengths=unaligned(lengths), backend=backend)
    want_out, (want_h, want_c) = layer(x, lengths=lengths, backend=backend)
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(h, want_h)
    np.testing.assert_array_equal(c_n, want_c)


@pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not available")
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_core_refuses_misaligned_arrays(dtype, rng):
    core = fastsim._backend.core()
    a = rng.standard_normal((4, 3)).astype(dtype)
    with pytest.raises(ValueError, match="aligned"):
        core.cosine_matrix(unaligned(a), a, np.empty((4, 4), dtype))
    with pytest.raises(ValueError, match="aligned"):
        core.cosine_rows(a, a, unaligned(np.zeros(4, dtype)))
