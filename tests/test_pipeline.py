"""The Siamese pipeline: vocabulary, encoder, similarity decisions and the example script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastsim
from fastsim.pipeline import PAD_ID, UNK_ID, SiameseEncoder, Vocabulary

from .conftest import DTYPES, assert_close, backend_params, tol

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "find_duplicates.py"
SAMPLE_CSV = ROOT / "examples" / "data" / "questions.csv"

try:
    from fastsim import rnn as fs_rnn
except ImportError as exc:  # the recurrent module is developed alongside
    fs_rnn = None
    _RNN_MISSING = f"fastsim.rnn is not importable yet ({exc})"
else:
    _RNN_MISSING = ""

needs_rnn = pytest.mark.skipif(fs_rnn is None, reason=_RNN_MISSING or "fastsim.rnn missing")
RNN_BACKENDS = backend_params(fs_rnn._SUPPORTED if fs_rnn is not None else ())
COS_BACKENDS = backend_params()


# --------------------------------------------------------------------------- vocabulary


def test_tokenize_lowercases_and_splits_punctuation():
    assert Vocabulary.tokenize("What's your AGE?") == ["what", "'", "s", "your", "age", "?"]
    assert Vocabulary.tokenize("  ") == []
    assert Vocabulary.tokenize("Café, 2020!") == ["café", ",", "2020", "!"]


def test_build_orders_by_count_then_first_appearance():
    vocab = Vocabulary.build(["b a c", "a c d", "a"])
    # a: 3, c: 2, b: 1 (seen before d), d: 1
    assert vocab.tokens == ["<PAD>", "<UNK>", "a", "c", "b", "d"]
    assert len(vocab) == 6
    assert vocab["a"] == 2 and vocab.token_to_id("zzz") == UNK_ID
    assert vocab.id_to_token(0) == "<PAD>" and vocab.id_to_token(5) == "d"
    assert "c" in vocab and "e" not in vocab


def test_build_min_count_and_max_size():
    texts = ["a a a b b c", "a b d"]
    assert Vocabulary.build(texts, min_count=2).tokens[2:] == ["a", "b"]
    assert Vocabulary.build(texts, max_size=3).tokens == ["<PAD>", "<UNK>", "a"]
    assert len(Vocabulary.build(texts, max_size=2)) == 2
    assert len(Vocabulary.build(texts, max_size=100)) == 6


def test_encode_pads_truncates_and_handles_empty_text():
    vocab = Vocabulary(["how", "old", "are", "you", "?"])
    ids, lengths = vocab.encode(["How old are you?", "you?", "", "who are you"])
    np.testing.assert_array_equal(
        ids, [[2, 3, 4, 5, 6], [5, 6, 0, 0, 0], [UNK_ID, 0, 0, 0, 0], [UNK_ID, 4, 5, 0, 0]]
    )
    np.testing.assert_array_equal(lengths, [5, 2, 1, 3])
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    ids, lengths = vocab.encode(["How old are you?", "you"], max_length=3)
    np.testing.assert_array_equal(ids, [[2, 3, 4], [5, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1])
    ids, lengths = vocab.encode(["you"], max_length=4)
    assert ids.shape == (1, 4)
    ids, lengths = vocab.encode([])
    assert ids.shape == (0, 1) and lengths.shape == (0,)
    assert vocab.decode([2, 3, 0, 0]) == ["how", "old"]


def test_vocabulary_round_trip(tmp_path):
    vocab = Vocabulary.build(["Où est la gare ?", "Where is the station?", "la gare"])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    back = Vocabulary.load(path)
    assert back == vocab and back.tokens == vocab.tokens
    texts = ["où est la station", "unknown words here"]
    np.testing.assert_array_equal(back.encode(texts)[0], vocab.encode(texts)[0])
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["tokens"][:2] == ["<PAD>", "<UNK>"] and "où" in doc["tokens"]


def test_vocabulary_bad_input(tmp_path):
    vocab = Vocabulary(["a"])
    with pytest.raises(TypeError, match="not a single string"):
        vocab.encode("a single text")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        vocab.encode(["a", 3])
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        vocab.encode(["a"], max_length=0)
    with pytest.raises(ValueError, match="min_count must be >= 1"):
        Vocabulary.build(["a"], min_count=0)
    with pytest.raises(ValueError, match="max_size must be >= 2"):
        Vocabulary.build(["a"], max_size=1)
    with pytest.raises(ValueError, match="appears twice"):
        Vocabulary(["a", "a"])
    with pytest.raises(ValueError, match="appears twice"):
        Vocabulary(["<PAD>"])
    with pytest.raises(ValueError, match=r"token_id must be within 0\.\.2"):
        vocab.id_to_token(3)
    with pytest.raises(TypeError, match="token must be a str"):
        vocab.token_to_id(5)
    bad = tmp_path / "bad.json"
    bad.write_text('{"tokens": ["x"]}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a fastsim vocabulary file"):
        Vocabulary.load(bad)
    bad.write_text("not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a vocabulary JSON file"):
        Vocabulary.load(bad)


# --------------------------------------------------------------------------- similarity, decisions, accuracy


def _cos64(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.einsum("ij,ij->i", a, b) / (na * nb)
    s[(na == 0) | (nb == 0)] = 0.0
    return np.clip(s, -1, 1)


@pytest.mark.parametrize("backend", COS_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_similarity_matches_float64(backend, dtype, rng):
    a = rng.standard_normal((50, 24)).astype(dtype)
    b = rng.standard_normal((50, 24)).astype(dtype)
    b[3] = 0
    got = fastsim.similarity(a, b, backend=backend)
    assert got.dtype == dtype
    assert_close(got, _cos64(a, b), dtype)


@pytest.mark.parametrize("backend", COS_BACKENDS)
def test_is_duplicate_and_accuracy_by_hand(backend):
    # exact cosines: 1, 0, -1, 1, 0 (a zero vector)
    q1 = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    q2 = np.array([[2.0, 0.0], [0.0, 5.0], [-4.0, 0.0], [0.0, 0.5], [1.0, 1.0]])
    np.testing.assert_array_equal(fastsim.similarity(q1, q2, backend=backend), [1, 0, -1, 1, 0])
    # cos >= threshold: equality counts as a duplicate
    np.testing.assert_array_equal(fastsim.is_duplicate(q1, q2, 1.0, backend=backend), [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(fastsim.is_duplicate(q1, q2, 0.0, backend=backend), [1, 1, 0, 1, 1])
    labels = [1, 1, 0, 0, 0]
    # predictions at 0.5: T F F T F; matches: T F T F T
    assert fastsim.accuracy(q1, q2, labels, 0.5, backend=backend) == pytest.approx(3 / 5)
    assert fastsim.accuracy(q1, q2, np.array(labels, dtype=bool), 0.5, backend=backend) == pytest.approx(3 / 5)
    assert fastsim.accuracy(q1, q2, np.array(labels, dtype=float), -1.0, backend=backend) == pytest.approx(2 / 5)
    assert isinstance(fastsim.accuracy(q1, q2, labels, 0.5), float)


def test_nan_pair_is_not_a_duplicate():
    q1 = np.array([[np.nan, 1.0], [1.0, 0.0]])
    q2 = np.array([[1.0, 1.0], [1.0, 0.0]])
    np.testing.assert_array_equal(fastsim.is_duplicate(q1, q2, -1.0), [False, True])


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda a, b: fastsim.is_duplicate(a, b, np.nan), ValueError, "threshold must be finite"),
        (lambda a, b: fastsim.is_duplicate(a, b, np.inf), ValueError, "threshold must be finite"),
        (lambda a, b: fastsim.is_duplicate(a, b, "0.5"), TypeError, "threshold must be a real number"),
        (lambda a, b: fastsim.similarity(a, b[:2]), ValueError, "q1_vecs and q2_vecs must have the same shape"),
        (lambda a, b: fastsim.similarity(a[0], b), ValueError, "q1_vecs must be 2-D"),
        (lambda a, b: fastsim.accuracy(a, b, [1, 0], 0.5), ValueError, r"labels must have shape \(3,\)"),
        (lambda a, b: fastsim.accuracy(a, b, [1, 0, 2], 0.5), ValueError, "labels must be 0 or 1"),
        (lambda a, b: fastsim.accuracy(a, b, ["y", "n", "y"], 0.5), TypeError, "labels must be booleans"),
        (lambda a, b: fastsim.accuracy(a[:0], b[:0], [], 0.5), ValueError, "at least one pair"),
        (lambda a, b: fastsim.accuracy(a, b, [1, 0, 1], float("nan")), ValueError, "threshold must be finite"),
    ],
)
def test_decision_bad_input(call, exc, match):
    a = np.ones((3, 4))
    b = np.ones((3, 4))
    with pytest.raises(exc, match=match):
        call(a, b)


# --------------------------------------------------------------------------- pooling, with a transparent layer


class _Scaled:
    """A stand-in recurrent layer whose output is known in closed form.

    Forward features at step t are ``x[t] * (t + 1)``; a bidirectional layer
    adds backward features ``-x[t]``.  Past a sequence's length the output is
    0, as for a packed sequence.
    """

    def __init__(self, size, bidirectional=False, dtype=np.float64):
        self.input_size = size
        self.hidden_size = size
        self.bidirectional = bidirectional
        self.dtype = np.dtype(dtype)
        self.calls = []

    def __call__(self, x, lengths=None, initial_state=None, *, backend="auto"):
        x = np.asarray(x, dtype=self.dtype)
        self.calls.append((x.shape, None if lengths is None else np.array(lengths)))
        B, T, _ = x.shape
        out = x * np.arange(1, T + 1, dtype=self.dtype)[None, :, None]
        if self.bidirectional:
            out = np.concatenate([out, -x], axis=2)
        if lengths is not None:
            out = out * (np.arange(T)[None, :] < np.asarray(lengths)[:, None])[:, :, None]
        return out, None


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n == 0, 1, n)


def _pooling_setup():
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((7, 3))
    emb[0] = 0.5  # a padding row that is not zero makes "padding included" visible
    ids = np.array([[3, 4, 5, 0], [6, 0, 0, 0], [2, 2, 1, 4]])
    lengths = np.array([3, 1, 4])
    return emb, ids, lengths


def test_pooling_without_lengths_runs_over_padding():
    emb, ids, _ = _pooling_setup()
    x = emb[ids]
    steps = np.arange(1, 5)[None, :, None]
    out = x * steps
    inferred = [3, 1, 4]  # last non-padding position + 1
    want = {
        "mean": out.mean(axis=1),
        "masked_mean": np.stack([out[b, :n].mean(axis=0) for b, n in enumerate(inferred)]),
        "last": np.stack([out[b, n - 1] for b, n in enumerate(inferred)]),
    }
    for pooling, expected in want.items():
        layer = _Scaled(3)
        enc = SiameseEncoder(emb, layer, pooling)
        got = enc.encode(ids)
        assert layer.calls == [((3, 4, 3), None)], "without lengths the layer must see all T steps"
        assert_close(got, _unit(expected), np.float64, err_msg=pooling)


def test_pooling_with_lengths_and_bidirectional_last():
    emb, ids, lengths = _pooling_setup()
    x = emb[ids]
    B, T = ids.shape
    mask = (np.arange(T)[None, :] < lengths[:, None])[:, :, None]
    fwd = x * np.arange(1, T + 1)[None, :, None] * mask
    bwd = -x * mask
    out = np.concatenate([fwd, bwd], axis=2)
    want = {
        "mean": out.sum(axis=1) / T,
        "masked_mean": out.sum(axis=1) / lengths[:, None],
        # forward half at step L-1, backward half at step 0
        "last": np.concatenate([fwd[np.arange(B), lengths - 1], bwd[:, 0]], axis=1),
    }
    for pooling, expected in want.items():
        layer = _Scaled(3, bidirectional=True)
        enc = SiameseEncoder(emb, layer, pooling)
        assert enc.output_dim == 6
        got = enc.encode(ids, lengths)
        assert_close(got, _unit(expected), np.float64, err_msg=pooling)
        np.testing.assert_array_equal(layer.calls[0][1], lengths)


def test_stacked_layers_and_time_trimming():
    emb, ids, lengths = _pooling_setup()
    first, second = _Scaled(3), _Scaled(3)
    enc = SiameseEncoder(emb, [first, second], "masked_mean")
    short = lengths.copy()
    short[:] = [2, 1, 2]
    got = enc.encode(ids, short)
    # steps past the longest length are never run
    assert first.calls[0][0] == (3, 2, 3) and second.calls[0][0] == (3, 2, 3)
    x = emb[ids][:, :2]
    out = x * (np.arange(1, 3)[None, :, None] ** 2)
    want = np.stack([out[b, :n].mean(axis=0) for b, n in enumerate(short)])
    assert_close(got, _unit(want), np.float64)


def test_zero_encoding_stays_zero():
    emb = np.zeros((3, 2))
    enc = SiameseEncoder(emb, _Scaled(2), "mean")
    got = enc.encode(np.array([[1, 2]]))
    np.testing.assert_array_equal(got, [[0.0, 0.0]])


def test_batches_and_progress(capsys):
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((11, 4))
    ids = rng.integers(0, 11, (20, 6))
    lengths = rng.integers(1, 7, 20)
    enc = SiameseEncoder(emb, _Scaled(4), "masked_mean")
    whole = enc.encode(ids, lengths, batch_size=1000)
    seen = []
    parts = enc.encode(ids, lengths, batch_size=7, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(7, 20), (14, 20), (20, 20)]
    assert_close(parts, whole, np.float64)
    enc.encode(ids, lengths, batch_size=8, progress=True)
    err = capsys.readouterr().err
    assert "encoded 8/20" in err and err.endswith("encoded 20/20\n")
    empty = enc.encode(np.zeros((0, 6), dtype=np.int64))
    assert empty.shape == (0, 4)


def test_encoder_bad_input():
    emb = np.ones((5, 3))
    enc = SiameseEncoder(emb, _Scaled(3))
    ids = np.array([[1, 2, 0]])
    cases = [
        (lambda: enc.encode(ids.astype(float)), TypeError, "ids must hold integer token ids"),
        (lambda: enc.encode(ids[0]), ValueError, r"ids must be 2-D \(batch, time\)"),
        (lambda: enc.encode(np.zeros((2, 0), dtype=int)), ValueError, "at least one time step"),
        (lambda: enc.encode([[1, 5]]), ValueError, r"ids must lie within 0\.\.4"),
        (lambda: enc.encode([[-1, 2]]), ValueError, r"ids must lie within 0\.\.4"),
        (lambda: enc.encode(ids, [4]), ValueError, r"lengths must lie within 1\.\.3"),
        (lambda: enc.encode(ids, [0]), ValueError, r"lengths must lie within 1\.\.3"),
        (lambda: enc.encode(ids, [1, 2]), ValueError, r"lengths must have shape \(1,\)"),
        (lambda: enc.encode(ids, batch_size=0), ValueError, "batch_size must be >= 1"),
        (lambda: enc.encode(ids, progress="yes"), TypeError, "progress must be a bool or a callable"),
        (lambda: enc.encode(ids, backend="gpu"), ValueError, "backend must be"),
        (lambda: enc.encode([[1, 2], [3]]), ValueError, "ids must be a rectangular"),
        (lambda: enc.encode(ids.astype(bool)), TypeError, "ids must hold integer token ids"),
        (lambda: setattr(enc, "pooling", "max"), ValueError, "pooling must be one of"),
        (lambda: SiameseEncoder(emb, _Scaled(3), "max"), ValueError, "pooling must be one of"),
        (lambda: SiameseEncoder(emb[0], _Scaled(3)), ValueError, "embedding must be 2-D"),
        (lambda: SiameseEncoder(emb[:1], _Scaled(3)), ValueError, "at least 2 rows"),
        (lambda: SiameseEncoder(emb, _Scaled(4)), ValueError, r"rnn\[0\] expects input_size = 4"),
        (lambda: SiameseEncoder(emb, [_Scaled(3), _Scaled(2)]), ValueError, r"rnn\[1\] expects input_size = 2"),
        (lambda: SiameseEncoder(emb, []), ValueError, "non-empty sequence"),
        (lambda: SiameseEncoder(emb, 5), TypeError, r"rnn\[0\] must be a recurrent layer"),
        (lambda: SiameseEncoder(emb, [_Scaled(3), _Scaled(3, dtype=np.float32)]), ValueError, "share one dtype"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


# --------------------------------------------------------------------------- the real recurrent layers


@needs_rnn
def test_random_encoder_dtype_and_padding_row():
    enc = SiameseEncoder.random(50, 8, 6, dtype=np.float64, seed=1)
    assert enc.dtype == np.float64 and enc.vocab_size == 50 and enc.output_dim == 6
    np.testing.assert_array_equal(enc.embedding[PAD_ID], 0)
    with pytest.raises(ValueError):
        enc.embedding[1, 0] = 3.0  # read-only view
    # a float64 embedding follows the recurrent layers' dtype
    layer = fs_rnn.LSTM(8, 6, dtype=np.float32, seed=0)
    assert SiameseEncoder(np.ones((4, 8)), layer).dtype == np.float32


@needs_rnn
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: SiameseEncoder.random(40, 6, 5, seed=3), id="lstm-f32-mean"),
        pytest.param(lambda: SiameseEncoder.random(40, 6, 5, num_layers=2, bidirectional=True, pooling="last",
                                                   dtype=np.float64, seed=4), id="bilstm2-f64-last"),
        pytest.param(lambda: SiameseEncoder.random(40, 6, 5, cell="GRU", pooling="masked_mean", seed=5), id="gru"),
        pytest.param(lambda: SiameseEncoder(np.random.default_rng(6).standard_normal((40, 6)),
                                            [fs_rnn.RNN(6, 4, nonlinearity="relu", dtype=np.float64, seed=7),
                                             fs_rnn.LSTM(4, 3, dtype=np.float64, seed=8)]), id="rnn-relu+lstm"),
    ],
)
def test_save_load_round_trip(make, tmp_path, rng):
    enc = make()
    path = tmp_path / "encoder.bin"  # any name: nothing is appended
    enc.save(path)
    assert path.exists() and not (tmp_path / "encoder.bin.npz").exists()
    back = SiameseEncoder.load(path)
    assert back.pooling == enc.pooling and back.dtype == enc.dtype
    assert [type(layer).__name__ for layer in back.layers] == [type(layer).__name__ for layer in enc.layers]
    np.testing.assert_array_equal(back.embedding, enc.embedding)
    for a, b in zip(enc.layers, back.layers):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
        assert getattr(a, "nonlinearity", None) == getattr(b, "nonlinearity", None)
    ids = rng.integers(0, 40, (9, 7))
    lengths = rng.integers(1, 8, 9)
    np.testing.assert_array_equal(back.encode(ids, lengths, backend="numpy"), enc.encode(ids, lengths, backend="numpy"))
    with np.load(path, allow_pickle=False) as npz:
        config = json.loads(str(npz["config"]))
    assert config["format"] == "fastsim.SiameseEncoder" and len(config["layers"]) == len(enc.layers)


@needs_rnn
def test_load_rejects_other_files(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.ones(3))
    with pytest.raises(ValueError, match="not a SiameseEncoder file"):
        SiameseEncoder.load(other)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a SiameseEncoder file"):
        SiameseEncoder.load(text)
    with pytest.raises(FileNotFoundError):
        SiameseEncoder.load(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="only fastsim.rnn LSTM, GRU and RNN layers can be saved"):
        SiameseEncoder(np.ones((3, 2)), _Scaled(2)).save(tmp_path / "x.npz")


# --------------------------------------------------------------------------- against PyTorch


def _torch_model(torch, V, E, H, *, num_layers=1, bidirectional=False, cell="LSTM", seed=0):
    torch.manual_seed(seed)
    emb = torch.nn.Embedding(V, E, padding_idx=0).double()
    rnn = getattr(torch.nn, cell)(E, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True)
    return emb, rnn.double()


def _torch_encode(torch, emb, rnn, ids, lengths, pooling, *, packed):
    """The same encoder written in PyTorch, in float64.

    ``lengths`` are the true lengths (the ids are right-padded with 0, real
    tokens are never 0); ``packed`` runs the recurrent module on a packed
    sequence, otherwise over all T steps as the course's model does.
    """
    T = ids.shape[1]
    L = torch.from_numpy(lengths)
    with torch.inference_mode():
        x = emb(torch.from_numpy(ids))
        if packed:
            seq = torch.nn.utils.rnn.pack_padded_sequence(x, L, batch_first=True, enforce_sorted=False)
            out, h = rnn(seq)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
        else:
            out, h = rnn(x)
        if isinstance(h, tuple):
            h = h[0]
        rows = torch.arange(out.shape[0])
        if pooling == "mean":
            pooled = out.mean(dim=1)
        elif pooling == "masked_mean":
            mask = (torch.arange(T)[None, :] < L[:, None]).to(out.dtype)
            pooled = (out * mask[:, :, None]).sum(dim=1) / L[:, None].to(out.dtype)
        elif not rnn.bidirectional:
            pooled = out[rows, L - 1]
        elif packed:
            pooled = torch.cat([h[-2], h[-1]], dim=1)  # the last layer's final states
        else:
            H = rnn.hidden_size
            pooled = torch.cat([out[rows, L - 1, :H], out[:, 0, H:]], dim=1)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()


def _ids(rng, B, T, V):
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    ids = rng.integers(1, V, (B, T))
    ids[np.arange(T)[None, :] >= lengths[:, None]] = PAD_ID
    return ids, lengths


@needs_rnn
@pytest.mark.parametrize("backend", RNN_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_course_model_matches_torch(backend, dtype):
    """nn.Embedding + nn.LSTM + mean over all T + normalize: the course's sub-network."""
    torch = pytest.importorskip("torch")
    emb, lstm = _torch_model(torch, 60, 16, 24, seed=1)
    enc = SiameseEncoder.from_torch(emb, lstm, dtype=dtype)
    assert enc.dtype == dtype and enc.output_dim == 24
    ids, lengths = _ids(np.random.default_rng(9), 33, 12, 60)
    want = _torch_encode(torch, emb, lstm, ids, lengths, "mean", packed=False)
    got = enc.encode(ids, batch_size=16, backend=backend)
    assert got.dtype == dtype
    assert_close(got, want, dtype, scale=10)


