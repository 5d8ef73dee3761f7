"""Peak memory of exact top-k retrieval against the full similarity matrix it avoids.

    python bench/topk_memory.py --queries 1024 --corpus 100000 --d 256 --k 10 --backend cpp
    python bench/topk_memory.py --backend numpy-full   # the baseline: matrix + argpartition

Reports the peak resident-set growth of this process during one call, minus
the (scores, indices) it returns, next to the size of the queries x corpus
matrix.  ``numpy-full`` is the bench's baseline (normalize, one matmul,
``argpartition`` over the whole matrix).  Run each backend in a fresh process:
the peak RSS counter (ru_maxrss) only ever grows.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastsim
from fastsim._bench.common import peak_rss_bytes
from fastsim._bench.pipeline import numpy_full_topk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--corpus", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--backend", default="cpp", choices=["cpp", "numba", "numpy", "numpy-full"])
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    dt = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((args.queries, args.d), dtype=dt)
    corpus = rng.standard_normal((args.corpus, args.d), dtype=dt)

    def run(q, c):
        if args.backend == "numpy-full":
            return numpy_full_topk(q, c, args.k)
        return fastsim.top_k(q, c, args.k, backend=args.backend)

    run(queries[:4], corpus[:1000])  # load and compile outside the measurement
    before = peak_rss_bytes()
    t0 = time.perf_counter()
    scores, indices = run(queries, corpus)
    elapsed = time.perf_counter() - t0
    growth = peak_rss_bytes() - before
    outputs = np.asarray(scores).nbytes + np.asarray(indices).nbytes
    matrix = args.queries * args.corpus * dt.itemsize
    mib = 1 << 20
    print(f"fastsim {fastsim.__version__} backend={args.backend} queries={args.queries} corpus={args.corpus} "
          f"d={args.d} k={args.k} {dt.name} threads={fastsim.get_num_threads()}")
    print(f"time {elapsed:.2f} s; peak RSS growth {growth / mib:.1f} MiB, of which results {outputs / mib:.2f} MiB: "
          f"extra {(growth - outputs) / mib:.1f} MiB (the similarity matrix would be {matrix / mib:.0f} MiB)")


if __name__ == "__main__":
    main()
