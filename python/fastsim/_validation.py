"""Input checks and conversions shared by every public function.

One place for the rules, so every function answers bad input the same way:

* float32 and float64 pass through; integers, bools and float16 become float32;
  complex, object and other dtypes raise ``TypeError`` naming the argument.
* wrong ``ndim`` or inconsistent shapes raise ``ValueError`` naming the argument
  and what was expected.
* non-contiguous, negative-stride and misaligned arrays are accepted; kernels
  get a C-contiguous, aligned copy through :func:`contiguous` when needed.
* integer arrays (sequence lengths, token ids) must have an integer dtype
  (``TypeError`` otherwise) and lie in their range (``ValueError``).
* scalars: options must be one of their choices, counts ints within range,
  flags real bools, margins and thresholds finite real numbers.
* ``out`` arrays must be ndarrays of the exact shape and dtype, C-contiguous,
  writeable and share no memory with any input.

Every public function calls these helpers before it resolves its backend, so no
argument reaches a compiled kernel unchecked.  The README's section "Reference:
bad input and special values" lists the rules per function, and
``tests/test_validation.py`` checks every row of it.
"""

from __future__ import annotations

import math
import numbers
import sys
import threading

import numpy as np

from . import _env

_FLOAT_KINDS = (np.float32, np.float64)
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_TooHardError = getattr(getattr(np, "exceptions", np), "TooHardError", RuntimeError)


def _convert_dtype(dt: np.dtype, name: str) -> np.dtype:
    if dt is _F32 or dt is _F64 or dt == _F32 or dt == _F64:
        return dt
    if dt.kind in "iub" or (dt.kind == "f" and dt.itemsize <= 4):  # float16, and float32 of either byte order
        return _F32
    if dt.kind == "f":  # float64 of either byte order; longdouble: the precision users asked for, as far as we can
        return _F64
    msg = f"{name} must hold real numbers (float32/float64, or integers/float16 converted to float32); got dtype {dt}"
    raise TypeError(msg)


def as_float_array(x, name: str, *, ndim: int | tuple[int, ...] | None = None, dtype=None) -> np.ndarray:
    """Return ``x`` as a float32/float64 ndarray, checking ``ndim``.

    ``dtype`` forces the result dtype (after the kind check); otherwise the
    rules in the module docstring apply.  No copy is made when none is needed.
    """
    if isinstance(x, np.ndarray):
        arr = x
    else:
        if x is None:
            msg = f"{name} must be an array, got None"
            raise TypeError(msg)
        try:
            arr = np.asarray(x)
        except ValueError as exc:  # ragged nested sequences
            msg = f"{name} must be a rectangular (not ragged) array of numbers: {exc}"
            raise ValueError(msg) from None
        except TypeError as exc:
            msg = f"{name} must be convertible to a numeric array: {exc}"
            raise TypeError(msg) from None
    target = _convert_dtype(arr.dtype, name)
    if dtype is not None:
        target = np.dtype(dtype)
    if arr.dtype != target:
        arr = arr.astype(target)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            msg = f"{name} must be {want}; got an array of shape {arr.shape}"
            raise ValueError(msg)
    return arr


def as_int_array(x, name: str, *, what: str = "integers", integral_floats: bool = False) -> np.ndarray:
    """``x`` as an ndarray of an integer dtype; bools and other dtypes raise ``TypeError`` naming ``name``.

    With ``integral_floats`` a float array whose values are all whole numbers
    (``[3.0, 5.0]``) is accepted and converted to int64.  An empty list is
    accepted as an empty int64 array.
    """
    try:
        arr = np.asarray(x)
    except ValueError as exc:  # ragged nested sequences
        msg = f"{name} must be a rectangular (not ragged) array of {what}: {exc}"
        raise ValueError(msg) from None
    if arr.dtype.kind in "iu":
        return arr
    if (integral_floats and arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))):
        return arr.astype(np.int64)
    if arr.size == 0 and arr.dtype.kind == "f":  # np.asarray([]) is float64
        return arr.astype(np.int64)
    msg = f"{name} must hold {what} (an integer dtype); got dtype {arr.dtype}"
    raise TypeError(msg)