@needs_rnn
@pytest.mark.parametrize("backend", RNN_BACKENDS)
@pytest.mark.parametrize("pooling", ["mean", "masked_mean", "last"])
@pytest.mark.parametrize(
    ("cell", "num_layers", "bidirectional"), [("LSTM", 1, False), ("LSTM", 2, True), ("GRU", 1, True)]
)
@pytest.mark.parametrize("with_lengths", [True, False], ids=["lengths", "no-lengths"])
def test_pooling_modes_match_torch(backend, pooling, cell, num_layers, bidirectional, with_lengths):
    torch = pytest.importorskip("torch")
    emb, rnn = _torch_model(torch, 30, 8, 7, num_layers=num_layers, bidirectional=bidirectional, cell=cell, seed=2)
    enc = SiameseEncoder.from_torch(emb, rnn, pooling, dtype=np.float64)
    ids, lengths = _ids(np.random.default_rng(4), 17, 9, 30)
    want = _torch_encode(torch, emb, rnn, ids, lengths, pooling, packed=with_lengths)
    got = enc.encode(ids, lengths if with_lengths else None, backend=backend)
    assert_close(got, want, np.float64, scale=10)


needs_cpp = pytest.mark.skipif("cpp" not in fastsim.available_backends(), reason="cpp backend not available here")


