"""The native trainer of the duplicate-question model: data, batches, the step, epochs, checkpoints.

This room owns training without PyTorch: question pairs read and checked
(:func:`read_pairs`), split and batched as the course does, the value and
gradient of the modified triplet loss through the whole Siamese encoder
(:class:`SiameseTrainer`), the epoch loop with evaluation, threshold choice,
progress bar and checkpoints (:func:`train`).  It may call
:mod:`fastsim.rnn.train` (the recurrent layers' training route),
:func:`fastsim.triplet.value_and_grad`, :mod:`fastsim.optim`,
:mod:`fastsim.pipeline` and :mod:`fastsim.model`; tqdm when installed.

The step, for a batch of b duplicate pairs (row i of both sides are
duplicates, every other row a negative)::

    ids (2b, T) -> embedding rows (T, 2b, E) -> recurrent layers (T, 2b, F)
      -> pooling over each text's own tokens (2b, F)
      -> modified triplet loss of (first b, last b) and its gradient (the loss
         normalizes; its gradient includes the normalization)
      -> back through the pooling and the layers (backpropagation through time)
      -> the embedding gradient as row sums over the tokens of the batch

Checkpoints hold everything a run depends on (parameters, optimizer
moments, step counts, the losses so far); the batch order of epoch e is drawn
from ``(seed, e)``, so a resumed run takes the same steps and gives the same
losses as one never interrupted.  Every file is written under a temporary
name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import _backend
from .rnn import cells as _cells
from .rnn import kernels as _rnn_kernels
from .rnn import train as _rnn_train
from . import optim as _optim
from .model import DuplicateModel
from .pipeline import PAD_ID, SiameseEncoder, Vocabulary, write_npz_atomic

__all__ = ["PairData", "SiameseTrainer", "TrainConfig", "TrainResult", "best_threshold", "make_batches",
           "read_pairs", "train"]

_CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}
_CHECKPOINT = "fastsim.TrainCheckpoint"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (saved in checkpoints and the model file).

    Model: ``embedding_dim``, ``hidden_size``, ``num_layers``, ``bidirectional``,
    ``cell`` ("LSTM", "GRU", "RNN"), ``pooling`` ("masked_mean", "mean",
    "last"), ``max_length`` (tokens kept per question), ``dtype``.
    Loss: ``margin``, ``reduction`` ("mean" or "sum" over the batch).
    Optimizer: ``optimizer`` ("adam", "sparse_adam": the embedding updated
    row-wise as ``torch.optim.SparseAdam``, "sgd" with ``momentum``), ``lr``,
    ``weight_decay``, ``clip_norm`` (joint gradient norm; None: no clipping),
    ``schedule`` ("constant", "linear", "cosine") after ``warmup_steps``.
    Data: ``batch_size`` duplicate pairs per step, ``val_fraction`` and
    ``test_fraction`` of the pairs held out, ``min_count`` and ``max_vocab``
    for the vocabulary (built on the training split only), ``seed``.
    """

    epochs: int = 5
    batch_size: int = 64
    embedding_dim: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    cell: str = "LSTM"
    pooling: str = "masked_mean"
    max_length: int = 32
    margin: float = 0.25
    reduction: str = "mean"
    optimizer: str = "adam"
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip_norm: float | None = None
    schedule: str = "constant"
    warmup_steps: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    min_count: int = 1
    max_vocab: int | None = None
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "embedding_dim", "hidden_size", "num_layers", "max_length", "min_count"):
            _positive_int(getattr(self, name), name, minimum=2 if name == "batch_size" else 1)
        _positive_int(self.warmup_steps, "warmup_steps", minimum=0)
        _positive_int(self.seed, "seed", minimum=0)
        if self.max_vocab is not None:
            _positive_int(self.max_vocab, "max_vocab", minimum=3)
        for name, choices in (("cell", tuple(_CELLS)), ("pooling", ("masked_mean", "mean", "last")),
                              ("reduction", ("mean", "sum")), ("optimizer", _optim.OPTIMIZERS),
                              ("schedule", _optim.SCHEDULES), ("dtype", ("float32", "float64"))):
            if getattr(self, name) not in choices:
                msg = f"{name} must be one of {choices}; got {getattr(self, name)!r}"
                raise ValueError(msg)
        if not isinstance(self.bidirectional, bool):
            msg = f"bidirectional must be a bool; got {type(self.bidirectional).__name__}"
            raise TypeError(msg)
        for name in ("margin", "lr", "momentum", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                msg = f"{name} must be a non-negative finite number; got {v!r}"
                raise ValueError(msg)
        if self.momentum >= 1:
            msg = f"momentum must lie in [0, 1); got {self.momentum}"
            raise ValueError(msg)
        if self.clip_norm is not None and not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            msg = f"clip_norm must be a positive number or None; got {self.clip_norm!r}"
            raise ValueError(msg)
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                msg = f"{name} must lie in [0, 1); got {v!r}"
                raise ValueError(msg)
        if self.val_fraction + self.test_fraction >= 0.9:
            msg = (f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} leaves too few "
                   "pairs to train on; keep it below 0.9")
            raise ValueError(msg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _positive_int(value, name, *, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        msg = f"{name} must be an int; got {type(value).__name__}"
        raise TypeError(msg)
    if value < minimum:
        msg = f"{name} must be >= {minimum}; got {value}"
        raise ValueError(msg)
    return int(value)


# --------------------------------------------------------------------------- data


class PairData(NamedTuple):
    """Question pairs: ``q1[i]``, ``q2[i]`` and ``labels[i]`` (1 duplicate, 0 not)."""

    q1: list[str]
    q2: list[str]
    labels: np.ndarray

    def digest(self) -> str:
        """A fingerprint of the pairs (a checkpoint belongs to one data set)."""
        h = hashlib.sha256()
        for a, b, y in zip(self.q1, self.q2, self.labels.tolist()):
            h.update(f"{a}\x1f{b}\x1f{y}\x1e".encode())
        return h.hexdigest()


def _check_row(where, q1, q2, label):
    for name, q in (("question1", q1), ("question2", q2)):
        if not isinstance(q, str):
            msg = f"{where}: {name} must be a str; got {type(q).__name__}"
            raise TypeError(msg)
        if not q.strip():
            msg = f"{where}: {name} is empty"
            raise ValueError(msg)
    if isinstance(label, str):
        label = label.strip()
        if label not in ("0", "1"):
            msg = f"{where}: the label must be 0 or 1; got {label!r}"
            raise ValueError(msg)
        return int(label)
    if isinstance(label, (bool, np.bool_)) or label not in (0, 1):
        msg = f"{where}: the label must be 0 or 1; got {label!r}"
        raise ValueError(msg)
    return int(label)


def read_pairs(path: str | os.PathLike[str], *, question1: str = "question1", question2: str = "question2",
               label: str = "is_duplicate") -> PairData:
    """Read question pairs from a CSV file in the Quora Question Pairs layout.

    The header must name the two question columns and the label column
    (other columns, such as ``id``, are ignored); the label is 0 or 1.
    Errors name the file, the row (the header is line 1) and what is wrong.
    """
    where = os.fspath(path)
    q1s, q2s, ys = [], [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in (question1, question2, label) if c not in header]
        if missing:
            msg = (f"{where}: missing column(s) {missing}; the header has {header}. Name the columns with "
                   "question1=, question2=, label= (--question1, --question2, --label on the command line)")
            raise ValueError(msg)
        for line, row in enumerate(reader, start=2):
            a, b, y = row[question1], row[question2], row[label]
            if a is None or b is None or y is None:
                msg = f"{where} line {line}: the row has fewer fields than the header"
                raise ValueError(msg)
            y = _check_row(f"{where} line {line}", a, b, y)
            q1s.append(a)
            q2s.append(b)
            ys.append(y)
    if not q1s:
        msg = f"{where}: no question pairs (only a header)"
        raise ValueError(msg)
    return PairData(q1s, q2s, np.array(ys, dtype=np.int8))


def as_pair_data(pairs, columns=("question1", "question2", "is_duplicate")) -> PairData:
    """A CSV path, a :class:`PairData` or a sequence of ``(question1, question2, label)`` rows."""
    if isinstance(pairs, PairData):
        return pairs
    if isinstance(pairs, (str, os.PathLike)):
        return read_pairs(pairs, question1=columns[0], question2=columns[1], label=columns[2])
    if not isinstance(pairs, Sequence):
        msg = f"pairs must be a CSV path or a sequence of (question1, question2, label); got {type(pairs).__name__}"
        raise TypeError(msg)
    q1s, q2s, ys = [], [], []
    for i, row in enumerate(pairs):
        if not isinstance(row, (tuple, list)) or len(row) != 3:
            msg = f"pairs[{i}] must be a (question1, question2, label) triple"
            raise TypeError(msg)
        ys.append(_check_row(f"pairs[{i}]", *row))
        q1s.append(row[0])
        q2s.append(row[1])
    if not q1s:
        msg = "pairs is empty"
        raise ValueError(msg)
    return PairData(q1s, q2s, np.array(ys, dtype=np.int8))


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int):
    """Disjoint (train, validation, test) index arrays of ``n`` pairs, drawn from ``seed``."""
    perm = np.random.default_rng([seed, 1]).permutation(n)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_test + n_val :]), np.sort(perm[n_test : n_test + n_val]), np.sort(perm[:n_test])