def check_shape(a: np.ndarray, shape: tuple, name: str, what: str) -> np.ndarray:
    """``a.shape == shape``, or ValueError naming ``name`` and explaining ``what`` the axes are."""
    if a.shape != tuple(shape):
        msg = f"{name} must have shape {tuple(shape)} ({what}); got {a.shape}"
        raise ValueError(msg)
    return a


def check_same_shape(arrays, names, what: str, *, noun: str = "shape") -> None:
    """All ``arrays`` of one shape; ``what`` says why they must match (``noun``: "shape" or "length")."""
    shapes = [a.shape for a in arrays]
    if any(s != shapes[0] for s in shapes[1:]):
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        got = " and ".join(str(s) for s in shapes)
        msg = f"{listed} must have the same {noun} ({what}); got {got}"
        raise ValueError(msg)


def check_same_columns(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    """Two 2-D arrays with the same number of columns (the feature dimension d)."""
    if a.shape[1] != b.shape[1]:
        msg = (f"{names[0]} and {names[1]} must have the same number of columns (d); "
               f"got {a.shape[1]} and {b.shape[1]}")
        raise ValueError(msg)


def check_float_dtype(dtype, name: str = "dtype") -> np.dtype:
    """``dtype`` as ``np.dtype``, which must be float32 or float64 (TypeError otherwise)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        msg = f"{name} must be float32 or float64; got {dtype!r}"
        raise TypeError(msg)
    return dt


def check_bool(value, name: str) -> bool:
    """A Python or NumPy bool (not merely truthy: ``"no"`` or ``2`` are mistakes)."""
    if not isinstance(value, (bool, np.bool_)):
        msg = f"{name} must be a bool; got {type(value).__name__}"
        raise TypeError(msg)
    return bool(value)


def kernel_array(x, name: str, ndim: int) -> np.ndarray:
    """``x`` as a float32/float64 array of ``ndim`` dimensions that a kernel can
    take as it is (C-contiguous, aligned), converted and checked by the rules
    above when it is anything else.

    The common call, a plain C-contiguous float array, costs a few attribute
    reads: this is the whole of the checks the compiled entry points rely on,
    so it must stay cheap (a 64 x 64 x 128 cosine matrix is ~11 us).
    """
    if type(x) is np.ndarray and x.ndim == ndim and (x.dtype is _F32 or x.dtype is _F64):
        flags = x.flags
        if flags.c_contiguous and flags.aligned:
            return x
    arr = as_float_array(x, name, ndim=ndim)
    return contiguous(arr, arr.dtype)


def kernel_pair(a, b, names: tuple[str, str], ndim: int):
    """Two arguments as kernel arrays of one float dtype (``kernel_array`` and
    ``common_dtype`` in one call): the common call, two plain C-contiguous
    arrays of one float dtype, is decided with one test per property, since
    small calls (a pair of vectors is ~1 us of kernel) feel every step."""
    if type(a) is np.ndarray and type(b) is np.ndarray:
        dt = a.dtype
        if b.dtype is dt and (dt is _F32 or dt is _F64) and a.ndim == ndim and b.ndim == ndim:
            fa, fb = a.flags, b.flags
            if fa.c_contiguous and fb.c_contiguous and fa.aligned and fb.aligned:
                return a, b
    return common_dtype(kernel_array(a, names[0], ndim), kernel_array(b, names[1], ndim))


def common_dtype(a: np.ndarray, b: np.ndarray | None):
    """``a`` and ``b`` (kernel arrays, or ``b`` None) in their result dtype."""
    if b is None or a.dtype is b.dtype:
        return a, b
    dt = result_dtype(a, b)
    return contiguous(a, dt), contiguous(b, dt)


def result_dtype(*arrays: np.ndarray) -> np.dtype:
    """float64 if any input is float64, else float32."""
    for a in arrays:
        if a is not None and (a.dtype is _F64 or a.dtype == _F64):
            return _F64
    return _F32


def contiguous(a: np.ndarray, dtype) -> np.ndarray:
    """``a`` as a C-contiguous, aligned array of ``dtype``, copied only when needed.

    Aligned: a view into a byte buffer at an odd offset is contiguous but its
    elements straddle their natural boundaries, which the compiled kernels'
    scalar loads must not see.
    """
    out = np.ascontiguousarray(a, dtype=dtype)
    return out if out.flags.aligned else out.copy()


def check_out(out, shape: tuple[int, ...], dtype, *, name: str = "out", inputs: dict | None = None) -> np.ndarray:
    """Check a user-supplied output array: ndarray, shape, dtype, writeable, C-contiguous, no overlap.

    ``inputs`` maps argument names to the arrays ``out`` must not share memory with.
    """
    if not isinstance(out, np.ndarray):
        msg = f"{name} must be a numpy.ndarray; got {type(out).__name__}"
        raise TypeError(msg)
    if out.shape != tuple(shape):
        msg = f"{name} must have shape {tuple(shape)}; got {out.shape}"
        raise ValueError(msg)
    if out.dtype is not dtype and out.dtype != np.dtype(dtype):
        msg = f"{name} must have dtype {np.dtype(dtype)}; got {out.dtype}"
        raise TypeError(msg)
    flags = out.flags
    if not flags.writeable:
        msg = f"{name} must be writeable"
        raise ValueError(msg)
    if not flags.c_contiguous:
        msg = f"{name} must be C-contiguous"
        raise ValueError(msg)
    for arg, a in (inputs or {}).items():
        if a is not None and _overlaps(out, a):
            msg = f"{name} must not overlap the inputs; it shares memory with {arg}"
            raise ValueError(msg)
    return out


def _overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact memory overlap, or True when that is too costly to decide."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=1 << 16))
    except _TooHardError:
        return True


def check_finite_scalar(value, name: str) -> float:
    """A finite real number, as a Python float.

    Python and NumPy numbers are accepted, and so are 0-d arrays and 0-d
    tensors of a real dtype; NaN and infinities raise ``ValueError``.
    """
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item") and not isinstance(value, np.generic):
        value = value.item()  # a 0-d array or tensor: its Python number is checked below
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        msg = f"{name} must be a real number; got {type(value).__name__}"
        raise TypeError(msg)
    v = float(value)
    if not math.isfinite(v):
        msg = f"{name} must be finite; got {v}"
        raise ValueError(msg)
    return v


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        msg = f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}"
        raise ValueError(msg)
    return value


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        msg = f"{name} must be an int; got {type(value).__name__}"
        raise TypeError(msg)
    v = int(value)
    if v < minimum:
        msg = f"{name} must be >= {minimum}; got {v}"
        raise ValueError(msg)
    return v


def check_lengths(lengths, batch: int, max_len: int, *, name: str = "lengths") -> np.ndarray:
    """Sequence lengths as a contiguous int64 array of shape (batch,), each within 1..max_len."""
    arr = as_int_array(lengths, name, integral_floats=True)
    if arr.shape != (batch,):
        msg = f"{name} must have shape ({batch},) (one length per sequence); got {arr.shape}"
        raise ValueError(msg)
    if arr.size and (arr.min() < 1 or arr.max() > max_len):
        msg = f"{name} must lie within 1..{max_len} (the sequence axis); got values in {int(arr.min())}..{int(arr.max())}"
        raise ValueError(msg)
    return contiguous(arr, np.int64)


SMALL_RESULT_BYTES = 1 << 16  # the same threshold as kSmallResultBytes in cpp/bindings/arrays.hpp


def _ref_counts(bufs: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(buf) for buf in bufs]


# the count of a buffer that only the cache's list refers to, as _ref_counts sees it
_UNREFERENCED = _ref_counts([np.empty(1, dtype=np.uint8)])[0]


class _ResultCache:
    """Large result buffers kept after their arrays die, for the next result of the same size.

    A fresh result of many MiB costs its first touch: the kernel clears every
    page as the GEMM first writes it (a 4096 x 4096 float32 cosine matrix
    took 1.17x the time of the same call into a preallocated ``out=``, 8192 x
    8192 1.12x).  A caller that asks for results of one size again and again
    (a loop over batches, chunks of a corpus) gets the pages of a result it
    has already dropped instead.  The cache holds the raw buffers; a buffer
    is free when nothing but the cache refers to it (no array, view or
    exported buffer of it is alive), which CPython's reference count tells.
    At most ``limit`` bytes are ever held this way (buffers beyond it are
    plain NumPy arrays, freed with their arrays); :func:`fastsim.empty_cache`
    releases the free ones.
    """

    MIN_BYTES = 4 << 20

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._buffers: list[np.ndarray] = []
        self._held = 0

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            bufs = self._buffers
            counts = _ref_counts(bufs)
            for i in range(len(bufs) - 1, -1, -1):  # the most recently used first
                if counts[i] <= _UNREFERENCED and bufs[i].nbytes == nbytes:
                    buf = bufs.pop(i)
                    bufs.append(buf)
                    return buf
            if self._held + nbytes > self.limit:
                self._evict(self._held + nbytes - self.limit, counts)
            raw = np.empty(nbytes, dtype=np.uint8)
            if self._held + nbytes <= self.limit:
                bufs.append(raw)
                self._held += nbytes
            return raw

    def _evict(self, need: int, counts: list[int]) -> int:
        freed = 0
        keep = []
        for buf, count in zip(self._buffers, counts):  # least recently used first
            if freed < need and count <= _UNREFERENCED:
                freed += buf.nbytes
            else:
                keep.append(buf)
        self._buffers[:] = keep
        self._held -= freed
        return freed

    def clear(self) -> int:
        """Drop every free buffer; the bytes released."""
        with self._lock:
            return self._evict(self._held + 1, _ref_counts(self._buffers))

    @property
    def held(self) -> int:
        return self._held


RESULT_CACHE = _ResultCache(_env.RESULT_CACHE_BYTES)


def empty_cache() -> int:
    """Release the buffers of dropped results that fastsim keeps for reuse; returns the bytes released.

    Results of 4 MiB and more are allocated from buffers of results of the
    same size that the caller has dropped (at most
    ``FASTSIM_RESULT_CACHE_BYTES``, 1 GiB by default), so that a loop of
    calls does not pay the first touch of fresh pages on every call.  Those
    buffers stay in the process's resident set until reused or released here.
    Results still alive are never touched.
    """
    return RESULT_CACHE.clear()


def empty_aligned(shape, dtype, align: int = 64, *, small: int = SMALL_RESULT_BYTES) -> np.ndarray:
    """Uninitialized C-contiguous array whose data starts on an ``align``-byte boundary.

    Large outputs are written with full-vector (and, past the caches,
    non-temporal) stores, which want aligned rows.  Arrays under ``small``
    bytes come straight from ``np.empty``: the compiled kernels accept any
    alignment, and for a 64 x 64 result the over-allocation and the address
    lookup cost more than the kernel's split stores.

    This is where every result fastsim allocates comes from, the compiled
    core's included (cpp/bindings/arrays.hpp ``new_result`` calls it): NumPy's
    allocator offers arrays of 4 MiB and more to transparent huge pages, and
    results of 4 MiB and more reuse the buffers of dropped results of the
    same size (:class:`_ResultCache`), so a fresh result costs about what
    writing into a preallocated one does.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < small:
        return np.empty(shape, dtype)
    size = nbytes + align
    raw = RESULT_CACHE.take(size) if size >= _ResultCache.MIN_BYTES else np.empty(size, dtype=np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)
