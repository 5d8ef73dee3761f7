"""``python -m fastsim bench --ops mining``: the corpus self-join and top-k of every row against FAISS and NumPy.

What this module owns: the mining benchmark.  It may call fastsim's public
functions, faiss (when installed) and NumPy; the CLI (``cli.py``) calls
:func:`run`.

Workload: ``N`` x 256 float32 unit vectors with ``N / 200`` planted
near-duplicates (cosine about 0.95-0.99); random 256-d unit vectors score
about +-0.06 with each other, so at threshold 0.9 the pairs are the planted
ones.  Two tasks, each library in its default allocating form:

* ``self-join@0.9``: every pair with cosine >= 0.9.  fastsim:
  ``range_search(x, threshold=0.9)`` (pairs i < j).  FAISS:
  ``IndexFlatIP`` built and ``range_search(x, 0.9)`` (FAISS has no
  self-join form: every ordered pair and the diagonal).  NumPy: blocks of
  rows times the rows from the block on (``x[r0:r1] @ x[r0:].T``, the upper
  triangle), ``np.nonzero(block >= 0.9)``, blocks of about 256 MiB.
* ``top-10``: the 10 nearest other rows of every row.  fastsim:
  ``top_k(x, x, 10, exclude_self=True)``; FAISS: ``search(x, 11)`` (the
  row itself comes back first); NumPy: row blocks times ``x.T``, the
  diagonal masked, ``np.argpartition`` then a sort of the 10.

Sizes: 50 000 rows by default; ``--full`` runs 200 000 rows with every peer
and then 1 000 000 rows with fastsim alone (about an hour on two cores; the
peers would take over an hour per task there); ``--rows`` runs every peer at
the sizes given.

Timing: ``rounds`` interleaved rounds (every runner once per round, a pause
between turns so the previous pool's threads are idle), medians, ratios in
one process.  Peak memory: the resident set sampled every 2 ms during each
call, minus the resident set before it (the corpus is already there).
Agreement: each runner's pairs (or neighbour sets) against fastsim's; a
difference on a pair within 1e-5 of the threshold is counted separately
(the rounding band).
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np

import fastsim

DIM = 256
THRESHOLD = 0.9
K = 10
# NumPy blocks of about this many float32 scores (256 MiB)
_NUMPY_BLOCK_SCORES = 1 << 26


def planted_corpus(n: int, d: int = DIM, seed: int = 0) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dups = max(1, n // 200)
    src = rng.choice(n, size=dups, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), size=dups, replace=False)
    noise = rng.standard_normal((dups, d), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    angle = rng.uniform(0.05, 0.4, size=(dups, 1)).astype(np.float32)  # cos 0.92 .. 0.999
    x[dst] = np.cos(angle) * x[src] + np.sin(angle) * noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x), dups


# --------------------------------------------------------------------------- runners


def fastsim_self_join(x):
    return fastsim.range_search(x, threshold=THRESHOLD, progress=False)


def faiss_self_join(x):
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.range_search(x, THRESHOLD)


def numpy_self_join(x):
    n = x.shape[0]
    rows = max(1, _NUMPY_BLOCK_SCORES // n)
    out_i, out_j, out_s = [], [], []
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        block = x[r0:r1] @ x[r0:].T
        i, j = np.nonzero(block >= THRESHOLD)
        keep = j > i  # the block's column 0 is row r0: j > i is the upper triangle
        i, j = i[keep], j[keep]
        out_s.append(block[i, j])
        out_i.append(i + r0)
        out_j.append(j + r0)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def fastsim_top_k(x):
    return fastsim.top_k(x, x, K, exclude_self=True)


def faiss_top_k(x):
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(x, K + 1)


def numpy_top_k(x):
    n = x.shape[0]
    rows = max(1, _NUMPY_BLOCK_SCORES // n)
    scores = np.empty((n, K), np.float32)
    idx = np.empty((n, K), np.int64)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        block = x[r0:r1] @ x.T
        block[np.arange(r1 - r0), np.arange(r0, r1)] = -np.inf
        part = np.argpartition(-block, K, axis=1)[:, :K]
        ps = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        scores[r0:r1] = np.take_along_axis(ps, order, axis=1)
        idx[r0:r1] = np.take_along_axis(part, order, axis=1)
    return scores, idx


# --------------------------------------------------------------------------- results as comparable sets


def _pairs_of(name, result):
    """The set of pairs (i < j) of a self-join result."""
    if name == "fastsim":
        coo = result.tocoo()
        i, j = coo.row, coo.col
    elif name == "faiss":
        lims, _, I = result
        i = np.repeat(np.arange(lims.size - 1), np.diff(lims.astype(np.int64)))
        j = I
    else:
        i, j, _ = result
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    keep = i != j
    a, b = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
    return set(zip(a.tolist(), b.tolist()))


def _neighbours_of(name, result):
    if name == "faiss":
        _, I = result
        n = I.shape[0]
        out = np.empty((n, K), np.int64)
        for r in range(n):  # drop the row itself (usually first), keep K
            row = I[r][I[r] != r][:K]
            out[r, : row.size] = row
        return out
    return result[1]


# --------------------------------------------------------------------------- measuring


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


class _PeakRSS:
    """The peak resident set during a block, sampled every 2 ms, minus the resident set before it."""

    def __enter__(self):
        self.base = _rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.extra = self.peak - self.base


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


# Peers run up to this many rows in --full: at 1 000 000 rows each FAISS and
# NumPy task takes over an hour on two cores (both compute the whole n x n
# product; the time grows as n^2 from the 200 000-row figures).
PEER_ROWS_FULL = 200_000


def _tasks(peers: bool = True):
    tasks = {"self-join@0.9": {"fastsim": fastsim_self_join}, "top-10": {"fastsim": fastsim_top_k}}
    if peers:
        tasks["self-join@0.9"]["numpy"] = numpy_self_join
        tasks["top-10"]["numpy"] = numpy_top_k
    if peers and _faiss_available():
        tasks["self-join@0.9"]["faiss"] = faiss_self_join
        tasks["top-10"]["faiss"] = faiss_top_k
    return tasks


def bench_rows(n: int, rounds: int, out, settle: float = 0.5, peers: bool = True) -> list[dict]:
    x, dups = planted_corpus(n)
    print(f"\n{n} x {DIM} float32 unit vectors, {dups} planted duplicates; "
          f"corpus {x.nbytes / 2**20:.0f} MiB; {rounds} interleaved rounds"
          + ("" if peers else f"; fastsim only (peers up to {PEER_ROWS_FULL} rows)"), file=out, flush=True)
    rows = []
    for task, runners in _tasks(peers).items():
        small = x[:2000]
        for fn in runners.values():  # warm-up: thread pools, JIT, page faults of the code
            fn(small)
        times = {name: [] for name in runners}
        extra = {name: 0 for name in runners}
        results = {}
        for _ in range(rounds):
            for name, fn in runners.items():
                time.sleep(settle)
                with _PeakRSS() as mem:
                    t0 = time.perf_counter()
                    res = fn(x)
                    times[name].append(time.perf_counter() - t0)
                extra[name] = max(extra[name], mem.extra)
                results[name] = res
                del res
        med = {name: float(np.median(t)) for name, t in times.items()}
        if task.startswith("self-join"):
            ref = _pairs_of("fastsim", results["fastsim"])
            agree = {name: len(ref.symmetric_difference(_pairs_of(name, r))) for name, r in results.items()}
            found = len(ref)
            flops = float(n) * n * DIM  # the upper triangle: n^2 / 2 dot products of 2 d flops
        else:
            ref = _neighbours_of("fastsim", results["fastsim"])
            agree = {}
            for name, r in results.items():
                got = _neighbours_of(name, r)
                agree[name] = int(sum(len(set(a) ^ set(b)) for a, b in zip(ref.tolist(), got.tolist())))
            found = int(ref.size)
            flops = 2.0 * n * n * DIM
        print(f"{task:<14} {'runner':<8} {'median':>9} {'GFLOP/s':>8} {'vs fastsim':>10} {'peak extra':>11} "
              f"{'differs':>8}   (rounds: {', '.join(f'{t:.1f}' for t in times['fastsim'])} s for fastsim)",
              file=out)
        for name in runners:
            gf = flops / med[name] * 1e-9 if name != "faiss" else 2.0 * n * n * DIM / med[name] * 1e-9
            print(f"{'':<14} {name:<8} {med[name]:8.2f}s {gf:8.1f} {med[name] / med['fastsim']:9.2f}x "
                  f"{extra[name] / 2**20:8.0f} MiB {agree[name]:8d}", file=out, flush=True)
            rows.append(dict(task=task, rows=n, runner=name, median_s=med[name], times_s=times[name],
                             ratio_to_fastsim=med[name] / med["fastsim"], peak_extra_bytes=extra[name],
                             differs_from_fastsim=agree[name], found=found, corpus_bytes=x.nbytes))
        results.clear()
    return rows


def run(args, out) -> list[dict]:
    sizes = args.rows or ([200_000, 1_000_000] if args.full else [50_000])
    # explicit --rows runs every peer at every size; --full keeps them to PEER_ROWS_FULL rows
    peer_limit = PEER_ROWS_FULL if (args.full and not args.rows) else None
    print(f"mining: fastsim {fastsim.__version__} simd={fastsim.info().get('simd_level')} "
          f"threads={fastsim.get_num_threads()} faiss={'yes' if _faiss_available() else 'not installed'}", file=out)
    rows = []
    for n in sizes:
        rows.extend(bench_rows(n, args.rounds, out, peers=peer_limit is None or n <= peer_limit))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": dict(info=fastsim.info()), "results": rows}, fh, indent=1, default=float)
        print(f"saved {args.json}", file=out)
    return rows
