"""Backend selection, thread control and run-time information.

Every public function takes ``backend="auto" | "numpy" | "numba" | "cpp"`` and
resolves it here with :func:`resolve`.  ``"auto"`` prefers the compiled core,
then Numba, then the NumPy reference.  Asking explicitly for a backend that is
not available raises ``ValueError`` naming it (never a silent fallback).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
import warnings

from . import _env

BACKENDS = ("numpy", "numba", "cpp")

try:  # the compiled extension; absent only in a broken or source-only install
    from . import _core  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _core = None
    _CORE_IMPORT_ERROR: ImportError | None = exc
else:
    _CORE_IMPORT_ERROR = None

_MAX_THREADS = 2**31 - 1  # the compiled core stores the count in a C int
_numba_ok: bool | None = None
_numba_threads: int | None = None


def _numba_available() -> bool:
    """Whether Numba is installed (and not disabled), found without importing
    it: importing Numba takes 0.3-0.6 s, which a process that only runs the
    compiled kernels should not pay on its first ``backend="auto"`` call."""
    global _numba_ok
    if _numba_ok is None:
        _numba_ok = not _env.DISABLE_NUMBA and importlib.util.find_spec("numba") is not None
    return _numba_ok


def _numba_pool_started() -> bool:
    """Whether Numba has started its threading layer in this process.

    ``numba.get_num_threads`` and ``numba.set_num_threads`` start it.  Its
    OpenMP layer loads the system libgomp and turns nested parallelism on
    (max active levels 255); a PyTorch imported afterwards then shares that
    runtime, and its nested regions oversubscribe the cores (``nn.GRU`` at
    B = 64, T = 64 ran 200-260 ms instead of 20-25).  fastsim therefore starts
    the pool only when a Numba kernel is first used, never from ``info`` or
    ``set_num_threads``.
    """
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(getattr(parallel, "_is_initialized", False))


def available_backends() -> list[str]:
    """The backends usable in this process, fastest first."""
    out = []
    if _core is not None:
        out.append("cpp")
    if _numba_available():
        out.append("numba")
    out.append("numpy")
    return out


def resolve(backend: str, supported: tuple[str, ...] = BACKENDS) -> str:
    """Turn a user's ``backend=`` argument into a concrete backend name.

    ``supported`` lists the backends the calling operation implements.
    """
    if type(backend) is str and backend == "auto" and _core is not None and "cpp" in supported:
        return "cpp"  # the common call, first
    if not isinstance(backend, str):
        msg = f"backend must be a str, one of 'auto', {', '.join(map(repr, BACKENDS))}; got {type(backend).__name__}"
        raise TypeError(msg)
    if backend == "auto":
        for name in available_backends():
            if name in supported:
                return name
        return "numpy"
    if backend not in BACKENDS:
        msg = f"backend must be 'auto' or one of {', '.join(map(repr, BACKENDS))}; got {backend!r}"
        raise ValueError(msg)
    if backend not in supported:
        msg = f"backend={backend!r} is not implemented for this operation; supported: {supported}"
        raise ValueError(msg)
    if backend == "cpp" and _core is None:
        msg = f"backend='cpp' is not available: the compiled extension failed to import ({_CORE_IMPORT_ERROR})"
        raise ValueError(msg)
    if backend == "numba" and not _numba_available():
        msg = "backend='numba' is not available: numba is not installed (or FASTSIM_DISABLE_NUMBA is set)"
        raise ValueError(msg)
    return backend


def numba_module(area: str):
    """Import ``fastsim._numba.<area>`` lazily (compiling Numba kernels is slow)."""
    mod = importlib.import_module(f"fastsim._numba.{area}")
    if _numba_threads is not None:
        import numba

        numba.set_num_threads(min(_numba_threads, numba.config.NUMBA_NUM_THREADS))
    return mod


def core():
    """The compiled module; only call after ``resolve`` returned ``"cpp"``."""
    return _core


# --------------------------------------------------------------------------- threads


def set_num_threads(n: int) -> None:
    """Set the number of threads used by the cpp and numba kernels.

    The initial value comes from ``FASTSIM_NUM_THREADS`` (default: all cores).
    Without OpenMP compiled in, the cpp backend stays single-threaded and a
    ``RuntimeWarning`` says so when more than one thread is asked for.
    """
    global _numba_threads
    from ._validation import check_positive_int

    n = check_positive_int(n, "n")
    if n > _MAX_THREADS:
        msg = f"n must be at most {_MAX_THREADS}; got {n}"
        raise ValueError(msg)
    if _core is not None:
        if not _core.openmp_enabled() and n > 1:
            warnings.warn(
                "fastsim was built without OpenMP: the cpp backend runs single-threaded",
                RuntimeWarning,
                stacklevel=2,
            )
        _core.set_num_threads(n)
    _numba_threads = n
    if _numba_pool_started():  # otherwise numba_module() applies it when a Numba kernel is first used
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def get_num_threads() -> int:
    """The number of threads the cpp kernels use."""
    if _core is not None:
        return int(_core.get_num_threads())
    if _numba_threads is not None:
        return _numba_threads
    return os.cpu_count() or 1


def _apply_env() -> None:
    """Hand the ``FASTSIM_*`` settings read by ``fastsim._env`` to the kernels (at import)."""
    if _env.NUM_THREADS is not None:
        set_num_threads(_env.NUM_THREADS)
    if _core is None:
        return
    if _env.SIMD is not None:
        if _env.SIMD == "best" or _env.SIMD in _core.simd_levels():
            _core.set_simd_level(_env.SIMD)
        else:
            _env.warn_unknown_simd(list(_core.simd_levels()))
    if _env.GEMM_BLOCK_BYTES is not None:
        _core.set_gemm_block_bytes(_env.GEMM_BLOCK_BYTES)
    _core.set_rnn_projection(-1 if _env.RNN_PROJECT is None else _env.RNN_PROJECT)


# --------------------------------------------------------------------------- SIMD level


def simd_levels() -> list[str]:
    """SIMD levels compiled in and supported by this CPU, best first."""
    if _core is None:
        return []
    return list(_core.simd_levels())


def set_simd_level(level: str | None) -> str:
    """Force the cpp kernels to one SIMD level (``None`` restores the best).

    Mostly for tests and benchmarks; ``FASTSIM_SIMD`` sets it at import time.
    Returns the level now in use.
    """
    if _core is None:
        msg = "set_simd_level needs the compiled extension"
        raise RuntimeError(msg)
    if level is None:
        level = "best"
    if level != "best" and level not in _core.simd_levels():
        msg = f"level must be one of {list(_core.simd_levels())} or None; got {level!r}"
        raise ValueError(msg)
    _core.set_simd_level(level)
    return str(_core.simd_level())


def info() -> dict:
    """Version, backends, SIMD level, threads and build options, as a dict."""
    from . import __version__

    d: dict = {
        "version": __version__,
        "backends": available_backends(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if _core is not None:
        d.update(
            simd_level=str(_core.simd_level()),
            simd_levels=list(_core.simd_levels()),
            num_threads=int(_core.get_num_threads()),
            openmp=bool(_core.openmp_enabled()),
            compiler=str(_core.compiler()),
        )
    else:
        d.update(simd_level=None, simd_levels=[], num_threads=get_num_threads(), openmp=False,
                 core_error=str(_CORE_IMPORT_ERROR))
    if _numba_available():
        d["numba"] = importlib.metadata.version("numba")
        if _numba_threads is not None:
            d["numba_threads"] = _numba_threads
        elif _numba_pool_started():
            import numba

            d["numba_threads"] = numba.get_num_threads()
        else:  # Numba's default, read as Numba reads it, without importing it
            d["numba_threads"] = _env.NUMBA_NUM_THREADS or (os.cpu_count() or 1)
    return d
