"""Recurrent layers: LSTM, GRU and the vanilla RNN, forward and backward, on every backend.

Layer objects (:class:`LSTM`, :class:`GRU`, :class:`RNN`) that are stacked,
optionally bidirectional, take variable lengths with PyTorch's
packed-sequence semantics and import weights from PyTorch, Keras and ONNX
layouts; functional single-layer forms (:func:`lstm_forward`,
:func:`gru_forward`, :func:`rnn_forward`); and backpropagation through time
(:func:`recurrent_forward_train`, :func:`recurrent_backward`).  Layouts, gate
orders and equations are PyTorch's; :mod:`fastsim._reference.rnn` and
:mod:`fastsim._reference.rnn_backward` are the executable specification.

The package's rooms, each door in its own docstring:

* :mod:`~fastsim.rnn.cells`: the one description of the cell kinds (gates,
  states, gate orders of every framework, the compiled core's numbers);
* :mod:`~fastsim.rnn.weights`: the one weight layout (PyTorch's) and the
  per-layer, per-direction prepared form every kernel reads;
* :mod:`~fastsim.rnn.driver`: the one stacked walk over layers and
  directions, forward (inference and training) and backward;
* :mod:`~fastsim.rnn.kernels`: each backend's per-direction kernels in the
  form the driver calls;
* :mod:`~fastsim.rnn.infer`: the inference route every forward call takes;
* :mod:`~fastsim.rnn.train`: the training route (and the public gradient
  functions), which :mod:`fastsim.torch`'s modules also take;
* :mod:`~fastsim.rnn.layers`, :mod:`~fastsim.rnn.functional`,
  :mod:`~fastsim.rnn.importers`: the public surface.

The compiled side splits the same way: ``cpp/include/fastsim/rnn/cell.hpp``
(the cell kinds), ``weights.hpp`` (the packed inference layout),
``forward.hpp`` (the fused inference steps) and ``train.hpp`` (the training
forward and backward).
"""

from .cells import Cell
from .kernels import SUPPORTED as _SUPPORTED  # noqa: F401 - the backends the layers run on
from .functional import gru_forward, lstm_forward, rnn_forward
from .layers import GRU, LSTM, RNN, EmbeddingProjection
from .train import RecurrentGradients, RecurrentTape, recurrent_backward, recurrent_forward_train
from .weights import RecurrentWeights

__all__ = ["GRU", "LSTM", "RNN", "Cell", "EmbeddingProjection", "RecurrentGradients", "RecurrentTape",
           "RecurrentWeights", "gru_forward", "lstm_forward", "recurrent_backward", "recurrent_forward_train",
           "rnn_forward"]
