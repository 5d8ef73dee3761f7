"""fastsim.dask on a two-process distributed.LocalCluster: the same answers as the single-machine calls.

One cluster serves the whole module (starting worker processes takes a few
seconds); the test that kills a worker runs last.  The worker processes
inherit tools/sanitize.sh's ASan preload and run these tests under it too.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import fastsim

da = pytest.importorskip("dask.array", reason="dask not installed")
distributed = pytest.importorskip("distributed", reason="distributed not installed")

import fastsim.dask as fdask  # noqa: E402

from .test_mining import planted  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return planted(1500, 24, 500, rng, noise=0.4)


def _equal(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_range_search_self_join_identical(client, data):
    want = fastsim.range_search(data, threshold=0.8, output="arrays")
    for chunks in (300, 512, 1500, 97):
        got = fdask.range_search(da.from_array(data, chunks=(chunks, -1)), threshold=0.8, output="arrays")
        _equal(want, got)
    csr = fdask.range_search(da.from_array(data, chunks=(400, -1)), threshold=0.8)
    assert csr.shape == (1500, 1500) and csr.nnz == want[1].size


def test_range_search_queries_corpus_identical(client, data):
    q = data[:333]
    for kw in (dict(), dict(max_per_row=2), dict(exclude_self=True)):
        c = data[:333] if kw.get("exclude_self") else data
        want = fastsim.range_search(q, c, 0.6, output="arrays", **kw)
        got = fdask.range_search(da.from_array(q, chunks=(100, -1)), da.from_array(c, chunks=(250, -1)), 0.6,
                                 output="arrays", **kw)
        _equal(want, got)


def test_top_k_identical(client, data):
    x = da.from_array(data, chunks=(250, -1))
    want = fastsim.top_k(data, data, 7, exclude_self=True)
    _equal(want, fdask.top_k(x, k=7, exclude_self=True))
    q = data[:401]
    want = fastsim.top_k(q, data, 5)
    # query chunks that do not start on micro-tile boundaries are realigned
    _equal(want, fdask.top_k(da.from_array(q, chunks=(101, -1)), da.from_array(data, chunks=(333, -1)), 5))


def test_duplicate_groups_identical(client, data):
    x = da.from_array(data, chunks=(200, -1))
    for method in ("components", "community"):
        want = fastsim.duplicate_groups(data, 0.85, method=method)
        got = fdask.duplicate_groups(x, 0.85, method=method)
        np.testing.assert_array_equal(want, got)


def test_max_pairs_and_bad_input(client):
    ones = da.ones((600, 4), chunks=(200, -1))
    with pytest.raises(fastsim.mining.TooManyPairsError, match="max_pairs=1000"):
        fdask.range_search(ones, threshold=0.5, max_pairs=1000)
    with pytest.raises(ValueError, match=r"x is chunked along the columns.*rechunk"):
        fdask.duplicate_groups(da.ones((10, 4), chunks=(5, 2)), 0.5)
    with pytest.raises(ValueError, match="queries is chunked along the columns"):
        fdask.range_search(da.ones((10, 4), chunks=(5, 2)), threshold=0.5)
    with pytest.raises(ValueError, match="corpus is chunked along the columns"):
        fdask.top_k(da.ones((10, 4), chunks=(5, 4)), da.ones((10, 4), chunks=(5, 1)), k=2)
    with pytest.raises(TypeError, match="queries must be a dask.array.Array"):
        fdask.range_search(np.ones((3, 3)), threshold=0.5)
    with pytest.raises(ValueError, match="threshold must lie within"):
        fdask.range_search(ones, threshold=2.0)
    with pytest.raises(ValueError, match="max_per_row must be >= 1"):
        fdask.range_search(ones, threshold=0.5, max_per_row=0)


def test_worker_killed_mid_join(client, data):
    want = fastsim.range_search(data, threshold=0.8, output="arrays")
    x = da.from_array(data, chunks=(250, -1))  # 6 blocks: 21 block-pair tasks
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed = threading.Event()

    def kill():
        os.kill(victim, signal.SIGKILL)
        killed.set()

    # each task sleeps 0.25 s: 21 tasks on 2 workers take about 2.6 s, the kill lands after 1 s
    timer = threading.Timer(1.0, kill)
    t0 = time.perf_counter()
    timer.start()
    got = fdask.range_search(x, threshold=0.8, output="arrays", _delay=0.25)
    elapsed = time.perf_counter() - t0
    timer.join()
    assert killed.is_set() and elapsed > 1.0, "the worker was not killed during the join"
    _equal(want, got)
    # the nanny restarted the killed worker: a fresh process
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.run(os.getpid).values()