def _layers_for(kind, E, H, dtype, seed):
    rng = np.random.default_rng(seed)
    if kind == "lstm2bi":
        return fs_rnn.LSTM(E, H, 2, bidirectional=True, dtype=dtype, seed=rng)
    if kind == "gru_bi":
        return fs_rnn.GRU(E, H, bidirectional=True, dtype=dtype, seed=rng)
    if kind == "rnn_relu":
        return fs_rnn.RNN(E, H, nonlinearity="relu", dtype=dtype, seed=rng)
    return [fs_rnn.LSTM(E, H, dtype=dtype, seed=rng), fs_rnn.GRU(H, H + 3, dtype=dtype, seed=rng)]


@needs_rnn
@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["lstm2bi", "gru_bi", "rnn_relu", "lstm_then_gru"])
@pytest.mark.parametrize("pooling", ["mean", "masked_mean", "last"])
def test_projected_embedding_table_matches_numpy(dtype, kind, pooling):
    # Once an encoder has seen V tokens, the cpp backend runs its first layer
    # from a table of projected embedding rows picked by token id: the first
    # call below (gathering embeddings) and every later call must agree with
    # the NumPy backend, with and without lengths.
    V, E, H = 40, 6, 19
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((V, E))
    enc = SiameseEncoder(emb, _layers_for(kind, E, H, dtype, 8), pooling)
    ref64 = SiameseEncoder(emb, _layers_for(kind, E, H, np.float64, 8), pooling)
    ids, lengths = _ids(rng, 5, 7, V)  # 35 tokens: below V, the gather path
    got_first = enc.encode(ids, backend="cpp")
    assert enc._tokens_encoded < V
    assert_close(got_first, ref64.encode(ids, backend="numpy"), dtype, scale=10)
    for _ in range(2):  # now past V tokens: the table is built, then reused
        ids, lengths = _ids(rng, 9, 8, V)
        for lens in (None, lengths):
            got = enc.encode(ids, lens, batch_size=4, backend="cpp")
            assert_close(got, ref64.encode(ids, lens, backend="numpy"), dtype, scale=10)
    first = enc.layers[0]
    assert enc._projected is not None and enc._projected.layer is first and enc._projected.ready


