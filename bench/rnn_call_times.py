"""Per-call times of the recurrent layers as users call them: small and mid-size calls, the encoder.

Prints one JSON object of medians (seconds).  To compare two builds, run it
once per build in turn (PYTHONPATH pointing at the other one), alternating.
"""

from __future__ import annotations

import json
import time

import numpy as np

import fastsim


def median_time(fn, n):
    fn()
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    rng = np.random.default_rng(0)
    small = fastsim.LSTM(128, 128, seed=0)
    x50 = rng.standard_normal((1, 50, 128)).astype(np.float32)
    x4 = rng.standard_normal((1, 4, 128)).astype(np.float32)
    big = fastsim.LSTM(128, 256, seed=0)
    x64 = rng.standard_normal((64, 64, 128)).astype(np.float32)
    gru = fastsim.GRU(128, 128, bidirectional=True, seed=0)
    emb = rng.standard_normal((41699, 128)).astype(np.float32)
    enc = fastsim.SiameseEncoder(emb, fastsim.LSTM(128, 128, seed=1), "mean")
    ids = rng.integers(1, 41699, size=(256, 32))
    enc.encode(rng.integers(1, 41699, size=(400, 128)))  # past V tokens: the projected table is used
    out = {}
    for be in ("cpp", "numba", "numpy"):
        n = 200 if be != "numpy" else 20
        out[f"lstm(1,50,128,128) {be}"] = median_time(lambda be=be: small(x50, backend=be), n)
        out[f"lstm(1,4,128,128) {be}"] = median_time(lambda be=be: small(x4, backend=be), n)
    out["lstm(64,64,128,256) cpp"] = median_time(lambda: big(x64, backend="cpp"), 30)
    out["gru bi (64,64,128,128) cpp"] = median_time(lambda: gru(x64, backend="cpp"), 30)
    out["encoder (256,32) cpp"] = median_time(lambda: enc.encode(ids, backend="cpp"), 30)
    out["encoder (256,32) numba"] = median_time(lambda: enc.encode(ids, backend="numba"), 10)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
