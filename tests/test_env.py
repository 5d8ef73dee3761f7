"""The FASTSIM_* environment variables: read once at import (fastsim._env),
applied to the kernels, bad values refused or warned about by name.  Each
case runs a fresh interpreter, since the variables are read at import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fastsim

needs_cpp = pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="compiled core not available")


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FASTSIM_")}
    return subprocess.run([sys.executable, "-W", "default", "-c", code], env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)


@needs_cpp
def test_every_variable_reaches_the_kernels():
    code = ("import fastsim; from fastsim import _backend as b; c = b.core(); "
            "print(fastsim.get_num_threads(), c.simd_level(), c.gemm_block_bytes(), c.rnn_projection(), "
            "'numba' in fastsim.available_backends())")
    level = fastsim.simd_levels()[-1]
    done = _run(code, FASTSIM_NUM_THREADS="1", FASTSIM_SIMD=level, FASTSIM_GEMM_BLOCK_BYTES="65536",
                FASTSIM_RNN_PROJECT="0", FASTSIM_DISABLE_NUMBA="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", level, "65536", "0", "False"]
    done = _run(code)
    assert done.returncode == 0, done.stderr
    threads, best, _, projection, _ = done.stdout.split()
    assert best == fastsim.simd_levels()[0] and projection == "-1" and int(threads) >= 1


@pytest.mark.parametrize(("name", "value"), [("FASTSIM_NUM_THREADS", "0"), ("FASTSIM_NUM_THREADS", "two"),
                                             ("FASTSIM_GEMM_BLOCK_BYTES", "-5"), ("FASTSIM_RNN_PROJECT", "yes")])
def test_bad_values_raise_naming_the_variable(name, value):
    done = _run("import fastsim", **{name: value})
    assert done.returncode != 0
    assert "ValueError" in done.stderr and name in done.stderr and repr(value) in done.stderr


@needs_cpp
def test_an_unknown_simd_level_warns_and_runs_the_best():
    done = _run("import fastsim; print(fastsim.info()['simd_level'])", FASTSIM_SIMD="sse9")
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" in done.stderr and "FASTSIM_SIMD='sse9'" in done.stderr
    assert done.stdout.strip() == fastsim.simd_levels()[0]


def test_the_readme_documents_every_variable():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    names = set(re.findall(r"FASTSIM_[A-Z_]+", (root / "python" / "fastsim" / "_env.py").read_text()))
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Environment variables"):]
    assert names and all(n in section for n in names), sorted(n for n in names if n not in section)
