"""fastsim beyond one machine: top-k, range search and duplicate groups over Dask arrays.

What this module owns: the blockwise Dask versions of :func:`fastsim.top_k`,
:func:`fastsim.range_search` and :func:`fastsim.duplicate_groups`.  What it may
call: the single-machine block kernels (:func:`fastsim.top_k`,
``fastsim.mining._block_pair``, ``_merge_pieces``), SciPy and Dask.  Dask is
imported inside the functions, so ``import fastsim`` never needs it.

How a join runs.  The inputs are ``dask.array`` arrays chunked by rows only
(one chunk along the columns).  Every pair of row blocks ``(I, J)`` (``I <= J``
for a self-join) becomes one task that runs the fastsim kernel on a worker;
the kernels release the GIL, so a worker's threads use every core.  Per-block
results are reduced on the cluster: per query block, a merge of the ``(I, J)``
pieces (top-k: the candidate lists merged into the best k; range: the CSR rows
concatenated and put in score order; groups: spanning forests of the pair
edges merged in a tree, a union-find that never holds more than a forest).
No task sees more than two row blocks, so the traffic is that of the block
pairs, never an all-to-all copy of the corpus (a ``tensordot`` of the corpus
with itself would be).

Results equal the single-machine call's, bit for bit with the ``cpp`` backend:
its range kernel sums every row in one order wherever a block starts, and the
query blocks of :func:`top_k` are rechunked (when needed) to start on
micro-tile boundaries, where the top-k kernel's sums are the same as in one
call.

Use with any scheduler: the default (threads), or a ``distributed.Client``::

    from distributed import Client
    client = Client("tcp://scheduler:8786")
    x = dask.array.from_zarr("embeddings.zarr").rechunk({0: 50_000, 1: -1})
    pairs = fastsim.dask.range_search(x, threshold=0.9)
"""

from __future__ import annotations

import time

import numpy as np

from . import _backend
from . import mining as _mining
from ._validation import check_bool, check_positive_int

__all__ = ["top_k", "range_search", "duplicate_groups"]


# --------------------------------------------------------------------------- checks


def _check_dask_rows(x, name: str):
    """A 2-D dask array chunked along the rows only."""
    import dask.array as da

    if not isinstance(x, da.Array):
        msg = (f"{name} must be a dask.array.Array (the functions of fastsim itself take NumPy arrays); "
               f"got {type(x).__name__}")
        raise TypeError(msg)
    if x.ndim != 2:
        msg = f"{name} must be 2-D (rows, d); got a dask array of shape {x.shape}"
        raise ValueError(msg)
    if len(x.chunks[1]) != 1:
        msg = (f"{name} is chunked along the columns (chunks[1] = {x.chunks[1]}); fastsim.dask needs whole rows "
               f"in each block: rechunk with {name}.rechunk({{1: -1}})")
        raise ValueError(msg)
    if any(np.isnan(c) for c in x.chunks[0]):
        msg = f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first"
        raise ValueError(msg)
    if x.dtype.kind not in "fiub":
        msg = f"{name} must hold real numbers; got dtype {x.dtype}"
        raise TypeError(msg)
    return x


def _offsets(chunks) -> list[int]:
    return [int(v) for v in np.concatenate(([0], np.cumsum(chunks)))]


def _result_dtype(*arrays) -> np.dtype:
    """float64 if any input is float64 (or wider), else float32: the rule of fastsim's own functions."""
    wide = any(a.dtype.kind == "f" and a.dtype.itemsize >= 8 for a in arrays)
    return np.dtype(np.float64) if wide else np.dtype(np.float32)


def _blocks(x):
    return list(x.to_delayed().ravel())


def _as_rows(block, dtype):
    a = np.ascontiguousarray(block, dtype=dtype)
    if a.shape[1] == 0:
        a = np.zeros((a.shape[0], 1), dtype)
    return a if a.flags.aligned else a.copy()


# --------------------------------------------------------------------------- tasks (run on the workers)


