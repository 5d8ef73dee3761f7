"""Corpus mining: every pair above a cosine threshold, groups of duplicates, best pairs.

What this module owns: the public :func:`range_search` (and its streaming
forms :func:`iter_range_search` and ``range_search(..., out=directory)``),
:func:`duplicate_groups` and :func:`paraphrase_mining`, and the driver that
walks row blocks of in-memory arrays, ``np.memmap`` files or sequences of row
blocks.  What it may call: the per-backend block-pair kernels
(``_core.range_search``, :mod:`fastsim._numba.mining`,
:mod:`fastsim._reference.mining`), :func:`fastsim.top_k`, the checks of
:mod:`fastsim._validation`, SciPy's sparse matrices and, when installed, tqdm.

The block-pair contract every backend implements::

    kernel(queries, corpus, threshold, mode, row_offset, col_offset, max_per_row, max_hits)
        -> (indptr, indices, scores, complete)

``queries`` (m, d) and ``corpus`` (n, d) C-contiguous of one float dtype with
``d >= 1``; ``threshold`` already rounded up to that dtype; ``mode`` 0 (every
pair), 1 (no ``I == J``) or 2 (only ``J > I``) on global indices
``I = row_offset + i``, ``J = col_offset + j``; ``indices`` global; rows best
first (descending score, ties to the lower index); ``complete`` False when
more than ``max_hits`` pairs qualified (the pairs returned are then partial).

Rounding: each backend computes a pair's score in the input dtype and keeps
it when that score is at least ``threshold`` (exactly: the threshold is
rounded up to the dtype).  A pair whose exact cosine lies within the dtype's
rounding error of the threshold (about 1e-6 for float32, 1e-15 for float64,
relative to 1) may therefore be in or out depending on the backend; every
other pair is decided as the float64 reference decides it.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from typing import Iterator

import numpy as np

from . import _backend
from ._reference import mining as _ref
from ._validation import as_float_array, check_bool, check_choice, check_positive_int, result_dtype

__all__ = ["range_search", "iter_range_search", "duplicate_groups", "paraphrase_mining", "TooManyPairsError"]

_SUPPORTED = ("numpy", "numba", "cpp")

# Query rows per kernel call: a multiple of every micro-tile height (rows of a
# call start on tile boundaries), about 64 calls per join at most so that a
# progress bar moves and each call's per-row lists stay small.
_CALL_ROWS_UNIT = 2040
_MAX_CALLS = 64
# Bytes held per pair while a join runs: the kernel's list entry, its output
# vectors, the NumPy arrays and the CSR copy (int64 index + score, several times).
_BYTES_PER_PAIR = 64
# Progress bars (auto mode) for calls estimated to take longer than this, at
# this many flop/s (a conservative figure for two cores).
_PROGRESS_SECONDS = 3.0
_PROGRESS_FLOPS = 2e10


class TooManyPairsError(RuntimeError):
    """More pairs qualify than ``max_pairs`` (or the memory budget) allows; nothing is returned."""


# --------------------------------------------------------------------------- checks


def check_threshold(threshold, name: str = "threshold") -> float:
    """A real number within [-1, 1] (cosine's range) as a Python float."""
    if threshold is None:
        msg = f"{name} is required: a cosine similarity within [-1, 1]"
        raise TypeError(msg)
    if getattr(threshold, "ndim", None) == 0 and hasattr(threshold, "item") and not isinstance(threshold, np.generic):
        threshold = threshold.item()
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (numbers.Real, np.floating, np.integer)):
        msg = f"{name} must be a real number within [-1, 1]; got {type(threshold).__name__}"
        raise TypeError(msg)
    t = float(threshold)
    if math.isnan(t):
        msg = f"{name} must be a number within [-1, 1]; got NaN"
        raise ValueError(msg)
    if not -1.0 <= t <= 1.0:
        msg = f"{name} must lie within [-1, 1] (cosine similarities do); got {t}"
        raise ValueError(msg)
    return t


def _check_optional_count(value, name: str):
    return None if value is None else check_positive_int(value, name)


