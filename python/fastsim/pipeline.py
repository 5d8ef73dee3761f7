"""The Siamese pipeline: text -> token ids -> encoder -> cosine -> duplicate decision.

The course's question-duplicates model, for inference:

1. :class:`Vocabulary` turns each question into token ids (padding id 0,
   unknown id 1), padded to a common length.
2. :class:`SiameseEncoder` runs one shared sub-network on both questions:
   embedding lookup, recurrent layer(s), pooling over time, L2 normalization.
3. :func:`similarity` compares the two encodings with the cosine, and
   :func:`is_duplicate` / :func:`accuracy` test it against a threshold.

:func:`fastsim.top_k` finds the nearest questions in a whole corpus of encodings.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _backend
from ._reference.cosine import unit_rows
from ._validation import (as_float_array, as_int_array, check_choice, check_finite_scalar, check_lengths,
                          check_positive_int, check_same_shape, check_shape, contiguous)
from .cosine import cosine_similarity_rows

__all__ = ["PAD_ID", "UNK_ID", "SiameseEncoder", "Vocabulary", "accuracy", "is_duplicate", "similarity"]

PAD_ID = 0
UNK_ID = 1
PAD_TOKEN = "<PAD>"
UNK_TOKEN = "<UNK>"

# words (letters, digits, underscore) or single punctuation marks
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_npz_atomic(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to the ``.npz`` file ``path`` (no suffix added), never leaving it half-written.

    The file is written beside ``path`` under a temporary name and renamed
    over it once complete; on any error the temporary file is removed and
    ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a saved model is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- vocabulary


def _check_texts(texts, name: str = "texts") -> list[str]:
    if isinstance(texts, (str, bytes)):
        msg = f"{name} must be a sequence of strings, not a single string; wrap it in a list"
        raise TypeError(msg)
    try:
        items = list(texts)
    except TypeError:
        msg = f"{name} must be an iterable of strings; got {type(texts).__name__}"
        raise TypeError(msg) from None
    for i, t in enumerate(items):
        if not isinstance(t, str):
            msg = f"{name}[{i}] must be a str; got {type(t).__name__}"
            raise TypeError(msg)
    return items


class Vocabulary:
    """Token <-> id mapping with a padding and an unknown token.

    Id 0 is ``"<PAD>"`` (what :meth:`encode` pads with, and what
    :class:`SiameseEncoder` treats as padding) and id 1 is ``"<UNK>"`` (every
    token not in the vocabulary).  Real tokens follow from id 2.

    Parameters
    ----------
    tokens : iterable of str, optional
        The real tokens in id order (ids 2, 3, ...).  Use :meth:`build` to
        count them from texts instead.

    Examples
    --------
    >>> vocab = Vocabulary.build(["How old are you?", "What is your age?"])
    >>> ids, lengths = vocab.encode(["how old is your age?"])
    """

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self._tokens = [PAD_TOKEN, UNK_TOKEN]
        self._ids = {PAD_TOKEN: PAD_ID, UNK_TOKEN: UNK_ID}
        for i, tok in enumerate(_check_texts(tokens, "tokens")):
            if tok in self._ids:
                msg = f"tokens[{i}] = {tok!r} appears twice (or is a special token)"
                raise ValueError(msg)
            if not tok:
                msg = f"tokens[{i}] is the empty string"
                raise ValueError(msg)
            self._ids[tok] = len(self._tokens)
            self._tokens.append(tok)

    # ----------------------------------------------------------------- building

    @staticmethod
    def tokenize(text: str) -> list[str]:
        """Lowercase ``text`` and split it into words and single punctuation marks.

        ``"What's your age?"`` -> ``["what", "'", "s", "your", "age", "?"]``.
        """
        if not isinstance(text, str):
            msg = f"text must be a str; got {type(text).__name__}"
            raise TypeError(msg)
        return _TOKEN_RE.findall(text.lower())

    @classmethod
    def build(cls, texts: Iterable[str], *, min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """Count the tokens of ``texts`` and keep the frequent ones.

        Parameters
        ----------
        texts : iterable of str
        min_count : int, default 1
            Tokens seen fewer times are left out (they encode as ``<UNK>``).
        max_size : int, optional
            Upper bound on ``len(vocab)``, the two special tokens included, so
            that every id is below ``max_size`` (the rows of an embedding
            matrix); at least 2.

        Returns
        -------
        Vocabulary
            Tokens ordered by descending count, equal counts by first
            appearance, so the result depends only on ``texts``.
        """
        items = _check_texts(texts)
        min_count = check_positive_int(min_count, "min_count")
        if max_size is not None:
            max_size = check_positive_int(max_size, "max_size", minimum=2)
        counts: Counter[str] = Counter()
        for t in items:
            counts.update(cls.tokenize(t))
        # Counter keeps first-insertion order and sorted() is stable
        ranked = sorted((tok for tok, c in counts.items() if c >= min_count), key=lambda tok: -counts[tok])
        if max_size is not None:
            ranked = ranked[: max_size - 2]
        return cls(ranked)

    # ----------------------------------------------------------------- lookups

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token) -> bool:
        return token in self._ids

    def __getitem__(self, token: str) -> int:
        return self.token_to_id(token)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    __hash__ = None  # mutable-looking container semantics: not hashable

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    @property
    def tokens(self) -> list[str]:
        """Every token in id order, the two special tokens first (a copy)."""
        return list(self._tokens)

    def token_to_id(self, token: str) -> int:
        """The id of ``token``; ``UNK_ID`` for tokens not in the vocabulary."""
        if not isinstance(token, str):
            msg = f"token must be a str; got {type(token).__name__}"
            raise TypeError(msg)
        return self._ids.get(token, UNK_ID)

    def id_to_token(self, token_id: int) -> str:
        """The token of ``token_id`` (0 gives ``"<PAD>"``, 1 ``"<UNK>"``)."""
        i = check_positive_int(token_id, "token_id", minimum=0)
        if i >= len(self._tokens):
            msg = f"token_id must be within 0..{len(self._tokens) - 1}; got {i}"
            raise ValueError(msg)
        return self._tokens[i]

    def decode(self, ids: ArrayLike) -> list[str]:
        """Tokens of a 1-D id sequence, padding left out."""
        arr = as_int_array(ids, "ids", what="integer token ids")
        if arr.ndim != 1:
            msg = f"ids must be a 1-D sequence of token ids; got shape {arr.shape}"
            raise ValueError(msg)
        return [self.id_to_token(int(i)) for i in arr if i != PAD_ID]

    # ----------------------------------------------------------------- encoding

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of each text, padded with ``PAD_ID`` to a common length.

        Parameters
        ----------
        texts : sequence of str
            A list of texts (a single string is refused: wrap it in a list).
        max_length : int, optional
            Longer texts are cut to their first ``max_length`` tokens, and the
            result has exactly ``max_length`` columns.  Default: the longest
            text's length.

        Returns
        -------
        ids : ndarray of int64, shape (B, T)
            Right-padded with 0.
        lengths : ndarray of int64, shape (B,)
            Tokens kept per text, each within 1..T.  A text without tokens (empty,
            or only whitespace) is encoded as the single token ``<UNK>``, length 1,
            because the recurrent layers need at least one step per sequence.
        """
        items = _check_texts(texts)
        if max_length is not None:
            max_length = check_positive_int(max_length, "max_length")
        seqs = []
        for t in items:
            ids = [self._ids.get(tok, UNK_ID) for tok in self.tokenize(t)] or [UNK_ID]
            seqs.append(ids if max_length is None else ids[:max_length])
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        T = max_length if max_length is not None else int(lengths.max(initial=1))
        out = np.full((len(seqs), T), PAD_ID, dtype=np.int64)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
        return out, lengths

    # ----------------------------------------------------------------- files

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON (UTF-8): ``{"format", "version", "tokens"}``."""
        doc = {"format": "fastsim.Vocabulary", "version": 1, "tokens": self._tokens}
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a file written by :meth:`save`."""
        with open(path, encoding="utf-8") as fh:
            try:
                doc = json.load(fh)
            except json.JSONDecodeError as exc:
                msg = f"path {str(path)!r} is not a vocabulary JSON file: {exc}"
                raise ValueError(msg) from None
        if not isinstance(doc, dict) or doc.get("format") != "fastsim.Vocabulary":
            msg = f"path {str(path)!r} is not a fastsim vocabulary file (no format 'fastsim.Vocabulary')"
            raise ValueError(msg)
        tokens = doc.get("tokens")
        if not isinstance(tokens, list) or tokens[:2] != [PAD_TOKEN, UNK_TOKEN]:
            msg = f"path {str(path)!r}: 'tokens' must be a list starting with {PAD_TOKEN!r}, {UNK_TOKEN!r}"
            raise ValueError(msg)
        return cls(tokens[2:])


