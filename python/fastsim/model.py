"""A trained duplicate-question model: vocabulary + encoder + threshold, in one file.

This room owns :class:`DuplicateModel` (texts in, unit vectors and duplicate
decisions out), its ``.npz`` file and :func:`load_model`.  It may call the
public surface of :mod:`fastsim.pipeline` (``Vocabulary``,
``SiameseEncoder``, ``write_npz_atomic``) and :func:`fastsim.paraphrase_mining`.
:mod:`fastsim.trainer` makes these models; ``fastsim.torch.SiameseEncoder.from_fastsim``
turns the encoder of one into a PyTorch module.

The file is a :class:`fastsim.SiameseEncoder` file (``SiameseEncoder.load``
reads it too) with two more entries: ``vocabulary`` (the tokens in id order)
and ``model`` (JSON: threshold, max_length and what the trainer recorded).

Examples
--------
>>> model = fastsim.load_model("model.npz")
>>> model.is_duplicate(["How old are you?"], ["What is your age?"])
array([ True])
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .pipeline import SiameseEncoder, Vocabulary, _check_texts, write_npz_atomic

__all__ = ["DuplicateModel", "load_model"]

_FORMAT = "fastsim.DuplicateModel"


class DuplicateModel:
    """The trained model: ``encode`` texts into unit vectors, decide duplicates at ``threshold``.

    Parameters
    ----------
    encoder : fastsim.SiameseEncoder
        Its pooling should be ``"masked_mean"`` or ``"last"`` (or ``"mean"``,
        which gives the same unit vectors once lengths are passed, as here).
    vocabulary : fastsim.Vocabulary
        Its size must be the encoder's ``vocab_size``.
    threshold : float
        Cosine at or above which two texts are duplicates.
    max_length : int, default 64
        Tokens kept per text (the rest are cut), as in training.
    info : dict, optional
        What the trainer recorded (JSON-serializable); kept in the file.

    Every text is encoded over its own tokens (the recurrent layers get its
    length): it gets the same vector whatever batch it is encoded in.
    """

    def __init__(self, encoder: SiameseEncoder, vocabulary: Vocabulary, threshold: float, *, max_length: int = 64,
                 info: dict | None = None) -> None:
        if not isinstance(encoder, SiameseEncoder):
            msg = f"encoder must be a fastsim.SiameseEncoder; got {type(encoder).__name__}"
            raise TypeError(msg)
        if not isinstance(vocabulary, Vocabulary):
            msg = f"vocabulary must be a fastsim.Vocabulary; got {type(vocabulary).__name__}"
            raise TypeError(msg)
        if len(vocabulary) != encoder.vocab_size:
            msg = f"vocabulary has {len(vocabulary)} tokens but the encoder's embedding has {encoder.vocab_size} rows"
            raise ValueError(msg)
        threshold = float(threshold)
        if not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
            msg = f"threshold must be a cosine within [-1, 1]; got {threshold}"
            raise ValueError(msg)
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
            msg = f"max_length must be a positive int; got {max_length!r}"
            raise ValueError(msg)
        self.encoder = encoder
        self.vocabulary = vocabulary
        self.threshold = threshold
        self.max_length = int(max_length)
        self.info = dict(info or {})

    def __repr__(self) -> str:
        return (f"DuplicateModel(vocabulary={len(self.vocabulary)} tokens, output_dim={self.encoder.output_dim}, "
                f"threshold={self.threshold:.4f}, max_length={self.max_length})")

    def encode(self, texts: Sequence[str], *, batch_size: int = 1024, progress: Any = False,
               backend: str = "auto") -> NDArray[np.floating]:
        """Unit vectors (B, output_dim) of ``texts``, each pooled over its own tokens."""
        items = _check_texts(texts, "texts")
        out = np.empty((len(items), self.encoder.output_dim), dtype=self.encoder.dtype)
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            ids, lengths = self.vocabulary.encode(chunk, self.max_length)
            t = int(lengths.max())
            out[start : start + len(chunk)] = self.encoder.encode(ids[:, :t], lengths, batch_size=batch_size,
                                                                  backend=backend)
            if progress is True:
                print(f"\rencoded {start + len(chunk)}/{len(items)}", end="", flush=True)
            elif callable(progress):
                progress(start + len(chunk), len(items))
        if progress is True and items:
            print()
        return out

    def similarity(self, q1s: Sequence[str], q2s: Sequence[str], *, backend: str = "auto") -> NDArray[np.floating]:
        """The cosine of each pair ``(q1s[i], q2s[i])``."""
        a = _check_texts(q1s, "q1s")
        b = _check_texts(q2s, "q2s")
        if len(a) != len(b):
            msg = f"q1s and q2s must have the same length (one pair per index); got {len(a)} and {len(b)}"
            raise ValueError(msg)
        if not a:
            return np.zeros(0, dtype=self.encoder.dtype)
        v = self.encode(a + b, backend=backend)
        return np.einsum("ij,ij->i", v[: len(a)], v[len(a) :])

    def is_duplicate(self, q1s: Sequence[str], q2s: Sequence[str], *, threshold: float | None = None,
                     backend: str = "auto") -> NDArray[np.bool_]:
        """Whether each pair's cosine reaches ``threshold`` (default: the saved one)."""
        thr = self.threshold if threshold is None else float(threshold)
        return self.similarity(q1s, q2s, backend=backend) >= thr

    def accuracy(self, q1s: Sequence[str], q2s: Sequence[str], labels: Any, *, threshold: float | None = None,
                 backend: str = "auto") -> float:
        """The fraction of pairs whose decision matches ``labels`` (1 duplicate, 0 not)."""
        y = np.asarray(labels)
        if y.shape != (len(q1s),):
            msg = f"labels must have one entry per pair, shape ({len(q1s)},); got shape {y.shape}"
            raise ValueError(msg)
        if y.size == 0:
            msg = "accuracy needs at least one pair"
            raise ValueError(msg)
        return float(np.mean(self.is_duplicate(q1s, q2s, threshold=threshold, backend=backend) == (y == 1)))

    def duplicates(self, texts: Sequence[str], *, threshold: float | None = None, top_k: int = 10,
                   backend: str = "auto") -> tuple[NDArray[np.floating], NDArray[np.int64]]:
        """The pairs ``(i, j)``, ``i < j``, of ``texts`` scoring at least ``threshold``, best first.

        Each text's ``top_k`` nearest others are looked at
        (:func:`fastsim.paraphrase_mining`).  Returns ``(scores, pairs)``.
        """
        from .mining import paraphrase_mining

        items = _check_texts(texts, "texts")
        thr = self.threshold if threshold is None else float(threshold)
        if len(items) < 2:
            return np.zeros(0, dtype=self.encoder.dtype), np.zeros((0, 2), np.int64)
        v = self.encode(items, backend=backend)
        return paraphrase_mining(v, top_k=top_k, threshold=thr, backend=backend)

    # ----------------------------------------------------------------- files

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to the ``.npz`` file ``path`` (under a temporary name, renamed when complete)."""
        arrays = self.encoder._file_arrays()
        arrays["vocabulary"] = np.array(self.vocabulary.tokens, dtype=str)
        doc = {"format": _FORMAT, "version": 1, "threshold": self.threshold, "max_length": self.max_length,
               "info": self.info}
        arrays["model"] = np.array(json.dumps(doc))
        write_npz_atomic(path, arrays)


def load_model(path: str | os.PathLike[str]) -> DuplicateModel:
    """Read a model written by :meth:`DuplicateModel.save` (or by ``python -m fastsim train``)."""
    where = f"path {os.fspath(path)!r}"
    encoder = SiameseEncoder.load(path)
    with np.load(path, allow_pickle=False) as npz:
        if "model" not in npz.files or "vocabulary" not in npz.files:
            msg = f"{where} is an encoder file without a vocabulary and threshold (not a trained model)"
            raise ValueError(msg)
        doc = json.loads(str(npz["model"]))
        tokens = [str(t) for t in npz["vocabulary"]]
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        msg = f"{where}: the 'model' entry is not a {_FORMAT} record"
        raise ValueError(msg)
    if tokens[:2] != Vocabulary().tokens:
        msg = f"{where}: the vocabulary does not start with the padding and unknown tokens"
        raise ValueError(msg)
    return DuplicateModel(encoder, Vocabulary(tokens[2:]), doc["threshold"], max_length=doc["max_length"],
                          info=doc.get("info"))
