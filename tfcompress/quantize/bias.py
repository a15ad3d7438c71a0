"""The int32 bias of an int8 op, rounded as the converter rounds it.

An int8 CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED adds its bias to the
int32 accumulator: the converter stores `round(bias / (input scale * weight
scale))` per output channel. That moves an output by up to half a bias step,
a few thousandths of an output step, which matters only on ties. But a
trained network's blank regions (the border of a digit, zero padding) feed
the same values to a channel at every position of every sample, and when
such a value sits on a tie the file and a float bias round it apart
everywhere at once. On the zoo's MobileNetV2 this alone took top-1 agreement
of the int8 file with its QAT model from 100% to 94.5%.

So a QAT wrapper rounds its bias onto that int32 grid at inference. The
input scale comes from the range that made the input: when a wrapper is
called on a symbolic tensor (the QAT transform builds the graph, `.keras`
loading rebuilds it), `record_input_grid` walks back from the input through
layers that keep their input's scale (padding, pooling, reshapes) to the
`ActivationQuantizer` (or fixed LOGISTIC/TANH grid) that set it. A wrapper
whose input grid cannot be found keeps its float bias, as before. The same
walk tells average pooling (`quantize.pooling`) and a Concatenate's
requantized inputs (`record_input_grids`) which grid they read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import keras
import tensorflow as tf

from tfcompress.quantize import _ops

if TYPE_CHECKING:
    from tfcompress.quantize.layers import ActivationQuantizer

_ATTR = "_tfcompress_input_grid"
_ATTR_MANY = "_tfcompress_input_grids"
_AMBIGUOUS = "ambiguous"
#: Output grids of int8 LOGISTIC and TANH (`(min, max)`), whatever range was asked for,
#: and the [0, 1] range the QAT model gives a hard sigmoid.
_FIXED = _ops.FIXED_GRIDS


def record_input_grid(layer: keras.layers.Layer, inputs: Any) -> None:
    """Remember which range quantizes `layer`'s input (called on symbolic inputs).

    Args:
        layer: a QAT wrapper with a bias to round.
        inputs: what the layer was called on; only a single `KerasTensor`
            is followed (anything else records nothing).
    """
    if not isinstance(inputs, keras.KerasTensor):
        return
    grid = _grid_of(inputs)
    previous = layer.__dict__.get(_ATTR)
    if previous is not None and previous is not grid:
        grid = _AMBIGUOUS  # a shared layer called on two grids: no rounding
    object.__setattr__(layer, _ATTR, grid)


def record_input_grids(layer: keras.layers.Layer, inputs: Any) -> None:
    """Remember which range quantizes each of `layer`'s inputs (a list of tensors).

    As `record_input_grid`, for a layer called on several tensors (a
    Concatenate); read back with `input_ranges`.
    """
    if not isinstance(inputs, (list, tuple)):
        return
    grids = tuple(_grid_of(t) if isinstance(t, keras.KerasTensor) else None for t in inputs)
    previous = layer.__dict__.get(_ATTR_MANY)
    if previous is not None and (
        len(previous) != len(grids) or any(a is not b for a, b in zip(previous, grids))
    ):
        grids = (None,) * len(grids)  # a shared layer called on other grids: nothing known
    object.__setattr__(layer, _ATTR_MANY, grids)


def input_ranges(layer: keras.layers.Layer) -> tuple | None:
    """`(min, max)` (or `None`) of each input recorded by `record_input_grids`."""
    grids = layer.__dict__.get(_ATTR_MANY)
    if grids is None:
        return None
    return tuple(_range_of(grid) for grid in grids)


def input_range(layer: keras.layers.Layer) -> tuple[tf.Tensor, tf.Tensor] | None:
    """`(min, max)` of the range `layer`'s int8 input was quantized in; `None` if unknown."""
    return _range_of(layer.__dict__.get(_ATTR))


def _range_of(grid):
    if grid is None or isinstance(grid, str):
        return None
    if isinstance(grid, tuple):
        return tf.constant(grid[0], tf.float32), tf.constant(grid[1], tf.float32)
    if grid._collector is not None:  # calibrating: the range is being measured
        return None
    return tf.cast(grid.range_min, tf.float32), tf.cast(grid.range_max, tf.float32)


def input_scale(layer: keras.layers.Layer) -> tf.Tensor | None:
    """The scale of `layer`'s int8 input, as the converter derives it; `None` if unknown."""
    grid = input_range(layer)
    if grid is None:
        return None
    return _ops.nudged_grid(*grid)[0]


def quantizer_scale(quantizer: ActivationQuantizer) -> tf.Tensor:
    """The int8 scale of an `ActivationQuantizer`'s current range (as the converter reads it)."""
    lo = tf.cast(quantizer.range_min, tf.float32)
    return _ops.nudged_grid(lo, tf.cast(quantizer.range_max, tf.float32))[0]