def _range_task(qb, cb, thr, mode, r0, c0, max_per_row, max_hits, be, dtype, delay):
    if delay:
        time.sleep(delay)
    q, c = _as_rows(qb, dtype), _as_rows(cb, dtype)
    if mode == 2 and c0 + c.shape[0] <= r0 + 1:
        return np.zeros(q.shape[0] + 1, np.int64), np.empty(0, np.int64), np.empty(0, dtype), True
    return _mining._block_pair(be, q, c, thr, mode, r0, c0, max_per_row, max_hits)


def _merge_range_task(m, max_per_row, *pieces):
    complete = all(p[3] for p in pieces)
    merged = _mining._merge_pieces([p[:3] for p in pieces], m, max_per_row)
    return merged[0], merged[1], merged[2], complete


def _topk_task(qb, cb, k, c0, exclude_self, be, dtype, delay):
    if delay:
        time.sleep(delay)
    from .topk import top_k as _top_k

    q, c = _as_rows(qb, dtype), _as_rows(cb, dtype)
    kk = min(k, c.shape[0] - (1 if exclude_self else 0))
    if kk < 1:
        return np.empty((q.shape[0], 0), dtype), np.empty((q.shape[0], 0), np.int64)
    s, i = _top_k(q, c, kk, exclude_self=exclude_self, backend=be)
    return s, i + c0


