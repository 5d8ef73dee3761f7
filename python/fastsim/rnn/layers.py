"""The recurrent layer objects: :class:`LSTM`, :class:`GRU`, :class:`RNN`, and :class:`EmbeddingProjection`.

This room owns the layers' public surface: construction and initialization,
weights in and out (``weights``, ``set_weights``, ``state_dict``, the
``from_torch`` / ``from_keras`` / ``from_onnx`` importers), the checks of a
call's arguments, and the token-id form :meth:`run_ids` the Siamese encoder
uses.  It may call :mod:`fastsim.rnn.cells`, :mod:`fastsim.rnn.weights`,
:mod:`fastsim.rnn.importers`, :mod:`fastsim.rnn.infer` (the one inference
route) and the validation helpers.  Layouts, gate orders and equations are
PyTorch's; :mod:`fastsim._reference.rnn` is the executable specification.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .. import _backend
from .._validation import (as_float_array, as_int_array, check_bool, check_choice, check_float_dtype,
                           check_positive_int)
from . import infer, kernels
from .cells import Cell, cell
from .importers import import_dtype, keras_weights, onnx_weights, torch_weights
from .weights import Prepared, check_weights

__all__ = ["GRU", "LSTM", "RNN", "EmbeddingProjection"]


def _pool_until(value, B, T):
    until = as_int_array(value, "pool_until", what="integer step counts")
    if until.shape != (B,):
        msg = f"pool_until must have shape ({B},) (one count per sequence); got {until.shape}"
        raise ValueError(msg)
    if until.size and (int(until.min()) < 0 or int(until.max()) > T):
        msg = f"pool_until must lie within 0..{T} (the steps); got values in {int(until.min())}..{int(until.max())}"
        raise ValueError(msg)
    return infer.kernel_array(until, np.int64)


def _nonlinearity_of(given, found, source):
    """The RNN's nonlinearity: ``given``, else the one ``found`` in imported weights, else tanh; never both differing."""
    nonlinearity = given if given is not None else (found or "tanh")
    check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
    if found is not None and found != nonlinearity:
        msg = f"nonlinearity={nonlinearity!r} contradicts {source} {found!r}"
        raise ValueError(msg)
    return nonlinearity


class EmbeddingProjection:
    """An embedding and its projections through one layer's first input weights (see :meth:`LSTM.run_ids`).

    Made by ``layer.project_embedding(embedding)``.  ``embedding`` (V, D) is
    read-only.  The compiled backend's tables (row ``v`` is ``W_ih
    embedding[v] + bias`` for each direction, V x gates x H values each) are
    made on first use and remade when the layer's weights are replaced or the
    SIMD level changes; threads may share one projection.
    """

    __slots__ = ("_tables", "embedding", "layer")

    def __init__(self, layer, embedding):
        emb = as_float_array(embedding, "embedding", ndim=2)
        if emb.shape[1] != layer.input_size:
            msg = f"embedding must have input_size = {layer.input_size} columns; got shape {emb.shape}"
            raise ValueError(msg)
        if emb.dtype != layer.dtype or emb.flags.writeable or not emb.flags.c_contiguous:
            emb = np.array(emb, dtype=layer.dtype, order="C")
            emb.flags.writeable = False
        self.layer = layer
        self.embedding = emb
        self._tables: dict = {}  # direction's Prepared -> (core layer, table)

    @property
    def nbytes(self) -> int:
        """Memory the compiled tables of every direction take once made."""
        layer = self.layer
        return self.embedding.shape[0] * layer.cell.gates * layer.hidden_size * layer.num_directions * \
            self.embedding.itemsize

    @property
    def ready(self) -> bool:
        """Whether the compiled tables of the layer's current weights are made (at any SIMD level)."""
        tables = self._tables
        return all(p in tables for p in self.layer._cells[0])

    def _table_of(self, p):
        """The compiled table of prepared weights ``p`` (one of layer 0's directions)."""
        core = p.core_layer()
        kept = self._tables.get(p)  # one read: other threads may replace it
        if kept is not None and kept[0] is core and core.is_current(kept[1]):
            return kept[1]
        table = core.project(self.embedding)
        current = set(self.layer._cells[0])
        # keep only the tables of the layer's current weights
        self._tables = {q: t for q, t in self._tables.items() if q in current} | {p: (core, table)}
        return table

    def __repr__(self):
        return f"EmbeddingProjection({self.embedding.shape[0]} x {self.embedding.shape[1]}, {self.layer!r})"


