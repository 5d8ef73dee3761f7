"""Siamese-pipeline cases: top-k retrieval and the encoder.

* ``top_k``: fastsim's streaming top-k against what a NumPy user writes (the
  similarity matrix in blocks of queries, ``argpartition``, then a sort of the k), and against
  FAISS's exact ``IndexFlatIP`` on normalized vectors when it is installed
  (its index is built outside the timing; the queries are normalized inside).
* ``encoder``: ids -> embedding -> LSTM -> mean -> normalize, the course's
  sub-network, with each backend of the recurrent layer against the NumPy one
  and against the same model in PyTorch (inference mode) when installed.
"""

from __future__ import annotations

import numpy as np

import fastsim

from .common import Case, max_abs_error


# --------------------------------------------------------------------------- top-k


def numpy_chunked_topk(q, c, k, chunk_bytes=64 << 20):
    """What a competent NumPy user writes: normalize the corpus once, then per
    block of queries one matmul into a block of scores of about ``chunk_bytes``,
    ``argpartition`` for the k best and a sort of those k.  (The full m x n
    matrix took 9.8 GB and 594 s for 200 000 rows where this took 201 s.)"""
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    block = max(1, chunk_bytes // (c.shape[0] * c.itemsize))
    scores = np.empty((q.shape[0], k), dtype=np.result_type(q, c))
    indices = np.empty((q.shape[0], k), dtype=np.int64)
    for i in range(0, q.shape[0], block):
        qb = q[i : i + block]
        s = (qb / np.linalg.norm(qb, axis=1, keepdims=True)) @ cn.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        scores[i : i + block] = np.take_along_axis(top, order, axis=1)
        indices[i : i + block] = np.take_along_axis(part, order, axis=1)
    return scores, indices


def numpy_full_topk(q, c, k):
    """The naive NumPy form: one full m x n matrix, then ``argpartition`` (for
    bench/topk_memory.py, which shows what that matrix costs)."""
    return numpy_chunked_topk(q, c, k, chunk_bytes=q.shape[0] * c.shape[0] * c.itemsize)


def float64_topk_scores(q, c, k, block=128):
    """The k best float64 scores per query, a block of queries at a time (memory O(block x n))."""
    c64 = c.astype(np.float64)
    cn = c64 / np.linalg.norm(c64, axis=1, keepdims=True)
    out = np.empty((q.shape[0], k))
    for i in range(0, q.shape[0], block):
        qb = q[i : i + block].astype(np.float64)
        s = (qb / np.linalg.norm(qb, axis=1, keepdims=True)) @ cn.T
        out[i : i + block] = -np.sort(np.partition(-s, k - 1, axis=1)[:, :k], axis=1)
    return out


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def faiss_index(c):
    """An exact inner-product FAISS index over the normalized corpus, or None without FAISS."""
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(fastsim.get_num_threads())
    cn = np.ascontiguousarray(c / np.linalg.norm(c, axis=1, keepdims=True), dtype=np.float32)
    index = faiss.IndexFlatIP(cn.shape[1])
    index.add(cn)
    return index


def faiss_search(index, q, k):
    qn = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)
    return index.search(qn, k)


def _topk_scores_error(result, reference):
    return max_abs_error(result[0], reference)


def _topk_case(m, n, d, k, dtype, seed=0):
    # FAISS computes in float32 only
    use_faiss = _importable("faiss") and np.dtype(dtype) == np.float32

    def make():
        rng = np.random.default_rng(seed)
        inputs = {
            "q": rng.standard_normal((m, d)).astype(dtype),
            "c": rng.standard_normal((n, d)).astype(dtype),
        }
        if use_faiss:
            inputs["faiss"] = faiss_index(inputs["c"])
        return inputs

    runners = {"numpy": lambda x: numpy_chunked_topk(x["q"], x["c"], k)}
    avail = fastsim.available_backends()
    for be in ("numba", "cpp"):
        if be in fastsim.topk._SUPPORTED and be in avail:
            runners[be] = lambda x, be=be: fastsim.top_k(x["q"], x["c"], k, backend=be)
    if use_faiss:
        runners["faiss"] = lambda x: faiss_search(x["faiss"], x["q"], k)
    return Case(
        op="top_k",
        shape=f"{m}x{d} in {n}x{d} k={k}",
        dtype=np.dtype(dtype).name,
        flops=2.0 * m * n * d,
        make_inputs=make,
        runners=runners,
        reference=lambda x: float64_topk_scores(x["q"], x["c"], k),
        error=_topk_scores_error,
        min_repeats=3,
        notes={"faiss_index_prebuilt": use_faiss},
    )