def make_batches(keys1: Sequence, keys2: Sequence, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of pair indices in which no question appears twice, as the course's generator makes them.

    ``keys1[i]`` and ``keys2[i]`` identify the two questions of duplicate
    pair i (two questions with one key encode alike, so they must not be each
    other's negative).  The pairs are shuffled by ``rng`` and packed in order;
    a pair whose question is already in the batch waits for the next one.  The
    last, incomplete batch is dropped.
    """
    order = rng.permutation(len(keys1))
    batches: list[np.ndarray] = []
    waiting: list[int] = []
    current: list[int] = []
    seen: set = set()

    def offer(i: int) -> bool:
        a, b = keys1[i], keys2[i]
        if a in seen or b in seen:
            return False
        current.append(i)
        seen.update((a, b))
        return True

    for i in order.tolist():
        if not offer(i):
            waiting.append(i)
        if len(current) == batch_size:
            batches.append(np.array(current, dtype=np.int64))
            current.clear()
            seen.clear()
            still = []
            for j in waiting:
                if len(current) == batch_size or not offer(j):
                    still.append(j)
            waiting = still
            if len(current) == batch_size:  # the waiting pairs filled a batch of their own
                batches.append(np.array(current, dtype=np.int64))
                current.clear()
                seen.clear()
    return batches


def best_threshold(similarities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The cosine threshold with the best accuracy on these pairs, and that accuracy.

    Pairs scoring at or above the threshold are called duplicates; the
    threshold returned lies halfway between two neighbouring scores.
    """
    s = np.asarray(similarities, dtype=np.float64)
    y = np.asarray(labels) == 1
    n = s.size
    if n == 0:
        msg = "best_threshold needs at least one pair"
        raise ValueError(msg)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)  # duplicates among the k+1 best
    k = np.arange(1, n + 1)
    fp = k - tp
    acc = (tp + (n - y.sum() - fp)) / n  # calling the k+1 best duplicates
    distinct = np.r_[s[1:] != s[:-1], True]  # a cut only between different scores
    acc = np.where(distinct, acc, -1.0)
    none_acc = (n - y.sum()) / n  # calling nothing a duplicate
    best = int(np.argmax(acc))
    if none_acc > acc[best]:
        return float(min(1.0, s[0] + 1e-6)), float(none_acc)
    below = s[best + 1] if best + 1 < n else s[best] - 1e-3
    return float(max(-1.0, 0.5 * (s[best] + below))), float(acc[best])


# --------------------------------------------------------------------------- the model and its step


class SiameseTrainer:
    """The parameters of embedding -> recurrent layers -> pooling, their optimizer, and the training step.

    Parameters
    ----------
    config : TrainConfig
    vocab_size : int
        Rows of the embedding (``len(vocabulary)``).
    backend : {"auto", "numpy", "numba", "cpp"}
        For the recurrent layers and the loss.

    ``params`` maps PyTorch's names (those of ``fastsim.torch.SiameseEncoder``:
    ``embedding.weight``, ``lstm.weight_ih_l0``, ...) to arrays that the
    optimizer updates in place.  The initial values follow PyTorch's
    defaults (embedding N(0, 1) with a zero padding row, recurrent weights
    uniform within +-1/sqrt(H)), drawn from ``config.seed``.
    """

    def __init__(self, config: TrainConfig, vocab_size: int, *, backend: str = "auto") -> None:
        self.config = config
        self.vocab_size = _positive_int(vocab_size, "vocab_size", minimum=3)
        self.cell = _cells.cell(_CELLS[config.cell])  # the RNN's tanh, as torch.nn.RNN's default
        self.kind = self.cell.kind
        self.backend = _backend.resolve(backend, _rnn_kernels.SUPPORTED)
        self.dtype = np.dtype(config.dtype)
        self.num_dirs = 2 if config.bidirectional else 1
        self.params = self._initial_params()
        self.optimizer = _optim.make_optimizer(config.optimizer, self.params, lr=config.lr, momentum=config.momentum,
                                               weight_decay=config.weight_decay, backend=self.backend)
        self.steps = 0

    @property
    def prefix(self) -> str:
        return self.kind + "."

    def _layer_names(self, layer: int, d: int) -> list[str]:
        sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
        return [f"{self.prefix}{w}{sfx}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def _initial_params(self) -> dict[str, np.ndarray]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 0])
        params = {"embedding.weight": rng.standard_normal((self.vocab_size, cfg.embedding_dim)).astype(self.dtype)}
        params["embedding.weight"][PAD_ID] = 0
        H = cfg.hidden_size
        G = self.cell.gates * H
        k = 1.0 / math.sqrt(H)
        for layer in range(cfg.num_layers):
            D = cfg.embedding_dim if layer == 0 else H * self.num_dirs
            for d in range(self.num_dirs):
                shapes = ((G, D), (G, H), (G,), (G,))
                for name, shape in zip(self._layer_names(layer, d), shapes):
                    params[name] = rng.uniform(-k, k, shape).astype(self.dtype)
        return params

    def _weights(self):
        return [[tuple(self.params[n] for n in self._layer_names(layer, d)) for d in range(self.num_dirs)]
                for layer in range(self.config.num_layers)]

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        """Replace the parameters' values (same names and shapes), e.g. with a PyTorch ``state_dict``."""
        for name, p in self.params.items():
            if name not in params:
                msg = f"params has no entry {name!r}"
                raise ValueError(msg)
            value = np.asarray(params[name])
            if value.shape != p.shape:
                msg = f"params[{name!r}] has shape {value.shape}; this model's is {p.shape}"
                raise ValueError(msg)
            p[...] = value

    # ----------------------------------------------------------------- forward and backward

    def _pool(self, out, L, T_pad):
        cfg = self.config
        if cfg.pooling == "last":
            rows = np.arange(out.shape[1])
            pooled = out[L - 1, rows].copy()
            if self.num_dirs == 2:
                H = cfg.hidden_size
                pooled[:, H:] = out[0, :, H:]
            return pooled
        total = out.sum(axis=0)  # outputs past a text's length are 0
        denom = L[:, None].astype(out.dtype) if cfg.pooling == "masked_mean" else out.dtype.type(T_pad)
        return total / denom

    def _pool_backward(self, d_pooled, L, T, T_pad):
        cfg = self.config
        N, F = d_pooled.shape
        if cfg.pooling == "last":
            d_out = np.zeros((T, N, F), dtype=d_pooled.dtype)
            rows = np.arange(N)
            if self.num_dirs == 2:
                H = cfg.hidden_size
                d_out[L - 1, rows, :H] = d_pooled[:, :H]
                d_out[0, :, H:] += d_pooled[:, H:]
            else:
                d_out[L - 1, rows] = d_pooled
            return d_out
        scale = d_pooled / (L[:, None].astype(d_pooled.dtype) if cfg.pooling == "masked_mean" else T_pad)
        d_out = np.empty((T, N, F), dtype=d_pooled.dtype)
        d_out[...] = scale[None]  # entries at padded steps are ignored by the backward
        return d_out

    def value_and_grad(self, ids: np.ndarray, lengths: np.ndarray):
        """Loss and gradients of one batch: ``ids`` (2b, T) are the b first questions, then their duplicates.

        Returns ``(loss, grads)``: grads maps each parameter name to its
        gradient, the embedding's a :class:`fastsim.optim.RowGradient`.
        """
        from .triplet import value_and_grad as _loss_value_and_grad

        cfg = self.config
        N = ids.shape[0]
        b = N // 2
        L = np.ascontiguousarray(lengths, dtype=np.int64)
        T = int(L.max())
        ids = ids[:, :T]
        emb = self.params["embedding.weight"]
        x = emb[ids.T]  # (T, 2b, E), time-major: the layers' native layout
        weights = self._weights()
        out, _, tape = _rnn_train.train_forward(self.backend, self.cell, x, weights, None, L, False)
        pooled = self._pool(out, L, cfg.max_length)
        loss, (g1, g2) = _loss_value_and_grad(pooled[:b], pooled[b:], cfg.margin, reduction=cfg.reduction,
                                              backend=self.backend)
        d_out = self._pool_backward(np.concatenate([g1, g2]), L, T, cfg.max_length)
        dx, d_weights, _ = _rnn_train.train_backward(self.backend, self.cell, tape, weights, d_out, None)
        grads: dict[str, Any] = {}
        grads["embedding.weight"] = self._embedding_grad(ids, L, dx)
        for layer in range(cfg.num_layers):
            for d in range(self.num_dirs):
                for name, g in zip(self._layer_names(layer, d), d_weights[layer][d]):
                    grads[name] = np.asarray(g, dtype=self.dtype)
        return float(loss), grads

    def _embedding_grad(self, ids, L, dx):
        """The rows of the tokens in the batch, each the sum of dx over the positions holding it."""
        T, N, E = dx.shape
        tokens = np.ascontiguousarray(ids.T).reshape(-1)  # position t * N + n, as dx's rows
        if int(L.min()) < T:
            tokens = np.where((np.arange(T)[:, None] < L[None, :]).reshape(-1), tokens, -1)
        order = np.argsort(tokens, kind="stable")
        order = order[np.searchsorted(tokens[order], 0) :]  # padded positions (-1) carry no gradient
        sorted_tokens = tokens[order]
        starts = np.flatnonzero(np.r_[True, sorted_tokens[1:] != sorted_tokens[:-1]])
        flat = dx.reshape(T * N, E)
        if self.backend == "cpp":
            values = _backend.core().segment_sum_rows(np.ascontiguousarray(flat), order, starts)
        else:
            values = np.add.reduceat(flat[order], starts, axis=0)
        return _optim.RowGradient(sorted_tokens[starts], values)

    def step(self, ids: np.ndarray, lengths: np.ndarray, lr: float | None = None) -> float:
        """One optimizer step on one batch (see :meth:`value_and_grad`); returns the batch's loss."""
        loss, grads = self.value_and_grad(ids, lengths)
        if self.config.clip_norm is not None:
            _optim.clip_grad_norm(grads, self.config.clip_norm)
        self.optimizer.step(grads, lr)
        self.steps += 1
        return loss

    # ----------------------------------------------------------------- the inference model

    def encoder(self) -> SiameseEncoder:
        """The current weights as a :class:`fastsim.SiameseEncoder` (copies: training goes on unaffected)."""
        from . import rnn as _rnn

        cls = getattr(_rnn, self.config.cell)
        state = {name[len(self.prefix) :]: p for name, p in self.params.items() if name.startswith(self.prefix)}
        layer = cls.from_torch(state, dtype=self.dtype, batch_first=True)
        return SiameseEncoder(self.params["embedding.weight"], layer, self.config.pooling)

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {f"param/{k}": v for k, v in self.params.items()}
        out.update({f"optim/{k}": v for k, v in self.optimizer.state_dict().items()})
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray], where: str) -> None:
        params = {k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")}
        try:
            self.load_params(params)
            self.optimizer.load_state_dict({k[len("optim/") :]: v for k, v in arrays.items()
                                            if k.startswith("optim/")})
        except ValueError as exc:
            msg = f"{where}: {exc}"
            raise ValueError(msg) from None


# --------------------------------------------------------------------------- the run


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes
    ----------
    model : DuplicateModel
        The trained model (threshold chosen on the validation split).
    history : list of dict
        One record per epoch (``epoch`` 0 is the untrained model): mean
        training ``loss``, ``val_accuracy``, ``threshold``, ``test_accuracy``,
        ``seconds``, ``pairs_per_second``.
    losses : ndarray
        The loss of every step.
    trainer : SiameseTrainer
        Its parameters and optimizer, to go on training.
    """

    model: DuplicateModel
    history: list
    losses: np.ndarray
    trainer: SiameseTrainer


class _Interrupt:
    """Turns Ctrl-C into a flag read between steps, so a step is never left half-applied."""

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.hit:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class _Bar:
    def __init__(self, enabled, total, initial):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm is a dependency
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, unit="pair", unit_scale=True, desc="train",
                                dynamic_ncols=True, file=sys.stderr)

    def update(self, n, **postfix):
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def write(self, text):
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _evaluate(trainer, vocab, eval_split, test_split, data, backend="auto"):
    """Threshold and accuracy on the validation split, and the test accuracy at that threshold (one model)."""
    model = DuplicateModel(trainer.encoder(), vocab, 0.0, max_length=trainer.config.max_length)

    def sims(split):
        return model.similarity([data.q1[i] for i in split], [data.q2[i] for i in split], backend=backend)

    thr, acc = best_threshold(sims(eval_split), data.labels[eval_split])
    test = sims(test_split) >= thr
    return thr, acc, float(np.mean(test == (data.labels[test_split] == 1)))


def _ids_of(vocab, texts, max_length):
    ids, lengths = vocab.encode(texts, max_length)
    return ids, lengths


def _remove_stale_temporaries(path):
    """Remove what a killed run left of an unfinished checkpoint write (``<name>.<random>.tmp`` beside it)."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(os.fspath(path)) + "."
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _save_checkpoint(path, trainer, state, vocab, data_digest):
    doc = {"format": _CHECKPOINT, "version": 1, "config": trainer.config.to_dict(), "data": data_digest,
           "vocab_size": trainer.vocab_size, **{k: v for k, v in state.items() if k != "losses"}}
    arrays = trainer.state_arrays()
    arrays["checkpoint"] = np.array(json.dumps(doc))
    arrays["losses"] = np.asarray(state["losses"], dtype=np.float64)
    arrays["vocabulary"] = np.array(vocab.tokens, dtype=str)
    write_npz_atomic(path, arrays)


def _load_checkpoint(path, config, data_digest):
    where = f"checkpoint {os.fspath(path)!r}"
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        msg = f"{where} is not a training checkpoint: {exc}"
        raise ValueError(msg) from None
    with npz:
        if "checkpoint" not in npz.files:
            msg = f"{where} is not a training checkpoint (no 'checkpoint' entry)"
            raise ValueError(msg)
        doc = json.loads(str(npz["checkpoint"]))
        arrays = {k: npz[k] for k in npz.files if k.startswith(("param/", "optim/"))}
        losses = npz["losses"].tolist()
        tokens = [str(t) for t in npz["vocabulary"]]
    if doc.get("format") != _CHECKPOINT or doc.get("version") != 1:
        msg = f"{where} is not a version-1 fastsim training checkpoint"
        raise ValueError(msg)
    saved = dict(doc["config"])
    asked = config.to_dict()
    differ = [k for k in asked if k != "epochs" and saved.get(k) != asked[k]]
    if differ:
        detail = ", ".join(f"{k}={saved.get(k)!r} in the checkpoint but {asked[k]!r} asked" for k in differ)
        msg = f"{where} was made with other settings: {detail}"
        raise ValueError(msg)
    if doc["data"] != data_digest:
        msg = f"{where} was made from other question pairs (the data's fingerprint differs)"
        raise ValueError(msg)
    doc["losses"] = losses
    return doc, arrays, Vocabulary(tokens[2:]), where


def train(pairs: Any, *, out: str | os.PathLike[str] | None = None, config: TrainConfig | None = None,
          checkpoint: str | os.PathLike[str] | None = None, resume: bool = False, checkpoint_every: int = 200,
          columns: tuple[str, str, str] = ("question1", "question2", "is_duplicate"), progress: bool = True,
          backend: str = "auto", max_steps: int | None = None, callback: Callable[[int, float], Any] | None = None,
          **settings: Any) -> TrainResult:
    """Train the duplicate-question model on question pairs, natively (no PyTorch).

    Parameters
    ----------
    pairs : str or path, PairData, or sequence of (question1, question2, label)
        A CSV in the Quora Question Pairs layout (see :func:`read_pairs`), or
        the pairs themselves.  The duplicates of the training split are the
        training batches; every split's pairs (both labels) measure accuracy.
    out : path, optional
        Where the trained :class:`DuplicateModel` is saved (``.npz``).
    config : TrainConfig, optional
        Every setting; or pass them as keywords (``epochs=3, lr=1e-3``).
    checkpoint : path, optional
        Saved every ``checkpoint_every`` steps, after each epoch, and when
        the run is interrupted (Ctrl-C).
    resume : bool, default False
        Continue from ``checkpoint`` if it exists: the run goes on with the
        same steps and losses as if it had never stopped.  The settings must
        be the checkpoint's (``epochs`` may grow) and so must the data.
    columns : (question1, question2, label)
        The CSV's column names.
    progress : bool, default True
        A tqdm bar: loss, pairs/s, time left; one line per epoch.
    backend : {"auto", "numpy", "numba", "cpp"}
    max_steps : int, optional
        Stop after this many steps in all (a checkpoint is saved there).
    callback : callable, optional
        ``callback(step, loss)`` after every step.

    Returns
    -------
    TrainResult

    Raises
    ------
    KeyboardInterrupt
        After Ctrl-C, once the checkpoint (if any) holds the last finished step.
    """
    if config is None:
        config = TrainConfig(**settings)
    elif settings:
        config = dataclasses.replace(config, **settings)
    if not isinstance(config, TrainConfig):
        msg = f"config must be a TrainConfig; got {type(config).__name__}"
        raise TypeError(msg)
    checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
    if resume and checkpoint is None:
        msg = "resume=True needs checkpoint= (the file to resume from)"
        raise ValueError(msg)
    data = as_pair_data(pairs, columns)
    digest = data.digest()
    n = len(data.q1)
    tr, va, te = split_indices(n, config.val_fraction, config.test_fraction, config.seed)
    dup = tr[data.labels[tr] == 1]
    if len(dup) < config.batch_size:
        msg = (f"batch_size = {config.batch_size} is more than the {len(dup)} duplicate pairs of the training split "
               f"({n} pairs, {int(data.labels.sum())} duplicates in all); lower batch_size")
        raise ValueError(msg)
    if checkpoint is not None:
        _remove_stale_temporaries(checkpoint)
    state: dict[str, Any]
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state, arrays, vocab, where = _load_checkpoint(checkpoint, config, digest)
    else:
        vocab = Vocabulary.build([data.q1[i] for i in tr] + [data.q2[i] for i in tr], min_count=config.min_count,
                                 max_size=config.max_vocab)
        if len(vocab) < 4:
            msg = (f"the training questions give a vocabulary of {len(vocab) - 2} token(s) (min_count = "
                   f"{config.min_count}); at least 2 are needed to tell questions apart")
            raise ValueError(msg)
        state, arrays, where = {"epoch": 0, "batch": 0, "losses": [], "history": []}, None, ""
    trainer = SiameseTrainer(config, len(vocab), backend=backend)
    if arrays is not None:
        trainer.load_state_arrays(arrays, where)
        trainer.steps = len(state["losses"])
    ids1, len1 = _ids_of(vocab, [data.q1[i] for i in dup], config.max_length)
    ids2, len2 = _ids_of(vocab, [data.q2[i] for i in dup], config.max_length)
    keys1 = [row[:k].tobytes() for row, k in zip(ids1, len1)]
    keys2 = [row[:k].tobytes() for row, k in zip(ids2, len2)]
    batches_of = {}

    def epoch_batches(e):
        if e not in batches_of:
            batches_of.clear()
            batches_of[e] = make_batches(keys1, keys2, config.batch_size, np.random.default_rng([config.seed, 2, e]))
        return batches_of[e]

    per_epoch = len(epoch_batches(0))
    if per_epoch == 0:
        msg = (f"no batch of {config.batch_size} duplicate pairs without a repeated question can be made; "
               "lower batch_size")
        raise ValueError(msg)
    total_steps = per_epoch * config.epochs
    eval_split = va if len(va) else tr
    test_split = te if len(te) else eval_split
    if not state["history"]:
        thr, acc, test_acc = _evaluate(trainer, vocab, eval_split, test_split, data, backend)
        state["history"].append({"epoch": 0, "loss": None, "val_accuracy": acc, "threshold": thr,
                                 "test_accuracy": test_acc, "seconds": 0.0, "pairs_per_second": None})
    bar = _Bar(progress, total_steps * config.batch_size, trainer.steps * config.batch_size)

    def save():
        if checkpoint is not None:
            _save_checkpoint(checkpoint, trainer, state, vocab, digest)

    def report(rec):
        line = (f"epoch {rec['epoch']}: loss {rec['loss']:.4f}, val accuracy {rec['val_accuracy']:.4f} at "
                f"threshold {rec['threshold']:.3f}, test accuracy {rec['test_accuracy']:.4f}, "
                f"{rec['pairs_per_second']:.0f} pairs/s")
        if bar.bar is not None:
            bar.write(line)

    try:
        with _Interrupt() as stop:
            while state["epoch"] < config.epochs:
                e = state["epoch"]
                batches = epoch_batches(e)
                t0 = time.perf_counter()
                first = state["batch"]
                while state["batch"] < len(batches):
                    if max_steps is not None and trainer.steps >= max_steps:
                        save()
                        return _result(trainer, vocab, state, out)
                    idx = batches[state["batch"]]
                    ids = np.concatenate([ids1[idx], ids2[idx]])
                    lengths = np.concatenate([len1[idx], len2[idx]])
                    lr = config.lr * _optim.lr_factor(config.schedule, trainer.steps, total_steps,
                                                      config.warmup_steps)
                    loss = trainer.step(ids, lengths, lr)
                    state["losses"].append(loss)
                    state["batch"] += 1
                    if callback is not None:
                        callback(trainer.steps, loss)
                    rate = (state["batch"] - first) * config.batch_size / max(time.perf_counter() - t0, 1e-9)
                    bar.update(config.batch_size, loss=f"{loss:.4f}", pairs_s=f"{rate:.0f}")
                    if stop.hit:
                        save()
                        raise KeyboardInterrupt
                    if trainer.steps % checkpoint_every == 0:
                        save()
                seconds = time.perf_counter() - t0
                thr, acc, test_acc = _evaluate(trainer, vocab, eval_split, test_split, data, backend)
                epoch_losses = state["losses"][-len(batches) :]
                rec = {"epoch": e + 1, "loss": float(np.mean(epoch_losses)), "val_accuracy": acc, "threshold": thr,
                       "test_accuracy": test_acc, "seconds": seconds,
                       "pairs_per_second": (len(batches) - first) * config.batch_size / max(seconds, 1e-9)}
                state["history"].append(rec)
                state["epoch"] = e + 1
                state["batch"] = 0
                report(rec)
                save()
                if stop.hit:
                    raise KeyboardInterrupt
    finally:
        bar.close()
    return _result(trainer, vocab, state, out)


def _result(trainer, vocab, state, out):
    last = state["history"][-1]
    info = {"config": trainer.config.to_dict(), "history": state["history"], "steps": trainer.steps}
    model = DuplicateModel(trainer.encoder(), vocab, last["threshold"], max_length=trainer.config.max_length,
                           info=info)
    if out is not None:
        model.save(out)
    return TrainResult(model, list(state["history"]), np.array(state["losses"], dtype=np.float64), trainer)