class _Recurrent:
    """Shared machinery of :class:`LSTM`, :class:`GRU` and :class:`RNN`."""

    _KIND = ""

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
        bidirectional: bool = False, batch_first: bool = True, dtype: DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.input_size = check_positive_int(input_size, "input_size", minimum=0)
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.bias = check_bool(bias, "bias")
        self.bidirectional = check_bool(bidirectional, "bidirectional")
        self.batch_first = check_bool(batch_first, "batch_first")
        self.dtype = check_float_dtype(dtype)
        G, H = self.cell.gates, self.hidden_size
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(H)
        self._cells = []
        for layer in range(self.num_layers):
            dirs = []
            for _ in range(self.num_directions):
                D = self._layer_input_size(layer)
                W_ih = rng.uniform(-bound, bound, (G * H, D))
                W_hh = rng.uniform(-bound, bound, (G * H, H))
                b_ih = rng.uniform(-bound, bound, G * H) if self.bias else None
                b_hh = rng.uniform(-bound, bound, G * H) if self.bias else None
                dirs.append(self._prepare(layer, W_ih, W_hh, b_ih, b_hh))
            self._cells.append(dirs)

    # ----------------------------------------------------------------- weights

    @property
    def cell(self) -> Cell:
        """The :class:`fastsim.rnn.cells.Cell` this layer runs (kind, gates, states, nonlinearity)."""
        return cell(self._KIND, getattr(self, "_nonlinearity", "tanh"))

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.hidden_size * self.num_directions

    def _prepare(self, layer, W_ih, W_hh, b_ih, b_hh, prefix=""):
        if not self.bias and (b_ih is not None or b_hh is not None):
            msg = f"{prefix}b_ih and {prefix}b_hh must be None for a layer built with bias=False"
            raise ValueError(msg)
        c = self.cell
        arrays = check_weights(
            c, W_ih, W_hh, b_ih, b_hh, dtype=self.dtype, input_size=self._layer_input_size(layer),
            hidden_size=self.hidden_size, prefix=prefix,
        )
        return Prepared(c, *arrays)

    @property
    def weights(self) -> tuple:
        """``weights[layer][direction]``: :class:`RecurrentWeights` in PyTorch layout (read-only)."""
        return tuple(tuple(p.weights for p in dirs) for dirs in self._cells)

    def set_weights(self, layer, direction, W_ih, W_hh, b_ih=None, b_hh=None):
        """Replace the weights of one layer and direction (PyTorch layout).

        Parameters
        ----------
        layer : int
            0 .. num_layers - 1.
        direction : int
            0 (forward) or 1 (backward, bidirectional layers only).
        W_ih : array_like, shape (G*H, D_layer)
            ``D_layer`` is ``input_size`` for layer 0 and ``directions * H`` above.
        W_hh : array_like, shape (G*H, H)
        b_ih, b_hh : array_like, shape (G*H,), optional
            Zeros when omitted; must be omitted when the layer has ``bias=False``.
        """
        layer = check_positive_int(layer, "layer", minimum=0)
        direction = check_positive_int(direction, "direction", minimum=0)
        if layer >= self.num_layers:
            msg = f"layer must be within 0..{self.num_layers - 1}; got {layer}"
            raise ValueError(msg)
        if direction >= self.num_directions:
            msg = f"direction must be within 0..{self.num_directions - 1}; got {direction}"
            raise ValueError(msg)
        self._cells[layer][direction] = self._prepare(layer, W_ih, W_hh, b_ih, b_hh)

    def state_dict(self) -> dict:
        """The weights under PyTorch's names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), as copies."""
        out = {}
        for layer, dirs in enumerate(self._cells):
            for d, p in enumerate(dirs):
                suffix = f"_l{layer}{'_reverse' if d else ''}"
                w = p.weights
                out["weight_ih" + suffix] = w.W_ih.copy()
                out["weight_hh" + suffix] = w.W_hh.copy()
                if self.bias:
                    out["bias_ih" + suffix] = w.b_ih.copy()
                    out["bias_hh" + suffix] = w.b_hh.copy()
        return out

    def _set_all(self, weights):
        """Replace every layer's weights from ``weights[layer][direction] = (W_ih, W_hh, b_ih, b_hh)``."""
        cells = []
        for layer, dirs in enumerate(weights):
            row = []
            for d, w in enumerate(dirs):
                prefix = f"layer {layer}{' backward' if d else ''}: "
                row.append(self._prepare(layer, *w, prefix=prefix))
            cells.append(row)
        self._cells = cells
        return self

    @classmethod
    def _empty(cls, input_size, hidden_size, num_layers, bidirectional, batch_first, dtype, bias, **extra):
        """An instance whose weights are about to be replaced (no random draws)."""
        obj = cls.__new__(cls)
        obj.input_size = check_positive_int(input_size, "input_size", minimum=0)
        obj.hidden_size = check_positive_int(hidden_size, "hidden_size")
        obj.num_layers = check_positive_int(num_layers, "num_layers")
        obj.bias = bool(bias)
        obj.bidirectional = bool(bidirectional)
        obj.batch_first = check_bool(batch_first, "batch_first")
        obj.dtype = check_float_dtype(dtype)
        for k, v in extra.items():
            setattr(obj, "_" + k, v)
        obj._cells = []
        return obj

    @classmethod
    def _from_layer_weights(cls, weights, *, has_bias, batch_first, dtype, **extra):
        """Build from ``weights[layer][direction] = (W_ih, W_hh, b_ih, b_hh)`` (PyTorch layout)."""
        first = [as_float_array(a, n) for a, n in zip(weights[0][0][:2], ("W_ih", "W_hh"))]
        if first[1].ndim != 2 or first[0].ndim != 2:
            msg = f"weights must be 2-D matrices; got W_ih {first[0].shape}, W_hh {first[1].shape}"
            raise ValueError(msg)
        H = first[1].shape[1]
        D = first[0].shape[1]
        flat = [a for dirs in weights for w in dirs for a in w if a is not None]
        dt = import_dtype(dtype, flat)
        obj = cls._empty(D, H, len(weights), len(weights[0]) == 2, batch_first, dt, has_bias, **extra)
        if not has_bias:
            weights = [[(w[0], w[1], None, None) for w in dirs] for dirs in weights]
        return obj._set_all(weights)

    # ----------------------------------------------------------------- forward

    def _initial_states(self, initial_state, B):
        raise NotImplementedError

    def _run(self, x, lengths, initial_state, backend, pool_until=None):
        x = as_float_array(x, "x", ndim=3)
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
        if x.shape[2] != self.input_size:
            msg = f"x has {x.shape[2]} features per step; this layer expects input_size = {self.input_size}"
            raise ValueError(msg)
        initial = self._initial_states(initial_state, B)
        lengths = infer.lengths_or_full(lengths, B, T)
        until = None if pool_until is None else _pool_until(pool_until, B, T)
        be = _backend.resolve(backend, kernels.SUPPORTED)
        return infer.run(self._cells, x, self.batch_first, initial, lengths, be, pool_until=until)

    def project_embedding(self, embedding: ArrayLike) -> EmbeddingProjection:
        """The input projection of every row of ``embedding`` through layer 0, for :meth:`run_ids`.

        Parameters
        ----------
        embedding : array_like, shape (V, input_size)
            Token vectors.  Copied into the layer's dtype unless it already is
            a read-only C-contiguous array of that dtype (which must then not
            change: the projections are kept).

        Returns
        -------
        EmbeddingProjection
            Holds the embedding; the projections (V x gates x H per direction)
            are computed by the compiled backend on first use and kept until
            this layer's weights are replaced.
        """
        return EmbeddingProjection(self, embedding)

    def run_ids(self, ids: ArrayLike, table: EmbeddingProjection, lengths: ArrayLike | None = None, *,
                pool_until: ArrayLike | None = None, backend: str = "auto"):
        """Run the layers over ``table.embedding[ids]`` without gathering it: the Siamese encoder's form.

        Parameters
        ----------
        ids : array_like of int, shape (B, T), within 0..V-1
            Token ids, batch-major whatever ``batch_first`` says.
        table : EmbeddingProjection
            From this layer's :meth:`project_embedding`.
        lengths, pool_until, backend
            As for the call.

        Returns
        -------
        outputs, state
            As ``layer(table.embedding[ids], lengths, pool_until=...)``,
            outputs batch-major.  The compiled backend reads layer 0's input
            projection from the table's rows; the others gather the embedding.
            Initial states are zeros.
        """
        if not isinstance(table, EmbeddingProjection) or table.layer is not self:
            msg = "table must be the EmbeddingProjection made by this layer's project_embedding"
            raise TypeError(msg)
        ids = as_int_array(ids, "ids", what="integer token ids")
        if ids.ndim != 2:
            msg = f"ids must be 2-D (B, T); got shape {ids.shape}"
            raise ValueError(msg)
        V = table.embedding.shape[0]
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= V):
            msg = f"ids must lie within 0..{V - 1} (the embedding rows); got values in {int(ids.min())}..{int(ids.max())}"
            raise ValueError(msg)
        B, T = ids.shape
        be = _backend.resolve(backend, kernels.SUPPORTED)
        lens = infer.lengths_or_full(lengths, B, T)
        until = None if pool_until is None else _pool_until(pool_until, B, T)
        initial = self._initial_states(None, B)
        if be != "cpp" or T == 0 or B == 0:
            return infer.run(self._cells, table.embedding[ids], True, initial, lens, be, pool_until=until)
        ids_in = kernels.IdsInput(infer.kernel_array(ids, np.int64), table._table_of)
        out, finals = infer.run(self._cells, None, True, initial, lens, be, pool_until=until, ids=ids_in)
        return out, finals

    def _check_state(self, value, name, B):
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        return infer.state(value, name, shape, self.dtype)

    def __repr__(self):
        extra = self._repr_extra()
        return (
            f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"bias={self.bias}, bidirectional={self.bidirectional}, batch_first={self.batch_first}{extra}, "
            f"dtype={self.dtype.name})"
        )

    def _repr_extra(self):
        return ""


