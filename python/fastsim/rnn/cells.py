"""The one description of the recurrent cells: what every other part of :mod:`fastsim.rnn` asks of a cell kind.

This room owns the facts about LSTM, GRU and RNN cells that are not
arithmetic: gate counts and orders (PyTorch's, Keras's, ONNX's), the states
a cell carries, its nonlinearity, and the number the compiled core knows it
by (``enum class Cell`` in ``cpp/include/fastsim/rnn/cell.hpp``, the same
numbers).  It imports nothing of fastsim: the layers, the weight importers,
the stacked driver, the backends' kernels and the PyTorch modules all read
it, and the equations themselves live in :mod:`fastsim._reference.rnn` and
:mod:`fastsim._reference.rnn_backward`.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CELLS", "Cell", "cell"]


class Cell(NamedTuple):
    """One kind of recurrent cell.

    Attributes
    ----------
    kind : {"lstm", "gru", "rnn"}
    nonlinearity : {"tanh", "relu"}
        The state's activation (the LSTM's and GRU's are tanh).
    gates : int
        G: ``W_ih`` is (G*H, D), ``W_hh`` (G*H, H).
    states : tuple of str
        The states carried from step to step: ``("h", "c")`` or ``("h",)``.
    core_id : int
        The compiled core's number for this cell.
    torch_modes : tuple of str
        ``torch.nn.RNNBase.mode`` values of this kind.
    keras_order, onnx_order : tuple of int
        Block ``i`` in PyTorch's gate order is block ``order[i]`` of the
        Keras (ONNX) layout.
    keras_class : str
    """

    kind: str
    nonlinearity: str
    gates: int
    states: tuple
    core_id: int
    torch_modes: tuple
    keras_order: tuple
    onnx_order: tuple
    keras_class: str

    @property
    def n_states(self) -> int:
        return len(self.states)

    @property
    def relu(self) -> bool:
        return self.nonlinearity == "relu"

    @property
    def gate_rows(self) -> str:
        """``"4H"``, ``"3H"`` or ``"H"``: the rows of the weights, for messages."""
        return f"{self.gates}H" if self.gates > 1 else "H"


CELLS = {
    # PyTorch gate order i, f, g, o; Keras i, f, c, o; ONNX i, o, f, c
    ("lstm", "tanh"): Cell("lstm", "tanh", 4, ("h", "c"), 0, ("LSTM",), (0, 1, 2, 3), (0, 2, 3, 1), "LSTM"),
    # PyTorch r, z, n; Keras and ONNX z, r, h
    ("gru", "tanh"): Cell("gru", "tanh", 3, ("h",), 1, ("GRU",), (1, 0, 2), (1, 0, 2), "GRU"),
    ("rnn", "tanh"): Cell("rnn", "tanh", 1, ("h",), 2, ("RNN_TANH", "RNN_RELU"), (0,), (0,), "SimpleRNN"),
    ("rnn", "relu"): Cell("rnn", "relu", 1, ("h",), 3, ("RNN_TANH", "RNN_RELU"), (0,), (0,), "SimpleRNN"),
}

_TORCH_MODES = {"LSTM": ("lstm", "tanh"), "GRU": ("gru", "tanh"), "RNN_TANH": ("rnn", "tanh"),
                "RNN_RELU": ("rnn", "relu")}


def cell(kind: str, nonlinearity: str = "tanh") -> Cell:
    """The description of ``kind`` ("lstm", "gru", "rnn") with ``nonlinearity`` (the RNN's "tanh" or "relu")."""
    return CELLS[(kind, nonlinearity if kind == "rnn" else "tanh")]


def of_torch_mode(mode: str) -> Cell:
    """The cell of a ``torch.nn.RNNBase.mode`` ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")."""
    return CELLS[_TORCH_MODES[mode]]
