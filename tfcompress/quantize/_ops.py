"""Fake-quant primitives, written with TF ops the TFLite converter understands.

`tf.quantization.fake_quant_with_min_max_vars*` carry a straight-through
gradient (identity inside the range, zero outside) and are what the converter
reads to build an int8 graph without representative data.
"""

import contextlib
import contextvars

import tensorflow as tf

_EPS = 1e-8

# Set while a wrapper fake-quantizes its kernel for a training step (`training_kernels`).
_TRAINING = contextvars.ContextVar("tfcompress_training_kernels", default=False)


@contextlib.contextmanager
def training_kernels(training):
    """Within: per-channel weight fake-quant runs as elementwise ops (a training step).

    TensorFlow's per-channel fake-quant kernels walk one strided channel at a
    time: on ResNet50 their forward and gradient took more time than the
    convolutions. A training step computes the same values with elementwise
    ops and a straight-through gradient; inference, and so the graph the
    converter reads, keeps `fake_quant_with_min_max_vars_per_channel`.
    `training` must be the Python `True` for the fast path.
    """
    token = _TRAINING.set(training is True)
    try:
        yield
    finally:
        _TRAINING.reset(token)


def symmetric_range(w, per_channel):
    """Largest |w| over the whole tensor, or per last-axis channel; no gradient."""
    axes = list(range(len(w.shape) - 1)) if per_channel else None
    return tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(w), axis=axes), _EPS))


def fake_quant_symmetric(w, num_bits, per_channel):
    """Symmetric, narrow-range fake-quant (zero point 0, as TFLite wants for weights).

    Args:
        w: the tensor; channels on the last axis when `per_channel`.
        num_bits: 2..8.
        per_channel: one range per last-axis channel, else one per tensor.

    Returns:
        `w` rounded to `2**num_bits - 1` levels in `[-max|w|, max|w|]`.
    """
    m = symmetric_range(w, per_channel)
    if per_channel and _TRAINING.get() and w.dtype == tf.float32:
        return _symmetric_grid_ste(w, m, num_bits)
    if per_channel:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            w, -m, m, num_bits=num_bits, narrow_range=True
        )
    return tf.quantization.fake_quant_with_min_max_vars(
        w, -m, m, num_bits=num_bits, narrow_range=True
    )


def _symmetric_grid_ste(w, m, num_bits):
    """`fake_quant_with_min_max_vars_per_channel(w, -m, m, num_bits, narrow_range=True)`.

    The same nudged grid and rounding (`floor(x + 0.5)` of the shifted value),
    as elementwise ops over the whole tensor; the gradient is the identity
    (every `|w| <= m`, the range being max |w| per channel).
    """
    quant_min, quant_max = 1.0, float(2**num_bits - 1)

    @tf.custom_gradient
    def ste(w, m):
        scale = (m + m) / (quant_max - quant_min)
        zero_point = tf.round(quant_min + m / scale)
        nudged_min = (quant_min - zero_point) * scale
        clamped = tf.clip_by_value(w, nudged_min, (quant_max - zero_point) * scale)
        level = tf.floor((clamped - nudged_min) / scale + 0.5) + (quant_min - zero_point)

        def grad(dy):
            return dy, tf.zeros_like(m)

        return level * scale, grad

    return ste(w, m)


def binarize(w):
    """`sign(w) * mean|w|` per last-axis channel, with a straight-through gradient."""
    axes = list(range(len(w.shape) - 1))
    alpha = tf.reduce_mean(tf.abs(w), axis=axes, keepdims=True)
    # sign() rather than where(): the converter constant-folds it on large kernels.
    # (An exactly-zero weight stays 0, which does not happen in practice.)
    return w + tf.stop_gradient(alpha * tf.sign(w) - w)


def fake_quant_activation(x, min_value, max_value, num_bits=8):
    """Asymmetric per-tensor fake-quant of activations between two range tensors."""
    max_value = tf.maximum(max_value, min_value + 1e-6)
    return tf.quantization.fake_quant_with_min_max_vars(
        x, min_value, max_value, num_bits=num_bits, narrow_range=False
    )


# TFLite's int8 LOGISTIC and TANH write a fixed output grid, whatever range the model
# asked for: sigmoid on steps of 1/256 from 0 (zero point -128), tanh on steps of 1/128
# around 0. Their lookup tables round the exact value to the nearest step.
# A hard sigmoid is given [0, 1] (`hard_sigmoid_on_int8_ops`).
FIXED_GRIDS = {
    "sigmoid": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
    "hard_sigmoid": (0.0, 1.0),
}


def fake_quant_fixed_grid(y, kind):
    """Fake-quantize onto a fixed int8 grid: `kind` is a key of `FIXED_GRIDS`."""
    lo, hi = FIXED_GRIDS[kind]
    return tf.quantization.fake_quant_with_min_max_vars(
        y, tf.constant(lo), tf.constant(hi), num_bits=8, narrow_range=False
    )


def fixed_grid_activation(x, name):
    """`name` ("sigmoid", "silu", "tanh", "hard_sigmoid", "hard_silu") of `x` as int8 kernels do.

    Swish becomes LOGISTIC then MUL: `x * sigmoid(x)` with the sigmoid on its
    fixed grid (the product's range is the caller's output fake-quant).
    """
    if name == "hard_silu":
        return hard_silu_on_int8_ops(x)
    if name == "hard_sigmoid":
        return hard_sigmoid_on_int8_ops(x)
    x = tf.cast(x, "float32")
    if name == "tanh":
        return fake_quant_fixed_grid(tf.tanh(x), "tanh")
    gate = fake_quant_fixed_grid(tf.sigmoid(x), "sigmoid")
    return gate if name == "sigmoid" else x * gate


def hard_sigmoid_on_int8_ops(x):
    """Hard sigmoid, `relu6(x + 3) / 6`, as int8 ADD (RELU6 fused) and MUL by 1/6.

    Each op gets a fixed grid: [0, 6] after the ADD, [0, 1] after the MUL (the
    same 256 steps, so the MUL rounds nothing). Without these ranges the
    converter keeps both ops in float between QUANTIZE and DEQUANTIZE.
    """
    x = tf.cast(x, "float32")
    gate = tf.quantization.fake_quant_with_min_max_vars(
        tf.nn.relu6(x + 3.0), 0.0, 6.0, num_bits=8, narrow_range=False
    )
    return fake_quant_fixed_grid(gate * (1.0 / 6.0), "hard_sigmoid")


def hard_silu_on_int8_ops(x):
    """Hard swish, `x * relu6(x + 3) / 6`, as three int8 ops that XNNPACK runs.

    TFLite's int8 HARD_SWISH has no XNNPACK kernel: on MobileNetV3Small at 224
    its reference kernel took 75% of the int8 file's time, making the file 2.3x
    slower than float32. Written with a range on each intermediate, the
    converter keeps the hard sigmoid's ADD and MUL (`hard_sigmoid_on_int8_ops`)
    and a MUL by `x`, whose output range is the caller's output fake-quant; all
    three are delegated.

    Args:
        x: the input (already on its int8 grid).

    Returns:
        The hard swish of `x`, rounded where the int8 file rounds before its output.
    """
    # gate * x, not x * gate: the converter folds the ops back into HARD_SWISH when
    # they come in the order of its patterns, even with ranges between them.
    return hard_sigmoid_on_int8_ops(x) * tf.cast(x, "float32")
