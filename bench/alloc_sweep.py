"""The default cosine matrix call (a fresh result) against the same call into a
preallocated ``out=`` and NumPy's ``normalize + @``, from 64 x 64 to 16384 x 16384.

    python bench/alloc_sweep.py [--sizes 64,256,1024,4096,16384] [--d 256]

Every size times the three calls in interleaved rounds in this process
(fastsim._bench.common.time_rounds) and prints the medians and the ratios
default / out= and NumPy / default.
"""

from __future__ import annotations

import argparse

import numpy as np

import fastsim
from fastsim._bench.common import time_rounds
from fastsim._bench.cosine import numpy_normalize_matmul


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")],
                        default=[64, 256, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    info = fastsim.info()
    print(f"simd={info['simd_level']} threads={info['num_threads']} d={args.d} dtype={args.dtype}")
    print(f"{'m = n':>7} {'default':>11} {'out=':>11} {'numpy':>11} {'default/out=':>13} {'numpy/default':>14}")
    for n in args.sizes:
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, args.d)).astype(args.dtype)
        b = rng.standard_normal((n, args.d)).astype(args.dtype)
        out = np.empty((n, n), args.dtype)
        big = n >= 8192
        fns = {
            "default": lambda a=a, b=b: fastsim.cosine_similarity_matrix(a, b),
            "out": lambda a=a, b=b, out=out: fastsim.cosine_similarity_matrix(a, b, out=out),
            "numpy": lambda a=a, b=b: numpy_normalize_matmul(a, b),
        }
        times, _ = time_rounds(fns, rounds=3, min_repeats=3 if big else 9, min_time=0.3 if big else 0.6,
                               max_time=30.0)
        t = {k: float(v) for k, v in times.items()}
        unit, scale = ("ms", 1e3)
        print(f"{n:>7} {t['default'] * scale:>8.2f} {unit} {t['out'] * scale:>8.2f} {unit} {t['numpy'] * scale:>8.2f} {unit} "
              f"{t['default'] / t['out']:>13.3f} {t['numpy'] / t['default']:>14.3f}", flush=True)
        del a, b, out


if __name__ == "__main__":
    main()
