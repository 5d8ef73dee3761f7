"""Hard-negative mining and the modified triplet loss, reference semantics.

The batch convention is the course's: ``v1`` and ``v2`` have shape (b, d), row
``i`` of ``v1`` and row ``i`` of ``v2`` are duplicates, every other pairing is a
negative.  The scores are ``s[i, j] = cos(v2[i], v1[j])`` (clamped to [-1, 1],
zero vectors score 0, as in :mod:`fastsim._reference.cosine`), so the
positive of row ``i`` sits on the diagonal.

Per row ``i`` of a score matrix:

* ``positive = s[i, i]``;
* ``mean_negative = sum_{j != i} s[i, j] / (b - 1)``, every off-diagonal entry;
* ``closest_negative = max{ s[i, j] : j != i, s[i, j] <= s[i, i] }`` (a
  negative equal to the positive counts); ``closest_index`` is the lowest
  ``j`` reaching it;
* when that set is empty, ``empty="shift"`` (the course's TensorFlow code,
  which subtracts 2 from every masked entry and puts -2 on the diagonal) gives
  ``max(-2, max_{j != i} s[i, j] - 2)`` and ``empty="floor"`` (the course's
  NumPy code) gives exactly -2.  ``closest_index`` is then the lowest ``j``
  reaching ``max_{j != i} s[i, j]`` when that shifted value is above -2, and
  -1 whenever ``closest_negative`` is the constant -2;
* a row holding NaN (positive or any negative) has ``closest_negative`` NaN and
  ``closest_index`` -1; ``mean_negative`` is NaN when a negative is NaN.

Then ``L1 = max(mean_negative - positive + margin, 0)``,
``L2 = max(closest_negative - positive + margin, 0)`` and ``loss = L1 + L2``.

The gradient of ``cost = sum_i w_i loss_i`` (``w_i = 1`` for the sum, ``1/b``
for the mean) goes through ``dcost/ds[i, j] = G[i, j]`` with

* ``G[i, i] = -w_i (a1_i + a2_i)``,
* ``G[i, j] += w_i a1_i / (b - 1)`` for every ``j != i``,
* ``G[i, closest_index[i]] += w_i a2_i`` when ``closest_index[i] >= 0``,

where ``a1_i``, ``a2_i`` are 1 when the hinge is strictly positive (a hinge at
exactly 0 has subgradient 0).  With ``u1 = v1 / |v1|`` and ``u2 = v2 / |v2|``
row-wise, ``s = u2 u1^T`` gives ``dcost/du2 = G u1`` and ``dcost/du1 = G^T u2``,
and ``du = (I - u u^T) dx / |x|`` carries them back to ``v1`` and ``v2``.  A zero
row gets a zero gradient.  The clamp to [-1, 1] is treated as the identity: it
only ever moves a score by rounding error, where the cosine's own gradient is 0.

Everything here forms the full (b, b) matrix: it is the specification, not the
fast path.  :func:`notebook_modified_triplet_loss` is the course notebook's
computation, kept as the baseline of the benchmarks.
"""

from __future__ import annotations

import numpy as np

from .cosine import cosine_similarity_matrix, cosine_similarity_rows, row_norms, unit_rows

EMPTY_MODES = ("shift", "floor")


