"""Peak memory of the fused triplet loss + gradient at a batch whose score matrix would not fit.

    python bench/triplet_memory.py --b 65536 --d 256 --backend cpp

Reports the peak resident-set growth of this process during one
``value_and_grad`` call, minus the gradient outputs, next to the size the
b x b score matrix would have had.  Run it in a fresh process: the peak RSS
counter (ru_maxrss) only ever grows.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastsim
from fastsim._bench.common import peak_rss_bytes
from fastsim.triplet import value_and_grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--b", type=int, default=65536)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--backend", default="cpp")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    dt = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    # built in place so that no temporary raises the peak before the measurement
    v1 = rng.standard_normal((args.b, args.d), dtype=dt)
    v2 = rng.standard_normal((args.b, args.d), dtype=dt)
    v2 *= 2.0  # positives near 0.45: hinges active, so the gradient does real work
    v2 += v1
    value_and_grad(v1[:64], v2[:64], backend=args.backend)  # load and compile outside the measurement
    before = peak_rss_bytes()
    t0 = time.perf_counter()
    cost, (g1, g2) = value_and_grad(v1, v2, backend=args.backend)
    elapsed = time.perf_counter() - t0
    growth = peak_rss_bytes() - before
    outputs = g1.nbytes + g2.nbytes
    matrix = args.b * args.b * dt.itemsize
    mib = 1 << 20
    print(f"fastsim {fastsim.__version__} backend={args.backend} b={args.b} d={args.d} {dt.name} "
          f"threads={fastsim.get_num_threads()}")
    print(f"cost = {float(cost):.6g}, time {elapsed:.2f} s, {2.0 * args.b * args.b * args.d / elapsed * 1e-9:.1f} GFLOP/s")
    print(f"peak RSS growth {growth / mib:.1f} MiB, of which gradients {outputs / mib:.1f} MiB: "
          f"extra {(growth - outputs) / mib:.1f} MiB (the score matrix would be {matrix / mib:.0f} MiB)")


if __name__ == "__main__":
    main()