_CALL_DOC = """
        Parameters
        ----------
        x : array_like, shape (B, T, input_size), or (T, B, input_size) when ``batch_first=False``
            Converted to the layer's dtype.
        lengths : array_like of int, shape (B,), optional
            Valid steps of each sequence, within 1..T.  Past its length a
            sequence's outputs are 0 and its state is frozen; the backward
            direction starts at each sequence's own last valid step (PyTorch
            packed sequences).
        {state_param}
        backend : {{"auto", "numpy", "numba", "cpp"}}
        pool_until : array_like of int, shape (B,), optional
            Return, instead of the outputs, their sums over each sequence's
            steps ``t < pool_until[b]`` (each within 0..T), shape
            (B, directions * H); the last layer's outputs are then never
            stored (the compiled backend adds them up inside its steps).

        Returns
        -------
        outputs : ndarray, shape (B, T, directions * H) (or time-major)
            The last layer's hidden states, ``[forward, backward]`` features.
        {state_return}
"""


class LSTM(_Recurrent):
    """Stacked, optionally bidirectional LSTM with PyTorch's layout and semantics.

    Parameters
    ----------
    input_size : int
        Features per step of the input (D).
    hidden_size : int
        H.
    num_layers : int
        Stacked layers; layer k > 0 takes the previous layer's output.
    bias : bool
        ``False``: the biases are zero (PyTorch's ``bias=False``).
    bidirectional : bool
        Run a backward direction too and concatenate ``[forward, backward]``.
    batch_first : bool
        Input and output are (B, T, .) when True (the default), (T, B, .) otherwise.
    dtype : float32 or float64
        The dtype of the weights and of the computation.
    seed : int or numpy.random.Generator, optional
        Source of the initial weights, drawn like PyTorch's from
        uniform(-1/sqrt(H), 1/sqrt(H)).

    Attributes
    ----------
    weights : tuple of tuples of RecurrentWeights
        ``weights[layer][direction]`` in PyTorch layout (gates i, f, g, o), read-only;
        replace them with :meth:`set_weights`.

    Notes
    -----
    The weights are kept in this layout (read-only, contiguous, ``b_ih +
    b_hh`` fused once) and each compiled backend packs its own copy on first
    use; every call reuses them.
    """

    _KIND = "lstm"

    def __call__(
        self, x: ArrayLike, lengths: ArrayLike | None = None, initial_state: Any = None, *, backend: str = "auto",
        pool_until: ArrayLike | None = None,
    ) -> tuple[NDArray[np.floating], tuple[NDArray[np.floating], NDArray[np.floating]]]:
        out, (h, c) = self._run(x, lengths, initial_state, backend, pool_until)
        return out, (h, c)

    __call__.__doc__ = "Run the layers over ``x``.\n" + _CALL_DOC.format(
        state_param=(
            "initial_state : tuple (h0, c0), optional\n"
            "            Each of shape (num_layers * directions, B, H), or None for zeros."
        ),
        state_return=(
            "(h_n, c_n) : ndarrays, shape (num_layers * directions, B, H)\n"
            "            The state after each sequence's last valid step (PyTorch's order:\n"
            "            layer 0 forward, layer 0 backward, layer 1 forward, ...)."
        ),
    )

    def _initial_states(self, initial_state, B):
        if initial_state is None:
            h0 = c0 = None
        else:
            if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
                msg = "initial_state must be a tuple (h0, c0) for an LSTM"
                raise TypeError(msg)
            h0, c0 = initial_state
        return [self._check_state(h0, "h0", B), self._check_state(c0, "c0", B)]

    @classmethod
    def from_torch(cls, module_or_state_dict, *, dtype=None, batch_first=None):
        """Import a PyTorch ``nn.LSTM`` or its ``state_dict()`` (torch is never imported here).

        Parameters
        ----------
        module_or_state_dict : torch.nn.LSTM or mapping
            All layers and ``_reverse`` directions are read; ``bias=False``
            modules work.  Layer count, direction count, sizes and bias come
            from the keys and shapes.  A state dict whose keys carry one common
            prefix (``"encoder.weight_ih_l0"``) is accepted.
        dtype : float32 or float64, optional
            Default: float64 if the weights are float64, else float32.
        batch_first : bool, optional
            Default: the module's own setting; True for a state dict.
        """
        weights, has_bias, attrs = torch_weights("lstm", module_or_state_dict)
        bf = attrs.get("batch_first", True) if batch_first is None else batch_first
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=bf, dtype=dtype)

    @classmethod
    def from_keras(cls, kernel, recurrent_kernel=None, bias=None, *, dtype=None, batch_first=True):
        """Import Keras LSTM weights (gate order i, f, c, o, the same as PyTorch's i, f, g, o).

        Parameters
        ----------
        kernel : array_like, shape (D, 4H), or a Keras layer, or a list of Keras layers
            A built ``keras.layers.LSTM``, a ``Bidirectional(LSTM(...))``
            (``merge_mode="concat"``), or a list of those for stacked layers.
        recurrent_kernel : array_like, shape (H, 4H)
        bias : array_like, shape (4H,), optional
        dtype : float32 or float64, optional
        batch_first : bool
            Keras layers take (B, T, D), the default here as well.
        """
        weights, has_bias = keras_weights("lstm", kernel, recurrent_kernel, bias)
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype)

    @classmethod
    def from_onnx(cls, W, R, B=None, *, dtype=None, batch_first=True):
        """Import the inputs of an ONNX ``LSTM`` node (gate order i, o, f, c).

        Parameters
        ----------
        W : array_like, shape (num_directions, 4H, D)
        R : array_like, shape (num_directions, 4H, H)
        B : array_like, shape (num_directions, 8H), optional
            ``[Wb, Rb]`` per direction.
        dtype : float32 or float64, optional
        batch_first : bool
            ONNX's default ``layout=0`` is time-major: pass ``batch_first=False``
            to feed (T, B, D) input unchanged.

        Notes
        -----
        Two directions make a bidirectional layer.  The node's default
        activations (sigmoid, tanh, tanh) are assumed; peepholes, ``clip``
        and ``input_forget`` are not supported, nor ``direction="reverse"``.
        """
        weights, has_bias = onnx_weights("lstm", W, R, B)
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype)