def weight_scales(kernel: tf.Tensor, granularity: str) -> tf.Tensor:
    """Per-output-channel scales of an int8 kernel (`max|w| / 127`, symmetric).

    Args:
        kernel: the kernel (before or after its fake-quant: same maxima),
            output channels last.
        granularity: `"per_channel"`, `"depthwise"` (`(kh, kw, in, mult)`:
            one scale per `in * mult`) or `"per_tensor"`.

    Returns:
        A float32 tensor with one scale per bias entry (or a scalar).
    """
    w = tf.abs(tf.cast(kernel, tf.float32))
    if granularity == "per_tensor":
        return tf.reduce_max(w) / 127.0
    if granularity == "depthwise":
        w = tf.reshape(w, tf.concat([tf.shape(w)[:2], [-1]], 0))
    return tf.reduce_max(w, axis=list(range(len(w.shape) - 1))) / 127.0


def round_onto_int32_grid(bias: Any, step: tf.Tensor) -> tf.Tensor:
    """`bias` rounded to multiples of `step` (straight-through), as the int32 bias stores it."""
    b = tf.cast(bias, tf.float32)
    step = tf.cast(step, tf.float32)
    rounded = tf.where(step > 0, tf.round(tf.math.divide_no_nan(b, step)) * step, b)
    return tf.cast(b + tf.stop_gradient(rounded - b), bias.dtype)


def with_rounded_bias(wrapper: Any, replace: dict, training: Any) -> dict:
    """`replace` (`{id(variable): tensor}`) with the wrapped layer's bias on its int32 grid.

    Unchanged while training, for other weight schemes than int8, for a
    layer without a bias, or when the input grid is unknown.
    """
    bias = getattr(wrapper.layer, "bias", None)
    if training or getattr(wrapper, "weight_scheme", None) != "int8" or bias is None:
        return replace
    scale = input_scale(wrapper)
    kernel = _float_kernel(wrapper)
    if scale is None or kernel is None:
        return replace
    step = scale * weight_scales(kernel, wrapper.granularity)
    value = replace.get(id(bias))
    if value is None:
        value = tf.convert_to_tensor(bias)
    return {**replace, id(bias): round_onto_int32_grid(value, step)}


def _float_kernel(wrapper):
    """The kernel before its fake-quant (whose per-channel max|w| the scales come from).

    Not the fake-quantized kernel: a second reader of the FakeQuant op's output
    keeps the converter from folding it into int8 weights (the op stays float).
    """
    folded = getattr(wrapper, "folded", None)  # FoldedBatchNormWrapper: W * gamma / sigma
    if callable(folded):
        return folded()[0]
    if wrapper.preserve_clusters:  # the scales come from the cluster means: not mirrored
        return None
    kernel = tf.convert_to_tensor(getattr(wrapper.layer, wrapper.kernel_attr))
    return kernel * wrapper.sparsity_mask if wrapper.preserve_sparsity else kernel


def _grid_of(tensor, depth=0):
    """The quantizer (or fixed grid) whose range the int8 `tensor` carries, or `None`."""
    history = getattr(tensor, "_keras_history", None)
    if history is None or depth > 64:
        return None
    op = history.operation
    if _is_quantizer(op):
        return op
    quantizer = getattr(op, "output_quantizer", None)
    if _is_quantizer(quantizer):
        return quantizer
    fixed = getattr(op, "_fixed_grid", None)
    if fixed in _FIXED and quantizer is None:
        return _FIXED[fixed]
    if not _keeps_scale(op):
        return None
    nodes = getattr(op, "_inbound_nodes", [])
    if history.node_index >= len(nodes):
        return None
    inputs = [t for t in nodes[history.node_index].input_tensors if _is_float(t)]
    return _grid_of(inputs[0], depth + 1) if len(inputs) == 1 else None


def _is_quantizer(obj):
    # A class attribute, not isinstance: this module sits below quantize.layers.
    return bool(getattr(type(obj), "_tfcompress_activation_quantizer", False))


#: Set by `quantize.registry`: whether a plain layer's rule keeps its input's scale
#: (the "passthrough" role). Set there, not imported here: the registry sits above.
_passthrough_test: Callable[[keras.layers.Layer], bool] | None = None


def set_passthrough_test(test: Callable[[keras.layers.Layer], bool]) -> None:
    """Tell the walk back to a range which layers keep their input's scale."""
    global _passthrough_test
    _passthrough_test = test


def _keeps_scale(op):
    if getattr(op, "_keeps_input_scale", False):  # QuantizeAveragePooling rounds onto it
        return True
    if isinstance(op, keras.layers.Layer):
        return _passthrough_test is not None and _passthrough_test(op)
    from keras.src.ops import core
    from keras.src.ops import numpy as knp

    kinds = tuple(
        getattr(module, name)
        for module, names in (
            (knp, ("GetItem", "Reshape", "Squeeze", "ExpandDims", "Transpose")),
            (core, ("Slice", "StridedSlice")),
        )
        for name in names
        if hasattr(module, name)
    )
    return isinstance(op, kinds)


def _is_float(t):
    return isinstance(t, keras.KerasTensor) and keras.backend.is_float_dtype(t.dtype)