def similarity_scores(v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """``s[i, j] = cos(v2[i], v1[j])``: the (b, b) matrix of the course (``v2 @ v1.T`` on unit rows)."""
    return cosine_similarity_matrix(v2, v1)


def hard_negatives(sim: np.ndarray, empty: str = "shift"):
    """Per-row ``(positive, mean_negative, closest_negative, closest_index)`` of a square score matrix."""
    b = sim.shape[0]

    # Positives: s(A, P), the diagonal
    positive = np.diag(sim).copy()

    # Negatives: s(A, N), every off-diagonal entry
    off_diagonal = ~np.eye(b, dtype=bool)
    with np.errstate(invalid="ignore"):
        mean_negative = np.sum(np.where(off_diagonal, sim, 0), axis=1) / (b - 1)

        # Closest negative: the largest negative that is not above the positive
        valid = off_diagonal & (sim <= positive[:, None])
        has_valid = valid.any(axis=1)
        closest_negative = np.max(np.where(valid, sim, -np.inf), axis=1)
        # the first column reaching the maximum: ties go to the lowest j
        closest_index = np.argmax(valid & (sim == closest_negative[:, None]), axis=1).astype(np.int64)

        # Rows without any valid negative
        closest_index[~has_valid] = -1
        if empty == "shift":
            largest = np.max(np.where(off_diagonal, sim, -np.inf), axis=1)
            largest_index = np.argmax(off_diagonal & (sim == largest[:, None]), axis=1)
            shifted = largest - sim.dtype.type(2)
            use_shifted = ~has_valid & (shifted > -2)
            closest_negative = np.where(has_valid, closest_negative, np.where(use_shifted, shifted, -2))
            closest_index[use_shifted] = largest_index[use_shifted]
        elif empty == "floor":
            closest_negative = np.where(has_valid, closest_negative, -2)
        else:
            msg = f"empty must be one of {EMPTY_MODES}; got {empty!r}"
            raise ValueError(msg)

    # A NaN anywhere in the row poisons its closest negative
    nan_row = np.isnan(sim).any(axis=1)
    closest_negative = closest_negative.astype(sim.dtype)
    closest_negative[nan_row] = np.nan
    closest_index[nan_row] = -1
    return positive, mean_negative.astype(sim.dtype), closest_negative, closest_index


def triplet_forward(v1: np.ndarray, v2: np.ndarray, empty: str = "shift"):
    """Per-row ``(positive, mean_negative, closest_negative, closest_index)`` of the scores of ``v1``, ``v2``."""
    return hard_negatives(similarity_scores(v1, v2), empty)


def hinge_losses(positive, mean_negative, closest_negative, margin: float):
    """``(L1, L2)`` per row; NaN in gives NaN out."""
    dt = np.result_type(positive.dtype, np.float32)
    m = dt.type(margin)
    with np.errstate(invalid="ignore"):
        l1 = np.maximum(mean_negative - positive + m, dt.type(0))
        l2 = np.maximum(closest_negative - positive + m, dt.type(0))
    return l1, l2


def modified_triplet_loss(v1: np.ndarray, v2: np.ndarray, margin: float = 0.25, empty: str = "shift") -> dict:
    """Every per-row quantity of the modified triplet loss, as a dict of arrays."""
    positive, mean_negative, closest_negative, closest_index = triplet_forward(v1, v2, empty)
    l1, l2 = hinge_losses(positive, mean_negative, closest_negative, margin)
    return dict(positive=positive, mean_negative=mean_negative, closest_negative=closest_negative,
                closest_index=closest_index, l1=l1, l2=l2, loss=l1 + l2)


def score_gradient(closest_index, active1, active2, weight) -> np.ndarray:
    """``G = dcost/ds``, (b, b), for ``cost = sum_i weight_i (L1_i + L2_i)``."""
    b = closest_index.shape[0]
    w = np.broadcast_to(np.asarray(weight, dtype=np.float64), (b,))
    a1 = np.asarray(active1, dtype=bool)
    a2 = np.asarray(active2, dtype=bool)
    G = np.zeros((b, b))
    # mean negative: every off-diagonal entry with the same weight
    G += (w * a1 / (b - 1))[:, None]
    # positive: both hinges subtract it
    np.fill_diagonal(G, -w * (a1.astype(np.float64) + a2))
    # closest negative: one entry per row, when it is a score and not the constant -2
    has_column = a2 & (closest_index >= 0)
    rows = np.nonzero(has_column)[0]
    G[rows, closest_index[rows]] += w[rows]
    return G


def triplet_backward(v1, v2, closest_index, active1, active2, weight):
    """``(dcost/dv1, dcost/dv2)`` for ``cost = sum_i weight_i (L1_i + L2_i)``.

    ``active1``/``active2`` mark rows whose hinge is strictly positive;
    ``weight`` is a scalar or one weight per row.  Computed in float64 and
    returned in the inputs' dtype.
    """
    dt = v1.dtype
    x1 = v1.astype(np.float64)
    x2 = v2.astype(np.float64)
    u1, u2 = unit_rows(x1), unit_rows(x2)
    G = score_gradient(closest_index, active1, active2, weight)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        grad_u2 = G @ u1
        grad_u1 = G.T @ u2
        # through u = x / |x|: the component along u is lost, the rest scales by
        # 1/|x|; a zero row (|x| = 0) gets a zero gradient
        grad_v2 = _through_norm(grad_u2 - u2 * np.sum(grad_u2 * u2, axis=1, keepdims=True), row_norms(x2))
        grad_v1 = _through_norm(grad_u1 - u1 * np.sum(grad_u1 * u1, axis=1, keepdims=True), row_norms(x1))
        return grad_v1.astype(dt), grad_v2.astype(dt)


def _through_norm(g, norms):
    out = np.zeros_like(g)
    np.divide(g, norms[:, None], out=out, where=(norms != 0)[:, None])
    return out


def row_weights(reduction: str, b: int) -> float:
    """The weight of every row in the cost: 1 for ``"sum"``, ``1/b`` for ``"mean"``."""
    if reduction == "sum":
        return 1.0
    if reduction == "mean":
        return 1.0 / b
    msg = f"reduction must be 'sum' or 'mean' for a gradient; got {reduction!r}"
    raise ValueError(msg)


def modified_triplet_loss_grad(v1, v2, margin: float = 0.25, reduction: str = "sum", empty: str = "shift"):
    """``(dcost/dv1, dcost/dv2)`` of the reduced modified triplet loss."""
    parts = modified_triplet_loss(v1, v2, margin, empty)
    with np.errstate(invalid="ignore"):
        active1 = parts["l1"] > 0
        active2 = parts["l2"] > 0
    weight = row_weights(reduction, v1.shape[0])
    return triplet_backward(v1, v2, parts["closest_index"], active1, active2, weight)


def triplet_loss(anchor: np.ndarray, positive: np.ndarray, negative: np.ndarray, margin: float = 0.25):
    """The original triplet loss ``max(s(A, N) - s(A, P) + margin, 0)``, one value per row."""
    s_ap = cosine_similarity_rows(anchor, positive)
    s_an = cosine_similarity_rows(anchor, negative)
    m = s_ap.dtype.type(margin)
    with np.errstate(invalid="ignore"):
        return np.maximum(s_an - s_ap + m, s_ap.dtype.type(0))


# --------------------------------------------------------------------------- the course notebook


def notebook_modified_triplet_loss(v1, v2, margin: float = 0.25, empty: str = "shift"):
    """The cost as the course notebook computes it: normalize, one matmul, masks, max.

    Every intermediate is a (b, b) array.  ``empty="shift"`` is the notebook's
    TensorFlow masking (``sim_an - 2 * mask``), ``"floor"`` its NumPy masking
    (``sim_an_masked[mask] = -2``).
    """
    # Similarity scores: normalize the rows, then one matrix product
    v1n = v1 / np.linalg.norm(v1, axis=1, keepdims=True)
    v2n = v2 / np.linalg.norm(v2, axis=1, keepdims=True)
    sim = v2n @ v1n.T
    b = sim.shape[0]

    # Positives on the diagonal, negatives off it
    sim_ap = np.diag(sim)
    sim_an = sim - np.diag(sim_ap)

    # Mean negative
    mean_neg = np.sum(sim_an, axis=1) / (b - 1)

    # Closest negative: mask the diagonal and every negative above the positive
    mask_1 = np.identity(b) == 1
    mask_2 = sim_an > sim_ap.reshape(b, 1)
    mask = mask_1 | mask_2
    if empty == "shift":
        sim_an_masked = sim_an - 2 * mask.astype(sim.dtype)
    else:
        sim_an_masked = np.copy(sim_an)
        sim_an_masked[mask] = -2
    closest_neg = np.max(sim_an_masked, axis=1)

    # The losses
    l_1 = np.maximum(mean_neg - sim_ap + margin, 0)
    l_2 = np.maximum(closest_neg - sim_ap + margin, 0)
    l_full = l_1 + l_2
    return np.sum(l_full)


def notebook_value_and_grad(v1, v2, margin: float = 0.25):
    """Cost and ``(dcost/dv1, dcost/dv2)`` the NumPy way: the notebook's forward, then ``G`` and two matmuls.

    The baseline of the loss + gradient benchmarks (``empty="shift"``, sum).
    """
    norm1 = np.linalg.norm(v1, axis=1, keepdims=True)
    norm2 = np.linalg.norm(v2, axis=1, keepdims=True)
    v1n = v1 / norm1
    v2n = v2 / norm2
    sim = v2n @ v1n.T
    b = sim.shape[0]
    sim_ap = np.diag(sim)
    sim_an = sim - np.diag(sim_ap)
    mean_neg = np.sum(sim_an, axis=1) / (b - 1)
    mask = (np.identity(b) == 1) | (sim_an > sim_ap.reshape(b, 1))
    sim_an_masked = sim_an - 2 * mask.astype(sim.dtype)
    closest_idx = np.argmax(sim_an_masked, axis=1)
    closest_neg = sim_an_masked[np.arange(b), closest_idx]
    l_1 = np.maximum(mean_neg - sim_ap + margin, 0)
    l_2 = np.maximum(closest_neg - sim_ap + margin, 0)
    cost = np.sum(l_1 + l_2)

    # dcost/dsim, then back through the matmul and the normalization
    a1 = (l_1 > 0).astype(sim.dtype)
    a2 = (l_2 > 0).astype(sim.dtype)
    G = np.broadcast_to((a1 / (b - 1))[:, None], (b, b)).copy()
    np.fill_diagonal(G, -(a1 + a2))
    # a masked entry still carries its score (s - 2); the diagonal's -2 is a constant
    on_score = closest_idx != np.arange(b)
    G[np.arange(b)[on_score], closest_idx[on_score]] += a2[on_score]
    grad_v2n = G @ v1n
    grad_v1n = G.T @ v2n
    grad_v2 = (grad_v2n - v2n * np.sum(grad_v2n * v2n, axis=1, keepdims=True)) / norm2
    grad_v1 = (grad_v1n - v1n * np.sum(grad_v1n * v1n, axis=1, keepdims=True)) / norm1
    return cost, (grad_v1, grad_v2)