@needs_rnn
@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", range(30, 42))
def test_projected_table_agrees_bitwise_with_the_gather_path(dtype, V):
    # The projection of a token must not depend on how many rows the GEMM
    # that made it had: an edge tile of 1-3 rows used to sum in more k-chains
    # than a full tile, so on AVX2 the last rows of a table of V = 20000
    # tokens (and any table row in a short last tile) differed in the last bit
    # from the same token projected inside a batch: the encoder's first call
    # and its later ones disagreed.  Twelve consecutive V cover every
    # table-edge tile height; the batches' own edge tiles vary as well.
    rng = np.random.default_rng(V)
    E, H = 7, 9
    enc = SiameseEncoder(rng.standard_normal((V, E)), [fs_rnn.LSTM(E, H, dtype=dtype, seed=V)], "mean")
    ids = rng.integers(0, V, size=(3 + V % 4, 5))  # fewer than V tokens
    ids[-1, -1] = ids[0, 0] = V - 1  # the table's last row, in its edge tile
    first = enc.encode(ids, backend="cpp")  # gathers the embedding rows
    assert enc._tokens_encoded < V
    enc.encode(rng.integers(0, V, size=(V, 1)), backend="cpp")  # past V tokens: the table is built
    second = enc.encode(ids, backend="cpp")  # reads the projected table
    layer = enc.layers[0]
    assert enc._projected is not None and enc._projected.layer is layer and enc._projected.ready
    np.testing.assert_array_equal(second, first)