# --------------------------------------------------------------------------- similarity and decisions


def _pair(q1_vecs, q2_vecs):
    a = as_float_array(q1_vecs, "q1_vecs", ndim=2)
    b = as_float_array(q2_vecs, "q2_vecs", ndim=2)
    check_same_shape((a, b), ("q1_vecs", "q2_vecs"), "one pair per row")
    return a, b


def similarity(q1_vecs: ArrayLike, q2_vecs: ArrayLike, *, backend: str = "auto") -> NDArray[np.floating]:
    """Cosine similarity of each pair: ``cos(q1_vecs[i], q2_vecs[i])``.

    Parameters
    ----------
    q1_vecs, q2_vecs : array_like, shape (n, d)
        Encodings of the first and second question of each pair.
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    ndarray, shape (n,)
        In [-1, 1]; 0 when either vector is zero, NaN when either holds NaN.
    """
    a, b = _pair(q1_vecs, q2_vecs)
    return cosine_similarity_rows(a, b, backend=backend)


def is_duplicate(q1_vecs: ArrayLike, q2_vecs: ArrayLike, threshold: float, *,
                 backend: str = "auto") -> NDArray[np.bool_]:
    """The duplicate decision of each pair: ``cos(q1, q2) >= threshold``.

    Parameters
    ----------
    q1_vecs, q2_vecs : array_like, shape (n, d)
    threshold : float
        The decision threshold (the course's tau), finite.
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    ndarray of bool, shape (n,)
        A pair whose similarity is NaN is not a duplicate.
    """
    threshold = check_finite_scalar(threshold, "threshold")
    return similarity(q1_vecs, q2_vecs, backend=backend) >= threshold


