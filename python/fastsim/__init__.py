"""fastsim: fast CPU kernels for Siamese-network workloads.

Cosine similarity, hard-negative mining with the modified triplet loss,
recurrent forward passes and the Siamese pipeline, each with three backends:
``"numpy"`` (the reference), ``"numba"`` and ``"cpp"``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._backend import (
    available_backends,
    get_num_threads,
    info,
    set_num_threads,
    set_simd_level,
    simd_levels,
)
from ._validation import empty_cache
from .cosine import cosine_similarity, cosine_similarity_matrix, cosine_similarity_rows
from .pipeline import SiameseEncoder, Vocabulary, accuracy, is_duplicate, similarity
from .rnn import GRU, LSTM, RNN, gru_forward, lstm_forward, rnn_forward
from .mining import duplicate_groups, paraphrase_mining, range_search
from .model import DuplicateModel, load_model
from .trainer import TrainConfig, TrainResult, train
from .topk import top_k
from .rnn import RecurrentGradients, RecurrentTape, recurrent_backward, recurrent_forward_train
from .triplet import (HardNegatives, TripletLossParts, hard_negatives, modified_triplet_loss,
                      modified_triplet_loss_grad, triplet_loss)

__all__ = [
    "__version__",
    "available_backends",
    "cosine_similarity",
    "cosine_similarity_matrix",
    "cosine_similarity_rows",
    "empty_cache",
    "get_num_threads",
    "info",
    "set_num_threads",
    "set_simd_level",
    "simd_levels",
    "top_k",
    "range_search",
    "duplicate_groups",
    "paraphrase_mining",
    "DuplicateModel",
    "load_model",
    "TrainConfig",
    "TrainResult",
    "train",
    "SiameseEncoder",
    "Vocabulary",
    "accuracy",
    "is_duplicate",
    "similarity",
    "LSTM",
    "GRU",
    "RNN",
    "lstm_forward",
    "gru_forward",
    "rnn_forward",
    "RecurrentGradients",
    "RecurrentTape",
    "recurrent_backward",
    "recurrent_forward_train",
    "HardNegatives",
    "TripletLossParts",
    "hard_negatives",
    "modified_triplet_loss",
    "modified_triplet_loss_grad",
    "triplet_loss",
]

from ._backend import _apply_env

_apply_env()
del _apply_env