@needs_rnn
@needs_cpp
def test_no_projected_table_beyond_its_memory_cap(monkeypatch):
    import fastsim.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "_TABLE_BYTES", 0)
    V, E, H = 20, 4, 6
    rng = np.random.default_rng(2)
    layer = fs_rnn.LSTM(E, H, dtype=np.float64, seed=4)
    enc = SiameseEncoder(rng.standard_normal((V, E)), layer, "masked_mean")
    for _ in range(3):
        ids, lengths = _ids(rng, 6, 5, V)
        assert_close(enc.encode(ids, lengths, backend="cpp"), enc.encode(ids, lengths, backend="numpy"), np.float64)
    assert enc._tokens_encoded >= V
    assert enc._projected is None or not enc._projected.ready


@needs_rnn
@needs_cpp
def test_projected_table_follows_new_weights_and_simd_levels():
    V, E, H = 25, 5, 8
    rng = np.random.default_rng(6)
    layer = fs_rnn.LSTM(E, H, bidirectional=True, dtype=np.float64, seed=1)
    enc = SiameseEncoder(rng.standard_normal((V, E)), layer, "mean")
    ids, lengths = _ids(rng, 10, 6, V)
    enc.encode(ids, backend="cpp")
    enc.encode(ids, backend="cpp")  # table built
    # replaced weights: the next call must use them, not the old table
    w = [rng.uniform(-0.5, 0.5, a.shape) for a in layer.weights[0][1]]
    layer.set_weights(0, 1, *w)
    assert_close(enc.encode(ids, lengths, backend="cpp"), enc.encode(ids, lengths, backend="numpy"), np.float64)
    # another SIMD level lays the projected columns out differently
    want = enc.encode(ids, lengths, backend="numpy")
    try:
        for level in fastsim.simd_levels():
            fastsim.set_simd_level(level)
            assert_close(enc.encode(ids, lengths, backend="cpp"), want, np.float64, err_msg=level)
    finally:
        fastsim.set_simd_level(None)


