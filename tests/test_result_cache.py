"""The cache of dropped result buffers (fastsim._validation._ResultCache, fastsim.empty_cache).

A result of 4 MiB and more may reuse the memory of a result of the same size
that the caller dropped; these tests check that it never reuses memory that
anything still refers to, that the bytes it holds stay within its limit, and
that the variable that sets the limit is checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastsim
from fastsim import _validation
from fastsim._validation import _ResultCache

N = 1100  # an N x N float32 result is 4.6 MiB: above the cache's 4 MiB floor
MIB = 1 << 20


def _cos(a, b):
    return fastsim.cosine_similarity_matrix(a, b, backend="cpp")


@pytest.fixture
def inputs():
    if "cpp" not in fastsim.available_backends():
        pytest.skip("the compiled core is not built")
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, 16)).astype(np.float32), rng.standard_normal((N, 16)).astype(np.float32)


def _expected(a, b):
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    return an.astype(np.float64) @ bn.astype(np.float64).T


def test_a_dropped_result_is_reused(inputs):
    a, b = inputs
    fastsim.empty_cache()
    first = _cos(a, b)
    address = first.ctypes.data
    del first
    again = _cos(a, b)
    assert again.ctypes.data == address
    np.testing.assert_allclose(again, _expected(a, b), atol=1e-5)


@pytest.mark.parametrize("keep", ["array", "view", "memoryview", "torch"])
def test_memory_still_referred_to_is_never_reused(inputs, keep):
    a, b = inputs
    first = _cos(a, b)
    snapshot = first.copy()
    if keep == "array":
        held = first
    elif keep == "view":
        held = first[3:, 5:]
        snapshot = snapshot[3:, 5:]
    elif keep == "memoryview":
        held = memoryview(first)
    else:
        torch = pytest.importorskip("torch")
        held = torch.from_numpy(first)
    address = first.ctypes.data
    del first
    other = _cos(b, a)  # a different result of the same size
    assert other.ctypes.data != address
    np.testing.assert_array_equal(np.asarray(held), snapshot)
    np.testing.assert_allclose(other, _expected(b, a), atol=1e-5)


def test_results_of_other_sizes_do_not_share(inputs):
    a, b = inputs
    first = _cos(a, b)
    address = first.ctypes.data
    del first
    other = _cos(a[:-7], b)
    assert other.ctypes.data != address
    np.testing.assert_allclose(other, _expected(a[:-7], b), atol=1e-5)


def test_empty_cache_releases_free_buffers_only(inputs):
    a, b = inputs
    fastsim.empty_cache()
    alive = _cos(a, b)
    dropped = _cos(b, a)
    del dropped
    released = fastsim.empty_cache()
    assert released >= N * N * 4
    assert _validation.RESULT_CACHE.held >= N * N * 4  # `alive` is still held
    np.testing.assert_allclose(alive, _expected(a, b), atol=1e-5)
    del alive
    fastsim.empty_cache()
    assert _validation.RESULT_CACHE.held == 0


def test_the_cache_holds_no_more_than_its_limit():
    cache = _ResultCache(limit=10 * MIB)
    kept = [cache.take(4 * MIB) for _ in range(5)]  # the first two fit the limit, the rest are plain arrays
    assert cache.held == 8 * MIB
    assert len({k.ctypes.data for k in kept}) == 5
    del kept
    again = cache.take(4 * MIB)
    assert cache.held == 8 * MIB
    bigger = cache.take(6 * MIB)  # evicts one free 4 MiB buffer to make room
    assert cache.held == 10 * MIB
    del again, bigger
    assert cache.clear() == 10 * MIB
    assert cache.held == 0


def test_a_zero_limit_keeps_nothing():
    cache = _ResultCache(limit=0)
    first = cache.take(4 * MIB)
    del first
    assert cache.held == 0
    second = cache.take(4 * MIB)
    assert second.nbytes == 4 * MIB
    del second
    assert cache.clear() == 0


def test_threads_never_get_each_others_live_results(inputs):
    a, b = inputs
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((N, 16)).astype(np.float32)
        want = _expected(x, b)
        results = []
        for i in range(6):
            results.append(_cos(x, b))
            if i % 2:
                results.pop(0)  # drop one, keep one alive
            for r in results:
                if not np.allclose(r, want, atol=1e-5):
                    errors.append(seed)
                    return

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("value", ["-1", "lots", "1.5"])
def test_a_bad_limit_variable_is_an_error_naming_it(value):
    env = dict(os.environ, FASTSIM_RESULT_CACHE_BYTES=value)
    proc = subprocess.run([sys.executable, "-c", "import fastsim"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "FASTSIM_RESULT_CACHE_BYTES" in proc.stderr


def test_the_limit_variable_sets_the_limit():
    env = dict(os.environ, FASTSIM_RESULT_CACHE_BYTES="0")
    code = "from fastsim import _validation as v; print(v.RESULT_CACHE.limit)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "0"
