"""The native trainer: agreement with PyTorch autograd, accuracy, resume, files, bad input, the command line."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastsim
from fastsim import datasets, optim
from fastsim.trainer import SiameseTrainer, TrainConfig, best_threshold, make_batches, read_pairs

from .conftest import backend_params

_ENV = {**os.environ, "FASTSIM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _batch(rng, b, T, V):
    L = rng.integers(1, T + 1, 2 * b)
    ids = np.zeros((2 * b, T), np.int64)
    for i in range(2 * b):
        ids[i, : L[i]] = rng.integers(2, V, L[i])
    return ids, L


# --------------------------------------------------------------------------- against PyTorch


@pytest.mark.parametrize("opt", ["adam", "sparse_adam", "sgd"])
@pytest.mark.parametrize("pooling,bidirectional", [("masked_mean", False), ("last", True), ("mean", False)])
def test_same_losses_as_fastsim_torch_and_torch_optim(opt, pooling, bidirectional):
    torch = pytest.importorskip("torch")
    import fastsim.torch as ft

    V, E, H, b, T, steps = 40, 8, 6, 5, 7, 8
    clip = None if opt == "sparse_adam" else 0.3  # torch cannot clip a sparse gradient
    cfg = TrainConfig(embedding_dim=E, hidden_size=H, dtype="float64", optimizer=opt, lr=1e-2, pooling=pooling,
                      max_length=T, clip_norm=clip, bidirectional=bidirectional, schedule="cosine",
                      warmup_steps=2)
    native = SiameseTrainer(cfg, V)
    enc = ft.SiameseEncoder(V, E, H, pooling=pooling, dtype=torch.float64, bidirectional=bidirectional)
    enc.embedding.sparse = opt == "sparse_adam"
    enc.load_state_dict({k: torch.from_numpy(native.params[k].copy()) for k in enc.state_dict()})
    loss_fn = ft.ModifiedTripletLoss(reduction="mean")
    rest = [p for n, p in enc.named_parameters() if not n.startswith("embedding")]
    if opt == "adam":
        opts = [torch.optim.Adam(enc.parameters(), lr=1e-2)]
    elif opt == "sgd":
        opts = [torch.optim.SGD(enc.parameters(), lr=1e-2, momentum=0.9)]
    else:
        opts = [torch.optim.SparseAdam([enc.embedding.weight], lr=1e-2), torch.optim.Adam(rest, lr=1e-2)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: optim.lr_factor("cosine", s, steps, 2)) for o in opts]
    rng = np.random.default_rng(1)
    for s in range(steps):
        ids, L = _batch(rng, b, T, V)
        got = native.step(ids, L, cfg.lr * optim.lr_factor("cosine", s, steps, 2))
        for o in opts:
            o.zero_grad()
        v = enc(torch.from_numpy(ids), torch.from_numpy(L))
        loss = loss_fn(v[:b], v[b:])
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(enc.parameters()), clip)
        for o, sc in zip(opts, scheds):
            o.step()
            sc.step()
        assert abs(got - loss.item()) <= 1e-9, f"step {s}"
    for k, p in enc.state_dict().items():
        np.testing.assert_allclose(native.params[k], p.numpy(), rtol=0, atol=1e-9, err_msg=k)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_gradient_every_backend_matches_finite_differences(backend, cell):
    V, E, H, b, T = 12, 4, 3, 3, 5
    cfg = TrainConfig(embedding_dim=E, hidden_size=H, dtype="float64", cell=cell, max_length=T, seed=3)
    tr = SiameseTrainer(cfg, V, backend=backend)
    ids, L = _batch(np.random.default_rng(2), b, T, V)
    loss, grads = tr.value_and_grad(ids, L)
    ref = SiameseTrainer(cfg, V, backend="numpy")
    ref_loss, ref_grads = ref.value_and_grad(ids, L)
    assert abs(loss - ref_loss) < 1e-12
    rng = np.random.default_rng(0)
    for name, p in tr.params.items():
        g = grads[name]
        dense = g.dense(p.shape) if isinstance(g, optim.RowGradient) else g
        rg = ref_grads[name]
        np.testing.assert_allclose(dense, rg.dense(p.shape) if isinstance(rg, optim.RowGradient) else rg,
                                   rtol=0, atol=1e-12, err_msg=name)
        for _ in range(3):  # central differences at random entries
            idx = tuple(int(rng.integers(s)) for s in p.shape)
            if name == "embedding.weight":
                idx = (int(ids[0, 0]), idx[1])
            old = p[idx]
            p[idx] = old + 1e-6
            up = tr.value_and_grad(ids, L)[0]
            p[idx] = old - 1e-6
            down = tr.value_and_grad(ids, L)[0]
            p[idx] = old
            assert abs((up - down) / 2e-6 - dense[idx]) < 1e-6, (name, idx)


# --------------------------------------------------------------------------- the whole job


def test_trained_model_beats_chance_on_unseen_generated_data(tmp_path):
    rows = datasets.paraphrase_pairs(5000, seed=2027, templates="alt")
    result = fastsim.train(rows, epochs=3, batch_size=32, embedding_dim=32, hidden_size=32, progress=False, seed=5,
                           out=tmp_path / "m.npz")
    untrained, last = result.history[0], result.history[-1]
    assert 0.3 < untrained["test_accuracy"] < 0.7
    assert last["test_accuracy"] >= 0.9
    model = fastsim.load_model(tmp_path / "m.npz")
    assert model.threshold == pytest.approx(last["threshold"])
    q1 = [r[0] for r in rows[:500]]
    q2 = [r[1] for r in rows[:500]]
    labels = np.array([r[2] for r in rows[:500]])
    assert model.accuracy(q1, q2, labels) >= 0.9
    assert fastsim.SiameseEncoder.load(tmp_path / "m.npz").output_dim == 32  # also an encoder file


def test_text_gets_one_vector_whatever_its_batch(tmp_path):
    rows = datasets.paraphrase_pairs(400, seed=1)
    model = fastsim.train(rows, epochs=1, batch_size=16, embedding_dim=16, hidden_size=16, progress=False).model
    q = "How old are you?"
    alone = model.encode([q])[0]
    others = ["What is the fastest way to learn python and french and guitar and chess today please?", "x"]
    inside = model.encode([others[0], q, others[1]])[1]
    assert float(alone @ inside) > 1 - 1e-6
    np.testing.assert_allclose(np.linalg.norm(model.encode(others), axis=1), 1, atol=1e-5)


def test_saved_model_loads_in_torch_with_the_same_vectors(tmp_path):
    torch = pytest.importorskip("torch")
    import fastsim.torch as ft

    rows = datasets.paraphrase_pairs(300, seed=4)
    fastsim.train(rows, epochs=1, batch_size=8, embedding_dim=8, hidden_size=8, dtype="float64", progress=False,
                  out=tmp_path / "m.npz")
    model = fastsim.load_model(tmp_path / "m.npz")
    module = ft.SiameseEncoder.from_fastsim(str(tmp_path / "m.npz"))
    texts = [r[0] for r in rows[:20]]
    ids, lengths = model.vocabulary.encode(texts, model.max_length)
    with torch.no_grad():
        v = module(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
    np.testing.assert_allclose(v, model.encode(texts), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- checkpoints


def test_resume_gives_the_same_losses(tmp_path):
    rows = datasets.paraphrase_pairs(600, seed=8)
    kw = dict(epochs=2, batch_size=16, embedding_dim=8, hidden_size=8, progress=False, optimizer="sparse_adam",
              checkpoint_every=3)
    whole = fastsim.train(rows, checkpoint=tmp_path / "a.npz", **kw)
    part = fastsim.train(rows, checkpoint=tmp_path / "b.npz", max_steps=7, **kw)
    assert len(part.losses) == 7
    rest = fastsim.train(rows, checkpoint=tmp_path / "b.npz", resume=True, **kw)
    assert np.array_equal(rest.losses, whole.losses)
    for k, p in whole.trainer.params.items():
        assert np.array_equal(p, rest.trainer.params[k]), k
    assert [h["threshold"] for h in rest.history] == [h["threshold"] for h in whole.history]


def _cli_train(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fastsim", "train", *args], env=_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc, timeout):
    """The exit code and the standard error of a finished process (its pipe closed)."""
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_command_resumes_with_the_same_losses(tmp_path, how):
    data = tmp_path / "pairs.csv"
    datasets.write_pairs_csv(data, datasets.paraphrase_pairs(6000, seed=9))
    common = [str(data), "--epochs", "2", "--batch-size", "16", "--embedding-dim", "32", "--hidden-size", "32",
              "--checkpoint-every", "20", "--quiet"]
    ref = _cli_train([*common, "--out", str(tmp_path / "ref.npz"), "--checkpoint", str(tmp_path / "ref.ck.npz")])
    rc, err = _finish(ref, 300)
    assert rc == 0, err
    ck = tmp_path / "run.ck.npz"
    run = _cli_train([*common, "--out", str(tmp_path / "run.npz"), "--checkpoint", str(ck)])
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and run.poll() is None:
        time.sleep(0.02)
    assert run.poll() is None, "the run ended before it could be interrupted"
    run.send_signal(how)
    rc, err = _finish(run, 60)
    assert rc == (130 if how == signal.SIGINT else -signal.SIGKILL)
    assert not (tmp_path / "run.npz").exists()
    done = int(np.load(ck)["losses"].size)
    assert 0 < done < int(np.load(tmp_path / "ref.ck.npz")["losses"].size)
    again = _cli_train([*common, "--out", str(tmp_path / "run.npz"), "--checkpoint", str(ck), "--resume"])
    rc, err = _finish(again, 300)
    assert rc == 0, err
    assert np.array_equal(np.load(ck)["losses"], np.load(tmp_path / "ref.ck.npz")["losses"])
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    rows = datasets.paraphrase_pairs(200, seed=1)
    result = fastsim.train(rows, epochs=1, batch_size=8, embedding_dim=4, hidden_size=4, progress=False)
    target = tmp_path / "m.npz"
    target.write_bytes(b"old")

    def broken(fh, **arrays):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        result.model.save(target)
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


# --------------------------------------------------------------------------- bad input


def _csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.mark.parametrize("header,rows,match", [
    (["question1", "question2"], [["a b", "c d"]], r"missing column\(s\) \['is_duplicate'\]"),
    (["question1", "question2", "is_duplicate"], [["a b", "  ", "1"]], "line 2: question2 is empty"),
    (["question1", "question2", "is_duplicate"], [["a b", "c d", "1"], ["a", "b", "2"]], "line 3: the label"),
    (["question1", "question2", "is_duplicate"], [], "no question pairs"),
])
def test_bad_csv_is_named(tmp_path, header, rows, match):
    path = _csv(tmp_path / "p.csv", header, rows)
    with pytest.raises(ValueError, match=match):
        fastsim.train(path, out=tmp_path / "m.npz", progress=False)
    assert not (tmp_path / "m.npz").exists()


def test_other_column_names(tmp_path):
    rows = datasets.paraphrase_pairs(120, seed=3)
    path = tmp_path / "p.csv"
    datasets.write_pairs_csv(path, rows, columns=("q_a", "q_b", "dup"))
    data = read_pairs(path, question1="q_a", question2="q_b", label="dup")
    assert (data.q1[0], data.q2[0], int(data.labels[0])) == rows[0]
    r = fastsim.train(path, columns=("q_a", "q_b", "dup"), epochs=1, batch_size=4, embedding_dim=4, hidden_size=4,
                      progress=False)
    assert len(r.losses) > 0


def test_one_token_vocabulary_and_too_large_batch_are_refused(tmp_path):
    rows = [("hello", "hello", 1), ("hello", "hello", 0)] * 20
    with pytest.raises(ValueError, match="vocabulary of 1 token"):
        fastsim.train(rows, progress=False, batch_size=2)
    rows = datasets.paraphrase_pairs(100, seed=1)
    with pytest.raises(ValueError, match="batch_size = 64 is more than the"):
        fastsim.train(rows, progress=False, batch_size=64, out=tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_checkpoint_of_another_shape_is_refused(tmp_path):
    rows = datasets.paraphrase_pairs(300, seed=2)
    kw = dict(epochs=1, batch_size=8, embedding_dim=4, progress=False, checkpoint=tmp_path / "c.npz")
    fastsim.train(rows, hidden_size=4, **kw)
    with pytest.raises(ValueError, match="hidden_size=4 in the checkpoint but 6 asked"):
        fastsim.train(rows, hidden_size=6, resume=True, **kw)
    with pytest.raises(ValueError, match="other question pairs"):
        fastsim.train(datasets.paraphrase_pairs(300, seed=3), hidden_size=4, resume=True, **kw)


@pytest.mark.parametrize("kw,match", [
    ({"batch_size": 1}, "batch_size must be >= 2"), ({"cell": "LSTMx"}, "cell must be one of"),
    ({"lr": -1.0}, "lr must be"), ({"val_fraction": 0.5, "test_fraction": 0.5}, "leaves too few"),
    ({"optimizer": "adagrad"}, "optimizer must be one of"), ({"clip_norm": 0.0}, "clip_norm"),
])
def test_bad_settings_are_named(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kw)


# --------------------------------------------------------------------------- pieces


def test_batches_never_hold_a_question_twice():
    rng = np.random.default_rng(0)
    keys1 = [int(k) for k in rng.integers(0, 30, 200)]
    keys2 = [int(k) + 1000 for k in rng.integers(0, 30, 200)]
    batches = make_batches(keys1, keys2, 8, np.random.default_rng(1))
    assert batches
    used = np.concatenate(batches)
    assert len(set(used.tolist())) == len(used)
    for bt in batches:
        assert len(bt) == 8
        qs = [keys1[i] for i in bt] + [keys2[i] for i in bt]
        assert len(set(qs)) == len(qs)


def test_best_threshold_maximizes_accuracy():
    rng = np.random.default_rng(3)
    s = rng.uniform(-1, 1, 300)
    y = (s + rng.normal(0, 0.3, 300) > 0.1).astype(int)
    thr, acc = best_threshold(s, y)
    assert acc == pytest.approx(np.mean((s >= thr) == (y == 1)))
    for t in np.linspace(-1, 1, 401):
        assert np.mean((s >= t) == (y == 1)) <= acc + 1e-12


def test_command_line_make_pairs_train_dedup(tmp_path):
    data, model = tmp_path / "p.csv", tmp_path / "m.npz"
    run = [sys.executable, "-m", "fastsim"]
    subprocess.run([*run, "make-pairs", "--out", str(data), "-n", "3000", "--seed", "21"], check=True, env=_ENV)
    out = subprocess.run([*run, "train", str(data), "--out", str(model), "--epochs", "3", "--batch-size", "32",
                          "--embedding-dim", "32", "--hidden-size", "32", "--quiet"],
                         check=True, env=_ENV, capture_output=True, text=True).stdout
    assert "held-out accuracy" in out
    texts = tmp_path / "q.txt"
    texts.write_text("How much does guitar cost?\nWhat is the price of guitar?\nWhy is chess so hard?\n")
    found = subprocess.run([*run, "dedup", str(model), str(texts)], check=True, env=_ENV, capture_output=True,
                           text=True).stdout.splitlines()
    assert found and found[0].split("\t")[1:3] == ["1", "2"]
    bad = subprocess.run([*run, "train", str(tmp_path / "none.csv"), "--out", str(model)], env=_ENV,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "none.csv" in bad.stderr