@needs_cpp
def test_input_table_binding_checks_its_arguments():
    core = fastsim._backend.core()
    rng = np.random.default_rng(0)
    H, D, V = 4, 3, 6
    layer = core.RnnLayer(0, rng.standard_normal((4 * H, D)), rng.standard_normal((4 * H, H)), None, None)
    h, c = np.zeros((2, H)), np.zeros((2, H))
    out = np.zeros((2 * 3, H))
    ids = np.zeros((2, 3), dtype=np.int64)
    emb = rng.standard_normal((V, D))
    with pytest.raises(ValueError, match="D columns"):
        layer.project(np.zeros((V, D + 1)))
    with pytest.raises(TypeError):
        layer.project(np.zeros((V, D), dtype=np.float32))
    with pytest.raises(TypeError, match="embedding"):
        layer.project(emb.tolist())
    table = layer.project(emb)
    assert table.vocab_size == V and table.nbytes == V * 4 * H * 8
    assert layer.is_current(table)
    with pytest.raises(TypeError):
        layer.run_ids(emb, ids, 2, 3, None, False, h, c, out, H, 0)
    for bad in (V, -1):
        ids[1, 2] = bad
        with pytest.raises(ValueError, match="0..V-1"):
            layer.run_ids(table, ids, 2, 3, None, False, h, c, out, H, 0)
    ids[1, 2] = 0
    with pytest.raises(TypeError, match="int64"):
        layer.run_ids(table, ids.astype(np.int32), 2, 3, None, False, h, c, out, H, 0)
    with pytest.raises(ValueError, match="B x T"):
        layer.run_ids(table, ids[:, :2].copy(), 2, 3, None, False, h, c, out, H, 0)
    with pytest.raises(ValueError, match="lengths"):
        layer.run_ids(table, ids, 2, 3, np.array([0, 3]), False, h, c, out, H, 0)
    # a table of another layer (same shapes, other weights) is refused, never run with the wrong weights
    other = core.RnnLayer(0, rng.standard_normal((4 * H, D)), rng.standard_normal((4 * H, H)), None, None)
    assert not other.is_current(table)
    with pytest.raises(ValueError, match="another RnnLayer"):
        other.run_ids(table, ids, 2, 3, None, False, h, c, out, H, 0)
    f32 = core.RnnLayer(0, rng.standard_normal((4 * H, D)).astype(np.float32),
                        rng.standard_normal((4 * H, H)).astype(np.float32), None, None)
    assert not f32.is_current(table)
    with pytest.raises(ValueError, match="another RnnLayer"):
        f32.run_ids(table, ids, 2, 3, None, False, h.astype(np.float32), c.astype(np.float32),
                    out.astype(np.float32), H, 0)
    layer.run_ids(table, ids, 2, 3, None, False, h, c, out, H, 0)
    # the same steps from the gathered embeddings
    h2, c2, out2 = np.zeros((2, H)), np.zeros((2, H)), np.zeros((2 * 3, H))
    layer.run(np.ascontiguousarray(emb[ids]), 2, 3, True, None, False, h2, c2, out2, H, 0)
    np.testing.assert_allclose(out, out2, rtol=0, atol=1e-14)
    # a table made at another SIMD level stays usable (its own packing), but is no longer current
    levels = fastsim.simd_levels()
    try:
        for level in levels:
            fastsim.set_simd_level(level)
            h3, c3, out3 = np.zeros((2, H)), np.zeros((2, H)), np.zeros((2 * 3, H))
            layer.run_ids(table, ids, 2, 3, None, False, h3, c3, out3, H, 0)
            np.testing.assert_allclose(out3, out2, rtol=0, atol=1e-14, err_msg=level)
            if len(levels) > 1 and level != levels[0]:
                # the layer repacks on its next use at this level
                layer.run(np.ascontiguousarray(emb[ids]), 2, 3, True, None, False, h3, c3, out3, H, 0)
                assert not layer.is_current(table)
    finally:
        fastsim.set_simd_level(None)


