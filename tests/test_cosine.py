"""Cosine similarity: every backend against the float64 NumPy reference."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastsim
from fastsim._reference import cosine as ref

from .conftest import DTYPES, assert_close, backend_params

BACKENDS = backend_params()

SHAPES = [  # (m, n, d)
    (1, 1, 1),
    (1, 7, 1),
    (3, 4, 17),
    (13, 37, 5),
    (64, 64, 128),
    (130, 70, 257),
    (200, 45, 1024),
]


def _data(rng, m, n, d, dtype):
    return rng.standard_normal((m, d)).astype(dtype), rng.standard_normal((n, d)).astype(dtype)


def _ref_matrix(a, b=None):
    return ref.cosine_similarity_matrix(a.astype(np.float64), None if b is None else b.astype(np.float64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "n", "d"), SHAPES)
def test_matrix_matches_reference(backend, dtype, m, n, d, rng):
    a, b = _data(rng, m, n, d, dtype)
    got = fastsim.cosine_similarity_matrix(a, b, backend=backend)
    assert got.dtype == dtype
    assert_close(got, _ref_matrix(a, b), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "d"), [(1, 1), (5, 3), (77, 33), (150, 300)])
def test_self_matrix_has_unit_diagonal(backend, dtype, m, d, rng):
    a = rng.standard_normal((m, d)).astype(dtype)
    got = fastsim.cosine_similarity_matrix(a, backend=backend)
    assert_close(got, _ref_matrix(a), dtype)
    assert np.all(np.diag(got) == 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_nan_and_inf_rows(backend, dtype, rng):
    a, b = _data(rng, 20, 30, 19, dtype)
    a[3] = 0
    b[7] = 0
    a[5, 2] = np.nan
    b[11, 0] = np.inf
    got = fastsim.cosine_similarity_matrix(a, b, backend=backend)
    assert np.all(got[3][~np.isnan(got[3])] == 0)
    assert np.all(got[:, 7][~np.isnan(got[:, 7])] == 0)
    assert np.all(np.isnan(got[5]))
    assert np.all(np.isnan(got[:, 11]))
    assert_close(got, _ref_matrix(a, b), dtype)
    selfsim = fastsim.cosine_similarity_matrix(a, backend=backend)
    assert selfsim[3, 3] == 0
    assert np.isnan(selfsim[5, 5])
    assert_close(selfsim, _ref_matrix(a), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_self_matrix_special_rows_far_down(backend, dtype, rng):
    # 2100 rows: 4.4M outputs, past the size from which the numba kernel runs
    # its normalize and clamp passes in parallel (and the cpp kernel splits
    # rows between threads), so the zero and NaN rows below sit in a later
    # thread's share, diagonal included
    a = rng.standard_normal((2100, 7)).astype(dtype)
    a[1500] = 0
    a[2050, 3] = np.nan
    got = fastsim.cosine_similarity_matrix(a, backend=backend)
    assert got[1500, 1500] == 0 and np.isnan(got[2050, 2050])
    diag = np.diag(got)
    assert np.all(diag[np.r_[0:1500, 1501:2050, 2051:2100]] == 1.0)
    assert_close(got, _ref_matrix(a), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_outside_the_safe_range_in_every_block_of_rows(backend, dtype, rng):
    # The cpp kernel takes inverse norms 64 rows at a time and classifies a
    # block's rows one by one only when one of them is out of range (its sum
    # of squares overflows or underflows): such rows first, last and on both
    # sides of block boundaries, next to zero and NaN rows, in both operands.
    huge, tiny = (1e30, 1e-30) if dtype == np.float32 else (1e200, 1e-200)
    a, b = _data(rng, 150, 131, 40, dtype)
    for x in (a, b):
        x[0] *= huge
        x[63] *= tiny
        x[64] = 0
        x[65, 7] = np.nan
        x[127] *= huge
        x[128] *= tiny
        x[-1] *= huge
    got = fastsim.cosine_similarity_matrix(a, b, backend=backend)
    assert_close(got, _ref_matrix(a, b), dtype)
    assert np.all(np.isnan(got[65])) and np.all(np.isnan(got[:, 65]))
    selfsim = fastsim.cosine_similarity_matrix(a, backend=backend)
    assert_close(selfsim, _ref_matrix(a), dtype)
    assert np.all(np.diag(selfsim)[[0, 63, 127, 128, 149]] == 1.0) and selfsim[64, 64] == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clamped_to_unit_interval(backend, dtype, rng):
    # Parallel and anti-parallel copies at many scales: rounding would push past +-1.
    base = rng.standard_normal((1, 37)).astype(dtype)
    scales = np.geomspace(1e-3, 1e3, 40).astype(dtype)[:, None]
    a = base * scales
    got = fastsim.cosine_similarity_matrix(a, np.concatenate([a, -a]), backend=backend)
    assert got.max() <= 1.0 and got.min() >= -1.0
    assert_close(got, _ref_matrix(a, np.concatenate([a, -a])), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "d"), [(1, 1), (9, 4), (300, 129)])
def test_rows_and_pair(backend, dtype, n, d, rng):
    a, b = _data(rng, n, n, d, dtype)
    a[0] = 0
    got = fastsim.cosine_similarity_rows(a, b, backend=backend)
    want = ref.cosine_similarity_rows(a.astype(np.float64), b.astype(np.float64))
    assert got.dtype == dtype
    assert_close(got, want, dtype)
    for i in range(min(n, 3)):
        s = fastsim.cosine_similarity(a[i], b[i], backend=backend)
        assert isinstance(s, np.floating) and s.dtype == dtype
        assert_close(s, ref.cosine_similarity(a[i].astype(np.float64), b[i].astype(np.float64)), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_pair_example(backend):
    # The notebook's two vectors: [1, 2, 3] and [1, 2, 3.5].
    v1 = np.array([1.0, 2.0, 3.0])
    v2 = np.array([1.0, 2.0, 3.5])
    expected = 15.5 / (np.sqrt(14.0) * np.sqrt(17.25))  # 1 + 4 + 10.5 over the norms
    assert fastsim.cosine_similarity(v1, v2, backend=backend) == pytest.approx(expected, abs=1e-12)
    assert fastsim.cosine_similarity(v1, -v1, backend=backend) == pytest.approx(-1.0, abs=1e-12)
    assert fastsim.cosine_similarity(v1, np.zeros(3), backend=backend) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_and_negative_strides(backend, rng):
    big = rng.standard_normal((60, 80)).astype(np.float32)
    a = big[::2, ::-3]
    b = big[::-3, 1::3][:, : a.shape[1]]
    got = fastsim.cosine_similarity_matrix(a, b, backend=backend)
    assert_close(got, _ref_matrix(a, b), np.float32)
    got_rows = fastsim.cosine_similarity_rows(a, big[1::2, ::-3], backend=backend)
    assert_close(got_rows, ref.cosine_similarity_rows(a.astype(float), big[1::2, ::-3].astype(float)), np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_dtype", [np.int32, np.int64, np.uint8, np.float16, np.bool_])
def test_integer_and_half_inputs_become_float32(backend, in_dtype, rng):
    a = (rng.integers(0, 5, size=(9, 6))).astype(in_dtype)
    got = fastsim.cosine_similarity_matrix(a, backend=backend)
    assert got.dtype == np.float32
    assert_close(got, _ref_matrix(a.astype(np.float64)), np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_promote_to_float64(backend, rng):
    a = rng.standard_normal((5, 4)).astype(np.float32)
    b = rng.standard_normal((6, 4))
    got = fastsim.cosine_similarity_matrix(a, b, backend=backend)
    assert got.dtype == np.float64
    assert_close(got, _ref_matrix(a, b), np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_argument(backend, dtype, rng):
    a, b = _data(rng, 8, 5, 3, dtype)
    out = np.full((8, 5), 7.0, dtype=dtype)
    ret = fastsim.cosine_similarity_matrix(a, b, out=out, backend=backend)
    assert ret is out
    assert_close(out, _ref_matrix(a, b), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    assert fastsim.cosine_similarity_matrix(np.zeros((0, 4)), np.ones((3, 4)), backend=backend).shape == (0, 3)
    assert fastsim.cosine_similarity_matrix(np.ones((2, 4)), np.zeros((0, 4)), backend=backend).shape == (2, 0)
    got = fastsim.cosine_similarity_matrix(np.ones((2, 0)), np.ones((3, 0)), backend=backend)
    np.testing.assert_array_equal(got, np.zeros((2, 3)))
    assert fastsim.cosine_similarity_rows(np.zeros((0, 3)), np.zeros((0, 3)), backend=backend).shape == (0,)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend):
    a = np.ones((4, 3))
    with pytest.raises(ValueError, match="a must be 2-D"):
        fastsim.cosine_similarity_matrix(np.ones(3), backend=backend)
    with pytest.raises(ValueError, match="b must be 2-D"):
        fastsim.cosine_similarity_matrix(a, np.ones((2, 3, 1)), backend=backend)
    with pytest.raises(ValueError, match="same number of columns"):
        fastsim.cosine_similarity_matrix(a, np.ones((4, 2)), backend=backend)
    with pytest.raises(ValueError, match=r"out must have shape \(4, 4\)"):
        fastsim.cosine_similarity_matrix(a, out=np.empty((4, 3)), backend=backend)
    with pytest.raises(TypeError, match="out must have dtype float64"):
        fastsim.cosine_similarity_matrix(a, out=np.empty((4, 4), np.float32), backend=backend)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        fastsim.cosine_similarity_matrix(a, out=[[0.0] * 4] * 4, backend=backend)
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        fastsim.cosine_similarity_matrix(a, out=np.empty((4, 4)).T, backend=backend)
    with pytest.raises(ValueError, match="out must not overlap"):
        big = np.ones((4, 4))
        fastsim.cosine_similarity_matrix(big, out=big, backend=backend)
    with pytest.raises(TypeError, match="a must hold real numbers"):
        fastsim.cosine_similarity_matrix(np.ones((2, 2), dtype=complex), backend=backend)
    with pytest.raises(TypeError, match="a must hold real numbers"):
        fastsim.cosine_similarity_matrix(np.array([["x", "y"]], dtype=object), backend=backend)
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        fastsim.cosine_similarity_rows(a, np.ones((3, 3)), backend=backend)
    with pytest.raises(ValueError, match="u and v must have the same length"):
        fastsim.cosine_similarity(np.ones(3), np.ones(4), backend=backend)
    with pytest.raises(ValueError, match="u must be 1-D"):
        fastsim.cosine_similarity(np.ones((1, 3)), np.ones(3), backend=backend)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend must be"):
        fastsim.cosine_similarity_matrix(np.ones((2, 2)), backend="cuda")
    with pytest.raises(TypeError, match="backend must be a str"):
        fastsim.cosine_similarity_matrix(np.ones((2, 2)), backend=3)


# --------------------------------------------------------------------------- property-based

# Magnitudes whose squares stay normal in float32; subnormal and huge inputs
# are documented separately (float32 dot products underflow/overflow there).
finite = st.one_of(st.just(0.0), st.floats(2.0**-10, 1e3, width=32), st.floats(-1e3, -(2.0**-10), width=32))


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(0, 40),
    n=st.integers(0, 40),
    d=st.integers(0, 70),
    dtype=st.sampled_from(DTYPES),
    backend=st.sampled_from([b for b in ("numpy", "numba", "cpp") if b in fastsim.available_backends()]),
    data=st.data(),
)
def test_matrix_property(m, n, d, dtype, backend, data):
    a = data.draw(hnp.arrays(dtype, (m, d), elements=finite))
    b = data.draw(hnp.arrays(dtype, (n, d), elements=finite))
    got = fastsim.cosine_similarity_matrix(a, b, backend=backend)
    assert_close(got, _ref_matrix(a, b), dtype)
    assert np.all(np.abs(got) <= 1.0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 30),
    d=st.integers(0, 50),
    dtype=st.sampled_from(DTYPES),
    backend=st.sampled_from([b for b in ("numpy", "numba", "cpp") if b in fastsim.available_backends()]),
    data=st.data(),
)
def test_rows_property(n, d, dtype, backend, data):
    a = data.draw(hnp.arrays(dtype, (n, d), elements=finite))
    b = data.draw(hnp.arrays(dtype, (n, d), elements=finite))
    got = fastsim.cosine_similarity_rows(a, b, backend=backend)
    want = ref.cosine_similarity_rows(a.astype(np.float64), b.astype(np.float64))
    assert_close(got, want, dtype)


# --------------------------------------------------------------------------- the compiled core

needs_cpp = pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not available")


@needs_cpp
@pytest.mark.parametrize("level", fastsim.simd_levels() or ["none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_simd_level(level, dtype, rng):
    try:
        assert fastsim.set_simd_level(level) == level
        assert fastsim.info()["simd_level"] == level
        for m, n, d in [(1, 1, 1), (13, 37, 5), (100, 70, 257), (25, 600, 64)]:
            a, b = _data(rng, m, n, d, dtype)
            a[0] = 0
            assert_close(fastsim.cosine_similarity_matrix(a, b, backend="cpp"), _ref_matrix(a, b), dtype)
            assert_close(fastsim.cosine_similarity_matrix(a, backend="cpp"), _ref_matrix(a), dtype)
            out = np.empty((m, n), dtype)
            fastsim._backend.core().gemm_nt(a, b, out)
            assert_close(out, a.astype(np.float64) @ b.astype(np.float64).T, dtype, scale=max(1.0, d / 10))
    finally:
        fastsim.set_simd_level(None)


@needs_cpp
def test_simd_level_env_var():
    levels = fastsim.simd_levels()
    code = "import fastsim; print(fastsim.info()['simd_level'])"
    env = dict(os.environ, FASTSIM_SIMD=levels[-1])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == levels[-1]


@needs_cpp
def test_bad_simd_level():
    with pytest.raises(ValueError, match="level must be one of"):
        fastsim.set_simd_level("sse9")


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_counts_give_identical_results(dtype, rng):
    # Each output element is computed by one micro-kernel call whatever the split.
    a, b = _data(rng, 700, 650, 96, dtype)
    old = fastsim.get_num_threads()
    try:
        fastsim.set_num_threads(1)
        one = fastsim.cosine_similarity_matrix(a, b, backend="cpp")
        fastsim.set_num_threads(2)
        two = fastsim.cosine_similarity_matrix(a, b, backend="cpp")
        fastsim.set_num_threads(3)
        three = fastsim.cosine_similarity_matrix(a, b, backend="cpp")
    finally:
        fastsim.set_num_threads(old)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, three)


@needs_cpp
def test_core_rejects_bad_arrays():
    core = fastsim._backend.core()
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        core.cosine_matrix(np.ones((4, 6), np.float32)[:, ::2], None, np.empty((4, 4), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        core.cosine_matrix(np.ones((3, 4), np.int32), None, np.empty((3, 3), np.int32))
    with pytest.raises(TypeError, match="same dtype"):
        core.cosine_matrix(a, None, np.empty((3, 3), np.float64))
    with pytest.raises(ValueError, match="wrong shape"):
        core.cosine_matrix(a, None, np.empty((3, 2), np.float32))
    with pytest.raises(ValueError, match="writeable"):
        out = np.empty((3, 3), np.float32)
        out.flags.writeable = False
        core.cosine_matrix(a, None, out)


def test_info_and_threads():
    info = fastsim.info()
    for key in ("version", "backends", "simd_level", "num_threads", "openmp"):
        assert key in info
    assert info["backends"][-1] == "numpy"
    with pytest.raises(ValueError, match="n must be >= 1"):
        fastsim.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int"):
        fastsim.set_num_threads(1.5)


_POOL_SCRIPT = """
import sys
import numba.np.ufunc.parallel as numba_parallel
import numpy as np
import fastsim