# --------------------------------------------------------------------------- encoder


def torch_encoder(encoder):
    """The same model in PyTorch (embedding, LSTM, mean over T, normalize), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(fastsim.get_num_threads())
    layer = encoder.layers[0]
    tdt = torch.float64 if encoder.dtype == np.float64 else torch.float32
    emb = torch.nn.Embedding(encoder.vocab_size, encoder.embedding_dim).to(tdt)
    lstm = torch.nn.LSTM(layer.input_size, layer.hidden_size, num_layers=layer.num_layers,
                         bidirectional=layer.bidirectional, batch_first=True).to(tdt)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(np.array(encoder.embedding)))
        for key, value in layer.state_dict().items():
            getattr(lstm, key).copy_(torch.from_numpy(value))
    emb.eval()
    lstm.eval()

    def run(ids):
        with torch.inference_mode():
            out, _ = lstm(emb(ids))
            return torch.nn.functional.normalize(out.mean(dim=1), dim=1).numpy()

    return run


def _float64_copy(encoder):
    from fastsim.rnn import LSTM

    layer = LSTM.from_torch(encoder.layers[0].state_dict(), dtype=np.float64, batch_first=True)
    return fastsim.SiameseEncoder(np.array(encoder.embedding, dtype=np.float64), layer, encoder.pooling)


def _encoder_case(V, E, H, T, B, dtype, seed=0):
    try:
        from fastsim import rnn
    except ImportError:  # the recurrent layers are not built yet
        return None

    def make():
        encoder = fastsim.SiameseEncoder.random(V, E, H, dtype=dtype, seed=seed)
        ids = np.random.default_rng(seed + 1).integers(1, V, (B, T))
        inputs = {"encoder": encoder, "ids": ids}
        run = torch_encoder(encoder)
        if run is not None:
            import torch

            inputs["torch"] = (run, torch.from_numpy(ids))
        return inputs

    runners = {"numpy": lambda x: x["encoder"].encode(x["ids"], backend="numpy")}
    avail = fastsim.available_backends()
    for be in ("numba", "cpp"):
        if be in rnn._SUPPORTED and be in avail:
            runners[be] = lambda x, be=be: x["encoder"].encode(x["ids"], backend=be)
    if _importable("torch"):
        runners["torch"] = lambda x: x["torch"][0](x["torch"][1])
    return Case(
        op="siamese_encoder",
        shape=f"V={V} E={E} H={H} T={T} B={B}",
        dtype=np.dtype(dtype).name,
        flops=2.0 * T * B * 4 * H * (E + H),
        exact_flops=False,  # the cpp encoder reads a projected embedding table instead of the first layer's input GEMM
        make_inputs=make,
        runners=runners,
        reference=lambda x: _float64_copy(x["encoder"]).encode(x["ids"], backend="numpy"),
        min_repeats=3,
    )


def cases(full: bool) -> list[Case]:
    out = [
        _topk_case(1024, 100_000, 256, 10, np.float32),
        _encoder_case(10_000, 128, 256, 32, 256, np.float32),
    ]
    if full:
        out += [
            _topk_case(1024, 100_000, 256, 10, np.float64),
            _topk_case(16, 100_000, 256, 10, np.float32),
            _topk_case(4096, 20_000, 128, 100, np.float32),
            _encoder_case(10_000, 128, 256, 32, 256, np.float64),
            _encoder_case(10_000, 128, 256, 64, 1024, np.float32),
        ]
    return [c for c in out if c is not None]
