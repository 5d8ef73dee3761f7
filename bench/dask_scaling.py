"""Time and traffic of the Dask self-join as the corpus and the number of workers grow.

    python bench/dask_scaling.py --rows 20000,40000,80000 --workers 1,2 --chunk 10000

For each corpus size and worker count: a ``distributed.LocalCluster`` of that
many worker processes (the machine's cores split among them), the corpus
generated on the workers block by block (so no data travels in the graph),
then ``fastsim.dask.range_search(x, threshold=0.9)`` timed once after a
warm-up join of a small corpus.  Traffic is the sum over workers of
``transfer_outgoing_bytes_total`` (bytes one worker sent another for a task)
measured before and after the join; the result travels to the client
separately (it is small here: random 256-d vectors have no pair at 0.9).

Also prints the single-machine ``fastsim.range_search`` on the same rows
(computed in this process) for the overhead of the task layer.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _block(seed, rows, d):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_corpus(n, d, chunk):
    import dask
    import dask.array as da

    blocks = []
    for b, r0 in enumerate(range(0, n, chunk)):
        rows = min(chunk, n - r0)
        blocks.append(da.from_delayed(dask.delayed(_block)(b, rows, d), shape=(rows, d), dtype=np.float32))
    return da.concatenate(blocks, axis=0)


def _sent(client) -> int:
    return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=lambda s: [int(v) for v in s.split(",")], default=[20000, 40000, 80000])
    parser.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    parser.add_argument("--chunk", type=int, default=10000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--threshold", type=float, default=0.9)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    import fastsim
    import fastsim.dask

    cores = os.cpu_count() or 1
    print(f"fastsim {fastsim.__version__} simd={fastsim.info()['simd_level']} cores={cores} chunk={args.chunk} "
          f"d={args.d} threshold={args.threshold}")
    print(f"{'rows':>8} {'blocks':>6} {'tasks':>6} {'workers':>7} {'threads':>7} {'dask s':>8} {'local s':>8} "
          f"{'traffic MiB':>11} {'corpus MiB':>10} {'traffic/corpus':>14}")
    for n in args.rows:
        blocks = -(-n // args.chunk)
        tasks = blocks * (blocks + 1) // 2
        local = fastsim.range_search(np.concatenate([_block(b, min(args.chunk, n - r0), args.d)
                                                     for b, r0 in enumerate(range(0, n, args.chunk))]),
                                     threshold=args.threshold)
        t0 = time.perf_counter()
        local = fastsim.range_search(np.concatenate([_block(b, min(args.chunk, n - r0), args.d)
                                                     for b, r0 in enumerate(range(0, n, args.chunk))]),
                                     threshold=args.threshold)
        t_local = time.perf_counter() - t0
        for w in args.workers:
            threads = max(1, cores // w)
            env = {"FASTSIM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
            with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None,
                              silence_logs=40, env=env) as cluster, Client(cluster) as client:
                fastsim.dask.range_search(make_corpus(2 * args.chunk, args.d, args.chunk), threshold=0.99)
                x = make_corpus(n, args.d, args.chunk)
                before = _sent(client)
                t0 = time.perf_counter()
                pairs = fastsim.dask.range_search(x, threshold=args.threshold)
                t = time.perf_counter() - t0
                traffic = _sent(client) - before
            assert (pairs != local).nnz == 0
            corpus = n * args.d * 4
            print(f"{n:8d} {blocks:6d} {tasks:6d} {w:7d} {threads:7d} {t:8.2f} {t_local:8.2f} "
                  f"{traffic / 2**20:11.1f} {corpus / 2**20:10.1f} {traffic / corpus:14.2f}", flush=True)


if __name__ == "__main__":
    main()