class GRU(_Recurrent):
    """Stacked, optionally bidirectional GRU with PyTorch's layout and semantics.

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, bidirectional, batch_first, dtype, seed
        As for :class:`LSTM`.

    Attributes
    ----------
    weights : tuple of tuples of RecurrentWeights
        PyTorch layout, gates r, z, n.

    Notes
    -----
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    """

    _KIND = "gru"

    def __call__(
        self, x: ArrayLike, lengths: ArrayLike | None = None, initial_state: ArrayLike | None = None, *,
        backend: str = "auto", pool_until: ArrayLike | None = None,
    ) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        out, (h,) = self._run(x, lengths, initial_state, backend, pool_until)
        return out, h

    __call__.__doc__ = "Run the layers over ``x``.\n" + _CALL_DOC.format(
        state_param=(
            "initial_state : array_like, shape (num_layers * directions, B, H), optional\n"
            "            h0; zeros when omitted."
        ),
        state_return="h_n : ndarray, shape (num_layers * directions, B, H)",
    )

    def _initial_states(self, initial_state, B):
        return [self._check_state(initial_state, "initial_state", B)]

    @classmethod
    def from_torch(cls, module_or_state_dict, *, dtype=None, batch_first=None):
        """Import a PyTorch ``nn.GRU`` or its ``state_dict()``; as :meth:`LSTM.from_torch`."""
        weights, has_bias, attrs = torch_weights("gru", module_or_state_dict)
        bf = attrs.get("batch_first", True) if batch_first is None else batch_first
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=bf, dtype=dtype)

    @classmethod
    def from_keras(cls, kernel, recurrent_kernel=None, bias=None, *, reset_after=True, dtype=None, batch_first=True):
        """Import Keras GRU weights (gate order z, r, h) with ``reset_after=True``.

        Parameters
        ----------
        kernel : array_like, shape (D, 3H), or a Keras layer, or a list of Keras layers
            As for :meth:`LSTM.from_keras`.
        recurrent_kernel : array_like, shape (H, 3H)
        bias : array_like, shape (2, 3H), optional
            Input and recurrent biases.
        reset_after : bool
            Only ``True`` (the Keras default) is supported: it is PyTorch's
            formulation.  ``reset_after=False`` applies the reset gate before
            the recurrent product, a different function, and raises ValueError.
        dtype : float32 or float64, optional
        batch_first : bool
        """
        if not check_bool(reset_after, "reset_after"):
            msg = (
                "reset_after=False is not supported: Keras then applies the reset gate before the recurrent "
                "matrix product, which PyTorch's GRU (and fastsim's) does not compute"
            )
            raise ValueError(msg)
        weights, has_bias = keras_weights("gru", kernel, recurrent_kernel, bias)
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype)

    @classmethod
    def from_onnx(cls, W, R, B=None, *, linear_before_reset, dtype=None, batch_first=True):
        """Import the inputs of an ONNX ``GRU`` node (gate order z, r, h).

        Parameters
        ----------
        W : array_like, shape (num_directions, 3H, D)
        R : array_like, shape (num_directions, 3H, H)
        B : array_like, shape (num_directions, 6H), optional
            ``[Wb, Rb]`` per direction.
        linear_before_reset : int
            The node's attribute, stated explicitly because ONNX's default (0)
            is a different function from PyTorch's GRU.  Only 1 (what PyTorch
            exports) is supported; 0 raises ValueError.
        dtype : float32 or float64, optional
        batch_first : bool
        """
        if linear_before_reset != 1:
            msg = (
                f"linear_before_reset must be 1 (PyTorch's GRU); got {linear_before_reset!r}: with 0 the reset gate "
                "multiplies the state before the recurrent product, which fastsim does not compute"
            )
            raise ValueError(msg)
        weights, has_bias = onnx_weights("gru", W, R, B)
        return cls._from_layer_weights(weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype)