@needs_rnn
@needs_cpp
def test_shared_layer_tables_under_threads_and_level_changes():
    # Two encoders share one layer but not their embeddings: each call may
    # replace the layer's table while other threads run on the old one, and a
    # thread switches SIMD levels (which repacks the weights) meanwhile.
    import threading

    V, E, H = 30, 6, 10
    rng = np.random.default_rng(11)
    layer = fs_rnn.LSTM(E, H, bidirectional=True, dtype=np.float64, seed=3)
    encoders = [SiameseEncoder(rng.standard_normal((V, E)), layer, "mean") for _ in range(2)]
    ids = [_ids(rng, 12, 7, V)[0] for _ in range(2)]
    want = [enc.encode(x, backend="numpy") for enc, x in zip(encoders, ids)]
    errors = []
    stop = threading.Event()

    def work(seed):
        r = np.random.default_rng(seed)
        try:
            for _ in range(25):
                k = int(r.integers(2))
                got = encoders[k].encode(ids[k], backend="cpp")
                if not np.allclose(got, want[k], rtol=0, atol=1e-12):
                    errors.append(k)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def switch():
        levels = fastsim.simd_levels()
        i = 0
        while not stop.is_set():
            fastsim.set_simd_level(levels[i % len(levels)])
            i += 1

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    switcher = threading.Thread(target=switch)
    try:
        switcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop.set()
        switcher.join()
        fastsim.set_simd_level(None)
    assert not errors, errors[:3]