info = fastsim.info()
fastsim.set_num_threads(1)
started_early = numba_parallel._is_initialized
a = np.ones((3, 4), np.float32)
fastsim.cosine_similarity_matrix(a, backend="numba")
import numba
print(started_early, info["numba_threads"] >= 1, numba_parallel._is_initialized, numba.get_num_threads())
"""


def test_info_and_set_num_threads_do_not_start_numbas_thread_pool():
    # Numba's OpenMP threading layer turns nested parallelism on in the
    # system libgomp; a PyTorch imported after it shares that runtime and its
    # nested regions oversubscribe the cores (nn.GRU ran 10x slower).  The
    # pool must start with the first Numba kernel, not from info() or
    # set_num_threads(), which then still applies to it.
    if "numba" not in fastsim.available_backends():
        pytest.skip("numba is not installed")
    env = {k: v for k, v in os.environ.items() if k != "FASTSIM_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", _POOL_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "1"]


def test_float32_accuracy_up_to_d_1024(rng):
    for backend in [b for b in ("numba", "cpp") if b in fastsim.available_backends()]:
        a = rng.standard_normal((64, 1024)).astype(np.float32)
        b = (a + 0.1 * rng.standard_normal((64, 1024))).astype(np.float32)
        got = fastsim.cosine_similarity_matrix(a, b, backend=backend)
        assert np.max(np.abs(got - _ref_matrix(a, b))) < 1e-5


def test_numba_kernels_have_distinct_cache_entries():
    # Numba files a cached function under its qualified name and first line,
    # whatever its compile flags: two variants of one function (parallel and
    # serial) sharing an entry made later processes run one variant's code
    # for both.  Every cached kernel of the numba backend needs its own.
    if "numba" not in fastsim.available_backends():
        pytest.skip("numba is not installed")
    import importlib

    import numba

    names = {}
    seen = set()
    for area in ("cosine", "topk", "triplet", "rnn"):
        mod = importlib.import_module(f"fastsim._numba.{area}")
        for attr, obj in vars(mod).items():
            if not isinstance(obj, numba.core.registry.CPUDispatcher) or id(obj) in seen:
                continue  # not a kernel, or one imported from another module
            seen.add(id(obj))
            cache_file = getattr(obj._cache, "_cache_file", None)
            if cache_file is None:  # not a caching dispatcher
                continue
            index = getattr(cache_file, "_index_name", None)
            if index is None:
                pytest.skip("this Numba version names its cache files differently")
            names.setdefault(index, []).append(f"{area}.{attr}")
    assert names, "no cached numba kernels found"
    shared = {k: v for k, v in names.items() if len(v) > 1}
    assert not shared, f"kernels sharing a Numba cache entry: {shared}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [16_385, 100_003, 20_000_000])
def test_float32_long_vectors_stay_accurate(backend, d):
    """Positive entries make every partial sum grow, the worst case for a
    float32 accumulator: summed in one running float32 sum per lane, the
    cosine of two such vectors of 20 million entries came out 0.04 off."""
    rng = np.random.default_rng(d)
    u = rng.random(d, dtype=np.float32)
    v = rng.random(d, dtype=np.float32) ** 2
    u64, v64 = u.astype(np.float64), v.astype(np.float64)
    expected = float(u64 @ v64 / np.sqrt(u64 @ u64) / np.sqrt(v64 @ v64))
    a, b = np.stack([u, v]), np.stack([v, u])
    assert abs(float(fastsim.cosine_similarity(u, v, backend=backend)) - expected) < 1e-5
    rows = fastsim.cosine_similarity_rows(a, b, backend=backend)
    assert_close(rows, [expected, expected], np.float32)
    matrix = fastsim.cosine_similarity_matrix(a, b, backend=backend)
    assert_close(matrix, [[expected, 1.0], [1.0, expected]], np.float32)
    assert_close(fastsim.cosine_similarity_matrix(a, backend=backend), [[1.0, expected], [expected, 1.0]],
                 np.float32)
