"""Find duplicate questions with a Siamese LSTM encoder.

Reads a CSV with the columns ``question1``, ``question2`` and ``is_duplicate``
(1 or 0), then follows the course's testing step:

1. turn every question into token ids (a vocabulary built from the file);
2. feed them through the encoder (embedding -> LSTM -> mean -> normalize);
3. compare the two encodings of each pair with the cosine;
4. call a pair a duplicate when the cosine reaches the threshold, and report
   the accuracy against the labels.

Finally it lists the nearest questions to a few of them with ``fastsim.top_k``.

``--model`` loads an encoder saved by ``--save`` or a model trained by
``python -m fastsim train`` (its vocabulary and threshold come with it).
Without ``--model`` the encoder has random weights, so the accuracy says little
about duplicates (a trained model is needed for that); the pipeline, the
shapes and the speed are the same.  ``--save`` writes the encoder and its
vocabulary so that ``--model`` can load them back.

Example::

    python examples/find_duplicates.py examples/data/questions.csv --threshold 0.7
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

import fastsim

DEFAULT_CSV = Path(__file__).resolve().parent / "data" / "questions.csv"


def read_pairs(path):
    """The question pairs and labels of a CSV file."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"question1", "question2", "is_duplicate"}
        missing = need - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{path}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
        q1, q2, labels = [], [], []
        for line, row in enumerate(reader, start=2):
            try:
                label = int(row["is_duplicate"])
            except ValueError:
                raise SystemExit(f"{path}:{line}: is_duplicate must be 0 or 1; got {row['is_duplicate']!r}") from None
            q1.append(row["question1"])
            q2.append(row["question2"])
            labels.append(label)
    if not q1:
        raise SystemExit(f"{path}: no question pairs")
    return q1, q2, np.array(labels, dtype=bool)


def vocab_path_for(model_path):
    p = Path(model_path)
    return p.with_name(p.stem + ".vocab.json")


def best_threshold(sims, labels):
    """The threshold (among the observed similarities) with the highest accuracy on these pairs."""
    best = (-1.0, 0.0)
    for t in np.unique(sims):
        acc = float(np.mean((sims >= t) == labels))
        if acc > best[0]:
            best = (acc, float(t))
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", default=str(DEFAULT_CSV), help="question pairs (default: the shipped sample)")
    parser.add_argument("--threshold", type=float, default=0.7, help="duplicate when cosine >= threshold (0.7)")
    parser.add_argument("--model", help="load a saved encoder (.npz) instead of random weights")
    parser.add_argument("--vocab", help="vocabulary JSON (default: next to --model, else built from the CSV)")
    parser.add_argument("--save", metavar="PATH", help="save the encoder to PATH and its vocabulary beside it")
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--pooling", choices=("mean", "masked_mean", "last"), default="mean")
    parser.add_argument("--queries", type=int, default=3, help="questions to show nearest neighbours for")
    parser.add_argument("--top", type=int, default=3, help="neighbours per question")
    parser.add_argument("--backend", default="auto", help="auto, numpy, numba or cpp")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    q1, q2, labels = read_pairs(args.csv)
    print(f"{len(q1)} pairs from {args.csv} ({int(labels.sum())} duplicates)")

    trained = None
    if args.model:
        try:  # a model saved by `python -m fastsim train` carries its vocabulary and threshold
            trained = fastsim.load_model(args.model)
        except ValueError:
            trained = None
    vocab_file = args.vocab or (vocab_path_for(args.model) if args.model else None)
    if trained is not None:
        vocab = trained.vocabulary
        args.threshold = trained.threshold
        print(f"vocabulary: {len(vocab)} tokens and threshold {trained.threshold:.3f} from {args.model}")
    elif vocab_file and Path(vocab_file).exists():
        vocab = fastsim.Vocabulary.load(vocab_file)
        print(f"vocabulary: {len(vocab)} tokens from {vocab_file}")
    else:
        vocab = fastsim.Vocabulary.build(q1 + q2)
        print(f"vocabulary: {len(vocab)} tokens built from the questions")

    if args.model:
        encoder = fastsim.SiameseEncoder.load(args.model)
        if len(vocab) > encoder.vocab_size:
            raise SystemExit(f"the vocabulary has {len(vocab)} tokens but the model only {encoder.vocab_size} rows")
        print(f"encoder: loaded {args.model}")
    else:
        encoder = fastsim.SiameseEncoder.random(
            len(vocab), args.embedding_dim, args.hidden_size, pooling=args.pooling, seed=args.seed
        )
        print("encoder: random weights (pass --model for a trained one)")
    print(f"  {encoder!r}")

    # steps 1-2: text -> ids -> vectors; both questions share the one encoder
    start = time.perf_counter()
    ids1, len1 = vocab.encode(q1)
    ids2, len2 = vocab.encode(q2)
    v1 = encoder.encode(ids1, len1, backend=args.backend)
    v2 = encoder.encode(ids2, len2, backend=args.backend)
    elapsed = time.perf_counter() - start
    print(f"encoded {2 * len(q1)} questions in {elapsed * 1e3:.1f} ms -> vectors of {v1.shape[1]}")

    # steps 3-4: cosine, then the threshold
    sims = fastsim.similarity(v1, v2, backend=args.backend)
    acc = fastsim.accuracy(v1, v2, labels, args.threshold, backend=args.backend)
    print(f"accuracy at threshold {args.threshold:g}: {acc:.3f}")
    print(f"mean similarity: duplicates {sims[labels].mean():.3f}, others {sims[~labels].mean():.3f}")
    best_acc, best_t = best_threshold(sims, labels)
    print(f"best threshold on these pairs: {best_t:.3f} (accuracy {best_acc:.3f})")

    # nearest questions among every distinct question in the file
    corpus = list(dict.fromkeys(q1 + q2))
    ids, lengths = vocab.encode(corpus)
    vecs = encoder.encode(ids, lengths, backend=args.backend)
    scores, idx = fastsim.top_k(vecs, vecs, args.top, exclude_self=True, backend=args.backend)
    for i in range(min(args.queries, len(corpus))):
        print(f"\n{corpus[i]}")
        for s, j in zip(scores[i], idx[i]):
            print(f"  {s:6.3f}  {corpus[j]}")

    if args.save:
        encoder.save(args.save)
        vocab.save(vocab_path_for(args.save))
        print(f"\nsaved {args.save} and {vocab_path_for(args.save)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
