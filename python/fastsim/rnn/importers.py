"""Weights from PyTorch, Keras and ONNX layouts into fastsim's one layout (PyTorch's).

This room owns the parsing of foreign weights: a ``torch.nn`` module or its
state dict, Keras layers or arrays, the inputs of an ONNX node.  Each
importer returns ``weights[layer][direction] = (W_ih, W_hh, b_ih, b_hh)`` in
PyTorch layout with the gate blocks in PyTorch's order (the orders come from
:mod:`fastsim.rnn.cells`) and whether the layers have biases; the layer
classes check and prepare them.  It may call the cell descriptions and the
validation helpers, and never imports a framework.
"""

from __future__ import annotations

import re

import numpy as np

from .._validation import as_float_array, check_float_dtype, check_shape, result_dtype
from .cells import cell

__all__ = ["import_dtype", "keras_weights", "onnx_weights", "torch_weights"]


def _to_numpy(value, name):
    """A framework tensor or array as a NumPy array, without importing the framework."""
    if hasattr(value, "detach"):  # a torch tensor, possibly requiring grad
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    if hasattr(value, "numpy"):
        try:
            value = value.numpy()
        except TypeError:  # dtypes NumPy lacks (bfloat16): widen first
            value = value.float().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        msg = f"{name} must be an array or tensor: {exc}"
        raise TypeError(msg) from None


def import_dtype(dtype, arrays):
    if dtype is not None:
        return check_float_dtype(dtype)
    return result_dtype(*(as_float_array(a, "weights") for a in arrays))


def _blocks(a, order, axis):
    """Reorder the gate blocks of ``a`` along ``axis``: new block i is old block ``order[i]``."""
    parts = np.split(a, len(order), axis=axis)
    return np.concatenate([parts[i] for i in order], axis=axis)


_TORCH_KEY = re.compile(
    r"^(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(?P<layer>\d+)(?P<rev>_reverse)?$"
)


def torch_weights(kind, obj):
    """Parse a PyTorch ``nn.LSTM``/``nn.GRU``/``nn.RNN`` or its state dict.

    Returns ``(weights[layer][direction] = (W_ih, W_hh, b_ih, b_hh), has_bias, module_attrs)``.
    """
    attrs = {}
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        for a in ("mode", "batch_first", "nonlinearity", "proj_size", "bidirectional", "num_layers"):
            if hasattr(obj, a):
                attrs[a] = getattr(obj, a)
        sd = obj.state_dict()
    elif hasattr(obj, "keys"):
        sd = obj
    else:
        what = kind.upper()
        msg = f"module_or_state_dict must be a torch.nn.{what} module or its state dict; got {type(obj).__name__}"
        raise TypeError(msg)
    if attrs.get("proj_size", 0):
        msg = "LSTM with proj_size > 0 is not supported (module_or_state_dict has proj_size set)"
        raise ValueError(msg)
    mode = attrs.get("mode")
    want = cell(kind).torch_modes
    if mode is not None and mode not in want:
        msg = f"module_or_state_dict is a torch {mode} module; expected {' or '.join(want)}"
        raise ValueError(msg)
    found = {}
    prefixes = set()
    for key in sd.keys():
        m = _TORCH_KEY.match(str(key))
        if m is None:
            continue
        prefixes.add(m["prefix"])
        found[(m["prefix"], m["kind"], int(m["layer"]), bool(m["rev"]))] = sd[key]
    if not found:
        msg = "module_or_state_dict holds no recurrent weights (keys like 'weight_ih_l0')"
        raise ValueError(msg)
    if len(prefixes) > 1:
        msg = f"module_or_state_dict holds several recurrent modules {sorted(prefixes)}; pass one module's state dict"
        raise ValueError(msg)
    found = {k[1:]: v for k, v in found.items()}
    if any(k[0] == "weight_hr" for k in found):
        msg = "LSTM with proj_size > 0 is not supported (module_or_state_dict has weight_hr_l* keys)"
        raise ValueError(msg)
    num_layers = 1 + max(k[1] for k in found)
    bidirectional = any(k[2] for k in found)
    has_bias = ("bias_ih", 0, False) in found
    weights = []
    for layer in range(num_layers):
        dirs = []
        for rev in (False, True)[: 1 + bidirectional]:
            suffix = f"_l{layer}{'_reverse' if rev else ''}"
            arrays = []
            for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                value = found.get((part, layer, rev))
                if value is None and (part.startswith("weight") or has_bias):
                    msg = f"module_or_state_dict is missing '{part}{suffix}'"
                    raise ValueError(msg)
                arrays.append(None if value is None else _to_numpy(value, part + suffix))
            dirs.append(tuple(arrays))
        weights.append(dirs)
    G = cell(kind).gates
    W_hh0 = weights[0][0][1]
    if W_hh0.ndim == 2 and W_hh0.shape[1] > 0 and W_hh0.shape[0] != G * W_hh0.shape[1]:
        gates = W_hh0.shape[0] / W_hh0.shape[1]
        msg = (
            f"module_or_state_dict has weight_hh_l0 of shape {W_hh0.shape} ({gates:g} gates); "
            f"a {kind.upper()} has {G} gates (another kind of recurrent module?)"
        )
        raise ValueError(msg)
    return weights, has_bias, attrs