def _check_labels(labels, n: int) -> np.ndarray:
    try:
        arr = np.asarray(labels)
    except ValueError as exc:
        msg = f"labels must be a 1-D array of booleans or 0/1 numbers: {exc}"
        raise ValueError(msg) from None
    check_shape(arr, (n,), "labels", "one label per pair")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf":
        msg = f"labels must be booleans or 0/1 numbers; got dtype {arr.dtype}"
        raise TypeError(msg)
    if not np.all((arr == 0) | (arr == 1)):
        bad = arr[~((arr == 0) | (arr == 1))][0]
        msg = f"labels must be 0 or 1 (or booleans); found {bad!r}"
        raise ValueError(msg)
    return arr == 1


def accuracy(q1_vecs: ArrayLike, q2_vecs: ArrayLike, labels: ArrayLike, threshold: float, *,
             backend: str = "auto") -> float:
    """Share of pairs whose duplicate decision matches the label (the course's testing step).

    Parameters
    ----------
    q1_vecs, q2_vecs : array_like, shape (n, d)
        Encodings of the two questions of each pair, n >= 1.
    labels : array_like, shape (n,)
        True (or 1) for duplicates, False (or 0) otherwise.
    threshold : float
        A pair is predicted duplicate when ``cos(q1, q2) >= threshold``.
    backend : {"auto", "numpy", "numba", "cpp"}

    Returns
    -------
    float
        In [0, 1].
    """
    threshold = check_finite_scalar(threshold, "threshold")
    a, b = _pair(q1_vecs, q2_vecs)
    if a.shape[0] == 0:
        msg = "q1_vecs and q2_vecs must hold at least one pair to measure accuracy; got 0 rows"
        raise ValueError(msg)
    truth = _check_labels(labels, a.shape[0])
    predicted = is_duplicate(a, b, threshold, backend=backend)
    return float(np.mean(predicted == truth))