def _merge_topk_task(k, *pieces):
    s = np.concatenate([p[0] for p in pieces], axis=1)
    i = np.concatenate([p[1] for p in pieces], axis=1)
    # the top-k order: descending score, NaN after every number, ties to the lower index
    key = np.where(np.isnan(s), np.inf, -s.astype(np.float64))
    order = np.lexsort((i, key), axis=1)[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def _forest_task(piece, r0):
    """A spanning forest of a piece's pair edges: (child, root) for every non-root node of each component."""
    indptr, indices = piece[0], piece[1]
    rows = np.repeat(np.arange(indptr.size - 1, dtype=np.int64) + r0, np.diff(indptr))
    return _spanning_forest(rows, np.asarray(indices, np.int64)), bool(piece[3])


def _spanning_forest(a, b):
    if a.size == 0:
        return np.empty((0, 2), np.int64)
    import scipy.sparse
    from scipy.sparse.csgraph import connected_components

    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    k = nodes.size
    g = scipy.sparse.coo_matrix((np.ones(a.size, np.int8), (inv[:a.size], inv[a.size:])), shape=(k, k))
    _, lab = connected_components(g, directed=False)
    # root of each component: its smallest node (nodes are sorted, so the first of each label)
    root_pos = np.full(lab.max() + 1, k, np.int64)
    np.minimum.at(root_pos, lab, np.arange(k))
    roots = nodes[root_pos[lab]]
    keep = roots != nodes
    return np.stack([nodes[keep], roots[keep]], axis=1)


def _merge_forests_task(*forests):
    edges = np.concatenate([f[0] for f in forests]) if forests else np.empty((0, 2), np.int64)
    return _spanning_forest(edges[:, 0], edges[:, 1]), all(f[1] for f in forests)


# --------------------------------------------------------------------------- public API


def _compute(*objs):
    import dask

    return dask.compute(*objs)


def range_search(queries, corpus=None, threshold=None, *, exclude_self: bool = False, max_per_row=None,
                 max_pairs=None, output: str = "csr", backend: str = "auto", _delay: float = 0.0):
    """:func:`fastsim.range_search` over dask arrays chunked by rows; the same result.

    Each block pair ``(I, J)`` (``I <= J`` without ``corpus``) is one task
    running the fastsim kernel; each query block's pieces are merged on the
    cluster; the client receives the merged rows.  ``max_pairs`` bounds the
    pairs of every task and of the whole result (:class:`fastsim.mining.TooManyPairsError`).
    """
    import dask

    from ._validation import check_choice

    output = check_choice(output, "output", ("csr", "arrays"))
    threshold = _mining.check_threshold(threshold)
    exclude_self = check_bool(exclude_self, "exclude_self")
    max_per_row = _mining._check_optional_count(max_per_row, "max_per_row")
    max_pairs = _mining._check_optional_count(max_pairs, "max_pairs")
    be = _backend.resolve(backend, _mining._SUPPORTED)
    q = _check_dask_rows(queries, "queries")
    self_join = corpus is None
    c = q if self_join else _check_dask_rows(corpus, "corpus")
    if q.shape[1] != c.shape[1]:
        msg = f"queries and corpus must have the same number of columns (d); got {q.shape[1]} and {c.shape[1]}"
        raise ValueError(msg)
    if exclude_self and not self_join and q.shape[0] != c.shape[0]:
        msg = (f"exclude_self=True needs queries and corpus to be the same rows (m == n); "
               f"got {q.shape[0]} queries and {c.shape[0]} corpus rows")
        raise ValueError(msg)
    dt = _result_dtype(q, c)
    thr = _mining._round_up(threshold, dt)
    mode = 2 if self_join else (1 if exclude_self else 0)
    limit, limit_by = _mining._pair_limit(max_pairs, None)
    qo, co = _offsets(q.chunks[0]), _offsets(c.chunks[0])
    qd, cd = _blocks(q), _blocks(c)
    range_task = dask.delayed(_range_task, pure=True)
    merge_task = dask.delayed(_merge_range_task, pure=True)
    merged = []
    for bi, qb in enumerate(qd):
        m_i = qo[bi + 1] - qo[bi]
        pieces = []
        for bj, cb in enumerate(cd):
            if self_join and bj < bi:
                continue
            pieces.append(range_task(qb, cb, thr, mode, qo[bi], co[bj], max_per_row, limit, be, dt, _delay))
        merged.append(merge_task(m_i, max_per_row, *pieces))
    results = _compute(*merged)
    total = 0
    for bi, res in enumerate(results):
        total += res[1].size
        if not res[3] or total > limit:
            plan = dict(limit=limit, limit_by=limit_by, threshold=threshold)
            raise _mining._too_many(plan, total, qo[bi], q.shape[0])
    blocks = [(qo[bi], r[0], r[1], r[2]) for bi, r in enumerate(results)]
    indptr, indices, scores = _mining._assemble(blocks, dt)
    if output == "arrays":
        return indptr, indices, scores
    import scipy.sparse

    return scipy.sparse.csr_matrix((scores, indices, indptr), shape=(q.shape[0], c.shape[0]))


def _tile_aligned_chunks(chunks, unit: int):
    """Row chunks whose starts are multiples of ``unit`` (the last chunk may be ragged)."""
    total = int(sum(chunks))
    if all(int(ch) % unit == 0 for ch in chunks[:-1]):
        return None
    out, start = [], 0
    for ch in chunks:
        end = min(total, -(-(start + int(ch)) // unit) * unit) if start + int(ch) < total else total
        if end > start:
            out.append(end - start)
            start = end
    return tuple(out)


def top_k(queries, corpus=None, k=10, *, exclude_self: bool = False, backend: str = "auto", _delay: float = 0.0):
    """:func:`fastsim.top_k` over dask arrays chunked by rows; the same ``(scores, indices)``.

    Without ``corpus`` the queries are searched against themselves.
    ``exclude_self`` needs the same rows on both sides (``corpus`` None or the
    queries themselves).  Each block pair is one task; each query block's
    candidate lists are merged into its best ``k`` on the cluster.
    """
    import dask

    k = check_positive_int(k, "k")
    exclude_self = check_bool(exclude_self, "exclude_self")
    be = _backend.resolve(backend, ("numpy", "numba", "cpp"))
    q = _check_dask_rows(queries, "queries")
    same = corpus is None or corpus is queries
    c = q if same else _check_dask_rows(corpus, "corpus")
    if exclude_self and not same:
        msg = "exclude_self=True needs the same rows on both sides: pass corpus=None (or the queries themselves)"
        raise ValueError(msg)
    if q.shape[1] != c.shape[1]:
        msg = f"queries and corpus must have the same number of columns (d); got {q.shape[1]} and {c.shape[1]}"
        raise ValueError(msg)
    dt = _result_dtype(q, c)
    core = _backend.core()
    if be == "cpp" and core is not None:
        # query blocks starting on micro-tile boundaries sum every row as one call does
        unit = core.micro_tile(dt == np.float64)[0]
        new = _tile_aligned_chunks(q.chunks[0], unit)
        if new is not None:
            q = q.rechunk({0: new})
            if same:
                c = q
    n = c.shape[0]
    kk = max(0, min(k, n - 1 if exclude_self else n))
    m = q.shape[0]
    if m == 0 or kk == 0:
        return np.empty((m, kk), dt), np.empty((m, kk), np.int64)
    co = _offsets(c.chunks[0])
    qd, cd = _blocks(q), _blocks(c)
    task = dask.delayed(_topk_task, pure=True)
    merge = dask.delayed(_merge_topk_task, pure=True)
    merged = []
    for bi, qb in enumerate(qd):
        pieces = [task(qb, cb, kk, co[bj], exclude_self and bi == bj, be, dt, _delay) for bj, cb in enumerate(cd)]
        merged.append(merge(kk, *pieces))
    results = _compute(*merged)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def duplicate_groups(x, threshold, *, method: str = "components", min_community_size: int = 2, max_pairs=None,
                     backend: str = "auto", _delay: float = 0.0):
    """:func:`fastsim.duplicate_groups` over a dask array chunked by rows; the same labels.

    ``"components"``: each block-pair task's pairs become a spanning forest on
    the worker, forests are merged in a tree on the cluster (a distributed
    union-find), and the client labels the final forest.  ``"community"``
    needs every row's whole neighbour list: the pairs are found on the cluster
    and the communities taken on the client.
    """
    import dask

    from ._validation import check_choice

    method = check_choice(method, "method", ("components", "community"))
    min_community_size = check_positive_int(min_community_size, "min_community_size")
    threshold = _mining.check_threshold(threshold)
    if method == "community":
        pairs = range_search(x, None, threshold, max_pairs=max_pairs, backend=backend, _delay=_delay)
        self_score = x.map_blocks(_self_score_block, drop_axis=1, dtype=np.float64).compute()
        return _mining._communities(pairs, self_score, min_community_size, threshold)
    max_pairs = _mining._check_optional_count(max_pairs, "max_pairs")
    be = _backend.resolve(backend, _mining._SUPPORTED)
    q = _check_dask_rows(x, "x")
    n = q.shape[0]
    if n == 0:
        return np.empty(0, np.int64)
    dt = _result_dtype(q)
    thr = _mining._round_up(threshold, dt)
    limit, limit_by = _mining._pair_limit(max_pairs, None)
    qo = _offsets(q.chunks[0])
    qd = _blocks(q)
    range_task = dask.delayed(_range_task, pure=True)
    forest_task = dask.delayed(_forest_task, pure=True)
    merge_task = dask.delayed(_merge_forests_task, pure=True)
    level = []
    for bi, qb in enumerate(qd):
        for bj in range(bi, len(qd)):
            piece = range_task(qb, qd[bj], thr, 2, qo[bi], qo[bj], None, limit, be, dt, _delay)
            level.append(forest_task(piece, qo[bi]))
    while len(level) > 1:  # a tree of merges, four at a time
        level = [merge_task(*level[i:i + 4]) for i in range(0, len(level), 4)]
    forest, complete = _compute(level[0])[0]
    if not complete:
        plan = dict(limit=limit, limit_by=limit_by, threshold=threshold)
        raise _mining._too_many(plan, limit, 0, n)
    import scipy.sparse

    g = scipy.sparse.coo_matrix((np.ones(len(forest), np.int8), (forest[:, 0], forest[:, 1])), shape=(n, n))
    return _mining.components_from_pairs(g.tocsr())


def _self_score_block(block):
    return _mining.self_scores(np.asarray(block))