@needs_cpp
@pytest.mark.parametrize("cell", [0, 1, 2, 3], ids=["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_pooled_sums_equal_the_sums_of_the_outputs(cell):
    core = fastsim._backend.core()
    rng = np.random.default_rng(cell)
    G = {0: 4, 1: 3}.get(cell, 1)
    B, T, D, H = 5, 6, 3, 21
    layer = core.RnnLayer(cell, rng.standard_normal((G * H, D)), rng.standard_normal((G * H, H)), rng.standard_normal(G * H), None)
    x = rng.standard_normal((B, T, D))
    lengths = np.array([6, 2, 4, 1, 6])
    until = np.array([6, 1, 3, 0, 5])  # any count: steps t < until[i] are summed
    h0 = rng.standard_normal((B, H))
    c0 = rng.standard_normal((B, H)) if cell == 0 else None

    def run(out, pool):
        h = h0.copy()
        c = None if c0 is None else c0.copy()
        layer.run(x, B, T, True, lengths, False, h, c, out, 2 * H + 1, H, pool, None if pool is None else until)
        return h, c

    out = np.zeros((B * T, 2 * H + 1))
    want_h, want_c = run(out, None)
    seq = out.reshape(B, T, -1)[:, :, H : 2 * H]
    mask = np.arange(T)[None, :] < until[:, None]
    want = np.einsum("bth,bt->bh", seq, mask.astype(float))
    for with_out in (True, False):
        pool = np.full((B, 2 * H + 1), 0.5)
        out2 = np.zeros_like(out) if with_out else None
        h, c = run(out2, pool)
        np.testing.assert_allclose(pool[:, H : 2 * H], 0.5 + want, rtol=0, atol=1e-13)
        assert np.all(pool[:, :H] == 0.5) and np.all(pool[:, 2 * H :] == 0.5)  # other columns untouched
        np.testing.assert_array_equal(h, want_h)
        if with_out:
            np.testing.assert_array_equal(out2, out)
    h = h0.copy()
    c = None if c0 is None else c0.copy()
    with pytest.raises(ValueError, match="only when pool"):
        layer.run(x, B, T, True, lengths, False, h, c, None, H, 0)
    with pytest.raises(ValueError, match="pool must have B rows"):
        layer.run(x, B, T, True, lengths, False, h, c, None, H, 0, np.zeros((B, H - 1)), until)
    with pytest.raises(ValueError, match="pool_until"):
        layer.run(x, B, T, True, lengths, False, h, c, None, H, 0, np.zeros((B, H)), until[:3].copy())
    with pytest.raises(TypeError, match="pool"):
        layer.run(x, B, T, True, lengths, False, h, c, None, H, 0, np.zeros((B, H), dtype=np.float32), until)


@needs_rnn
def test_from_torch_reads_embedding_and_weights():
    torch = pytest.importorskip("torch")
    emb, lstm = _torch_model(torch, 12, 4, 3, seed=3)
    enc = SiameseEncoder.from_torch(emb, lstm)
    assert enc.dtype == np.float64  # the module was converted with .double()
    np.testing.assert_array_equal(enc.embedding, emb.weight.detach().numpy())
    np.testing.assert_array_equal(enc.layers[0].state_dict()["weight_hh_l0"], lstm.weight_hh_l0.detach().numpy())
    enc32 = SiameseEncoder.from_torch(emb.weight, lstm, dtype=np.float32)
    assert enc32.dtype == np.float32 and enc32.embedding.shape == (12, 4)


@needs_rnn
def test_duplicate_pipeline_end_to_end():
    """The course's testing step on the shipped questions: encode both sides, threshold, accuracy."""
    import csv

    with open(SAMPLE_CSV, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    q1 = [r["question1"] for r in rows]
    q2 = [r["question2"] for r in rows]
    labels = np.array([int(r["is_duplicate"]) for r in rows])
    assert 60 <= len(rows) <= 100 and 0 < labels.sum() < len(rows)
    vocab = Vocabulary.build(q1 + q2)
    enc = SiameseEncoder.random(len(vocab), 16, 16, dtype=np.float64, seed=0)
    v1 = enc.encode(*vocab.encode(q1), backend="numpy")
    v2 = enc.encode(*vocab.encode(q2), backend="numpy")
    assert_close(np.linalg.norm(v1, axis=1), np.ones(len(q1)), np.float64, scale=10)
    sims = _cos64(v1, v2)
    for threshold in (-1.0, 0.5, 0.9, 1.0):
        want = np.mean((sims >= threshold) == (labels == 1))
        got = fastsim.accuracy(v1, v2, labels, threshold)
        if not np.any(np.abs(sims - threshold) < tol(np.float64, 100)):
            assert got == pytest.approx(want)
    # identical questions are duplicates at any threshold up to 1 (within rounding)
    assert np.all(fastsim.is_duplicate(v1, v1, 1.0 - 1e-9))


# --------------------------------------------------------------------------- the example script


def _run_example(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )


@needs_rnn
def test_example_script_runs_and_round_trips(tmp_path):
    model = tmp_path / "model.npz"
    first = _run_example(SAMPLE_CSV, "--backend", "numpy", "--threshold", "0.5", "--queries", "2", "--top", "2",
                         "--embedding-dim", "16", "--hidden-size", "16", "--save", model)
    assert first.returncode == 0, first.stderr
    assert "80 pairs" in first.stdout and "accuracy at threshold 0.5:" in first.stdout
    assert model.exists() and (tmp_path / "model.vocab.json").exists()
    second = _run_example(SAMPLE_CSV, "--backend", "numpy", "--threshold", "0.5", "--queries", "2", "--top", "2",
                          "--model", model)
    assert second.returncode == 0, second.stderr
    acc_line = [line for line in first.stdout.splitlines() if line.startswith("accuracy")]
    assert acc_line and acc_line[0] in second.stdout
    assert "tokens from" in second.stdout


def test_example_script_rejects_a_bad_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("q1,q2\nA?,B?\n", encoding="utf-8")
    result = _run_example(bad, "--backend", "numpy")
    assert result.returncode != 0 and "missing column" in result.stderr