class RNN(_Recurrent):
    """Stacked, optionally bidirectional Elman RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Parameters
    ----------
    input_size, hidden_size, num_layers
        As for :class:`LSTM`.
    nonlinearity : {"tanh", "relu"}
    bias, bidirectional, batch_first, dtype, seed
        As for :class:`LSTM`.
    """

    _KIND = "rnn"

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, *, nonlinearity: str = "tanh",
        bias: bool = True, bidirectional: bool = False, batch_first: bool = True, dtype: DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self._nonlinearity = check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
        super().__init__(
            input_size, hidden_size, num_layers, bias=bias, bidirectional=bidirectional, batch_first=batch_first,
            dtype=dtype, seed=seed,
        )

    def __call__(
        self, x: ArrayLike, lengths: ArrayLike | None = None, initial_state: ArrayLike | None = None, *,
        backend: str = "auto", pool_until: ArrayLike | None = None,
    ) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        out, (h,) = self._run(x, lengths, initial_state, backend, pool_until)
        return out, h

    __call__.__doc__ = GRU.__call__.__doc__

    def _initial_states(self, initial_state, B):
        return [self._check_state(initial_state, "initial_state", B)]

    @property
    def nonlinearity(self) -> str:
        """``"tanh"`` or ``"relu"`` (fixed at construction: the prepared weights carry it)."""
        return self._nonlinearity

    def _repr_extra(self):
        return f", nonlinearity={self.nonlinearity!r}"

    @classmethod
    def from_torch(cls, module_or_state_dict, *, nonlinearity=None, dtype=None, batch_first=None):
        """Import a PyTorch ``nn.RNN`` or its ``state_dict()``; as :meth:`LSTM.from_torch`.

        ``nonlinearity`` defaults to the module's, and to "tanh" for a state
        dict (which does not record it).
        """
        weights, has_bias, attrs = torch_weights("rnn", module_or_state_dict)
        bf = attrs.get("batch_first", True) if batch_first is None else batch_first
        nonlinearity = _nonlinearity_of(nonlinearity, attrs.get("nonlinearity"), "the module's nonlinearity")
        return cls._from_layer_weights(
            weights, has_bias=has_bias, batch_first=bf, dtype=dtype, nonlinearity=nonlinearity
        )

    @classmethod
    def from_keras(cls, kernel, recurrent_kernel=None, bias=None, *, nonlinearity=None, dtype=None, batch_first=True):
        """Import Keras ``SimpleRNN`` weights: kernel (D, H), recurrent_kernel (H, H), bias (H,).

        ``kernel`` may also be a built ``SimpleRNN`` layer (tanh or relu), a
        ``Bidirectional`` of one, or a list of those.  ``nonlinearity``
        defaults to the layers' activation, and to "tanh" for arrays.
        """
        weights, has_bias, found = keras_weights("rnn", kernel, recurrent_kernel, bias, want_activation=True)
        nonlinearity = _nonlinearity_of(nonlinearity, found, "the Keras layers' activation")
        return cls._from_layer_weights(
            weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype, nonlinearity=nonlinearity
        )

    @classmethod
    def from_onnx(cls, W, R, B=None, *, nonlinearity="tanh", dtype=None, batch_first=True):
        """Import the inputs of an ONNX ``RNN`` node.

        Parameters
        ----------
        W : array_like, shape (num_directions, H, D)
        R : array_like, shape (num_directions, H, H)
        B : array_like, shape (num_directions, 2H), optional
        nonlinearity : {"tanh", "relu"}
            The node's activation (ONNX's default is tanh).
        dtype, batch_first
            As for :meth:`LSTM.from_onnx`.
        """
        check_choice(nonlinearity, "nonlinearity", ("tanh", "relu"))
        weights, has_bias = onnx_weights("rnn", W, R, B)
        return cls._from_layer_weights(
            weights, has_bias=has_bias, batch_first=batch_first, dtype=dtype, nonlinearity=nonlinearity
        )
