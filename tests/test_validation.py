"""Bad input and special values: the README's reference tables, row by row, on every backend.

The two tables of the README section "Reference: bad input and special values"
are generated from ``BAD_INPUT`` and ``SPECIAL_VALUES`` below, and
:func:`test_readme_tables_are_generated_from_this_file` fails when the README
and this file drift apart.  After editing a row here, rewrite the README with::

    python tests/test_validation.py --write-readme

Each bad-input row lists cases ``(function, bad input, call, exception type,
regex)``: the call must raise exactly that exception type with a message
matching the regex, which names the argument (and what was expected).
Functions that take ``backend=`` are called on every backend: the checks run
before a backend is chosen, so no bad argument reaches a kernel.  Each
special-values row lists cases whose check asserts the documented behaviour
against the float64 reference or exact values.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import fastsim
from fastsim import triplet as T
from fastsim._reference import cosine as ref_cos
from fastsim._reference import rnn as ref_rnn

README = Path(__file__).resolve().parents[1] / "README.md"
BACKENDS = ("numpy", "numba", "cpp")


@dataclass
class Case:
    function: str
    bad_input: str
    call: Callable  # call(backend) raises, or (special values) checks
    exc: type | None = None
    match: str = ""
    uses_backend: bool = True
    backends: tuple = BACKENDS


@dataclass
class Row:
    family: str
    situation: str
    behaviour: str
    cases: list = field(default_factory=list)


# --------------------------------------------------------------------------- inputs

def _m(rows=4, cols=3, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(dtype)


_H, _D, _B, _T = 3, 2, 2, 4


def _x(B=_B, T_=_T, D=_D, dtype=np.float64):
    return np.random.default_rng(1).standard_normal((B, T_, D)).astype(dtype)


def _w(kind="lstm", H=_H, D=_D):
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    rng = np.random.default_rng(2)
    return rng.uniform(-0.5, 0.5, (G * H, D)), rng.uniform(-0.5, 0.5, (G * H, H))


def _lstm(**kw):
    return fastsim.LSTM(_D, _H, seed=0, dtype=np.float64, **kw)


def _encoder(**kw):
    return fastsim.SiameseEncoder.random(10, _D, _H, seed=0, dtype=np.float64, **kw)


_IDS = np.array([[2, 3, 0], [4, 0, 0]])


def _state_dict(**changes):
    sd = fastsim.LSTM(_D, _H, num_layers=2, seed=0).state_dict()
    sd.update(changes)
    return sd


def _torch_loss(v1, v2, **kw):
    torch = pytest.importorskip("torch")
    from fastsim.torch import ModifiedTripletLoss

    return ModifiedTripletLoss(**kw)(torch.as_tensor(v1), torch.as_tensor(v2))


def _torch_fn(v1, **kw):
    torch = pytest.importorskip("torch")
    from fastsim.torch import modified_triplet_loss

    return modified_triplet_loss(v1, torch.zeros(4, 3, dtype=torch.float64), **kw)


_FORWARDS = {"lstm_forward": fastsim.lstm_forward, "gru_forward": fastsim.gru_forward,
             "rnn_forward": fastsim.rnn_forward}


def _fwd(name, be, **kw):
    kind = name.split("_")[0]
    W_ih, W_hh = _w(kind)
    args = dict(x=_x(), W_ih=W_ih, W_hh=W_hh)
    args.update(kw)
    return _FORWARDS[name](args.pop("x"), args.pop("W_ih"), args.pop("W_hh"), backend=be, **args)


def _without(name, value, call):
    """``call()`` with ``fastsim._backend.<name>`` set to ``value`` (a backend that is not there)."""
    from fastsim import _backend

    saved = getattr(_backend, name)
    setattr(_backend, name, value)
    try:
        return call()
    finally:
        setattr(_backend, name, saved)


def C(function, bad_input, call, exc, match, *, uses_backend=True, backends=BACKENDS):
    return Case(function, bad_input, call, exc, match, uses_backend, backends)


def _no_backend(function, bad_input, call, exc, match):
    return Case(function, bad_input, lambda be: call(), exc, match, uses_backend=False)



# --------------------------------------------------------------------------- the bad-input table

BAD_INPUT = [
    Row("every array argument", "complex, object, string or datetime dtype",
        "`TypeError` naming the argument", [
            C("cosine_similarity_matrix", "a complex", lambda be: fastsim.cosine_similarity_matrix(
                np.ones((2, 2), complex), backend=be), TypeError, r"\ba must hold real numbers"),
            C("cosine_similarity_rows", "b object", lambda be: fastsim.cosine_similarity_rows(
                _m(), np.array([[1, None, 2]] * 4, dtype=object), backend=be), TypeError, r"\bb must hold real"),
            C("cosine_similarity", "u strings", lambda be: fastsim.cosine_similarity(
                np.array(["a", "b"]), np.ones(2), backend=be), TypeError, r"\bu must hold real"),
            C("top_k", "queries datetime", lambda be: fastsim.top_k(
                np.zeros((2, 3), "M8[s]"), _m(), 1, backend=be), TypeError, r"\bqueries must hold real"),
            C("hard_negatives", "sim complex", lambda be: fastsim.hard_negatives(
                np.eye(3, dtype=complex), backend=be), TypeError, r"\bsim must hold real"),
            C("modified_triplet_loss", "v2 complex", lambda be: fastsim.modified_triplet_loss(
                _m(), _m().astype(complex), backend=be), TypeError, r"\bv2 must hold real"),
            C("triplet_loss", "negative object", lambda be: fastsim.triplet_loss(
                _m(), _m(), _m().astype(object), backend=be), TypeError, r"\bnegative must hold real"),
            C("lstm_forward", "W_hh complex", lambda be: _fwd(
                "lstm_forward", be, W_hh=_w()[1].astype(complex)), TypeError, r"\bW_hh must hold real"),
            C("gru_forward", "h0 complex", lambda be: _fwd(
                "gru_forward", be, h0=np.zeros((_B, _H), complex)), TypeError, r"\bh0 must hold real"),
            C("LSTM.__call__", "x complex", lambda be: _lstm()(_x().astype(complex), backend=be),
              TypeError, r"\bx must hold real"),
            _no_backend("LSTM.from_torch", "weight_hh_l0 complex", lambda: fastsim.LSTM.from_torch(
                _state_dict(weight_hh_l0=np.zeros((4 * _H, _H), complex))), TypeError, r"\bW_hh must hold real"),
            _no_backend("LSTM.from_onnx", "R complex", lambda: fastsim.LSTM.from_onnx(
                np.zeros((1, 4 * _H, _D)), np.zeros((1, 4 * _H, _H), complex)), TypeError, r"\bR must hold real"),
            _no_backend("SiameseEncoder", "embedding complex", lambda: fastsim.SiameseEncoder(
                np.zeros((10, _D), complex), _lstm()), TypeError, r"\bembedding must hold real"),
            C("similarity", "q1_vecs complex", lambda be: fastsim.similarity(
                _m().astype(complex), _m(), backend=be), TypeError, r"\bq1_vecs must hold real"),
            C("ModifiedTripletLoss", "v1 complex tensor", lambda be: _torch_loss(
                _m().astype(np.complex64), _m(), backend=be), TypeError, r"\bv1 must hold real"),
        ]),
    Row("every array argument", "`None`, or an object that is not array-like",
        "`TypeError` naming the argument", [
            C("cosine_similarity_matrix", "a None", lambda be: fastsim.cosine_similarity_matrix(
                None, backend=be), TypeError, r"\ba must be an array"),
            C("top_k", "corpus None", lambda be: fastsim.top_k(_m(), None, 1, backend=be),
              TypeError, r"\bcorpus must be an array"),
            C("lstm_forward", "x None", lambda be: _fwd("lstm_forward", be, x=None), TypeError, r"\bx must be an array"),
            C("fastsim.torch.modified_triplet_loss", "v1 a NumPy array", lambda be: _torch_fn(_m(), backend=be),
              TypeError, r"\bv1 must be a torch.Tensor"),
        ]),
    Row("every array argument", "a ragged nested list",
        "`ValueError` naming the argument", [
            C("cosine_similarity_matrix", "a ragged", lambda be: fastsim.cosine_similarity_matrix(
                [[1.0, 2.0], [3.0]], backend=be), ValueError, r"\ba must be a rectangular"),
            C("lstm_forward", "lengths ragged", lambda be: _fwd("lstm_forward", be, lengths=[[1, 2], [3]]),
              ValueError, r"\blengths must be a rectangular"),
            C("SiameseEncoder.encode", "ids ragged", lambda be: _encoder().encode([[1, 2], [3]], backend=be),
              ValueError, r"\bids must be a rectangular"),
        ]),
    Row("every array argument", "wrong number of dimensions",
        "`ValueError` naming the argument and the expected ndim", [
            C("cosine_similarity", "u 2-D", lambda be: fastsim.cosine_similarity(
                np.ones((1, 3)), np.ones(3), backend=be), ValueError, r"\bu must be 1-D"),
            C("cosine_similarity_rows", "a 1-D", lambda be: fastsim.cosine_similarity_rows(
                np.ones(3), np.ones(3), backend=be), ValueError, r"\ba must be 2-D"),
            C("cosine_similarity_matrix", "b 3-D", lambda be: fastsim.cosine_similarity_matrix(
                _m(), np.ones((2, 3, 1)), backend=be), ValueError, r"\bb must be 2-D"),
            C("top_k", "queries 1-D", lambda be: fastsim.top_k(np.ones(3), _m(), 1, backend=be),
              ValueError, r"\bqueries must be 2-D"),
            C("hard_negatives", "sim 1-D", lambda be: fastsim.hard_negatives(np.ones(3), backend=be),
              ValueError, r"\bsim must be 2-D"),
            C("modified_triplet_loss_grad", "v1 3-D", lambda be: fastsim.modified_triplet_loss_grad(
                np.ones((2, 2, 2)), np.ones((2, 2)), backend=be), ValueError, r"\bv1 must be 2-D"),
            C("triplet_loss", "anchor 3-D", lambda be: fastsim.triplet_loss(
                np.ones((1, 2, 3)), np.ones((1, 2, 3)), np.ones((1, 2, 3)), backend=be),
              ValueError, r"\banchor must be 1-D or 2-D"),
            C("rnn_forward", "x 2-D", lambda be: _fwd("rnn_forward", be, x=np.ones((2, 2))),
              ValueError, r"\bx must be 3-D"),
            C("lstm_forward", "b_ih 2-D", lambda be: _fwd("lstm_forward", be, b_ih=np.zeros((1, 4 * _H))),
              ValueError, r"\bb_ih must be 1-D"),
            C("GRU.__call__", "x 2-D", lambda be: fastsim.GRU(_D, _H)(np.ones((2, 2)), backend=be),
              ValueError, r"\bx must be 3-D"),
            C("SiameseEncoder.encode", "ids 1-D", lambda be: _encoder().encode(np.array([1, 2]), backend=be),
              ValueError, r"\bids must be 2-D"),
            _no_backend("LSTM.from_onnx", "W 2-D", lambda: fastsim.LSTM.from_onnx(
                np.zeros((4 * _H, _D)), np.zeros((1, 4 * _H, _H))), ValueError, r"\bW must be 3-D"),
            _no_backend("Vocabulary.decode", "ids 2-D", lambda: fastsim.Vocabulary().decode([[1]]),
                        ValueError, r"\bids must be a 1-D"),
        ]),
    Row("every function of two or more arrays", "shapes that do not fit together",
        "`ValueError` naming the arguments and both shapes", [
            C("cosine_similarity", "u, v of different lengths", lambda be: fastsim.cosine_similarity(
                np.ones(3), np.ones(4), backend=be), ValueError, r"\bu and v must have the same length"),
            C("cosine_similarity_rows", "a, b of different shapes", lambda be: fastsim.cosine_similarity_rows(
                _m(4), _m(3), backend=be), ValueError, r"\ba and b must have the same shape"),
            C("cosine_similarity_matrix", "a, b with different d", lambda be: fastsim.cosine_similarity_matrix(
                _m(4, 3), _m(4, 2), backend=be), ValueError, r"\ba and b must have the same number of columns"),
            C("top_k", "queries, corpus with different d", lambda be: fastsim.top_k(
                _m(2, 3), _m(5, 4), 1, backend=be), ValueError, r"\bqueries and corpus must have the same number"),
            C("hard_negatives", "sim not square", lambda be: fastsim.hard_negatives(
                np.ones((2, 3)), backend=be), ValueError, r"\bsim must be a square"),
            C("modified_triplet_loss", "v1, v2 of different shapes", lambda be: fastsim.modified_triplet_loss(
                _m(4), _m(5), backend=be), ValueError, r"\bv1 and v2 must have the same shape"),
            C("triplet_loss", "anchor, positive, negative differ", lambda be: fastsim.triplet_loss(
                _m(4), _m(4), _m(3), backend=be), ValueError, r"\banchor, positive and negative must have"),
            C("similarity", "q1_vecs, q2_vecs differ", lambda be: fastsim.similarity(
                _m(4), _m(3), backend=be), ValueError, r"\bq1_vecs and q2_vecs must have the same shape"),
            C("accuracy", "labels of the wrong length", lambda be: fastsim.accuracy(
                _m(), _m(), [1, 0, 1], 0.5, backend=be), ValueError, r"\blabels must have shape \(4,\)"),
        ]),
    Row("recurrent layers", "`x` whose feature size is not the layer's input size",
        "`ValueError` naming `x` and the expected size", [
            C("lstm_forward", "x with D + 1 features", lambda be: _fwd("lstm_forward", be, x=_x(D=_D + 1)),
              ValueError, r"\bx has 3 features per step but W_ih expects D = 2"),
            C("LSTM.__call__", "x with D + 1 features", lambda be: _lstm()(_x(D=_D + 1), backend=be),
              ValueError, r"\bx has 3 features per step; this layer expects input_size = 2"),
        ]),
    Row("recurrent layers and importers", "weight shapes inconsistent with each other or with H",
        "`ValueError` naming the weight (and layer) and the expected shape", [
            C("lstm_forward", "W_hh (4H, H+1)", lambda be: _fwd("lstm_forward", be, W_hh=np.zeros((4 * _H, _H + 1))),
              ValueError, r"\bW_hh must have shape \(16, 4\)"),
            C("gru_forward", "W_ih with 4H rows", lambda be: _fwd("gru_forward", be, W_ih=np.zeros((4 * _H, _D))),
              ValueError, r"\bW_ih must have shape \(9, 2\)"),
            C("rnn_forward", "b_hh of H + 1", lambda be: _fwd("rnn_forward", be, b_hh=np.zeros(_H + 1)),
              ValueError, r"\bb_hh must have shape \(3,\)"),
            _no_backend("LSTM.set_weights", "layer-1 W_ih (4H, D)", lambda: fastsim.LSTM(
                _D, _H, num_layers=2).set_weights(1, 0, np.zeros((4 * _H, _D)), np.zeros((4 * _H, _H))),
                ValueError, r"\bW_ih must have shape \(12, 3\)"),
            _no_backend("LSTM.from_torch", "weight_hh_l1 (4H, H+1)", lambda: fastsim.LSTM.from_torch(
                _state_dict(weight_hh_l1=np.zeros((4 * _H, _H + 1)))), ValueError, r"layer 1: W_hh must have shape"),
            _no_backend("LSTM.from_torch", "bias_ih_l0 of 4H + 1", lambda: fastsim.LSTM.from_torch(
                _state_dict(bias_ih_l0=np.zeros(4 * _H + 1))), ValueError, r"layer 0: b_ih must have shape \(12,\)"),
            _no_backend("LSTM.from_keras", "recurrent_kernel (H, 4H+1)", lambda: fastsim.LSTM.from_keras(
                np.zeros((_D, 4 * _H)), np.zeros((_H, 4 * _H + 1))), ValueError, r"\brecurrent_kernel must have shape"),
            _no_backend("GRU.from_keras", "bias (3H,) of reset_after=False", lambda: fastsim.GRU.from_keras(
                np.zeros((_D, 3 * _H)), np.zeros((_H, 3 * _H)), np.zeros(3 * _H)), ValueError, r"\bbias has shape"),
            _no_backend("LSTM.from_onnx", "B (1, 4H)", lambda: fastsim.LSTM.from_onnx(
                np.zeros((1, 4 * _H, _D)), np.zeros((1, 4 * _H, _H)), np.zeros((1, 4 * _H))),
                ValueError, r"\bB must have shape \(1, 24\)"),
            _no_backend("SiameseEncoder", "layer input_size != embedding width", lambda: fastsim.SiameseEncoder(
                np.zeros((10, _D + 1)), _lstm()), ValueError, r"rnn\[0\] expects input_size = 2"),
        ]),
    Row("recurrent layers", "initial state of the wrong shape",
        "`ValueError` naming `h0`, `c0` or `initial_state` and the expected shape (`TypeError` when an LSTM's "
        "`initial_state` is not an `(h0, c0)` pair)", [
            C("lstm_forward", "h0 (B, H+1)", lambda be: _fwd("lstm_forward", be, h0=np.zeros((_B, _H + 1))),
              ValueError, r"\bh0 must have shape \(2, 3\)"),
            C("LSTM.__call__", "c0 for 2 layers on 1", lambda be: _lstm()(
                _x(), initial_state=(np.zeros((1, _B, _H)), np.zeros((2, _B, _H))), backend=be),
              ValueError, r"\bc0 must have shape \(1, 2, 3\)"),
            C("GRU.__call__", "initial_state 2-D", lambda be: fastsim.GRU(_D, _H)(
                _x(), initial_state=np.zeros((_B, _H)), backend=be), ValueError, r"\binitial_state must be 3-D"),
            C("LSTM.__call__", "initial_state one array", lambda be: _lstm()(
                _x(), initial_state=np.zeros((1, _B, _H)), backend=be), TypeError, r"\binitial_state must be a tuple"),
        ]),
    Row("recurrent layers, `SiameseEncoder.encode`", "`lengths` outside 1..T",
        "`ValueError` naming `lengths` and the range", [
            C("lstm_forward", "a length 0", lambda be: _fwd("lstm_forward", be, lengths=[0, 2]),
              ValueError, r"\blengths must lie within 1\.\.4"),
            C("gru_forward", "a length T + 1", lambda be: _fwd("gru_forward", be, lengths=[5, 2]),
              ValueError, r"\blengths must lie within 1\.\.4"),
            C("RNN.__call__", "a negative length", lambda be: fastsim.RNN(_D, _H)(_x(), [-1, 2], backend=be),
              ValueError, r"\blengths must lie within 1\.\.4"),
            C("SiameseEncoder.encode", "a length 0", lambda be: _encoder().encode(_IDS, [0, 1], backend=be),
              ValueError, r"\blengths must lie within 1\.\.3"),
        ]),
    Row("recurrent layers, `SiameseEncoder.encode`",
        "`lengths` not whole numbers, or not one per sequence (floats holding whole values, `[5.0, 3.0]`, "
        "are taken as integers)",
        "`TypeError` (dtype) or `ValueError` (shape) naming `lengths`", [
            C("lstm_forward", "lengths 1.5", lambda be: _fwd("lstm_forward", be, lengths=[1.5, 2]),
              TypeError, r"\blengths must hold integers"),
            C("LSTM.__call__", "lengths of booleans", lambda be: _lstm()(_x(), [True, True], backend=be),
              TypeError, r"\blengths must hold integers"),
            C("gru_forward", "three lengths for two sequences", lambda be: _fwd("gru_forward", be, lengths=[1, 2, 3]),
              ValueError, r"\blengths must have shape \(2,\)"),
        ]),
    Row("`SiameseEncoder.encode`, `Vocabulary.decode`", "token ids not integers, out of 0..V-1, or no time step",
        "`TypeError` (dtype) or `ValueError` naming `ids`", [
            C("SiameseEncoder.encode", "float ids", lambda be: _encoder().encode(_IDS.astype(float), backend=be),
              TypeError, r"\bids must hold integer token ids"),
            C("SiameseEncoder.encode", "an id >= V", lambda be: _encoder().encode(_IDS + 8, backend=be),
              ValueError, r"\bids must lie within 0\.\.9"),
            C("SiameseEncoder.encode", "T = 0", lambda be: _encoder().encode(np.zeros((2, 0), int), backend=be),
              ValueError, r"\bids must have at least one time step"),
            _no_backend("Vocabulary.decode", "float ids", lambda: fastsim.Vocabulary().decode([1.0]),
                        TypeError, r"\bids must hold integer token ids"),
            _no_backend("Vocabulary.id_to_token", "an id >= len(vocab)", lambda: fastsim.Vocabulary().id_to_token(2),
                        ValueError, r"\btoken_id must be within 0\.\.1"),
        ]),
    Row("triplet losses, `hard_negatives`", "batch size b < 2 (no negatives)",
        "`ValueError` naming the batch size", [
            C("modified_triplet_loss", "b = 1", lambda be: fastsim.modified_triplet_loss(_m(1), _m(1), backend=be),
              ValueError, r"batch size b of v1 and v2 must be >= 2"),
            C("modified_triplet_loss_grad", "b = 0", lambda be: fastsim.modified_triplet_loss_grad(
                _m(0), _m(0), backend=be), ValueError, r"batch size b of v1 and v2 must be >= 2"),
            C("hard_negatives", "1 x 1", lambda be: fastsim.hard_negatives(np.ones((1, 1)), backend=be),
              ValueError, r"batch size b of sim must be >= 2"),
            C("ModifiedTripletLoss", "b = 1", lambda be: _torch_loss(_m(1), _m(1), backend=be),
              ValueError, r"batch size b of v1 and v2 must be >= 2"),
        ]),
    Row("triplet losses, duplicate decisions", "NaN or infinite `margin` or `threshold`",
        "`ValueError` naming `margin` or `threshold`", [
            C("modified_triplet_loss", "margin NaN", lambda be: fastsim.modified_triplet_loss(
                _m(), _m(), float("nan"), backend=be), ValueError, r"\bmargin must be finite"),
            C("triplet.value_and_grad", "margin inf", lambda be: T.value_and_grad(_m(), _m(), np.inf, backend=be),
              ValueError, r"\bmargin must be finite"),
            C("modified_triplet_loss_grad", "margin -inf", lambda be: fastsim.modified_triplet_loss_grad(
                _m(), _m(), -np.inf, backend=be), ValueError, r"\bmargin must be finite"),
            C("triplet_loss", "margin NaN (float32)", lambda be: fastsim.triplet_loss(
                _m(), _m(), _m(), np.float32("nan"), backend=be), ValueError, r"\bmargin must be finite"),
            _no_backend("ModifiedTripletLoss", "margin NaN", lambda: pytest.importorskip("fastsim.torch")
                        .ModifiedTripletLoss(margin=float("nan")), ValueError, r"\bmargin must be finite"),
            C("is_duplicate", "threshold NaN", lambda be: fastsim.is_duplicate(_m(), _m(), np.nan, backend=be),
              ValueError, r"\bthreshold must be finite"),
            C("accuracy", "threshold inf (0-d array)", lambda be: fastsim.accuracy(
                _m(), _m(), [1, 0, 1, 0], np.array(np.inf), backend=be), ValueError, r"\bthreshold must be finite"),
        ]),
    Row("triplet losses, duplicate decisions", "`margin` or `threshold` not a real number (a string, a bool, None)",
        "`TypeError` naming `margin` or `threshold`", [
            C("modified_triplet_loss", "margin '0.25'", lambda be: fastsim.modified_triplet_loss(
                _m(), _m(), "0.25", backend=be), TypeError, r"\bmargin must be a real number"),
            C("triplet_loss", "margin True", lambda be: fastsim.triplet_loss(_m(), _m(), _m(), True, backend=be),
              TypeError, r"\bmargin must be a real number"),
            C("is_duplicate", "threshold None", lambda be: fastsim.is_duplicate(_m(), _m(), None, backend=be),
              TypeError, r"\bthreshold must be a real number"),
        ]),
    Row("every function with options", "an option that is not one of its choices",
        "`ValueError` naming the option and listing the choices", [
            C("modified_triplet_loss", "reduction 'avg'", lambda be: fastsim.modified_triplet_loss(
                _m(), _m(), reduction="avg", backend=be), ValueError, r"\breduction must be one of 'sum', 'mean'"),
            C("modified_triplet_loss_grad", "reduction 'none'", lambda be: fastsim.modified_triplet_loss_grad(
                _m(), _m(), reduction="none", backend=be), ValueError, r"reduction='none' .* use reduction='sum'"),
            C("hard_negatives", "empty 'zero'", lambda be: fastsim.hard_negatives(
                np.eye(3), empty="zero", backend=be), ValueError, r"\bempty must be one of 'shift', 'floor'"),
            C("rnn_forward", "nonlinearity 'sigmoid'", lambda be: _fwd("rnn_forward", be, nonlinearity="sigmoid"),
              ValueError, r"\bnonlinearity must be one of 'tanh', 'relu'"),
            _no_backend("SiameseEncoder", "pooling 'max'", lambda: fastsim.SiameseEncoder(
                np.zeros((10, _D)), _lstm(), pooling="max"), ValueError, r"\bpooling must be one of 'mean'"),
            _no_backend("GRU.from_onnx", "linear_before_reset 0", lambda: fastsim.GRU.from_onnx(
                np.zeros((1, 3 * _H, _D)), np.zeros((1, 3 * _H, _H)), linear_before_reset=0),
                ValueError, r"\blinear_before_reset must be 1"),
        ]),
    Row("every function", "`backend` unknown, not a string, or not available for the operation",
        "`ValueError` (`TypeError` for a non-string) naming `backend`", [
            _no_backend("cosine_similarity_matrix", "backend 'gpu'", lambda: fastsim.cosine_similarity_matrix(
                _m(), backend="gpu"), ValueError, r"\bbackend must be 'auto' or one of"),
            _no_backend("top_k", "backend None", lambda: fastsim.top_k(_m(), _m(), 1, backend=None),
                        TypeError, r"\bbackend must be a str"),
            _no_backend("hard_negatives", "backend 'cpp' without the compiled extension", lambda: _without(
                "_core", None, lambda: fastsim.hard_negatives(np.eye(3), backend="cpp")),
                ValueError, r"\bbackend='cpp' is not available"),
            _no_backend("lstm_forward", "backend 'numba' without numba", lambda: _without(
                "_numba_ok", False, lambda: _fwd("lstm_forward", "numba")),
                ValueError, r"\bbackend='numba' is not available"),
            _no_backend("SiameseEncoder.encode", "backend 'fast'", lambda: _encoder().encode(_IDS, backend="fast"),
                        ValueError, r"\bbackend must be 'auto' or one of"),
            _no_backend("ModifiedTripletLoss", "backend 'gpu'", lambda: pytest.importorskip("fastsim.torch")
                        .ModifiedTripletLoss(backend="gpu"), ValueError, r"\bbackend must be 'auto' or one of"),
        ]),
    Row("counts and sizes", "not an int, or out of range (`k`, `batch_size`, sizes, `n` of `set_num_threads`, ...)",
        "`TypeError` (not an int) or `ValueError` (range) naming it", [
            C("top_k", "k = 0", lambda be: fastsim.top_k(_m(), _m(), 0, backend=be), ValueError, r"\bk must be >= 1"),
            C("top_k", "k = 1.0", lambda be: fastsim.top_k(_m(), _m(), 1.0, backend=be), TypeError,
              r"\bk must be an int"),
            C("SiameseEncoder.encode", "batch_size 0", lambda be: _encoder().encode(_IDS, batch_size=0, backend=be),
              ValueError, r"\bbatch_size must be >= 1"),
            _no_backend("set_num_threads", "n = 0", lambda: fastsim.set_num_threads(0), ValueError, r"\bn must be >= 1"),
            _no_backend("set_num_threads", "n = '2'", lambda: fastsim.set_num_threads("2"), TypeError,
                        r"\bn must be an int"),
            _no_backend("LSTM", "hidden_size 0", lambda: fastsim.LSTM(2, 0), ValueError, r"\bhidden_size must be >= 1"),
            _no_backend("GRU", "num_layers 1.5", lambda: fastsim.GRU(2, 3, 1.5), TypeError,
                        r"\bnum_layers must be an int"),
            _no_backend("Vocabulary.build", "min_count 0", lambda: fastsim.Vocabulary.build(["a"], min_count=0),
                        ValueError, r"\bmin_count must be >= 1"),
            _no_backend("Vocabulary.encode", "max_length 0", lambda: fastsim.Vocabulary().encode(["a"], 0),
                        ValueError, r"\bmax_length must be >= 1"),
            _no_backend("set_simd_level", "level 'sse9'", lambda: fastsim.set_simd_level("sse9"), ValueError,
                        r"\blevel must be one of"),
        ]),
    Row("flags", "a flag that is not a bool (`exclude_self`, `return_parts`, `batch_first`, `bidirectional`, ...)",
        "`TypeError` naming the flag", [
            C("top_k", "exclude_self 1", lambda be: fastsim.top_k(_m(), _m(), 1, exclude_self=1, backend=be),
              TypeError, r"\bexclude_self must be a bool"),
            C("modified_triplet_loss", "return_parts 'yes'", lambda be: fastsim.modified_triplet_loss(
                _m(), _m(), return_parts="yes", backend=be), TypeError, r"\breturn_parts must be a bool"),
            C("lstm_forward", "batch_first 'no'", lambda be: _fwd("lstm_forward", be, batch_first="no"),
              TypeError, r"\bbatch_first must be a bool"),
            _no_backend("LSTM", "bidirectional 1", lambda: fastsim.LSTM(2, 3, bidirectional=1), TypeError,
                        r"\bbidirectional must be a bool"),
        ]),
    Row("layer constructors and importers", "`dtype` other than float32 or float64",
        "`TypeError` naming `dtype`", [
            _no_backend("LSTM", "dtype float16", lambda: fastsim.LSTM(2, 3, dtype=np.float16), TypeError,
                        r"\bdtype must be float32 or float64"),
            _no_backend("GRU.from_torch", "dtype 'int32'", lambda: fastsim.GRU.from_torch(
                fastsim.GRU(2, 3).state_dict(), dtype="int32"), TypeError, r"\bdtype must be float32 or float64"),
        ]),
    Row("`cosine_similarity_rows`, `cosine_similarity_matrix`", "`out` of the wrong shape",
        "`ValueError` naming `out` and the expected shape", [
            C("cosine_similarity_matrix", "out (4, 3) for (4, 4)", lambda be: fastsim.cosine_similarity_matrix(
                _m(), out=np.empty((4, 3)), backend=be), ValueError, r"\bout must have shape \(4, 4\)"),
            C("cosine_similarity_rows", "out (5,) for (4,)", lambda be: fastsim.cosine_similarity_rows(
                _m(), _m(), out=np.empty(5), backend=be), ValueError, r"\bout must have shape \(4,\)"),
        ]),
    Row("`cosine_similarity_rows`, `cosine_similarity_matrix`", "`out` of the wrong dtype",
        "`TypeError` naming `out` and the result dtype", [
            C("cosine_similarity_matrix", "float32 out, float64 result", lambda be: fastsim.cosine_similarity_matrix(
                _m(), out=np.empty((4, 4), np.float32), backend=be), TypeError, r"\bout must have dtype float64"),
            C("cosine_similarity_rows", "float64 out, float32 result", lambda be: fastsim.cosine_similarity_rows(
                _m(dtype=np.float32), _m(dtype=np.float32), out=np.empty(4), backend=be),
              TypeError, r"\bout must have dtype float32"),
        ]),
    Row("`cosine_similarity_rows`, `cosine_similarity_matrix`",
        "`out` not an ndarray, not C-contiguous, or read-only",
        "`TypeError` (not an ndarray) or `ValueError` naming `out`", [
            C("cosine_similarity_matrix", "out a list", lambda be: fastsim.cosine_similarity_matrix(
                _m(), out=[[0.0] * 4] * 4, backend=be), TypeError, r"\bout must be a numpy.ndarray"),
            C("cosine_similarity_matrix", "out transposed", lambda be: fastsim.cosine_similarity_matrix(
                _m(4), _m(5), out=np.empty((5, 4)).T, backend=be), ValueError, r"\bout must be C-contiguous"),
            C("cosine_similarity_rows", "out read-only", lambda be: fastsim.cosine_similarity_rows(
                _m(), _m(), out=np.broadcast_to(np.float64(0), (4,)), backend=be), ValueError,
              r"\bout must be writeable"),
        ]),
    Row("`cosine_similarity_rows`, `cosine_similarity_matrix`", "`out` sharing memory with an input",
        "`ValueError` naming `out` and the input", [
            C("cosine_similarity_matrix", "out is a", lambda be: (lambda a: fastsim.cosine_similarity_matrix(
                a, out=a, backend=be))(np.ones((4, 4))), ValueError, r"\bout must not overlap the inputs; .*\ba\b"),
            C("cosine_similarity_rows", "out is a column of b", lambda be: (lambda b: fastsim.cosine_similarity_rows(
                np.ones((4, 4)), b, out=b[:, 0], backend=be))(np.ones((4, 4), order="F")),
              ValueError, r"\bout must not overlap the inputs; .*\bb\b"),
        ]),
    Row("`top_k`", "`exclude_self=True` with a different number of queries and corpus rows",
        "`ValueError` naming `exclude_self`", [
            C("top_k", "4 queries, 5 corpus rows", lambda be: fastsim.top_k(_m(4), _m(5), 1, exclude_self=True,
                                                                            backend=be),
              ValueError, r"\bexclude_self=True needs .* \(m == n\)"),
        ]),
    Row("`accuracy`", "labels other than 0/1 or booleans, or no pairs",
        "`ValueError` (values, no pairs) or `TypeError` (dtype) naming `labels` or the vectors", [
            C("accuracy", "a label 2", lambda be: fastsim.accuracy(_m(), _m(), [1, 0, 2, 0], 0.5, backend=be),
              ValueError, r"\blabels must be 0 or 1"),
            C("accuracy", "string labels", lambda be: fastsim.accuracy(_m(), _m(), ["y"] * 4, 0.5, backend=be),
              TypeError, r"\blabels must be booleans or 0/1 numbers"),
            C("accuracy", "0 pairs", lambda be: fastsim.accuracy(_m(0), _m(0), [], 0.5, backend=be),
              ValueError, r"\bq1_vecs and q2_vecs must hold at least one pair"),
        ]),
    Row("`Vocabulary`", "a single string where a list of texts is expected, or a non-string text",
        "`TypeError` naming `texts`", [
            _no_backend("Vocabulary.encode", "texts 'abc'", lambda: fastsim.Vocabulary().encode("abc"),
                        TypeError, r"\btexts must be a sequence of strings, not a single string"),
            _no_backend("Vocabulary.build", "texts [1]", lambda: fastsim.Vocabulary.build([1]),
                        TypeError, r"\btexts\[0\] must be a str"),
        ]),
]


# --------------------------------------------------------------------------- special values and edge cases


def _same(got, want, dtype):
    from .conftest import assert_close

    assert np.asarray(got).dtype == np.dtype(dtype)
    assert_close(got, want, dtype)


def _check_conversions(be):
    ints = np.arange(12).reshape(4, 3) - 5
    got = fastsim.cosine_similarity_matrix(ints, ints.astype(np.float16), backend=be)
    _same(got, ref_cos.cosine_similarity_matrix(ints.astype(np.float64)), np.float32)
    got = fastsim.cosine_similarity_rows(ints.astype(bool), ints.astype(np.float64), backend=be)
    _same(got, ref_cos.cosine_similarity_rows(ints.astype(bool).astype(np.float64), ints.astype(np.float64)),
          np.float64)
    out, _ = fastsim.LSTM(3, 2, seed=0)(ints[None].astype(np.int8), backend=be)
    assert out.dtype == np.float32


def _check_layouts(be):
    big = np.random.default_rng(3).standard_normal((9, 8))
    a, b = big[::2, ::-2], big[8:0:-2, 1::2]  # strided and negative-stride views
    _same(fastsim.cosine_similarity_matrix(a, b, backend=be),
          ref_cos.cosine_similarity_matrix(np.ascontiguousarray(a), np.ascontiguousarray(b)), np.float64)
    v = np.random.default_rng(4).standard_normal((3, 10, 4))[:, ::-3, ::2]
    layer = fastsim.GRU(2, 3, seed=0, dtype=np.float64)
    np.testing.assert_allclose(layer(v, backend=be)[0], layer(np.ascontiguousarray(v), backend=be)[0], atol=1e-12)


def _check_empty(be):
    assert fastsim.cosine_similarity_matrix(np.zeros((0, 3)), _m(5), backend=be).shape == (0, 5)
    assert fastsim.cosine_similarity_rows(np.zeros((0, 3)), np.zeros((0, 3)), backend=be).shape == (0,)
    s, i = fastsim.top_k(np.zeros((0, 3)), _m(5), 2, backend=be)
    assert s.shape == i.shape == (0, 2)
    s, i = fastsim.top_k(_m(2), np.zeros((0, 3)), 2, backend=be)
    assert s.shape == i.shape == (2, 0)
    out, h = fastsim.GRU(2, 3, num_layers=2)(np.zeros((0, 4, 2)), backend=be)
    assert out.shape == (0, 4, 3) and h.shape == (2, 0, 3)
    h0 = np.ones((1, 2, 3), np.float32)
    out, h = fastsim.GRU(2, 3)(np.zeros((2, 0, 2)), initial_state=h0, backend=be)
    assert out.shape == (2, 0, 3)
    np.testing.assert_array_equal(h, h0)
    assert _encoder().encode(np.zeros((0, 3), int), backend=be).shape == (0, _H)
    assert fastsim.triplet_loss(_m(0), _m(0), _m(0), reduction="sum", backend=be) == 0
    assert np.isnan(fastsim.triplet_loss(_m(0), _m(0), _m(0), reduction="mean", backend=be))


def _check_zero_columns(be):
    got = fastsim.cosine_similarity_matrix(np.zeros((2, 0)), np.zeros((3, 0)), backend=be)
    np.testing.assert_array_equal(got, np.zeros((2, 3)))
    np.testing.assert_array_equal(fastsim.cosine_similarity_matrix(np.zeros((2, 0)), backend=be), np.zeros((2, 2)))
    parts = fastsim.modified_triplet_loss(np.zeros((3, 0)), np.zeros((3, 0)), return_parts=True, backend=be)
    np.testing.assert_array_equal(parts.positive, np.zeros(3))


def _check_k_clipped(be):
    s, i = fastsim.top_k(_m(2), _m(3), 10, backend=be)
    assert s.shape == (2, 3)
    s, i = fastsim.top_k(_m(3), _m(3), 10, exclude_self=True, backend=be)
    assert s.shape == (3, 2) and not np.any(i == np.arange(3)[:, None])


def _check_zero_rows(be):
    a = _m(3)
    a[1] = 0
    got = fastsim.cosine_similarity_matrix(a, backend=be)
    assert np.all(got[1] == 0) and np.all(got[:, 1] == 0) and got[0, 0] == 1 and got[2, 2] == 1
    assert fastsim.cosine_similarity(np.zeros(3), np.ones(3), backend=be) == 0
    g1, g2 = fastsim.modified_triplet_loss_grad(a, _m(3, seed=1), margin=2.0, backend=be)
    np.testing.assert_array_equal(g1[1], 0)


def _check_nan_inf_rows(be):
    a = _m(4)
    a[1, 0] = np.nan
    a[2, 2] = np.inf
    a[3] = 0
    got = fastsim.cosine_similarity_matrix(a, backend=be)
    assert np.all(np.isnan(got[1:3])) and np.all(np.isnan(got[:, 1:3]))
    assert got[0, 3] == 0 and got[3, 0] == 0 and got[0, 0] == 1 and got[3, 3] == 0
    rows = fastsim.cosine_similarity_rows(a, np.zeros_like(a), backend=be)
    assert rows[0] == 0 and np.isnan(rows[1]) and np.isnan(rows[2]) and rows[3] == 0
    assert not fastsim.is_duplicate(a[1:2], a[1:2], -1.0, backend=be)[0]


def _check_magnitudes(be):
    base = _m(3, 4, seed=5)
    want = ref_cos.cosine_similarity_matrix(base)
    for dtype, scales in ((np.float32, (1e-41, 1e-30, 1e30, 3e37)), (np.float64, (5e-320, 1e-200, 1e200, 1e307))):
        for s in scales:
            a = (base * s).astype(dtype)
            exact = ref_cos.cosine_similarity_matrix(a.astype(np.float64))  # the rounded input's own cosines
            got = fastsim.cosine_similarity_matrix(a, backend=be)
            _same(got, exact, dtype)
            if s >= np.finfo(dtype).tiny:  # normal numbers: to float32 accuracy, the unscaled cosines too
                _same(got.astype(np.float32), want, np.float32)


def _check_top_k_nan_order(be):
    corpus = np.array([[1.0, 0.0], [np.nan, 1.0], [0.0, 1.0], [1.0, 0.0]])
    s, i = fastsim.top_k(np.array([[1.0, 0.0]]), corpus, 4, backend=be)
    np.testing.assert_array_equal(i[0], [0, 3, 2, 1])  # ties by lower index, NaN last
    assert np.isnan(s[0, 3])
    s, i = fastsim.top_k(np.array([[np.nan, 0.0]]), corpus, 2, backend=be)
    assert np.all(np.isnan(s)) and list(i[0]) == [0, 1]


def _check_triplet_nan(be):
    v1, v2 = _m(4), _m(4, seed=1)
    v1[2, 0] = np.nan
    parts = fastsim.modified_triplet_loss(v1, v2, return_parts=True, reduction="none", backend=be)
    assert np.all(np.isnan(parts.loss[[0, 1, 3]]))  # column 2 is a negative of these rows
    assert np.isnan(parts.positive[2]) and not np.isnan(parts.mean_negative[2])
    assert np.all(parts.closest_index == -1) and np.all(np.isnan(parts.closest_negative))


def _check_rnn_nan_inf(be):
    x = _x(B=3, T_=5, D=2)
    x[1, 2, 0] = np.nan
    x[2, 1, 0] = np.inf
    layer = fastsim.LSTM(2, 3, seed=0, dtype=np.float64)
    out, (h, c) = layer(x, lengths=[5, 4, 5], backend=be)
    assert np.all(np.isnan(out[1, 2:4])) and np.all(out[1, 4] == 0) and np.all(np.isnan(h[0, 1]))
    assert np.all(np.isfinite(out[0])) and np.all(np.isfinite(out[2]))  # inf saturates the gates
    w = [[tuple(np.asarray(a) for a in layer.weights[0][0])]]
    want_out, _ = ref_rnn.lstm(x, w, lengths=[5, 4, 5])
    from .conftest import assert_close

    assert_close(out, want_out, np.float64)
    # a closed forget gate (sigmoid exactly 0 below -80) on an infinite cell state: 0 * inf = NaN
    W_ih, W_hh = np.zeros((4, 1)), np.zeros((4, 1))
    b = np.array([0.0, -100.0, 0.0, 0.0])
    out, (h, c) = fastsim.lstm_forward(np.zeros((1, 1, 1)), W_ih, W_hh, b, c0=np.full((1, 1), np.inf), backend=be)
    assert np.isnan(c[0, 0])


def _check_encoder_zero(be):
    enc = fastsim.SiameseEncoder(np.zeros((5, 2)), fastsim.RNN(2, 3, bias=False, seed=0), pooling="mean")
    np.testing.assert_array_equal(enc.encode(np.array([[1, 2, 0]]), backend=be), np.zeros((1, 3)))


def _check_gradient_scale(be):
    v1, v2 = _m(3, seed=6), _m(3, seed=7)
    g1, g2 = fastsim.modified_triplet_loss_grad(v1, v2, margin=2.0, backend=be)
    s1, s2 = fastsim.modified_triplet_loss_grad(v1 * 1e-20, v2, margin=2.0, backend=be)
    np.testing.assert_allclose(s1 * 1e-20, g1, rtol=1e-10, atol=1e-12)  # d cost / d v1 scales like 1/|v1|
    tiny = (v1 * 1e-40).astype(np.float32)  # norms below 1/FLT_MAX: 1/|row| overflows float32
    t1, _ = fastsim.modified_triplet_loss_grad(tiny, v2.astype(np.float32), margin=2.0, backend=be)
    assert np.isinf(t1).any()


def S(function, situation_case, check, backends=BACKENDS):
    return Case(function, situation_case, check, backends=backends)


SPECIAL_VALUES = [
    Row("every array argument", "integer, bool or float16 input",
        "computed in float32 (float32 results); float64 if any float input is float64", [
            S("cosine_similarity_matrix, cosine_similarity_rows, LSTM", "int, float16, bool", _check_conversions)]),
    Row("every array argument", "non-contiguous or negative-stride views, Fortran order",
        "accepted; the same result as a contiguous copy", [
            S("cosine_similarity_matrix, GRU", "strided and reversed views", _check_layouts)]),
    Row("cosine, top-k, recurrent layers, encoder, `triplet_loss`", "0 rows, 0 queries, 0 sequences or 0 steps",
        "an empty result of the documented shape (recurrent final states: the initial states); "
        "`triplet_loss(..., reduction=\"mean\")` of 0 triplets is NaN", [
            S("cosine_similarity_matrix, cosine_similarity_rows, top_k, GRU, SiameseEncoder.encode, triplet_loss",
              "zero-size inputs", _check_empty)]),
    Row("cosine, triplet losses", "0 columns (d = 0)",
        "every row is a zero vector: similarity 0", [
            S("cosine_similarity_matrix, modified_triplet_loss", "d = 0", _check_zero_columns)]),
    Row("`top_k`", "`k` above the number of candidates",
        "clipped to `n` (`n - 1` with `exclude_self`)", [S("top_k", "k = 10 > n", _check_k_clipped)]),
    Row("cosine family, triplet losses, decisions", "a zero vector",
        "similarity 0 with every row (also with itself); zero gradient for that row", [
            S("cosine_similarity_matrix, cosine_similarity, modified_triplet_loss_grad", "zero rows",
              _check_zero_rows)]),
    Row("cosine family, triplet losses, decisions", "NaN or +-inf in a row",
        "NaN similarity with every row (zero rows included), NaN self-similarity; `is_duplicate` False", [
            S("cosine_similarity_matrix, cosine_similarity_rows, is_duplicate", "NaN and inf rows",
              _check_nan_inf_rows)]),
    Row("cosine family, top-k, triplet losses", "rows of extreme magnitude (subnormal up to the largest finite)",
        "the cosine of the rows as given, at the usual accuracy, in float32 and float64", [
            S("cosine_similarity_matrix", "1e-41 .. 3e37 (float32), 5e-320 .. 1e307 (float64)", _check_magnitudes)]),
    Row("`top_k`", "NaN scores and equal scores",
        "NaN ranks below every number; equal scores (and NaNs) by ascending corpus index", [
            S("top_k", "NaN corpus row, NaN query, duplicates", _check_top_k_nan_order)]),
    Row("triplet losses", "NaN or inf in a row of `v1` or `v2`",
        "NaN in every score it touches: those rows' losses are NaN, their closest negatives NaN with index -1", [
            S("modified_triplet_loss", "a NaN row of v1", _check_triplet_nan)]),
    Row("triplet gradients", "rows of tiny or huge norm",
        "the gradient of a row scales like 1/|row|; where that exceeds the dtype's range it is +-inf", [
            S("modified_triplet_loss_grad", "rows times 1e-20; float32 rows of norm 1e-40", _check_gradient_scale)]),
    Row("recurrent layers", "NaN or +-inf in `x`, `h0`, `c0`",
        "IEEE arithmetic in the layer's dtype: NaN in `x[b, t]` makes sequence b NaN from step t on (steps past "
        "its length stay 0); +-inf saturates the gates; sigmoid is exactly 0 below -80, so a closed gate on an "
        "infinite state gives NaN (0 * inf)", [
            S("LSTM, lstm_forward", "NaN and inf inputs, infinite c0", _check_rnn_nan_inf)]),
    Row("`SiameseEncoder.encode`", "a pooled vector that is exactly zero",
        "stays zero after normalization (its cosine with anything is 0)", [
            S("SiameseEncoder.encode", "zero embedding", _check_encoder_zero)]),
]


# --------------------------------------------------------------------------- the tests


def _params(rows, with_exc):
    out = []
    for r, row in enumerate(rows):
        for case in row.cases:
            ident = f"{r:02d}-{case.function}-{case.bad_input}".replace(" ", "_")
            backends = case.backends if case.uses_backend else ("-",)
            for be in backends:
                marks = []
                if be not in ("-",) and be not in fastsim.available_backends():
                    marks.append(pytest.mark.skip(reason=f"{be} backend not available here"))
                out.append(pytest.param(case, be, id=f"{ident}-{be}", marks=marks))
    return out


@pytest.mark.parametrize(("case", "backend"), _params(BAD_INPUT, True))
def test_bad_input(case, backend):
    with pytest.raises(case.exc) as info:
        case.call(None if backend == "-" else backend)
    assert type(info.value) is case.exc, f"raised {type(info.value).__name__}, the table says {case.exc.__name__}"
    assert re.search(case.match, str(info.value)), f"message {str(info.value)!r} does not match {case.match!r}"


@pytest.mark.parametrize(("case", "backend"), _params(SPECIAL_VALUES, False))
def test_special_values(case, backend):
    case.call(backend)


def test_every_row_has_cases_and_every_bad_input_names_the_argument():
    for row in BAD_INPUT + SPECIAL_VALUES:
        assert row.cases, f"README row without a test: {row.situation}"
    for row in BAD_INPUT:
        kinds = {case.exc for case in row.cases}
        for exc in kinds:
            assert f"`{exc.__name__}`" in row.behaviour, f"{row.situation}: the README must mention {exc.__name__}"
        for case in row.cases:
            assert re.search(r"\w", case.match), case


# --------------------------------------------------------------------------- the README tables

_MARK = "<!-- {} table: generated from tests/test_validation.py, edit there -->"


def _cell(text):
    return text.replace("|", "\\|")


def render_table(rows, kind):
    lines = [_MARK.format(kind), ""]
    if kind == "bad-input":
        lines += ["| functions | bad input | result | tested with |", "|---|---|---|---|"]
    else:
        lines += ["| functions | input | behaviour | tested with |", "|---|---|---|---|"]
    for row in rows:
        names = []
        for case in row.cases:
            for name in case.function.split(", "):
                if name not in names:
                    names.append(name)
        tested = ", ".join(f"`{n}`" for n in names)
        lines.append(f"| {_cell(row.family)} | {_cell(row.situation)} | {_cell(row.behaviour)} | {_cell(tested)} |")
    lines.append("")
    lines.append(_MARK.format(kind).replace("edit there", "end"))
    return "\n".join(lines)


def _replace_block(text, kind, block):
    start = text.index(_MARK.format(kind))
    end_mark = _MARK.format(kind).replace("edit there", "end")
    end = text.index(end_mark, start) + len(end_mark)
    return text[:start] + block + text[end:]


@pytest.mark.parametrize(("dtype", "expected"), [(">f4", np.float32), ("<f4", np.float32), ("f2", np.float32),
                                                 (">f8", np.float64), (">i4", np.float32), ("?", np.float32)])
def test_byte_order_and_half_precision_keep_the_documented_result_dtype(dtype, expected):
    rng = np.random.default_rng(3)
    a = rng.random((6, 8)).astype(dtype)
    b = rng.random((6, 8)).astype(dtype)
    want = fastsim.cosine_similarity_matrix(a.astype(np.float64), b.astype(np.float64), backend="numpy")
    for be in fastsim.available_backends():
        results = [fastsim.cosine_similarity(a[0], b[0], backend=be),
                   fastsim.cosine_similarity_rows(a, b, backend=be),
                   fastsim.cosine_similarity_matrix(a, b, backend=be),
                   fastsim.top_k(a, b, k=2, backend=be)[0],
                   fastsim.modified_triplet_loss(a, b, backend=be),
                   fastsim.modified_triplet_loss_grad(a, b, backend=be)[0]]
        for r in results:
            assert np.asarray(r).dtype == expected, (be, dtype)
        np.testing.assert_allclose(results[2], want, atol=1e-5 if expected == np.float32 else 1e-12)


def test_readme_tables_are_generated_from_this_file():
    text = README.read_text(encoding="utf-8")
    for rows, kind in ((BAD_INPUT, "bad-input"), (SPECIAL_VALUES, "special-values")):
        assert _MARK.format(kind) in text, f"README has no {kind} table"
        assert _replace_block(text, kind, render_table(rows, kind)) == text, (
            f"the README's {kind} table differs from tests/test_validation.py: "
            "run `python tests/test_validation.py --write-readme`"
        )


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-readme"]:
        sys.exit("usage: python tests/test_validation.py --write-readme")
    text = README.read_text(encoding="utf-8")
    for rows, kind in ((BAD_INPUT, "bad-input"), (SPECIAL_VALUES, "special-values")):
        text = _replace_block(text, kind, render_table(rows, kind))
    README.write_text(text, encoding="utf-8")
    print(f"rewrote the tables in {README}")

