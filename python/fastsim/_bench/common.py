"""What a benchmark case is, and how one is timed.

Each area module (``cosine``, ``triplet``, ``rnn``, ``pipeline``) exposes
``cases(full: bool) -> list[Case]``; the CLI in ``fastsim._bench.cli`` runs
them.  Timings are medians of repeated runs in this process; the speedup of a
runner is the median time of the ``"numpy"`` baseline divided by its own.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class Case:
    """One operation at one shape and dtype.

    Attributes
    ----------
    op : str
        Operation name shown in the table ("cosine_matrix", "triplet_loss", ...).
    shape : str
        Human-readable shape ("4096x256 @ 4096x256").
    dtype : str
        "float32" or "float64".
    flops : float
        Floating-point operations of one call (for GFLOP/s); 0 when not meaningful.
    make_inputs : callable
        ``() -> inputs`` built once per case (kept out of the timing).
    runners : dict
        ``name -> fn(inputs) -> result``.  ``"numpy"`` is the baseline every
        speedup is relative to; others are "numba", "cpp", "torch", ...
    reference : callable, optional
        ``inputs -> float64 result`` for the error column.
    error : callable, optional
        ``(result, reference) -> float``; default: max abs difference.
    min_repeats : int
        Lower bound on the number of timed calls per runner.
    exact_flops : bool
        False when ``flops`` is a nominal count some runner does not perform
        (the fused triplet gradient skips the second product, the encoder's
        first layer reads a projected table): GFLOP/s is then a rate of
        nominal work, and no %peak is printed for the case.
    """

    op: str
    shape: str
    dtype: str
    flops: float
    make_inputs: Callable[[], Any]
    runners: dict[str, Callable[[Any], Any]]
    reference: Callable[[Any], Any] | None = None
    error: Callable[[Any, Any], float] | None = None
    min_repeats: int = 5
    notes: dict = field(default_factory=dict)
    exact_flops: bool = True


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (``ru_maxrss``; it only ever grows)."""
    import resource  # POSIX only; the memory scripts in bench/ are the callers

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def max_abs_error(result, reference) -> float:
    if isinstance(result, tuple):
        return max(max_abs_error(r, e) for r, e in zip(result, reference))
    r = np.asarray(result, dtype=np.float64)
    e = np.asarray(reference, dtype=np.float64)
    if r.shape != e.shape:
        return float("inf")
    if r.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        d = np.abs(r - e)
    both_nan = np.isnan(r) & np.isnan(e)
    d[both_nan] = 0.0
    return float(np.nanmax(np.where(np.isnan(d), np.inf, d)))


def _one_sample(fn, inner):
    t0 = time.perf_counter()
    for _ in range(inner):
        result = fn()
    return (time.perf_counter() - t0) / inner, result


def time_call(fn: Callable[[], Any], *, min_repeats: int = 5, min_time: float = 0.2, max_time: float = 3.0):
    """Median wall time of ``fn()`` in seconds and the last result.

    One warm-up call (JIT compilation, page faults) is not timed.  Small calls
    are batched so that each timed sample lasts at least ~1 ms.
    """
    times, result = time_rounds({"fn": fn}, rounds=1, min_repeats=min_repeats, min_time=min_time, max_time=max_time)
    return times["fn"], result["fn"]


# Pause before each callable's turn in a round: longer than OpenBLAS's default
# spin-wait (2^28 cycles, ~0.1 s at 2.8 GHz) and GNU OpenMP's, so the thread
# pool of the callable timed before has gone idle and does not take cores
# from the next one.
SETTLE_SECONDS = 0.12


def time_rounds(fns: dict[str, Callable[[], Any]], *, rounds: int = 3, min_repeats: int = 5, min_time: float = 0.2,
                max_time: float = 3.0, settle: float | None = None):
    """Median wall times of several callables timed in interleaved rounds.

    Each round times every callable in turn for about ``min_time / rounds``
    seconds, so a drift in the machine's speed (other tenants of a shared host,
    clock changes) during the measurement reaches all of them alike instead of
    landing on whichever ran at the wrong moment; the ratios of the medians are
    then what one process saw of them side by side.  With several callables,
    each turn starts after ``settle`` seconds of sleep (default
    ``SETTLE_SECONDS``) so the previous one's threads are idle.  Returns
    ``({name: median seconds}, {name: last result})``.  A callable that raises
    is reported by its exception in place of the time.
    """
    if settle is None:
        settle = SETTLE_SECONDS if len(fns) > 1 else 0.0
    per_round_time = min_time / rounds
    per_round_max = max_time / rounds
    per_round_reps = max(1, -(-min_repeats // rounds))
    samples = {name: [] for name in fns}
    results: dict[str, Any] = {}
    inner = {}
    gc_was = gc.isenabled()
    for name, fn in fns.items():  # warm-up and batch size, outside the timing
        try:
            results[name] = fn()
            t0 = time.perf_counter()
            fn()
            inner[name] = max(1, int(1e-3 / max(time.perf_counter() - t0, 1e-9)))
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            results[name] = exc
    gc.disable()
    try:
        for _ in range(rounds):
            for name, fn in fns.items():
                if isinstance(results[name], Exception):
                    continue
                if settle > 0:
                    time.sleep(settle)
                start = time.perf_counter()
                taken = 0
                while True:
                    t, results[name] = _one_sample(fn, inner[name])
                    samples[name].append(t)
                    taken += 1
                    elapsed = time.perf_counter() - start
                    if taken >= per_round_reps and elapsed > per_round_time:
                        break
                    if elapsed > per_round_max and taken >= 1:
                        break
    finally:
        if gc_was:
            gc.enable()
    times = {name: (float(np.median(s)) if s else results[name]) for name, s in samples.items()}
    return times, results