# --------------------------------------------------------------------------- encoder

_POOLINGS = ("mean", "masked_mean", "last")
_CELLS = ("LSTM", "GRU", "RNN")
_FORMAT = "fastsim.SiameseEncoder"


def _rnn_module():
    from . import rnn

    return rnn


def _layer_features(layer) -> int | None:
    h = getattr(layer, "hidden_size", None)
    if h is None:
        return None
    return int(h) * (2 if getattr(layer, "bidirectional", False) else 1)


def _pooling_lengths(ids: np.ndarray) -> np.ndarray:
    """1 + the position of the last non-padding id of each row (1 for an all-padding row)."""
    T = ids.shape[1]
    real = ids != PAD_ID
    last = T - np.argmax(real[:, ::-1], axis=1)
    return np.where(real.any(axis=1), last, 1).astype(np.int64)


def _as_weight(value, name):
    """An array from a framework tensor or parameter, without importing the framework."""
    if hasattr(value, "weight") and not isinstance(value, np.ndarray):
        value = value.weight  # an embedding module
    if hasattr(value, "detach"):
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    return as_float_array(value, name, ndim=2)


# Largest projected-embedding tables the cpp encoder keeps (see _encode_fastsim).
_TABLE_BYTES = 512 << 20


class SiameseEncoder:
    """One branch of the Siamese network: token ids -> L2-normalized vectors.

    ``ids (B, T) -> embedding[ids] (B, T, E) -> recurrent layers (B, T, F) ->
    pooling (B, F) -> x / |x|``, where F is the last layer's ``hidden_size``
    times its number of directions.  Both questions of a pair go through the
    same encoder (the shared weights of the course's model).

    Parameters
    ----------
    embedding : array_like, shape (V, E)
        Row ``v`` is the vector of token id ``v``; row 0 belongs to padding.
        Converted to the recurrent layers' dtype.
    rnn : layer or sequence of layers
        :class:`fastsim.rnn.LSTM`, :class:`~fastsim.rnn.GRU` or
        :class:`~fastsim.rnn.RNN` objects (or anything called as
        ``layer(x, lengths, backend=...) -> (outputs, state)`` with
        ``input_size``, ``hidden_size``, ``bidirectional``, ``dtype``
        attributes), applied in order.  All must share one dtype.
    pooling : {"mean", "masked_mean", "last"}
        How the outputs over time become one vector; see Notes.

    Notes
    -----
    Padding and lengths follow the course's model and PyTorch:

    * Without ``lengths`` the recurrent layers run over all T positions,
      padding included, exactly as the course's model does.  With ``lengths``
      they follow packed-sequence semantics (outputs past a sequence's length
      are 0, the backward direction starts at the sequence's own end).
    * ``"mean"``: the average over all T positions, padding included (the
      course's mean layer).  With ``lengths`` the padded positions contribute
      zeros but still count in T.
    * ``"masked_mean"``: the average over the first L positions only.  With
      ``lengths`` the padded outputs are 0, so ``"mean"`` and
      ``"masked_mean"`` differ by a positive factor per row and give the same
      normalized encoding; they differ when the layers run over the padding.
    * ``"last"``: the output at position L - 1.  For a bidirectional last
      layer it is the forward half at position L - 1 concatenated with the
      backward half at position 0, i.e. both directions' final states
      ``[h_forward, h_backward]`` (PyTorch's ``h_n[-2:]``) when lengths are given.

    L is ``lengths`` when given; otherwise 1 + the position of the last id
    that is not padding (id 0), so right-padded input pools over its real tokens.

    A zero pooled vector stays zero after normalization (its cosine with
    anything is 0).
    """

    def __init__(self, embedding: ArrayLike, rnn: Any, pooling: str = "mean") -> None:
        layers = tuple(rnn) if isinstance(rnn, (list, tuple)) else (rnn,)
        if not layers:
            msg = "rnn must be a recurrent layer or a non-empty sequence of layers; got an empty sequence"
            raise ValueError(msg)
        for i, layer in enumerate(layers):
            if not callable(layer):
                msg = f"rnn[{i}] must be a recurrent layer (callable); got {type(layer).__name__}"
                raise TypeError(msg)
        dtypes = {np.dtype(layer.dtype) for layer in layers if getattr(layer, "dtype", None) is not None}
        if len(dtypes) > 1:
            msg = f"rnn layers must share one dtype; got {sorted(d.name for d in dtypes)}"
            raise ValueError(msg)
        emb = as_float_array(embedding, "embedding", ndim=2)
        dt = dtypes.pop() if dtypes else emb.dtype
        if emb.shape[0] < 2:
            msg = f"embedding must have at least 2 rows (padding and unknown ids); got shape {emb.shape}"
            raise ValueError(msg)
        features = emb.shape[1]
        for i, layer in enumerate(layers):
            want = getattr(layer, "input_size", None)
            if want is not None and int(want) != features:
                src = "the embedding width E" if i == 0 else f"rnn[{i - 1}]'s output features"
                msg = f"rnn[{i}] expects input_size = {want} but gets {features} ({src})"
                raise ValueError(msg)
            out = _layer_features(layer)
            if out is None:
                msg = f"rnn[{i}] must expose hidden_size (and bidirectional) so the output width is known"
                raise TypeError(msg)
            features = out
        # a private copy: the projected tables cached from it must never go stale
        self._embedding = np.array(emb, dtype=dt, order="C")
        self._embedding.flags.writeable = False
        self._tokens_encoded = 0
        self._projected = None  # the first layer's EmbeddingProjection, made on first use
        self._layers = layers
        self._features = features
        self.pooling = pooling

    # ----------------------------------------------------------------- properties

    @property
    def pooling(self) -> str:
        """``"mean"``, ``"masked_mean"`` or ``"last"``; may be changed after construction."""
        return self._pooling

    @pooling.setter
    def pooling(self, value: str) -> None:
        self._pooling = check_choice(value, "pooling", _POOLINGS)

    @property
    def embedding(self) -> np.ndarray:
        """The (V, E) embedding matrix (read-only view)."""
        view = self._embedding.view()
        view.flags.writeable = False
        return view

    @property
    def layers(self) -> tuple:
        """The recurrent layers, in order."""
        return self._layers

    @property
    def vocab_size(self) -> int:
        return int(self._embedding.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self._embedding.shape[1])

    @property
    def output_dim(self) -> int:
        """Width of the encodings: the last layer's hidden size times its directions."""
        return self._features

    @property
    def dtype(self) -> np.dtype:
        return self._embedding.dtype

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self._layers)
        return (f"SiameseEncoder(vocab_size={self.vocab_size}, embedding_dim={self.embedding_dim}, "
                f"rnn=[{inner}], pooling={self.pooling!r})")

    # ----------------------------------------------------------------- constructors

    @classmethod
    def random(
        cls, vocab_size: int, embedding_dim: int, hidden_size: int, *, num_layers: int = 1,
        bidirectional: bool = False, cell: str = "LSTM", pooling: str = "mean", dtype: DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> SiameseEncoder:
        """An untrained encoder with PyTorch-like initial weights.

        The embedding is drawn from N(0, 1) with the padding row zero
        (``nn.Embedding(padding_idx=0)``); the recurrent weights from
        uniform(-1/sqrt(H), 1/sqrt(H)).  ``cell`` is "LSTM", "GRU" or "RNN";
        ``seed`` an int or a ``numpy.random.Generator``.
        """
        rnn = _rnn_module()
        vocab_size = check_positive_int(vocab_size, "vocab_size", minimum=2)
        embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        cell = check_choice(cell, "cell", _CELLS)
        rng = np.random.default_rng(seed)
        layer = getattr(rnn, cell)(
            embedding_dim, hidden_size, num_layers, bidirectional=bidirectional, dtype=dtype, seed=rng
        )
        emb = rng.standard_normal((vocab_size, embedding_dim)).astype(layer.dtype)
        emb[PAD_ID] = 0
        return cls(emb, layer, pooling)

    @classmethod
    def from_torch(cls, embedding: Any, rnn: Any, pooling: str = "mean", *,
                   dtype: DTypeLike | None = None) -> SiameseEncoder:
        """Build from a PyTorch ``nn.Embedding`` and ``nn.LSTM`` (or ``nn.GRU``, ``nn.RNN``).

        torch is not imported: the modules are read through their
        ``weight`` / ``state_dict()``.  ``embedding`` may also be a (V, E)
        array or tensor.  The recurrent module's ``batch_first`` setting does
        not matter (the encoder always feeds (B, T, E)).

        Parameters
        ----------
        embedding : torch.nn.Embedding or array_like, shape (V, E)
        rnn : torch.nn.LSTM, torch.nn.GRU or torch.nn.RNN
        pooling : {"mean", "masked_mean", "last"}
        dtype : float32 or float64, optional
            Default: the weights' own (float32 for a default torch module).
        """
        mod = _rnn_module()
        mode = str(getattr(rnn, "mode", "LSTM"))
        kind = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}.get(mode)
        if kind is None:
            msg = f"rnn must be a torch nn.LSTM, nn.GRU or nn.RNN; got mode {mode!r}"
            raise ValueError(msg)
        layer = getattr(mod, kind).from_torch(rnn, dtype=dtype, batch_first=True)
        emb = _as_weight(embedding, "embedding")
        return cls(emb, layer, pooling)

    # ----------------------------------------------------------------- forward

    def _check_ids(self, ids) -> np.ndarray:
        arr = as_int_array(ids, "ids", what="integer token ids")
        if arr.ndim != 2:
            msg = f"ids must be 2-D (batch, time); got an array of shape {arr.shape}"
            raise ValueError(msg)
        if arr.shape[1] == 0:
            msg = f"ids must have at least one time step; got shape {arr.shape}"
            raise ValueError(msg)
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= self.vocab_size:
                msg = (f"ids must lie within 0..{self.vocab_size - 1} (the embedding rows); "
                       f"got values in {lo}..{hi}")
                raise ValueError(msg)
        return arr

    def _run_layers(self, x, lengths, backend):
        for layer in self._layers:
            batch_first = getattr(layer, "batch_first", True)
            if batch_first:
                x, _ = layer(x, lengths, backend=backend)
            else:
                out, _ = layer(np.swapaxes(x, 0, 1), lengths, backend=backend)
                x = np.swapaxes(out, 0, 1)
        return x

    def _pool(self, out, L, T):
        if self.pooling == "mean":
            # positions beyond out.shape[1] were trimmed because their outputs are 0
            return out.sum(axis=1) / out.dtype.type(T)
        B = out.shape[0]
        if self.pooling == "masked_mean":
            mask = np.arange(out.shape[1])[None, :] < L[:, None]
            return np.einsum("btf,bt->bf", out, mask.astype(out.dtype)) / L[:, None].astype(out.dtype)
        rows = np.arange(B)
        pooled = out[rows, L - 1].copy()
        last = self._layers[-1]
        if getattr(last, "bidirectional", False):
            H = int(last.hidden_size)
            pooled[:, H:] = out[:, 0, H:]
        return pooled

    def _fastsim_layers(self) -> bool:
        """Whether every layer is a fastsim layer (pooled and token-id forms, on every backend)."""
        rnn = _rnn_module()
        return all(isinstance(layer, (rnn.LSTM, rnn.GRU, rnn.RNN)) for layer in self._layers)

    def _projection(self):
        """The first layer's :class:`fastsim.rnn.EmbeddingProjection` of the embedding, made once."""
        proj = self._projected
        if proj is None:
            proj = self._layers[0].project_embedding(self._embedding)
            self._projected = proj
        return proj

    def _encode_fastsim(self, ids, run_lengths, L, T, backend):
        """fastsim layers: the pooled (not yet normalized) vectors of one batch.

        * On the compiled backend the first layer reads rows of its input
          projection of the whole embedding, picked by token id
          (:meth:`fastsim.LSTM.run_ids`), once the encoder has seen V tokens
          in total (building that table costs as much as projecting V tokens;
          the projection keeps it, and remakes it when the layer's weights are
          replaced), unless the tables would take more than 512 MiB.
        * "mean" and "masked_mean" are summed inside the last layer's steps
          (``pool_until``): its (B, T, F) outputs are never stored.
        """
        B, T_run = ids.shape
        lens = np.full(B, T_run, dtype=np.int64) if run_lengths is None else contiguous(run_lengths, np.int64)
        until = None
        if self.pooling == "mean":
            until = lens  # outputs past a length are 0: summing the valid steps is the sum over all T
        elif self.pooling == "masked_mean":
            until = contiguous(L, np.int64)
        self._tokens_encoded += ids.size
        proj = self._projection()
        use_table = (_backend.resolve(backend) == "cpp" and self._tokens_encoded >= self._embedding.shape[0]
                     and proj.nbytes <= _TABLE_BYTES)
        last = len(self._layers) - 1
        x = None
        for k, layer in enumerate(self._layers):
            pool_until = until if k == last else None
            if k == 0 and use_table:
                x, _ = layer.run_ids(ids, proj, lens, pool_until=pool_until, backend=backend)
            elif layer.batch_first:
                x, _ = layer(self._embedding[ids] if k == 0 else x, lens, pool_until=pool_until, backend=backend)
            else:
                x, _ = layer(np.swapaxes(self._embedding[ids] if k == 0 else x, 0, 1), lens, pool_until=pool_until,
                             backend=backend)
                x = x if pool_until is not None else np.swapaxes(x, 0, 1)
        if self.pooling == "mean":
            return x / x.dtype.type(T)
        if self.pooling == "masked_mean":
            return x / L[:, None].astype(x.dtype)
        return self._pool(x, L, T)

    def _encode_batch(self, ids, lengths, backend):
        T = ids.shape[1]
        if lengths is not None:
            L = lengths
            # every layer's output is 0 past a sequence's length: skip those steps
            t_max = int(L.max())
            ids = ids[:, :t_max]
            run_lengths = L
        else:
            L = _pooling_lengths(ids)
            run_lengths = None
        if self._fastsim_layers():
            pooled = self._encode_fastsim(ids, run_lengths, L, T, backend)
        else:
            out = self._run_layers(self._embedding[ids], run_lengths, backend)
            pooled = self._pool(np.asarray(out), L, T)
        return unit_rows(pooled)

    def encode(self, ids: ArrayLike, lengths: ArrayLike | None = None, *, batch_size: int = 1024,
               progress: bool = False, backend: str = "auto") -> NDArray[np.floating]:
        """Encode token-id sequences into L2-normalized vectors.

        Parameters
        ----------
        ids : array_like of int, shape (B, T)
            Token ids within 0..V-1, right-padded with 0 (as
            :meth:`Vocabulary.encode` returns them).
        lengths : array_like of int, shape (B,), optional
            True lengths, each within 1..T.  See the class Notes for how they
            change the recurrent pass and the pooling.
        batch_size : int, default 1024
            Rows encoded per step: memory stays O(batch_size x T x F) for any B.
        progress : bool or callable, default False
            True prints ``encoded done/total`` to stderr after each batch; a
            callable is called as ``progress(done, total)``.
        backend : {"auto", "numpy", "numba", "cpp"}
            Passed to the recurrent layers.

        Returns
        -------
        ndarray, shape (B, output_dim)
            Unit rows (zero rows stay zero), in the encoder's dtype.
        """
        ids = self._check_ids(ids)
        B, T = ids.shape
        if lengths is not None:
            lengths = check_lengths(lengths, B, T)
        batch_size = check_positive_int(batch_size, "batch_size")
        if not (isinstance(progress, bool) or callable(progress)):
            msg = f"progress must be a bool or a callable (done, total); got {type(progress).__name__}"
            raise TypeError(msg)
        _backend.resolve(backend)  # an unknown name fails here, before any work
        out = np.empty((B, self._features), dtype=self.dtype)
        for start in range(0, B, batch_size):
            stop = min(B, start + batch_size)
            sub_lengths = None if lengths is None else lengths[start:stop]
            out[start:stop] = self._encode_batch(ids[start:stop], sub_lengths, backend)
            if progress is True:
                print(f"\rencoded {stop}/{B}", end="\n" if stop == B else "", file=sys.stderr, flush=True)
            elif progress:
                progress(stop, B)
        return out

    __call__ = encode

    # ----------------------------------------------------------------- files

    def _layer_config(self, i, layer):
        kind = type(layer).__name__
        rnn = _rnn_module()
        if kind not in _CELLS or not isinstance(layer, getattr(rnn, kind)):
            msg = f"rnn[{i}] is a {kind}; only fastsim.rnn LSTM, GRU and RNN layers can be saved"
            raise TypeError(msg)
        if not callable(getattr(layer, "state_dict", None)):
            msg = f"rnn[{i}] has no state_dict() method, so its weights cannot be saved"
            raise TypeError(msg)
        cfg = {
            "type": kind,
            "input_size": int(layer.input_size),
            "hidden_size": int(layer.hidden_size),
            "num_layers": int(layer.num_layers),
            "bidirectional": bool(layer.bidirectional),
        }
        if kind == "RNN":
            cfg["nonlinearity"] = str(layer.nonlinearity)
        return cfg

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the encoder to one ``.npz`` file (exactly ``path``, no suffix added).

        The file holds the weights as arrays (``embedding``, and
        ``rnn{i}.weight_ih_l0`` ... in PyTorch's names) and the configuration
        as a JSON string under ``config``; :meth:`load` reads it back without
        pickle (and ignores entries it does not know, such as those of a
        :class:`fastsim.model.DuplicateModel` file).  The file is written under
        a temporary name and renamed when complete.
        """
        write_npz_atomic(path, self._file_arrays())

    def _file_arrays(self) -> dict[str, np.ndarray]:
        """The entries of the encoder's ``.npz`` file."""
        arrays = {"embedding": self._embedding}
        layers = []
        for i, layer in enumerate(self._layers):
            layers.append(self._layer_config(i, layer))
            for key, value in layer.state_dict().items():
                arrays[f"rnn{i}.{key}"] = np.asarray(value)
        config = {
            "format": _FORMAT,
            "version": 1,
            "pooling": self.pooling,
            "dtype": self.dtype.name,
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "layers": layers,
        }
        arrays["config"] = np.array(json.dumps(config))
        return arrays

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SiameseEncoder:
        """Read an encoder written by :meth:`save`."""
        rnn = _rnn_module()
        where = f"path {str(path)!r}"
        try:
            npz = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            msg = f"{where} is not a SiameseEncoder file (.npz): {exc}"
            raise ValueError(msg) from None
        with npz:
            if "config" not in npz.files or "embedding" not in npz.files:
                msg = f"{where} is not a SiameseEncoder file (no 'config'/'embedding' entries)"
                raise ValueError(msg)
            try:
                config = json.loads(str(npz["config"]))
            except json.JSONDecodeError as exc:
                msg = f"{where}: the 'config' entry is not valid JSON: {exc}"
                raise ValueError(msg) from None
            if not isinstance(config, dict) or config.get("format") != _FORMAT:
                msg = f"{where} is not a SiameseEncoder file (format {config.get('format')!r})"
                raise ValueError(msg)
            if config.get("version") != 1:
                msg = f"{where} has version {config.get('version')!r}; this fastsim reads version 1"
                raise ValueError(msg)
            dtype = np.dtype(config["dtype"])
            layers = []
            for i, cfg in enumerate(config["layers"]):
                prefix = f"rnn{i}."
                state = {k[len(prefix):]: npz[k] for k in npz.files if k.startswith(prefix)}
                kind = cfg.get("type")
                if kind not in _CELLS:
                    msg = f"{where}: layer {i} has unknown type {kind!r}"
                    raise ValueError(msg)
                kwargs = {"nonlinearity": cfg["nonlinearity"]} if kind == "RNN" else {}
                layer = getattr(rnn, kind).from_torch(state, dtype=dtype, batch_first=True, **kwargs)
                for attr in ("input_size", "hidden_size", "num_layers", "bidirectional"):
                    if getattr(layer, attr) != cfg[attr]:
                        msg = f"{where}: layer {i} weights give {attr}={getattr(layer, attr)}, config says {cfg[attr]}"
                        raise ValueError(msg)
                layers.append(layer)
            embedding = npz["embedding"]
        return cls(embedding, layers, config["pooling"])
