"""Hard-negative mining and the modified triplet loss of the course, forward and gradient.

Batch convention: ``v1`` and ``v2`` of shape (b, d); row ``i`` of ``v1`` and row
``i`` of ``v2`` are duplicates, every other pairing is a negative.  The scores
are ``s[i, j] = cos(v2[i], v1[j])``, so the positive of row ``i`` is ``s[i, i]``.
Per row, ``L1 = max(mean_negative - positive + margin, 0)``,
``L2 = max(closest_negative - positive + margin, 0)`` and ``loss = L1 + L2``;
:mod:`fastsim._reference.triplet` is the executable specification.

The fused functions (:func:`modified_triplet_loss`,
:func:`modified_triplet_loss_grad`, :func:`value_and_grad`) never form the
(b, b) score matrix outside the NumPy reference: the kernels stream GEMM tiles
into per-row running maxima, and the gradient is O(b d) once the forward has
found each row's closest negative.

Backend dispatch
----------------
Every kernel is reached through two internal functions::

    _forward(be, v1, v2, empty_code) -> (positive, mean_negative, closest_negative, closest_index)
    _backward(be, v1, v2, closest_index, active1, active2, weight) -> (grad_v1, grad_v2)

* ``be``: a resolved backend name.
* ``v1``, ``v2``: C-contiguous (b, d) arrays of one dtype (float32 or
  float64), ``b >= 2``, ``d >= 1``.
* ``empty_code``: 0 for ``empty="shift"``, 1 for ``"floor"``.
* ``positive``, ``mean_negative``, ``closest_negative``: new (b,) arrays of the
  input dtype; ``closest_index``: int64 (b,), the column of the closest
  negative, -1 where it is the constant -2 or NaN.
* ``active1``, ``active2``: uint8 (b,), 1 where ``L1`` (``L2``) is strictly
  positive; ``closest_index`` as returned by ``_forward``.
* ``weight``: the weight of every row in the cost (1 for a sum, 1/b for a
  mean), a float, or one float64 weight per row, which ``fastsim.torch``
  needs for ``reduction="none"``.
* ``grad_v1``, ``grad_v2``: new C-contiguous (b, d) arrays of the input dtype,
  ``d cost / d v1`` and ``d cost / d v2`` for ``cost = sum_i weight_i loss_i``.

The compiled kernels ``_backend.core().triplet_forward(v1, v2, empty_code)`` and
``_backend.core().triplet_backward(v1, v2, closest_index, active1, active2,
weight)`` have exactly these contracts.  :func:`hard_negatives` works on a
precomputed matrix: ``_hard_negatives(be, sim, empty_code)`` with ``sim`` a
C-contiguous (b, b) float32/float64 array, the same four results;
``_backend.core().hard_negatives(sim, empty_code)`` is its compiled kernel
(one vector pass per row, rows in parallel).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _backend
from ._reference import triplet as _ref
from ._validation import (as_float_array, check_bool, check_choice, check_finite_scalar, check_same_shape, contiguous,
                          kernel_pair, result_dtype)

__all__ = [
    "HardNegatives",
    "TripletLossParts",
    "hard_negatives",
    "modified_triplet_loss",
    "modified_triplet_loss_grad",
    "triplet_loss",
    "value_and_grad",
]

_SUPPORTED = ("numpy", "numba", "cpp")
_HARD_NEGATIVES_SUPPORTED = ("numpy", "numba", "cpp")

_EMPTY_CODES = {"shift": 0, "floor": 1}
_REDUCTIONS = ("sum", "mean", "none")


@dataclass(frozen=True)
class HardNegatives:
    """Per-row hard-negative statistics of a square score matrix.

    Attributes
    ----------
    positive : ndarray, shape (b,)
        ``s[i, i]``.
    mean_negative : ndarray, shape (b,)
        Mean of the off-diagonal scores of row ``i``.
    closest_negative : ndarray, shape (b,)
        Largest off-diagonal score not above the positive, or the ``empty``
        fallback; NaN when the row holds NaN.
    closest_index : ndarray of int64, shape (b,)
        Its column (lowest on ties); -1 where ``closest_negative`` is the
        constant -2 or NaN.
    """

    positive: np.ndarray
    mean_negative: np.ndarray
    closest_negative: np.ndarray
    closest_index: np.ndarray


@dataclass(frozen=True)
class TripletLossParts:
    """Everything the modified triplet loss computes, row by row.

    Attributes
    ----------
    cost : numpy scalar or ndarray
        The reduced loss: the sum or mean of ``loss``, or ``loss`` itself for
        ``reduction="none"``.
    positive, mean_negative, closest_negative, closest_index : ndarray, shape (b,)
        As in :class:`HardNegatives`, for ``s[i, j] = cos(v2[i], v1[j])``.
    l1, l2 : ndarray, shape (b,)
        ``max(mean_negative - positive + margin, 0)`` and
        ``max(closest_negative - positive + margin, 0)``.
    loss : ndarray, shape (b,)
        ``l1 + l2``.
    """

    cost: np.ndarray
    positive: np.ndarray
    mean_negative: np.ndarray
    closest_negative: np.ndarray
    closest_index: np.ndarray
    l1: np.ndarray
    l2: np.ndarray
    loss: np.ndarray


# --------------------------------------------------------------------------- kernel dispatch


def _forward(be: str, v1: np.ndarray, v2: np.ndarray, empty_code: int):
    if be == "numpy":
        return _ref.triplet_forward(v1, v2, ("shift", "floor")[empty_code])
    if be == "cpp":
        return _backend.core().triplet_forward(v1, v2, empty_code)
    return _backend.numba_module("triplet").triplet_forward(v1, v2, empty_code)


def _backward(be: str, v1, v2, closest_index, active1, active2, weight):
    if be == "cpp":
        w = np.full(v1.shape[0], weight) if np.ndim(weight) == 0 else contiguous(weight, np.float64)
        return _backend.core().triplet_backward(v1, v2, closest_index, active1, active2, w)
    if be == "numpy":
        return _ref.triplet_backward(v1, v2, closest_index, active1, active2, weight)
    return _backend.numba_module("triplet").triplet_backward(v1, v2, closest_index, active1, active2, weight)


def _hard_negatives(be: str, sim: np.ndarray, empty_code: int):
    if be == "numpy":
        return _ref.hard_negatives(sim, ("shift", "floor")[empty_code])
    if be == "cpp":
        return _backend.core().hard_negatives(sim, empty_code)
    return _backend.numba_module("triplet").hard_negatives(sim, empty_code)


# --------------------------------------------------------------------------- argument checks


def _check_batch_size(b: int, what: str) -> None:
    if b < 2:
        msg = (f"the batch size b of {what} must be >= 2 (row i of v1 and v2 is a positive pair, every "
               f"other row a negative, so b = {b} has no negatives)")
        raise ValueError(msg)


def _prepare_pair(v1, v2):
    """``v1``, ``v2`` checked, as C-contiguous arrays of their common float dtype."""
    v1, v2 = kernel_pair(v1, v2, ("v1", "v2"), 2)
    if v1.shape != v2.shape:
        check_same_shape((v1, v2), ("v1", "v2"), "(b, d): row i of each is a duplicate pair")
    if v1.shape[0] < 2:
        _check_batch_size(v1.shape[0], "v1 and v2")
    return v1, v2


def _with_columns(v1: np.ndarray, v2: np.ndarray):
    if v1.shape[1] == 0:
        zeros = np.zeros((v1.shape[0], 1), dtype=v1.dtype)
        return zeros, zeros.copy()
    return v1, v2


def _check_options(margin, reduction, empty):
    margin = check_finite_scalar(margin, "margin")
    check_choice(reduction, "reduction", _REDUCTIONS)
    check_choice(empty, "empty", tuple(_EMPTY_CODES))
    return margin


def _reduce(loss: np.ndarray, reduction: str):
    if reduction == "none":
        return loss
    # accumulate in float64 so that a float32 cost of a large batch keeps its digits
    total = loss.sum(dtype=np.float64)
    if reduction == "mean":
        total = total / loss.shape[0]
    return loss.dtype.type(total)


def _gradient_weight(reduction: str, b: int) -> float:
    if reduction == "none":
        msg = ("reduction='none' gives one loss per row, not a scalar cost to differentiate; "
               "use reduction='sum' or 'mean'")
        raise ValueError(msg)
    return 1.0 if reduction == "sum" else 1.0 / b


def _loss_parts(be: str, v1: np.ndarray, v2: np.ndarray, margin: float, empty: str, reduction: str):
    # with d = 0 every row is the zero vector, which scores 0: one zero column says the same
    v1, v2 = _with_columns(v1, v2)
    positive, mean_negative, closest_negative, closest_index = _forward(be, v1, v2, _EMPTY_CODES[empty])
    l1, l2 = _ref.hinge_losses(positive, mean_negative, closest_negative, margin)
    loss = l1 + l2
    return TripletLossParts(cost=_reduce(loss, reduction), positive=positive, mean_negative=mean_negative,
                            closest_negative=closest_negative, closest_index=closest_index, l1=l1, l2=l2, loss=loss)


def _active(parts: TripletLossParts):
    # a hinge at exactly 0 has subgradient 0; NaN compares False
    with np.errstate(invalid="ignore"):
        return (parts.l1 > 0).astype(np.uint8), (parts.l2 > 0).astype(np.uint8)


# --------------------------------------------------------------------------- public API


def hard_negatives(sim: ArrayLike, /, *, empty: str = "shift", backend: str = "auto") -> HardNegatives:
    """Positive, mean negative and closest negative of every row of a score matrix.

    Parameters
    ----------
    sim : array_like, shape (b, b)
        Precomputed scores, row ``i`` scoring ``v2[i]`` against every ``v1[j]``;
        the diagonal holds the positives.  Used as given (not clamped).
    empty : {"shift", "floor"}
        The closest negative of a row whose every negative is above its
        positive: ``"shift"`` (the course's TensorFlow code) gives
        ``max(-2, max_{j != i} s[i, j] - 2)``, ``"floor"`` (its NumPy code)
        exactly -2.
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    HardNegatives
        ``positive = s[i, i]``; ``mean_negative``, the mean of the ``b - 1``
        off-diagonal entries; ``closest_negative``, the largest off-diagonal
        entry not above the positive (equal counts), the lowest column on ties.
        Arrays in the input's float dtype, ``closest_index`` int64.

    Raises
    ------
    ValueError
        If ``sim`` is not square or ``b < 2``.

    Examples
    --------
    The course's worked example:

    >>> import numpy as np, fastsim
    >>> sim = np.array([[0.9, -0.8, 0.3, -0.5], [-0.4, 0.5, 0.1, -0.1],
    ...                 [0.3, 0.1, -0.4, -0.8], [-0.5, -0.2, -0.7, 0.5]])
    >>> fastsim.hard_negatives(sim).closest_negative
    array([ 0.3,  0.1, -0.8, -0.2])
    """
    sim = as_float_array(sim, "sim", ndim=2)
    if sim.shape[0] != sim.shape[1]:
        msg = f"sim must be a square (b, b) score matrix; got shape {sim.shape}"
        raise ValueError(msg)
    _check_batch_size(sim.shape[0], "sim")
    check_choice(empty, "empty", tuple(_EMPTY_CODES))
    be = _backend.resolve(backend, _HARD_NEGATIVES_SUPPORTED)
    out = _hard_negatives(be, contiguous(sim, sim.dtype), _EMPTY_CODES[empty])
    return HardNegatives(*out)


def modified_triplet_loss(v1: ArrayLike, v2: ArrayLike, /, margin: float = 0.25, *, reduction: str = "sum",
                          empty: str = "shift", return_parts: bool = False,
                          backend: str = "auto") -> Any:
    """The modified triplet loss ``L1 + L2`` of two batches of embeddings.

    Parameters
    ----------
    v1, v2 : array_like, shape (b, d)
        Row ``i`` of ``v1`` and row ``i`` of ``v2`` are duplicates; every other
        pairing is a negative.  Scores are ``s[i, j] = cos(v2[i], v1[j])``, so
        the rows need not be normalized.  Integer and float16 input is
        computed in float32; float64 if either input is float64.
    margin : float, default 0.25
        The margin ``alpha``; must be finite.
    reduction : {"sum", "mean", "none"}
        ``"sum"`` (the course's cost), ``"mean"`` (divided by ``b``), or
        ``"none"`` for the per-row losses.
    empty : {"shift", "floor"}
        Closest negative of a row with no negative at or below its positive;
        see :func:`hard_negatives`.
    return_parts : bool, default False
        Return a :class:`TripletLossParts` with every per-row quantity instead
        of the cost alone.
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    numpy scalar, ndarray or TripletLossParts
        The reduced cost in the result dtype ((b,) for ``reduction="none"``),
        or the parts.

    Raises
    ------
    ValueError
        If the shapes differ, ``b < 2``, ``margin`` is not finite, or an option
        is not one of its choices.

    Notes
    -----
    ``L1 = max(mean_negative - positive + margin, 0)`` and
    ``L2 = max(closest_negative - positive + margin, 0)`` with
    ``closest_negative`` the largest negative score not above the positive.
    A zero vector scores 0 with everything; a row holding NaN or inf gives NaN
    in every loss it touches.  The numba backend streams the score matrix in
    tiles and never stores it.
    """
    margin = _check_options(margin, reduction, empty)
    if return_parts is not False:
        return_parts = check_bool(return_parts, "return_parts")
    v1, v2 = _prepare_pair(v1, v2)
    be = _backend.resolve(backend, _SUPPORTED)
    if be == "cpp" and not return_parts and reduction != "none" and v1.shape[1] > 0:
        # the cost alone: hinges and sum in the same compiled call, no per-row arrays
        return _backend.core().triplet_cost(v1, v2, margin, _EMPTY_CODES[empty], reduction == "mean")
    parts = _loss_parts(be, v1, v2, margin, empty, reduction)
    return parts if return_parts else parts.cost


def value_and_grad(v1: ArrayLike, v2: ArrayLike, /, margin: float = 0.25, *, reduction: str = "sum",
                   empty: str = "shift", return_parts: bool = False,
                   backend: str = "auto") -> tuple[Any, tuple[NDArray[np.floating], NDArray[np.floating]]]:
    """The modified triplet loss and its gradient with respect to ``v1`` and ``v2``, in one call.

    Parameters are those of :func:`modified_triplet_loss`, except that
    ``reduction`` must be ``"sum"`` or ``"mean"`` (a scalar cost).

    Returns
    -------
    value : numpy scalar or TripletLossParts
        The cost, or the parts with ``return_parts=True``.
    (grad_v1, grad_v2) : tuple of ndarray, shape (b, d)
        ``d cost / d v1`` and ``d cost / d v2`` in the result dtype.

    Notes
    -----
    The gradient goes through the normalization (``du = (I - u u^T) dx / |x|``
    for ``u = x / |x|``).  A hinge at exactly 0 contributes nothing
    (subgradient 0), ties among closest negatives go to the lowest index, and
    a zero row gets a zero gradient.  After the forward pass the gradient costs
    O(b d): the mean-negative term needs only column sums of the normalized
    rows and the closest term one gathered row per row.
    """
    margin = _check_options(margin, reduction, empty)
    return_parts = check_bool(return_parts, "return_parts")
    v1, v2 = _prepare_pair(v1, v2)
    d = v1.shape[1]
    weight = _gradient_weight(reduction, v1.shape[0])
    be = _backend.resolve(backend, _SUPPORTED)
    parts = _loss_parts(be, v1, v2, margin, empty, reduction)
    active1, active2 = _active(parts)
    if d == 0:
        grad_v1, grad_v2 = np.zeros_like(v1), np.zeros_like(v2)
    else:
        grad_v1, grad_v2 = _backward(be, v1, v2, parts.closest_index, active1, active2, weight)
    return (parts if return_parts else parts.cost), (grad_v1, grad_v2)


def modified_triplet_loss_grad(v1: ArrayLike, v2: ArrayLike, /, margin: float = 0.25, *, reduction: str = "sum",
                               empty: str = "shift",
                               backend: str = "auto") -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Gradient of :func:`modified_triplet_loss` with respect to ``v1`` and ``v2``.

    Parameters are those of :func:`modified_triplet_loss`; ``reduction`` must
    be ``"sum"`` or ``"mean"``.

    Returns
    -------
    grad_v1, grad_v2 : ndarray, shape (b, d)
        In the result dtype.  See :func:`value_and_grad` for the conventions.
    """
    return value_and_grad(v1, v2, margin, reduction=reduction, empty=empty, backend=backend)[1]


def triplet_loss(anchor: ArrayLike, positive: ArrayLike, negative: ArrayLike, /, margin: float = 0.25, *,
                 reduction: str = "sum", backend: str = "auto") -> Any:
    """The original triplet loss ``max(s(A, N) - s(A, P) + margin, 0)`` with cosine similarity ``s``.

    Parameters
    ----------
    anchor, positive, negative : array_like, shape (d,) or (n, d)
        One triplet, or one triplet per row.  All three of the same shape.
    margin : float, default 0.25
    reduction : {"sum", "mean", "none"}
        How the per-row losses of batched input combine; a single triplet
        gives its loss whatever the reduction.
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    numpy scalar or ndarray
        float64 if any input is float64, else float32.
    """
    margin = check_finite_scalar(margin, "margin")
    check_choice(reduction, "reduction", _REDUCTIONS)
    arrays = [as_float_array(x, name, ndim=(1, 2))
              for x, name in ((anchor, "anchor"), (positive, "positive"), (negative, "negative"))]
    check_same_shape(arrays, ("anchor", "positive", "negative"), "one triplet per row")
    single = arrays[0].ndim == 1
    dt = result_dtype(*arrays)
    a, p, n = (contiguous(x.reshape(1, -1) if single else x, dt) for x in arrays)
    be = _backend.resolve(backend, _SUPPORTED)
    if be == "numpy":
        loss = _ref.triplet_loss(a, p, n, margin)
    else:
        from .cosine import cosine_similarity_rows

        s_ap = cosine_similarity_rows(a, p, backend=be)
        s_an = cosine_similarity_rows(a, n, backend=be)
        with np.errstate(invalid="ignore"):
            loss = np.maximum(s_an - s_ap + dt.type(margin), dt.type(0))
    if single:
        return loss[0]
    if loss.shape[0] == 0 and reduction == "mean":
        return dt.type(np.nan)
    return _reduce(loss, reduction)