def _parse_bytes(value, name: str = "max_memory"):
    """Bytes as an int, or a string such as ``"512MiB"``, ``"2 GB"``; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                 "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
        text = value.strip().lower().replace(" ", "")
        num = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(num):] or "b"
        try:
            v = float(num) * units[unit]
        except (ValueError, KeyError):
            msg = f"{name} must be a number of bytes or a string such as '512MiB'; got {value!r}"
            raise ValueError(msg) from None
        value = int(v)
    value = check_positive_int(value, name)
    return value


def _round_up(threshold: float, dtype) -> np.floating:
    """The smallest ``dtype`` number >= threshold: ``s >= t`` in dtype then means ``s >= threshold`` exactly."""
    t = np.dtype(dtype).type(threshold)
    if float(t) < threshold:
        t = np.nextafter(t, np.dtype(dtype).type(np.inf))
    return t


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def _pair_limit(max_pairs, max_memory) -> tuple[int, str]:
    """The most pairs a call may hold, and what set that limit (for the error message)."""
    if max_pairs is not None:
        return max_pairs, f"max_pairs={max_pairs}"
    if max_memory is not None:
        return max(1, max_memory // 2 // _BYTES_PER_PAIR), f"max_memory={max_memory} bytes (half of it for pairs)"
    mem = _physical_memory()
    return max(1, mem // 4 // _BYTES_PER_PAIR), f"a quarter of this machine's memory ({mem / 2**30:.1f} GiB)"


# --------------------------------------------------------------------------- row sources


class _Rows:
    """A 2-D set of rows: an ndarray (in memory or an ``np.memmap``) or a sequence or iterable of row blocks.

    ``blocks(rows)`` yields ``(start, block)`` with ``block`` C-contiguous in
    :attr:`dtype`; a memmap is read ``rows`` rows at a time.  A one-shot
    iterator (a generator) can be walked once; :attr:`reiterable` says so.
    """

    def __init__(self, x, name: str):
        self.name = name
        self.array = None
        self._blocks = None
        self.reiterable = True
        if isinstance(x, np.memmap):
            if x.dtype not in (np.float32, np.float64):
                msg = (f"{name} is a memmap of dtype {x.dtype}; a memmap must be float32 or float64 "
                       f"(open it with the dtype it was written in)")
                raise TypeError(msg)
            if x.ndim != 2:
                msg = f"{name} is a memmap of shape {x.shape}; it must be 2-D (rows, d): open it with shape=(n, d)"
                raise ValueError(msg)
            self.array = x
        elif isinstance(x, np.ndarray) or not _is_block_collection(x):
            self.array = as_float_array(x, name, ndim=2)
        else:
            if isinstance(x, (list, tuple)):
                self._blocks = x
            else:
                self._blocks = iter(x)
                self.reiterable = False
        if self.array is not None:
            self.n, self.d, self.dtype = self.array.shape[0], self.array.shape[1], self.array.dtype
            self.in_memory = not isinstance(self.array, np.memmap)
        else:
            self.in_memory = False
            self._first = None
            if isinstance(self._blocks, (list, tuple)):
                if not self._blocks:
                    msg = f"{name} is an empty sequence of blocks"
                    raise ValueError(msg)
                first = self._check_block(self._blocks[0], 0)
                self.n = sum(int(np.shape(b)[0]) for b in self._blocks)
            else:
                try:
                    first = self._check_block(next(self._blocks), 0)
                except StopIteration:
                    msg = f"{name} is an empty iterable of blocks"
                    raise ValueError(msg) from None
                self._first = first
                self.n = None  # known once walked
            self.d, self.dtype = first.shape[1], first.dtype

    def _check_block(self, b, index: int, dtype=None, d=None) -> np.ndarray:
        arr = as_float_array(b, f"{self.name} block {index}", ndim=2, dtype=dtype)
        if d is not None and arr.shape[1] != d:
            msg = f"{self.name} block {index} has {arr.shape[1]} columns; the first block has {d}"
            raise ValueError(msg)
        return arr

    def blocks(self, rows: int, dtype, first_row: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Blocks of ``rows`` rows; an array source skips (without reading) blocks ending before ``first_row``."""
        if self.array is not None:
            a = self.array
            if self.in_memory and a.shape[0] <= rows:
                yield 0, _contiguous(a, dtype)
                return
            for r0 in range(first_row // rows * rows, a.shape[0], rows):
                yield r0, _contiguous(a[r0:r0 + rows], dtype)
            return
        start = 0
        if isinstance(self._blocks, (list, tuple)):
            source = enumerate(self._blocks)
        else:
            if self._first is None:
                msg = f"{self.name} is an iterator of blocks that has already been read; pass a list or a memmap"
                raise TypeError(msg)
            first, self._first = self._first, None
            source = _chain_first(first, self._blocks)
        for idx, b in source:
            arr = _contiguous(self._check_block(b, idx, d=self.d), dtype)
            if arr.shape[0]:
                yield start, arr
            start += arr.shape[0]
        self.n = start


def _chain_first(first, rest):
    yield 0, first
    for idx, b in enumerate(rest, 1):
        yield idx, b


def _is_block_collection(x) -> bool:
    """A list/tuple whose items are 2-D blocks, or any non-array iterable (a generator of blocks)."""
    if isinstance(x, (list, tuple)):
        return len(x) > 0 and all(np.ndim(b) == 2 for b in x)
    return hasattr(x, "__iter__") and not hasattr(x, "__array__") and not hasattr(x, "__len__")


def _contiguous(a, dtype) -> np.ndarray:
    out = np.ascontiguousarray(a, dtype=dtype)
    return out if out.flags.aligned else out.copy()


# --------------------------------------------------------------------------- progress


class _Progress:
    """A tqdm bar when wanted and installed, else nothing; used as a context manager."""

    def __init__(self, progress, total: float, desc: str, estimated_flops: float, unit: str = "row"):
        self.bar = None
        if progress is None:
            wanted = estimated_flops / _PROGRESS_FLOPS > _PROGRESS_SECONDS and sys.stderr.isatty()
        else:
            wanted = check_bool(progress, "progress")
        if not wanted:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            if progress:
                warnings.warn("progress=True needs tqdm (pip install tqdm); running without a bar",
                              RuntimeWarning, stacklevel=3)
            return
        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False)

    def update(self, n, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- kernels


def _block_pair(be, q, c, thr, mode, row_offset, col_offset, max_per_row, max_hits):
    """One block pair through backend ``be`` (the contract in the module docstring)."""
    if be == "cpp":
        return _backend.core().range_search(q, c, float(thr), mode, row_offset, col_offset,
                                            max_per_row or 0, max_hits)
    if be == "numba":
        return _backend.numba_module("mining").range_search(q, c, thr, mode, row_offset, col_offset,
                                                            max_per_row, max_hits)
    indptr, indices, scores = _ref.range_search(q, c, thr, mode, row_offset, col_offset, max_per_row)
    if indices.size > max_hits:
        return indptr, indices[:max_hits], scores[:max_hits], False
    return indptr, indices, scores, True


def _merge_pieces(pieces, m: int, max_per_row):
    """Rows of several column blocks of one row block, merged into the output order."""
    if len(pieces) == 1:
        return pieces[0]
    rows = np.concatenate([np.repeat(np.arange(m), np.diff(p[0])) for p in pieces])
    cols = np.concatenate([p[1] for p in pieces])
    vals = np.concatenate([p[2] for p in pieces])
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=m)
    if max_per_row is not None:
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        sel = (np.arange(rows.size) - np.repeat(starts, counts)) < max_per_row
        cols, vals = cols[sel], vals[sel]
        counts = np.minimum(counts, max_per_row)
    indptr = np.zeros(m + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, cols, vals


def _call_rows(m: int, block_rows) -> int:
    if block_rows is not None:
        return block_rows
    per_call = -(-m // _MAX_CALLS)
    return max(_CALL_ROWS_UNIT, -(-per_call // _CALL_ROWS_UNIT) * _CALL_ROWS_UNIT)


def _memory_rows(d: int, itemsize: int, max_memory) -> int | None:
    """Rows of a memmap or block read at once: a quarter of max_memory per operand block."""
    if max_memory is None:
        return None
    rows = max(_CALL_ROWS_UNIT, (max_memory // 4) // max(1, d * itemsize))
    return rows // 6 * 6


def _plan(queries, corpus, threshold, exclude_self, max_per_row, max_pairs, max_memory, block_rows, backend):
    """Validate everything once; returns the pieces the driver needs."""
    threshold = check_threshold(threshold)
    exclude_self = check_bool(exclude_self, "exclude_self")
    max_per_row = _check_optional_count(max_per_row, "max_per_row")
    max_pairs = _check_optional_count(max_pairs, "max_pairs")
    max_memory = _parse_bytes(max_memory)
    block_rows = _check_optional_count(block_rows, "block_rows")
    be = _backend.resolve(backend, _SUPPORTED)
    q = _Rows(queries, "queries")
    self_join = corpus is None
    c = q if self_join else _Rows(corpus, "corpus")
    if self_join and not q.reiterable:
        msg = ("queries is a one-shot iterator of blocks; the self-join reads the blocks several times: "
               "pass a list of blocks or an np.memmap")
        raise TypeError(msg)
    if not self_join and not q.reiterable and not (c.in_memory or c.reiterable):
        msg = "queries and corpus cannot both be one-shot iterators; pass one of them as an array, list or memmap"
        raise TypeError(msg)
    if not self_join and q.d != c.d:
        msg = f"queries and corpus must have the same number of columns (d); got {q.d} and {c.d}"
        raise ValueError(msg)
    if exclude_self and not self_join and q.n is not None and c.n is not None and q.n != c.n:
        msg = (f"exclude_self=True needs queries and corpus to be the same rows (m == n); "
               f"got {q.n} queries and {c.n} corpus rows")
        raise ValueError(msg)
    dt = np.dtype(result_dtype(_DtypeOnly(q.dtype), _DtypeOnly(c.dtype)))
    mode = 2 if self_join else (1 if exclude_self else 0)
    limit, limit_by = _pair_limit(max_pairs, max_memory)
    mem_rows = _memory_rows(q.d, dt.itemsize, max_memory)
    return dict(threshold=threshold, thr=_round_up(threshold, dt), be=be, q=q, c=c, self_join=self_join, dt=dt,
                mode=mode, max_per_row=max_per_row, limit=limit, limit_by=limit_by, mem_rows=mem_rows,
                block_rows=block_rows)


class _DtypeOnly:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _too_many(plan, found, rows_done, m) -> TooManyPairsError:
    where = f"after {rows_done} of {m} rows" if m is not None else f"after {rows_done} rows"
    msg = (f"more than {plan['limit']} pairs have cosine >= {plan['threshold']} ({found}+ found {where}); "
           f"the limit is set by {plan['limit_by']}. Raise max_pairs (or max_memory), raise the threshold, "
           f"pass max_per_row to keep the best pairs of each row, or stream the pairs with iter_range_search "
           f"or out=directory")
    return TooManyPairsError(msg)


def _iter_blocks(plan, progress) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """``(row_start, indptr, indices, scores)`` per block of query rows, in order."""
    q, c, dt, be, thr, mode = plan["q"], plan["c"], plan["dt"], plan["be"], plan["thr"], plan["mode"]
    max_per_row = plan["max_per_row"]
    total_found = 0
    m_est = q.n
    n_est = c.n if c.n is not None else (m_est or 0)
    flops = 2.0 * (m_est or 0) * n_est * max(1, q.d) / (2 if plan["self_join"] else 1)
    rows_at_once = plan["mem_rows"] or (q.n if q.in_memory else None)
    with _Progress(progress, total=m_est, desc="range_search", estimated_flops=flops) as bar:
        if plan["self_join"] and q.in_memory:
            x = _as_kernel_rows(q.array, dt)
            m = x.shape[0]
            step = _call_rows(m, plan["block_rows"])
            for r0 in range(0, m, step):
                r1 = min(m, r0 + step)
                res = _block_pair(be, x[r0:r1], x[r0:], thr, 2, r0, r0, max_per_row, plan["limit"] - total_found)
                total_found += res[1].size
                if not res[3]:
                    raise _too_many(plan, total_found, r0, m)
                bar.update(r1 - r0, pairs=total_found)
                yield r0, res[0], res[1], res[2]
            return
        q_rows = plan["block_rows"] or rows_at_once or _CALL_ROWS_UNIT * 8
        c_rows = plan["mem_rows"] or (c.n if c.in_memory else _CALL_ROWS_UNIT * 8)
        if plan["self_join"]:
            # blocks I <= J of a memmap or a list of blocks
            for r0, qb in q.blocks(q_rows, dt):
                qb = _as_kernel_rows(qb, dt)
                pieces = []
                for c0, cb in c.blocks(c_rows, dt, first_row=r0 + 1):
                    if c0 + cb.shape[0] <= r0 + 1:
                        continue
                    cb = _as_kernel_rows(cb, dt)
                    res = _block_pair(be, qb, cb, thr, 2, r0, c0, max_per_row, plan["limit"] - total_found)
                    total_found += res[1].size
                    if not res[3]:
                        raise _too_many(plan, total_found, r0, q.n)
                    pieces.append(res[:3])
                merged = _merge_pieces(pieces, qb.shape[0], max_per_row) if pieces else _empty_rows(qb.shape[0], dt)
                bar.update(qb.shape[0], pairs=total_found)
                yield r0, merged[0], merged[1], merged[2]
            return
        # queries against a corpus: a one-shot corpus is walked once, outermost
        if not c.reiterable and not c.in_memory:
            q_all = [(r0, _as_kernel_rows(qb, dt)) for r0, qb in q.blocks(q_rows, dt)]
            pieces = {r0: [] for r0, _ in q_all}
            for c0, cb in c.blocks(c_rows, dt):
                cb = _as_kernel_rows(cb, dt)
                for r0, qb in q_all:
                    res = _block_pair(be, qb, cb, thr, mode, r0, c0, max_per_row, plan["limit"] - total_found)
                    total_found += res[1].size
                    if not res[3]:
                        raise _too_many(plan, total_found, r0, q.n)
                    pieces[r0].append(res[:3])
            _check_exclude_self(plan, q, c)
            for r0, qb in q_all:
                merged = (_merge_pieces(pieces.pop(r0), qb.shape[0], max_per_row) if c.n
                          else _empty_rows(qb.shape[0], dt))
                bar.update(qb.shape[0], pairs=total_found)
                yield r0, merged[0], merged[1], merged[2]
            return
        for r0, qb in q.blocks(q_rows, dt):
            qb = _as_kernel_rows(qb, dt)
            sub = _call_rows(qb.shape[0], plan["block_rows"]) if (q.in_memory and c.in_memory) else qb.shape[0]
            for s0 in range(0, qb.shape[0], sub):
                qs = qb[s0:s0 + sub]
                pieces = []
                for c0, cb in c.blocks(c_rows, dt):
                    cb = _as_kernel_rows(cb, dt)
                    res = _block_pair(be, qs, cb, thr, mode, r0 + s0, c0, max_per_row,
                                      plan["limit"] - total_found)
                    total_found += res[1].size
                    if not res[3]:
                        raise _too_many(plan, total_found, r0 + s0, q.n)
                    pieces.append(res[:3])
                _check_exclude_self(plan, q, c)
                merged = _merge_pieces(pieces, qs.shape[0], max_per_row) if pieces else _empty_rows(qs.shape[0], dt)
                bar.update(qs.shape[0], pairs=total_found)
                yield r0 + s0, merged[0], merged[1], merged[2]


def _check_exclude_self(plan, q, c):
    if plan["mode"] == 1 and q.n is not None and c.n is not None and q.n != c.n:
        msg = f"exclude_self=True needs queries and corpus to be the same rows; got {q.n} and {c.n} rows"
        raise ValueError(msg)


def _empty_rows(m, dt):
    return np.zeros(m + 1, np.int64), np.empty(0, np.int64), np.empty(0, dt)


def _as_kernel_rows(a, dt):
    a = _contiguous(a, dt)
    if a.shape[1] == 0:
        return np.zeros((a.shape[0], 1), dtype=dt)
    return a


def _assemble(blocks, dt):
    indptrs, indices, scores = [np.zeros(1, np.int64)], [], []
    base = 0
    for _, ip, ix, sc in blocks:
        indptrs.append(ip[1:] + base)
        base += int(ip[-1])
        indices.append(ix)
        scores.append(sc)
    indptr = np.concatenate(indptrs)
    return (indptr, np.concatenate(indices) if indices else np.empty(0, np.int64),
            np.concatenate(scores).astype(dt, copy=False) if scores else np.empty(0, dt))


# --------------------------------------------------------------------------- public API


def iter_range_search(queries, corpus=None, threshold=None, *, exclude_self: bool = False, max_per_row=None,
                      max_pairs=None, max_memory=None, block_rows=None, progress=None, backend: str = "auto"):
    """:func:`range_search`, streamed: yields ``(row_start, indptr, indices, scores)`` per block of query rows.

    Row ``row_start + i`` of the result has the pairs
    ``indices[indptr[i]:indptr[i + 1]]`` (global corpus indices) with their
    ``scores``, best first.  Blocks come in row order; only one block's pairs
    are held at a time, so the caller may write them out and let them go.
    ``max_pairs`` still bounds the pairs of the whole call.
    """
    plan = _plan(queries, corpus, threshold, exclude_self, max_per_row, max_pairs, max_memory, block_rows, backend)
    yield from _iter_blocks(plan, progress)


def range_search(queries, corpus=None, threshold=None, *, exclude_self: bool = False, max_per_row=None,
                 max_pairs=None, max_memory=None, block_rows=None, output: str = "csr", out=None, progress=None,
                 backend: str = "auto"):
    """Every pair with cosine similarity >= ``threshold``, without the (m, n) matrix.

    Parameters
    ----------
    queries : array_like (m, d), np.memmap, or a sequence / iterable of 2-D row blocks
    corpus : same kinds, (n, d), optional
        Without it, the self-join of ``queries``: every pair ``i < j`` once,
        in row ``i`` (an upper-triangular result).
    threshold : float
        Within [-1, 1]; a pair qualifies when its score is >= threshold.
    exclude_self : bool, default False
        With a corpus that is the same rows as the queries: leave out ``(i, i)``.
    max_per_row : int, optional
        Keep only the best ``max_per_row`` pairs of each row (ties to the lower index).
    max_pairs : int, optional
        The most pairs the call may return; past it :class:`TooManyPairsError`
        is raised (no partial result).  Default: what ``max_memory`` allows
        for pairs, or a quarter of the machine's memory.
    max_memory : int or str, optional
        Bytes (``"512MiB"``) for the call's working set: memmaps and block
        sources are read a quarter of it at a time, and half of it bounds the
        pairs held (unless ``max_pairs`` is given).  In-memory arrays are
        used in place.
    block_rows : int, optional
        Query rows per kernel call (default: about 64 calls, multiples of 2040).
    output : {"csr", "arrays"}
        ``scipy.sparse.csr_matrix`` of shape (m, n) with the scores as data,
        or the tuple ``(indptr, indices, scores)`` (int64, int64, scores dtype).
    out : str or os.PathLike, optional
        A directory: the pairs are streamed to ``indptr.npy``, ``indices.npy``
        and ``scores.npy`` there and returned as read-only memmaps
        ``(indptr, indices, scores)``; memory holds one block at a time.
    progress : bool or None
        A tqdm bar (if installed).  None: only for calls estimated to take
        more than a few seconds, when stderr is a terminal.
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    csr_matrix or (indptr, indices, scores)
        Row ``i`` holds its pairs in descending score, equal scores by
        ascending column (so a CSR's column indices are not sorted: call
        ``.sort_indices()`` for column order).  Scores are in the result
        dtype (float64 if either input is, else float32).

    Notes
    -----
    Scores are computed in the input dtype exactly as
    :func:`cosine_similarity_matrix` computes them, and compared with the
    threshold exactly.  A pair whose exact cosine lies within that dtype's
    rounding error of the threshold (about 1e-6 in float32, 1e-15 in
    float64) may fall on either side; all others are those of a float64
    dense computation.  NaN scores never qualify; zero vectors score 0.
    """
    output = check_choice(output, "output", ("csr", "arrays"))
    plan = _plan(queries, corpus, threshold, exclude_self, max_per_row, max_pairs, max_memory, block_rows, backend)
    if out is not None:
        return _stream_to_disk(plan, out, progress)
    indptr, indices, scores = _assemble(_iter_blocks(plan, progress), plan["dt"])
    m = indptr.size - 1
    n = m if plan["self_join"] else plan["c"].n
    if output == "arrays":
        return indptr, indices, scores
    import scipy.sparse

    return scipy.sparse.csr_matrix((scores, indices, indptr), shape=(m, n))


def _stream_to_disk(plan, out, progress):
    os.makedirs(out, exist_ok=True)
    dt = plan["dt"]
    paths = {name: os.path.join(out, name + ".bin") for name in ("indptr", "indices", "scores")}
    base = 0
    rows = 0
    with open(paths["indptr"], "wb") as fp, open(paths["indices"], "wb") as fi, open(paths["scores"], "wb") as fs:
        np.zeros(1, np.int64).tofile(fp)
        for _, ip, ix, sc in _iter_blocks(plan, progress):
            (ip[1:] + base).astype(np.int64).tofile(fp)
            base += int(ip[-1])
            rows += ip.size - 1
            np.asarray(ix, np.int64).tofile(fi)
            np.asarray(sc, dt).tofile(fs)
    result = []
    for name, dtype in (("indptr", np.int64), ("indices", np.int64), ("scores", dt)):
        raw = np.fromfile(paths[name], dtype=dtype) if os.path.getsize(paths[name]) < (1 << 26) else \
            np.memmap(paths[name], dtype=dtype, mode="r")
        target = os.path.join(out, name + ".npy")
        arr = np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=raw.shape)
        chunk = 1 << 22
        for s in range(0, raw.shape[0], chunk):
            arr[s:s + chunk] = raw[s:s + chunk]
        arr.flush()
        del arr, raw
        os.remove(paths[name])
        result.append(np.load(target, mmap_mode="r"))
    return tuple(result)


def duplicate_groups(x, threshold, *, method: str = "components", min_community_size: int = 2, max_pairs=None,
                     max_memory=None, progress=None, backend: str = "auto"):
    """Groups of duplicates among the rows of ``x``, as one label per row.

    Parameters
    ----------
    x : array_like (n, d), np.memmap or a list of row blocks
    threshold : float
        Rows ``i`` and ``j`` are duplicates when ``cos(x[i], x[j]) >= threshold``.
    method : {"components", "community"}
        ``"components"``: connected components of the threshold graph (two
        rows share a label when a chain of duplicates links them); every row
        gets a label, a row without duplicates its own.  ``"community"``: the
        community detection of sentence-transformers: a row whose
        ``min_community_size``-th best score (itself included) reaches the
        threshold is a centre, its community all rows within the threshold of
        it; communities are taken largest first, each keeping only rows not
        already taken, and kept while at least ``min_community_size`` rows
        remain.  Rows in no community get -1.
    min_community_size : int, default 2
        (``"community"`` only.)
    max_pairs, max_memory, progress, backend
        As in :func:`range_search`, whose self-join finds the pairs.

    Returns
    -------
    labels : ndarray of int64, shape (n,)
        ``"components"``: labels 0, 1, ... numbered in the order of each
        group's first row.  ``"community"``: 0 for the largest community
        (ties: the earlier centre), then 1, ...; -1 for rows in none.
    """
    method = check_choice(method, "method", ("components", "community"))
    min_community_size = check_positive_int(min_community_size, "min_community_size")
    pairs = range_search(x, None, threshold, max_pairs=max_pairs, max_memory=max_memory, progress=progress,
                         backend=backend)
    if method == "components":
        return components_from_pairs(pairs)
    return _communities(pairs, _self_scores(x), min_community_size, check_threshold(threshold))


def components_from_pairs(pairs) -> np.ndarray:
    """Connected-component labels of an (n, n) pair matrix, numbered by each component's first row."""
    from scipy.sparse.csgraph import connected_components

    n = pairs.shape[0]
    if n == 0:
        return np.empty(0, np.int64)
    _, labels = connected_components(_structure(pairs), directed=False)
    return renumber_by_first_row(labels)


def _structure(pairs):
    """The pair matrix with every stored entry 1 (scores of 0 are pairs too)."""
    import scipy.sparse

    g = scipy.sparse.csr_matrix(pairs, copy=True)
    g.data = np.ones(g.data.shape, np.int8)
    return g


def renumber_by_first_row(labels) -> np.ndarray:
    """Labels renumbered 0, 1, ... in the order in which each label first appears."""
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.ravel()]


def self_scores(block) -> np.ndarray:
    """cos(x[i], x[i]) of a block of rows: 1 for nonzero rows, 0 for zero rows, NaN for rows holding NaN or inf."""
    finite = np.all(np.isfinite(block), axis=1)
    nonzero = np.any(block != 0, axis=1)
    return np.where(~finite, np.nan, np.where(nonzero, 1.0, 0.0))


def _self_scores(x) -> np.ndarray:
    rows = _Rows(x, "x")
    out = [self_scores(b) for _, b in rows.blocks(1 << 16, rows.dtype)]
    return np.concatenate(out) if out else np.empty(0)


def _communities(upper, self_score, min_size: int, threshold: float) -> np.ndarray:
    n = upper.shape[0]
    labels = np.full(n, -1, np.int64)
    if n == 0:
        return labels
    # every neighbour of every row (a pair once per side); ones as data, so that a pair
    # scoring exactly 0 (threshold <= 0) is not dropped as a zero by the sum
    edges = _structure(upper)
    sym = (edges + edges.T).tocsr()
    with np.errstate(invalid="ignore"):
        self_in = self_score >= threshold
    degree = np.diff(sym.indptr) + self_in
    centres = np.nonzero(degree >= min_size)[0]
    if centres.size == 0:
        return labels
    # communities largest first, equal sizes in the order of their centre
    centres = centres[np.argsort(-degree[centres], kind="stable")]
    taken = np.zeros(n, bool)
    label = 0
    for i in centres:
        lo, hi = sym.indptr[i], sym.indptr[i + 1]
        members = sym.indices[lo:hi]
        if self_in[i]:
            members = np.concatenate(([i], members))
        fresh = members[~taken[members]]
        if fresh.size >= min_size:
            taken[fresh] = True
            labels[fresh] = label
            label += 1
    return labels


def paraphrase_mining(x, *, top_k: int = 100, max_pairs: int = 500_000, threshold=None, query_chunk_size: int = 5000,
                      progress=None, backend: str = "auto"):
    """The best pairs overall among the rows of ``x``: sentence-transformers' ``paraphrase_mining``.

    Each row's ``top_k`` most similar other rows are found (exact, by
    :func:`fastsim.top_k`, ``query_chunk_size`` rows at a time); the pairs
    ``(i, j)``, ``i < j``, each counted once, are ranked by score and the best
    ``max_pairs`` returned.  Memory: the running best ``max_pairs`` plus one
    chunk's ``query_chunk_size x top_k`` candidates; no Python queue.

    Parameters
    ----------
    x : array_like (n, d)
    top_k : int, default 100
        Neighbours per row (clipped to n - 1).
    max_pairs : int, default 500000
        The most pairs returned.
    threshold : float, optional
        Drop pairs scoring below it.
    query_chunk_size : int, default 5000
    progress, backend
        As in :func:`range_search`.

    Returns
    -------
    scores : ndarray (p,), descending (equal scores by ascending i, then j)
    pairs : ndarray of int64 (p, 2), each row ``(i, j)`` with ``i < j``
    """
    from .topk import top_k as _top_k

    x = as_float_array(x, "x", ndim=2)
    top_k = check_positive_int(top_k, "top_k")
    max_pairs = check_positive_int(max_pairs, "max_pairs")
    query_chunk_size = check_positive_int(query_chunk_size, "query_chunk_size")
    thr = None if threshold is None else check_threshold(threshold)
    n = x.shape[0]
    dt = result_dtype(x)
    k = min(top_k, n - 1)
    if k < 1:
        return np.empty(0, dt), np.empty((0, 2), np.int64)
    best_s = np.empty(0, dt)
    best_p = np.empty((0, 2), np.int64)
    flops = 2.0 * n * n * max(1, x.shape[1])
    with _Progress(progress, total=n, desc="paraphrase_mining", estimated_flops=flops) as bar:
        for r0 in range(0, n, query_chunk_size):
            r1 = min(n, r0 + query_chunk_size)
            s, idx = _top_k(x[r0:r1], x, k + 1, backend=backend)
            rows = np.arange(r0, r1)[:, None]
            is_self = idx == rows
            # drop the row itself, or (when it is not among the k + 1) the last one
            drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
            keep = np.ones(idx.shape, bool)
            keep[np.arange(r1 - r0), drop] = False
            s, idx = s[keep].reshape(r1 - r0, k), idx[keep].reshape(r1 - r0, k)
            i = np.broadcast_to(rows, idx.shape).ravel()
            j = idx.ravel()
            sc = s.ravel()
            if thr is not None:
                with np.errstate(invalid="ignore"):
                    ok = sc >= _round_up(thr, dt)
                i, j, sc = i[ok], j[ok], sc[ok]
            lo, hi = np.minimum(i, j), np.maximum(i, j)
            best_s, best_p = _best_pairs(np.concatenate([best_s, sc]),
                                         np.concatenate([best_p, np.stack([lo, hi], axis=1)]), max_pairs)
            bar.update(r1 - r0)
    return best_s, best_p


def _best_pairs(scores, pairs, max_pairs):
    """Unique pairs (the higher score of a repeated pair), best first, at most max_pairs; NaN dropped."""
    ok = ~np.isnan(scores)
    scores, pairs = scores[ok], pairs[ok]
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -scores))
    scores, pairs = scores[order], pairs[order]
    key = pairs[:, 0] * (pairs.max(initial=0) + 1) + pairs[:, 1]
    _, first = np.unique(key, return_index=True)
    first.sort()
    first = first[:max_pairs]
    return scores[first], pairs[first]