def _is_keras_layer(obj):
    return hasattr(obj, "get_weights") and callable(obj.get_weights)


def _activation_name(fn):
    return getattr(fn, "__name__", str(fn))


# --------------------------------------------------------------------------- Keras and ONNX layouts

def _keras_arrays_to_torch(kind, kernel, recurrent_kernel, bias, prefix=""):
    """Keras (kernel, recurrent_kernel, bias) of one direction -> PyTorch (W_ih, W_hh, b_ih, b_hh)."""
    c = cell(kind)
    G, gates = c.gates, c.gate_rows
    kernel = as_float_array(kernel, prefix + "kernel", ndim=2)
    recurrent_kernel = as_float_array(recurrent_kernel, prefix + "recurrent_kernel", ndim=2)
    H = recurrent_kernel.shape[0]
    check_shape(recurrent_kernel, (H, G * H), prefix + "recurrent_kernel", f"(H, {gates})")
    if kernel.shape[1] != G * H:
        msg = f"{prefix}kernel must have shape (D, {gates}) with H = {H}; got {kernel.shape}"
        raise ValueError(msg)
    order = c.keras_order
    W_ih = _blocks(kernel.T, order, axis=0)
    W_hh = _blocks(recurrent_kernel.T, order, axis=0)
    if bias is None:
        return W_ih, W_hh, None, None
    bias = as_float_array(bias, prefix + "bias")
    if kind == "gru":
        if bias.shape == (G * H,):
            msg = (
                f"{prefix}bias has shape {bias.shape}, the layout of a Keras GRU with reset_after=False, which "
                "computes a different function; only reset_after=True (bias of shape (2, 3H)) is supported"
            )
            raise ValueError(msg)
        check_shape(bias, (2, G * H), prefix + "bias", "(2, 3H): input and recurrent bias, reset_after=True")
        return W_ih, W_hh, _blocks(bias[0], order, axis=0), _blocks(bias[1], order, axis=0)
    check_shape(bias, (G * H,), prefix + "bias", f"({gates},)")
    return W_ih, W_hh, _blocks(bias, order, axis=0), np.zeros_like(bias)


def _keras_plain_layer(kind, layer, prefix, backward=False):
    cls_name = type(layer).__name__
    want = cell(kind).keras_class
    if cls_name != want:
        msg = f"{prefix}layer is a Keras {cls_name}; expected {want}"
        raise ValueError(msg)
    if bool(getattr(layer, "go_backwards", False)) != backward:
        msg = f"{prefix}layer has go_backwards={not backward}; only Bidirectional wrappers may run backwards"
        raise ValueError(msg)
    activation = _activation_name(getattr(layer, "activation", None))
    allowed = ("tanh", "relu") if kind == "rnn" else ("tanh",)
    if activation not in allowed:
        msg = f"{prefix}layer has activation {activation!r}; supported: {allowed}"
        raise ValueError(msg)
    if kind != "rnn":
        recurrent = _activation_name(getattr(layer, "recurrent_activation", None))
        if recurrent != "sigmoid":
            msg = f"{prefix}layer has recurrent_activation {recurrent!r}; only 'sigmoid' is supported"
            raise ValueError(msg)
    if kind == "gru" and not getattr(layer, "reset_after", True):
        msg = (
            f"{prefix}layer has reset_after=False, which computes a different function from PyTorch's GRU; "
            "only reset_after=True (the Keras default) is supported"
        )
        raise ValueError(msg)
    arrays = [_to_numpy(a, prefix + "weight") for a in layer.get_weights()]
    if len(arrays) not in (2, 3):
        msg = f"{prefix}layer must be built (2 or 3 weight arrays); got {len(arrays)}"
        raise ValueError(msg)
    kernel, recurrent_kernel, *rest = arrays
    w = _keras_arrays_to_torch(kind, kernel, recurrent_kernel, rest[0] if rest else None, prefix)
    return [w], activation



