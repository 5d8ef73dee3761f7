"""``python -m fastsim``: ``bench`` times every backend against the NumPy reference; ``info``; ``train``, ``dedup``
and ``make-pairs`` (see :mod:`fastsim._cli_train`).

The default run is a quick representative workload (about a minute); ``--full``
runs every case.  Each row gives the median time, GFLOP/s, the share of this
machine's measured FMA peak, the speedup over the NumPy baseline of the same
case and the max abs error against the float64 reference.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import time

import numpy as np

import fastsim

from .. import _cli_train
from .common import max_abs_error, time_rounds

AREAS = ("cosine", "triplet", "rnn", "pipeline", "train")
# Areas run only when asked for with --ops (they take minutes, not seconds).
EXTRA_AREAS = ("mining",)

# Every library compared here keeps a thread pool that busy-waits after each
# parallel call (OpenBLAS for up to ~2^28 cycles, GNU OpenMP in fastsim, Numba
# and PyTorch for up to 300k spins).  On a 2-core machine an idle pool
# spinning beside the one being timed steals its cores, so time_rounds pauses
# before each runner's turn until any pool has gone idle (SETTLE_SECONDS).
# The pools' own settings are left as the user has them: shortened, each
# handicapped somebody here.  OPENBLAS_THREAD_TIMEOUT=4 made NumPy's per-step
# LSTM reference 5-15x slower (each small sgemm woke sleeping threads), and
# GOMP_SPINCOUNT=10000 made PyTorch's B = 1 LSTM 2-40x slower.  The run
# prints those that are set.
POOL_SETTINGS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OPENBLAS_NUM_THREADS",
                 "OPENBLAS_THREAD_TIMEOUT", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER")


def _load_areas(selected):
    mods = []
    for area in AREAS:
        if selected and area not in selected:
            continue
        name = f"fastsim._bench.{area}"
        try:
            mods.append((area, importlib.import_module(name)))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return mods


def measure_peak(threads: int) -> dict:
    """Sustained FMA throughput (GFLOP/s) of this machine, float32 and float64,
    on the ``threads`` the bench runs its kernels with (and float32 on one).

    The probe times its threads together, between two barriers, so a figure
    for two threads is what two cores did at once.  The best of three short
    trials each: a peak is what the cores can do, and on a shared host a
    single trial sometimes shares a core with another process (one such
    trial read 178 instead of ~320 GFLOP/s on 2 threads).
    """
    core = fastsim._backend.core()
    if core is None:
        return {}

    def best(f64: bool, n: int) -> float:
        return max(core.fma_peak_gflops(f64, 0.12, n) for _ in range(3))

    return {"float32_1t": best(False, 1), "float32": best(False, threads), "float64": best(True, threads)}


def percent_of_peak(gflops: float, dtype: str, peak: dict, out=None) -> float:
    """``gflops`` as a share of the measured peak of its dtype, never above 100.

    No kernel can run faster than the FMA units; a figure above the probe's
    means the probe under-read (a neighbour held a core while it ran).  The
    peak is then raised to that figure, for this row and the rows after it,
    and a line says so, instead of printing a share above 100%.
    """
    key = "float64" if dtype == "float64" else "float32"
    if not peak or key not in peak or not gflops == gflops:  # no probe, or no flop count (NaN)
        return float("nan")
    if gflops > peak[key]:
        if out is not None:
            print(f"(the FMA probe read {peak[key]:.0f} GFLOP/s {key}, below the {gflops:.0f} just measured: "
                  "the peak is taken as that from here on)", file=out)
        peak[key] = gflops
    return 100.0 * gflops / peak[key]


def _fmt_num(value: float, width: int, spec: str, suffix: str = "") -> str:
    """``value`` formatted, or "-" where it does not exist (nan: no flop count, no %peak)."""
    if math.isnan(value):
        return "-".rjust(width + len(suffix))
    return f"{value:{width}{spec}}{suffix}"


def _fmt_time(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:8.1f} us"
    if t < 1:
        return f"{t * 1e3:8.2f} ms"
    return f"{t:8.2f} s "


def _import_torch_first() -> None:
    """Import PyTorch, when installed, before any Numba kernel runs.

    Numba's OpenMP threading layer loads the system libgomp and turns nested
    parallelism on in it.  A PyTorch imported after that uses the already
    loaded libgomp instead of its own, and its nested parallel regions then
    oversubscribe the cores: ``nn.GRU`` (64, 64, 128, 256) took 200-260 ms
    instead of 20-25.  Imported first, it keeps its own runtime.
    """
    if importlib.util.find_spec("torch") is not None:
        importlib.import_module("torch")


def run(args) -> list[dict]:
    if args.ops and set(args.ops) <= set(EXTRA_AREAS):
        from . import mining

        return mining.run(args, sys.stdout)
    _import_torch_first()
    threads = fastsim.get_num_threads()
    out = sys.stdout
    print(f"fastsim {fastsim.__version__}  {platform.processor() or platform.machine()}  "
          f"simd={fastsim.info().get('simd_level')}  threads={threads}  openmp={fastsim.info().get('openmp')}",
          file=out)
    pools = {k: os.environ[k] for k in POOL_SETTINGS if k in os.environ}
    if pools:
        print("thread-pool settings: " + " ".join(f"{k}={v}" for k, v in pools.items()), file=out)
    if hasattr(os, "getloadavg"):
        print(f"load average before the run: {os.getloadavg()[0]:.2f}", file=out)
    peak = measure_peak(threads)
    if peak:
        print(f"FMA peak: float32 {peak['float32_1t']:.0f} GFLOP/s on 1 thread, {peak['float32']:.0f} on {threads}; "
              f"float64 {peak['float64']:.0f} on {threads}", file=out)
    cases = []
    for area, mod in _load_areas(args.ops):
        for case in mod.cases(args.full):
            cases.append((area, case))
    header = (f"{'operation':<22} {'shape':<26} {'dtype':<8} {'backend':<12} {'median':>11} {'GFLOP/s':>8} "
              f"{'%peak':>6} {'vs numpy':>9} {'max err':>9}")
    print(header, file=out)
    print("-" * len(header), file=out)
    results = []
    for idx, (area, case) in enumerate(cases, 1):
        if not args.quiet:
            print(f"[{idx}/{len(cases)}] {case.op} {case.shape} {case.dtype} ...", file=sys.stderr, flush=True)
        inputs = case.make_inputs()
        reference = case.reference(inputs) if case.reference else None
        err_fn = case.error or max_abs_error
        base = None
        times, outputs = time_rounds({name: (lambda fn=fn, x=inputs: fn(x)) for name, fn in case.runners.items()},
                                     rounds=args.rounds, min_repeats=case.min_repeats,
                                     min_time=0.1 * args.rounds, max_time=args.max_time)
        for name in case.runners:
            t, res = times[name], outputs[name]
            if isinstance(t, Exception):  # a peer library failing must not hide the rest
                print(f"{case.op:<22} {case.shape:<26} {case.dtype:<8} {name:<12} failed: {t}", file=out)
                continue
            if name == case.notes.get("baseline", "numpy"):  # the train cases compare against torch
                base = t
            gflops = case.flops / t * 1e-9 if case.flops else float("nan")
            pct = percent_of_peak(gflops, case.dtype, peak, out) if case.exact_flops else float("nan")
            speed = base / t if base else float("nan")
            err = err_fn(res, reference) if reference is not None else float("nan")
            row = dict(area=area, op=case.op, shape=case.shape, dtype=case.dtype, backend=name, median_s=t,
                       gflops=gflops, pct_peak=pct, speedup_vs_numpy=speed, max_abs_err=err, **case.notes)
            results.append(row)
            print(f"{case.op:<22} {case.shape:<26} {case.dtype:<8} {name:<12} {_fmt_time(t):>11} "
                  f"{_fmt_num(gflops, 8, '.1f')} {_fmt_num(pct, 5, '.1f', '%')} {speed:8.2f}x {err:9.1e}", file=out,
                  flush=True)
        del inputs, reference
    if args.json:
        meta = dict(info=fastsim.info(), peak_gflops=peak, full=args.full, time=time.strftime("%Y-%m-%d %H:%M:%S"))
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=1, default=float)
        print(f"saved {args.json}", file=out)
    if args.plot:
        plot(results, args.plot)
        print(f"saved {args.plot}", file=out)
    return results


PLOT_HINT = "--plot needs matplotlib (python -m pip install matplotlib)"


def plot(results: list[dict], path: str) -> None:
    """Bar chart of the speedup over NumPy per case and backend (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(PLOT_HINT) from None
    labels = []
    for r in results:
        key = f"{r['op']}\n{r['shape']}\n{r['dtype']}"
        if key not in labels:
            labels.append(key)
    backends = [b for b in dict.fromkeys(r["backend"] for r in results)]
    width = 0.8 / max(1, len(backends))
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(labels)), 5))
    for bi, be in enumerate(backends):
        xs, ys = [], []
        for li, lab in enumerate(labels):
            for r in results:
                if r["backend"] == be and f"{r['op']}\n{r['shape']}\n{r['dtype']}" == lab:
                    xs.append(li + bi * width)
                    ys.append(r["speedup_vs_numpy"])
        ax.bar(xs, ys, width, label=be)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(labels)) + width * (len(backends) - 1) / 2)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("speedup over NumPy (higher is better)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"fastsim {fastsim.__version__}: median time ratio to the NumPy baseline")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="benchmark every backend against NumPy")
    b.add_argument("--full", action="store_true", help="run every case (default: a quick representative set)")
    b.add_argument("--json", metavar="PATH", help="save the results as JSON")
    b.add_argument("--plot", metavar="PATH", help="save a bar chart (needs matplotlib)")
    b.add_argument("--ops", type=lambda s: s.split(","), default=None,
                   help=f"comma-separated subset of {AREAS + EXTRA_AREAS}")
    b.add_argument("--threads", type=int, default=None,
                   help="threads for every library timed: fastsim's cpp and numba kernels, NumPy's BLAS, "
                        "PyTorch and FAISS (default: all cores)")
    b.add_argument("--max-time", type=float, default=2.0, help="max seconds of timing per runner")
    b.add_argument("--rounds", type=int, default=3,
                   help="interleaved timing rounds per case (every runner is timed once per round)")
    b.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    b.add_argument("--rows", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="mining: comma-separated corpus sizes (default 50000; --full: 200000,1000000)")
    sub.add_parser("info", help="print version, backends, SIMD level and threads")
    _cli_train.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command in _cli_train.COMMANDS:
        return _cli_train.run(args)
    if args.command == "info":
        for k, v in fastsim.info().items():
            print(f"{k}: {v}")
        return 0
    if args.ops:
        unknown = set(args.ops) - set(AREAS) - set(EXTRA_AREAS)
        if unknown:
            parser.error(f"--ops: unknown {sorted(unknown)}; choose from {AREAS + EXTRA_AREAS}")
        if set(args.ops) & set(EXTRA_AREAS) and not set(args.ops) <= set(EXTRA_AREAS):
            parser.error(f"--ops: run {EXTRA_AREAS} on their own")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error(PLOT_HINT)  # before the run, not after it
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be a positive number of threads; got {args.threads}")
        fastsim.set_num_threads(args.threads)
    with limit_blas_threads(fastsim.get_num_threads()):
        run(args)
    return 0


def limit_blas_threads(n: int):
    """A context in which NumPy's and SciPy's BLAS (and any other OpenMP or
    BLAS pool threadpoolctl knows) use at most ``n`` threads, so that
    ``--threads`` holds for every library timed; fastsim's own kernels, Numba,
    PyTorch (``torch.set_num_threads``) and FAISS (``omp_set_num_threads``)
    are set from ``fastsim.get_num_threads()`` by the cases themselves."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a dependency of fastsim; absent only in a broken install
        return contextlib.nullcontext()
    return threadpool_limits(limits=n)
