"""The course's Siamese encoder as one trainable PyTorch module.

This room owns :class:`SiameseEncoder` of :mod:`fastsim.torch`: token ids ->
``torch.nn.Embedding`` -> :class:`fastsim.torch.LSTM` -> mean or masked-mean
pooling (or the last state) -> L2 normalization.  It may call PyTorch and the
public surface of :mod:`fastsim._torch_rnn`; it is imported only by
:mod:`fastsim.torch`.  ``to_fastsim()`` hands the trained weights to
:class:`fastsim.SiameseEncoder` (NumPy arrays, inference on every backend).
"""

from __future__ import annotations

import torch

from ._torch_rnn import LSTM
from ._validation import check_choice

__all__ = ["SiameseEncoder"]


class SiameseEncoder(torch.nn.Module):
    """Embedding -> LSTM -> pooling -> normalize, trained through autograd.

    Parameters
    ----------
    vocab_size : int
    embedding_dim : int, default 128
    hidden_size : int, default 128
        The course's model uses the embedding size.
    num_layers : int, default 1
    bidirectional : bool, default False
    pooling : {"mean", "masked_mean", "last"}, default "mean"
        ``"mean"``: the average of the outputs over all T positions, padding
        included (the course's model).  ``"masked_mean"``: over each
        sequence's length L.  ``"last"``: the output at position L - 1 (for
        a bidirectional layer with the backward half at position 0), as
        :class:`fastsim.SiameseEncoder`.
    padding_idx : int or None, default None
        Passed to ``torch.nn.Embedding`` (None: the padding row is trained
        like any other, as in the course).
    backend : str, default "auto"
        fastsim backend of the LSTM.

    ``forward(ids, lengths=None)``: ``ids`` (B, T) integer token ids.  With
    ``lengths`` the LSTM runs over each sequence's own length
    (packed-sequence semantics); without, over all T positions and
    L is 1 + the position of the last non-zero id.
    Returns (B, F) unit vectors, F = hidden_size times the directions.

    Examples
    --------
    >>> enc = SiameseEncoder(41699)
    >>> loss = ModifiedTripletLoss()(enc(q1_ids), enc(q2_ids))
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 128, hidden_size: int = 128, num_layers: int = 1,
                 bidirectional: bool = False, pooling: str = "mean", padding_idx=None, backend: str = "auto",
                 dtype=None):
        super().__init__()
        self.pooling = check_choice(pooling, "pooling", ("mean", "masked_mean", "last"))
        self.embedding = torch.nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx, dtype=dtype)
        self.lstm = LSTM(embedding_dim, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional,
                         backend=backend, dtype=dtype)

    def forward(self, ids: torch.Tensor, lengths=None) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dim() != 2:
            got = f"{ids.dtype} tensor of shape {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            msg = f"ids must be a 2-D integer tensor (B, T) of token ids; got {got}"
            raise TypeError(msg)
        x = self.embedding(ids)
        out, _ = self.lstm(x, lengths=lengths)
        if self.pooling == "mean":
            return torch.nn.functional.normalize(out.mean(dim=1), p=2.0, dim=1)
        T = ids.shape[1]
        if lengths is None:  # 1 + the position of the last id that is not padding
            positions = torch.arange(1, T + 1, device=ids.device).expand_as(ids)
            until = torch.where(ids != 0, positions, torch.zeros_like(positions)).amax(dim=1).clamp(min=1)
        else:
            until = torch.as_tensor(lengths, device=ids.device).to(torch.int64)
        if self.pooling == "masked_mean":
            steps = torch.arange(T, device=ids.device)[None, :] < until[:, None]
            pooled = (out * steps[:, :, None].to(out.dtype)).sum(dim=1) / until[:, None].to(out.dtype)
        else:  # the output at position L - 1; a backward half at position 0 (its final state)
            H = self.lstm.hidden_size
            rows = torch.arange(ids.shape[0], device=ids.device)
            pooled = out[rows, until - 1]
            if self.lstm.bidirectional:
                pooled = torch.cat([pooled[:, :H], out[:, 0, H:]], dim=1)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    @classmethod
    def from_fastsim(cls, encoder, *, backend: str = "auto") -> SiameseEncoder:
        """A trainable module holding the weights of a :class:`fastsim.SiameseEncoder` (or a trained model's).

        ``encoder`` may be a :class:`fastsim.DuplicateModel` (its encoder is
        taken) or a path to a model or encoder file.  The recurrent part must be
        one fastsim LSTM (the course's model); the pooling is kept.
        """
        import os

        import fastsim

        if isinstance(encoder, (str, os.PathLike)):
            encoder = fastsim.SiameseEncoder.load(encoder)
        if isinstance(encoder, fastsim.DuplicateModel):
            encoder = encoder.encoder
        if not isinstance(encoder, fastsim.SiameseEncoder):
            msg = f"encoder must be a fastsim.SiameseEncoder, DuplicateModel or a path; got {type(encoder).__name__}"
            raise TypeError(msg)
        layers = encoder.layers
        if len(layers) != 1 or not isinstance(layers[0], fastsim.LSTM):
            msg = "from_fastsim needs an encoder with one fastsim.LSTM (the course's model)"
            raise ValueError(msg)
        lstm = layers[0]
        dtype = torch.float64 if encoder.dtype == "float64" else torch.float32
        module = cls(encoder.vocab_size, encoder.embedding_dim, lstm.hidden_size, lstm.num_layers,
                     bidirectional=lstm.bidirectional, pooling=encoder.pooling, backend=backend, dtype=dtype)
        state = {"embedding.weight": torch.from_numpy(encoder.embedding.copy())}
        state.update({f"lstm.{k}": torch.as_tensor(v).clone() for k, v in lstm.state_dict().items()})
        module.load_state_dict(state)
        return module

    def to_fastsim(self):
        """The trained weights as a :class:`fastsim.SiameseEncoder` (inference, NumPy arrays)."""
        import fastsim

        with torch.no_grad():
            lstm = torch.nn.LSTM(self.lstm.input_size, self.lstm.hidden_size, self.lstm.num_layers, batch_first=True,
                                 bidirectional=self.lstm.bidirectional, dtype=self.lstm.weight_ih_l0.dtype)
            lstm.load_state_dict(self.lstm.state_dict())
        return fastsim.SiameseEncoder.from_torch(self.embedding, lstm, pooling=self.pooling)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}"