def keras_weights(kind, kernel, recurrent_kernel, bias, *, want_activation=False):
    """Keras arrays, layer, or list of layers -> (weights[layer][direction], has_bias[, nonlinearity])."""
    if _is_keras_layer(kernel) or (
        isinstance(kernel, (list, tuple)) and kernel and all(_is_keras_layer(k) for k in kernel)
    ):
        if recurrent_kernel is not None or bias is not None:
            msg = "recurrent_kernel and bias must be omitted when a Keras layer is passed"
            raise TypeError(msg)
        layers = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel]
        weights, activations = [], set()
        for i, layer in enumerate(layers):
            prefix = f"layer {i}: " if len(layers) > 1 else ""
            if hasattr(layer, "forward_layer") and hasattr(layer, "backward_layer"):
                mode = getattr(layer, "merge_mode", "concat")
                if mode != "concat":
                    msg = f"{prefix}Bidirectional layer has merge_mode={mode!r}; only 'concat' is supported"
                    raise ValueError(msg)
                fwd, a1 = _keras_plain_layer(kind, layer.forward_layer, prefix + "forward ")
                bwd, a2 = _keras_plain_layer(kind, layer.backward_layer, prefix + "backward ", backward=True)
                weights.append(fwd + bwd)
                activations.update((a1, a2))
            else:
                w, a = _keras_plain_layer(kind, layer, prefix)
                weights.append(w)
                activations.add(a)
        if len({len(dirs) for dirs in weights}) != 1:
            msg = "stacked Keras layers must be all bidirectional or all unidirectional"
            raise ValueError(msg)
        if len(activations) != 1:
            msg = f"stacked Keras layers must share one activation; got {sorted(activations)}"
            raise ValueError(msg)
        nonlinearity = activations.pop()
    else:
        if recurrent_kernel is None:
            msg = "recurrent_kernel is required when kernel is an array"
            raise TypeError(msg)
        weights = [[_keras_arrays_to_torch(kind, kernel, recurrent_kernel, bias)]]
        nonlinearity = None  # arrays do not record the activation
    has_bias = all(w[2] is not None for dirs in weights for w in dirs)
    if not has_bias:
        weights = [[(w[0], w[1], None, None) for w in dirs] for dirs in weights]
    if want_activation:
        return weights, has_bias, nonlinearity
    return weights, has_bias


def onnx_weights(kind, W, R, B):
    """ONNX W, R, B of one node -> ([[direction weights]], has_bias) in PyTorch layout."""
    c = cell(kind)
    G, gates = c.gates, c.gate_rows
    W = as_float_array(W, "W", ndim=3)
    R = as_float_array(R, "R", ndim=3)
    num_dirs, GH, H = R.shape
    if num_dirs not in (1, 2):
        msg = f"R must have 1 or 2 directions (axis 0); got shape {R.shape}"
        raise ValueError(msg)
    check_shape(R, (num_dirs, G * H, H), "R", f"(num_directions, {gates}, H)")
    if W.shape[:2] != (num_dirs, G * H):
        msg = f"W must have shape ({num_dirs}, {G * H}, D) (num_directions, {gates}, D) with H = {H}; got {W.shape}"
        raise ValueError(msg)
    if B is not None:
        B = as_float_array(B, "B", ndim=2)
        check_shape(B, (num_dirs, 2 * G * H), "B", f"(num_directions, {2 * G}H): [Wb, Rb]")
    order = c.onnx_order
    dirs = []
    for d in range(num_dirs):
        W_ih = _blocks(W[d], order, axis=0)
        W_hh = _blocks(R[d], order, axis=0)
        if B is None:
            dirs.append((W_ih, W_hh, None, None))
        else:
            dirs.append((W_ih, W_hh, _blocks(B[d, : G * H], order, 0), _blocks(B[d, G * H :], order, 0)))
    return [dirs], B is not None
