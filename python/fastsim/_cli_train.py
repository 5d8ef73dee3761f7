"""Command line of the model: ``python -m fastsim train``, ``dedup`` and ``make-pairs``.

This room owns those three subcommands (their options, messages and exit
codes); it may call :func:`fastsim.train`, :func:`fastsim.load_model` and
:mod:`fastsim.datasets`.  :mod:`fastsim._bench.cli` builds the parser and
hands these commands here.  Exit codes: 0 done, 2 bad input (a message
naming what is wrong), 130 interrupted (the checkpoint holds the last step).
"""

from __future__ import annotations

import argparse
import os
import sys

COMMANDS = ("train", "dedup", "make-pairs")


def add_parsers(sub) -> None:
    t = sub.add_parser("train", help="train the duplicate-question model on question pairs (CSV)",
                       description="Train embedding -> LSTM -> pooling -> cosine on the duplicate pairs of a CSV "
                                   "(question1,question2,is_duplicate), natively, and save the model.")
    t.add_argument("pairs", help="CSV of question pairs")
    t.add_argument("--out", required=True, help="where the trained model is saved (.npz)")
    t.add_argument("--checkpoint", help="checkpoint file (default: OUT with .ckpt.npz)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    t.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (200)")
    t.add_argument("--question1", default="question1", help="column of the first question")
    t.add_argument("--question2", default="question2", help="column of the second question")
    t.add_argument("--label", default="is_duplicate", help="column of the 0/1 label")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch-size", type=int, default=64, help="duplicate pairs per step")
    t.add_argument("--embedding-dim", type=int, default=128)
    t.add_argument("--hidden-size", type=int, default=128)
    t.add_argument("--num-layers", type=int, default=1)
    t.add_argument("--bidirectional", action="store_true")
    t.add_argument("--cell", choices=("LSTM", "GRU", "RNN"), default="LSTM")
    t.add_argument("--pooling", choices=("masked_mean", "mean", "last"), default="masked_mean")
    t.add_argument("--max-length", type=int, default=32, help="tokens kept per question")
    t.add_argument("--margin", type=float, default=0.25)
    t.add_argument("--optimizer", choices=("adam", "sparse_adam", "sgd"), default="adam")
    t.add_argument("--lr", type=float, default=1e-2)
    t.add_argument("--momentum", type=float, default=0.9, help="for sgd")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--clip-norm", type=float, default=None, help="clip the joint gradient norm to this")
    t.add_argument("--schedule", choices=("constant", "linear", "cosine"), default="constant")
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--test-fraction", type=float, default=0.1)
    t.add_argument("--min-count", type=int, default=1)
    t.add_argument("--max-vocab", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all")
    t.add_argument("--backend", default="auto")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    d = sub.add_parser("dedup", help="find the duplicates in a list of questions with a trained model",
                       description="Print the pairs of questions (one per line of TEXTS) that the model calls "
                                   "duplicates, best first: score, line numbers, the two questions (tab-separated).")
    d.add_argument("model", help="a model saved by 'train'")
    d.add_argument("texts", help="a text file, one question per line ('-' for stdin)")
    d.add_argument("--threshold", type=float, default=None, help="default: the model's")
    d.add_argument("--top-k", type=int, default=10, help="neighbours looked at per question (10)")
    d.add_argument("--groups", action="store_true", help="print groups of duplicates instead of pairs")
    d.add_argument("--backend", default="auto")

    m = sub.add_parser("make-pairs", help="write generated paraphrase pairs (CSV) to train on offline")
    m.add_argument("--out", required=True, help="CSV to write")
    m.add_argument("-n", "--pairs", type=int, default=20000, help="rows (20000)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--templates", default="default", help="template set (default, alt)")
    m.add_argument("--duplicate-fraction", type=float, default=0.5)


def _fail(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "dedup":
            return _dedup(args)
        return _make_pairs(args)
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        return _fail(exc)


def _train(args) -> int:
    import fastsim

    if args.threads is not None:
        fastsim.set_num_threads(args.threads)
    checkpoint = args.checkpoint or _checkpoint_for(args.out)
    settings = {k: getattr(args, k) for k in (
        "epochs", "batch_size", "embedding_dim", "hidden_size", "num_layers", "bidirectional", "cell", "pooling",
        "max_length", "margin", "optimizer", "lr", "momentum", "weight_decay", "clip_norm", "schedule",
        "warmup_steps", "val_fraction", "test_fraction", "min_count", "max_vocab", "seed", "dtype")}
    try:
        result = fastsim.train(args.pairs, out=args.out, checkpoint=checkpoint, resume=args.resume,
                               checkpoint_every=args.checkpoint_every,
                               columns=(args.question1, args.question2, args.label), progress=not args.quiet,
                               backend=args.backend, max_steps=args.max_steps, **settings)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {checkpoint} holds the last finished step; run the same command with --resume "
              "to go on", file=sys.stderr)
        return 130
    first, last = result.history[0], result.history[-1]
    print(f"trained {len(result.losses)} steps; held-out accuracy {last['test_accuracy']:.4f} at threshold "
          f"{last['threshold']:.3f} (untrained: {first['test_accuracy']:.4f}); saved {args.out}")
    return 0


def _checkpoint_for(out: str) -> str:
    root, ext = os.path.splitext(out)
    return (root if ext == ".npz" else out) + ".ckpt.npz"


def _dedup(args) -> int:
    import fastsim

    model = fastsim.load_model(args.model)
    if args.texts == "-":
        lines = sys.stdin.read().splitlines()
    else:
        with open(args.texts, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    texts = [t.strip() for t in lines if t.strip()]
    if len(texts) < 2:
        msg = f"{args.texts}: fewer than two questions"
        raise ValueError(msg)
    thr = model.threshold if args.threshold is None else args.threshold
    if args.groups:
        vecs = model.encode(texts, backend=args.backend)
        labels = fastsim.duplicate_groups(vecs, thr, backend=args.backend)
        groups: dict[int, list[int]] = {}
        for i, g in enumerate(labels.tolist()):
            groups.setdefault(g, []).append(i)
        shown = [g for g in groups.values() if len(g) > 1]
        for g in shown:
            print("\t".join(texts[i] for i in g))
        print(f"{len(shown)} groups of duplicates among {len(texts)} questions (threshold {thr:.3f})",
              file=sys.stderr)
        return 0
    scores, pairs = model.duplicates(texts, threshold=thr, top_k=args.top_k, backend=args.backend)
    for s, (i, j) in zip(scores.tolist(), pairs.tolist()):
        print(f"{s:.4f}\t{i + 1}\t{j + 1}\t{texts[i]}\t{texts[j]}")
    print(f"{len(scores)} duplicate pairs among {len(texts)} questions (threshold {thr:.3f})", file=sys.stderr)
    return 0


def _make_pairs(args) -> int:
    from . import datasets

    rows = datasets.paraphrase_pairs(args.pairs, seed=args.seed, templates=args.templates,
                                     duplicate_fraction=args.duplicate_fraction)
    datasets.write_pairs_csv(args.out, rows)
    print(f"wrote {len(rows)} pairs ({sum(r[2] for r in rows)} duplicates) to {args.out}")
    return 0
