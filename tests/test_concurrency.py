"""Many Python threads calling the compiled kernels at once.

The cpp kernels release the GIL and the Numba kernels are compiled with
``nogil=True``, so Python threads really run them in parallel.  The README
(section "Threads and determinism") promises:

* concurrent calls give exactly (bitwise) the results of the same calls made
  one after the other: kernels keep no shared mutable state between calls, and
  layer and encoder objects may be shared between threads;
* ``set_num_threads`` may be called while other threads run kernels; cpp
  results do not change at all (they are bitwise independent of the thread
  count), Numba results stay within the dtype's tolerance.
"""

from __future__ import annotations

import os
import random
import threading
import time

import numpy as np
import pytest

import fastsim

from .test_determinism import _X, assert_bitwise, assert_close_parts, flatten

COMPILED = [pytest.param(b, id=b, marks=[] if b in fastsim.available_backends() else
                         [pytest.mark.skip(reason=f"{b} backend not available here")]) for b in ("cpp", "numba")]
N_THREADS = 8
ROUNDS = 3

_LAYER = fastsim.LSTM(24, 64, num_layers=2, bidirectional=True, seed=5)


# the operations each thread runs (on float32 inputs), in a per-thread random order
OPS = {
    "cosine_similarity_matrix": lambda x, be: fastsim.cosine_similarity_matrix(x["a"], x["b"], backend=be),
    "modified_triplet_loss": lambda x, be: fastsim.modified_triplet_loss(
        x["v1"], x["v2"], 0.25, return_parts=True, backend=be),
    "modified_triplet_loss_grad": lambda x, be: fastsim.modified_triplet_loss_grad(x["v1"], x["v2"], 0.25,
                                                                                   backend=be),
    "top_k": lambda x, be: fastsim.top_k(x["q"], x["c"], 10, backend=be),
    "lstm_forward": lambda x, be: fastsim.lstm_forward(x["seq"], *x["lstm"], lengths=x["lengths"], backend=be),
    "LSTM (shared layer)": lambda x, be: _LAYER(x["seq"], x["lengths"], backend=be),
}


def _serial(backend):
    x = _X[np.dtype(np.float32)]
    return {name: flatten(fn(x, backend)) for name, fn in OPS.items()}


def _run_threads(target, n):
    """Start n threads running target(index) together; re-raise the first failure."""
    errors = []
    barrier = threading.Barrier(n)

    def body(index):
        try:
            barrier.wait()
            target(index)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture
def restore_threads():
    before = fastsim.get_num_threads()
    yield
    fastsim.set_num_threads(before)


@pytest.mark.parametrize("backend", COMPILED)
def test_threads_give_the_serial_results_bitwise(backend, restore_threads):
    fastsim.set_num_threads(2)
    want = _serial(backend)
    x = _X[np.dtype(np.float32)]
    got = [[] for _ in range(N_THREADS)]

    def work(index):
        order = list(OPS)
        random.Random(index).shuffle(order)
        for _ in range(ROUNDS):
            for name in order:
                got[index].append((name, flatten(OPS[name](x, backend))))

    _run_threads(work, N_THREADS)
    for index, results in enumerate(got):
        assert len(results) == ROUNDS * len(OPS)
        for name, parts in results:
            assert_bitwise(parts, want[name], f"{name} [{backend}] in thread {index}")


@pytest.mark.parametrize("backend", COMPILED)
def test_set_num_threads_while_others_run(backend, restore_threads):
    fastsim.set_num_threads(1)
    want = _serial(backend)
    x = _X[np.dtype(np.float32)]
    done = threading.Event()
    toggles = []

    def toggler():
        n = 0
        while not done.is_set():
            fastsim.set_num_threads(1 + n % 2)
            n += 1
            time.sleep(0.0005)
        toggles.append(n)

    got = [[] for _ in range(N_THREADS)]

    def work(index):
        for _ in range(2):
            for name in OPS:
                got[index].append((name, flatten(OPS[name](x, backend))))

    t = threading.Thread(target=toggler)
    t.start()
    try:
        _run_threads(work, N_THREADS)
    finally:
        done.set()
        t.join()
    assert toggles[0] > 2, "the thread count did not change while the kernels ran"
    for index, results in enumerate(got):
        for name, parts in results:
            what = f"{name} [{backend}] in thread {index}, thread count toggled"
            if backend == "cpp":
                assert_bitwise(parts, want[name], what)
            else:
                assert_close_parts(parts, want[name], np.float32, what)


@pytest.mark.parametrize("backend", COMPILED)
def test_shared_encoder_from_many_threads(backend, restore_threads):
    """One fresh SiameseEncoder used by every thread at once from its first call on.

    With the cpp backend the encoder's first layer projects the whole embedding
    into a table on its first large call (the projection runs without the GIL)
    and then reads rows of it: threads arriving meanwhile must never read a
    partly written table.
    """
    fastsim.set_num_threads(1)
    V = 20000
    ids = np.random.default_rng(4).integers(0, V, size=(1000, 12))
    reference = fastsim.SiameseEncoder.random(V, 24, 32, cell="LSTM", pooling="mean", seed=9)
    want = reference.encode(ids, backend=backend)
    assert_bitwise([reference.encode(ids, backend=backend)], [want], "encoder, second call")
    for trial in range(3):
        enc = fastsim.SiameseEncoder.random(V, 24, 32, cell="LSTM", pooling="mean", seed=9)
        got = [None] * N_THREADS

        def work(index, enc=enc, got=got):
            got[index] = [enc.encode(ids, backend=backend) for _ in range(2)]

        _run_threads(work, N_THREADS)
        for index, outs in enumerate(got):
            for call, g in enumerate(outs):
                assert_bitwise([g], [want], f"encoder [{backend}] trial {trial}, thread {index}, call {call}")


@pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="a timing test: under AddressSanitizer (tools/sanitize.sh) every allocation and the interpreter's "
    "own work slow down unevenly, so stalls measure the instrumentation, not the GIL; the normal run checks it",
)
@pytest.mark.parametrize("backend", COMPILED)
def test_kernels_release_the_gil(backend, restore_threads):
    """While one thread runs long kernel calls, a Python loop in another thread keeps running."""
    fastsim.set_num_threads(1)
    a = np.random.default_rng(0).standard_normal((2500, 256)).astype(np.float32)
    fastsim.cosine_similarity_matrix(a[:10], backend=backend)  # compiled and warm
    start = time.perf_counter()
    fastsim.cosine_similarity_matrix(a, backend=backend)
    alone = time.perf_counter() - start
    if alone < 0.02:
        pytest.skip(f"one call takes {alone * 1e3:.1f} ms here: too short to tell a held GIL from scheduling")

    finished = threading.Event()

    def kernel():
        for _ in range(4):
            fastsim.cosine_similarity_matrix(a, backend=backend)
        finished.set()

    t = threading.Thread(target=kernel)
    longest_gap = 0.0
    t.start()
    last = time.perf_counter()
    while not finished.is_set():
        now = time.perf_counter()
        longest_gap = max(longest_gap, now - last)
        last = now
    t.join()
    # A kernel holding the GIL would stall this loop for a whole call; released,
    # the loop only waits for the OS scheduler and the GIL's switch interval.
    assert longest_gap < 0.5 * alone, (
        f"the Python thread stalled {longest_gap * 1e3:.1f} ms; one kernel call takes {alone * 1e3:.1f} ms"
    )
