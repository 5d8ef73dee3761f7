"""Train the course's Siamese encoder on CPU with fastsim's PyTorch modules.

Reads a CSV with the columns ``question1``, ``question2`` and
``is_duplicate`` (as ``find_duplicates.py``), keeps the duplicate pairs (the
course trains on those only: in a batch, row i of both sides is a duplicate,
every other row a negative), and trains embedding -> LSTM -> mean ->
normalize with the modified triplet loss and Adam.  The LSTM's forward and
backward run fastsim's kernels (``fastsim.torch.SiameseEncoder``); the loss
is fastsim's fused kernel (``fastsim.torch.ModifiedTripletLoss``).

``--save`` writes the trained encoder for ``find_duplicates.py --model``
(through ``fastsim.SiameseEncoder``) and the vocabulary beside it.

Example::

    python examples/train_siamese.py examples/data/questions.csv --epochs 5 --batch-size 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fastsim
import fastsim.torch as ft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from find_duplicates import DEFAULT_CSV, read_pairs, vocab_path_for  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", default=str(DEFAULT_CSV))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8, help="duplicate pairs per batch (at least 2)")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per question (padded or cut)")
    parser.add_argument("--hidden", type=int, default=128, help="embedding and LSTM size")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--margin", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", metavar="PATH", help="save the trained encoder (.npz) and its vocabulary")
    args = parser.parse_args(argv)
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (a batch needs negatives)")

    q1, q2, labels = read_pairs(args.csv)
    vocab = fastsim.Vocabulary.build(q1 + q2)
    dup1 = [a for a, d in zip(q1, labels) if d]
    dup2 = [b for b, d in zip(q2, labels) if d]
    if len(dup1) < args.batch_size:
        raise SystemExit(f"{args.csv}: {len(dup1)} duplicate pairs, fewer than one batch of {args.batch_size}")
    ids1, _ = vocab.encode(dup1, args.max_length)
    ids2, _ = vocab.encode(dup2, args.max_length)
    ids1, ids2 = torch.from_numpy(np.asarray(ids1, np.int64)), torch.from_numpy(np.asarray(ids2, np.int64))
    print(f"{len(dup1)} duplicate pairs, vocabulary {len(vocab)}, {args.max_length} tokens per question")

    torch.manual_seed(args.seed)
    encoder = ft.SiameseEncoder(len(vocab), args.hidden, args.hidden)
    loss_fn = ft.ModifiedTripletLoss(margin=args.margin)
    opt = torch.optim.Adam(encoder.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    n_batches = len(dup1) // args.batch_size
    for epoch in range(1, args.epochs + 1):
        order = torch.from_numpy(rng.permutation(len(dup1)))
        total, start = 0.0, time.perf_counter()
        for k in range(n_batches):
            rows = order[k * args.batch_size : (k + 1) * args.batch_size]
            opt.zero_grad()
            loss = loss_fn(encoder(ids1[rows]), encoder(ids2[rows]))
            loss.backward()
            opt.step()
            total += loss.item()
        secs = time.perf_counter() - start
        print(f"epoch {epoch}: mean batch loss {total / n_batches:.4f}  ({n_batches} steps, {secs:.2f} s)")

    if args.save:
        encoder.to_fastsim().save(args.save)
        vocab.save(vocab_path_for(args.save))
        print(f"saved {args.save} and {vocab_path_for(args.save)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
