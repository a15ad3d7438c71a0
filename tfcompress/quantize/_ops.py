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


def nudged_grid(min_value, max_value):
    """`(scale, zero point)` of the int8 grid a fake-quant over `[min, max]` rounds onto.

    As TensorFlow's FakeQuant kernel nudges the range (and the converter reads
    it): the zero point is an integer, so the range moves to put 0.0 on the
    grid. The zero point is in int8 terms (stored value of 0.0). The range is
    widened as `fake_quant_activation` widens it.
    """
    max_value = tf.maximum(max_value, min_value + 1e-6)
    scale = (max_value - min_value) / 255.0
    from_min = -min_value / scale
    nudged = tf.clip_by_value(tf.floor(from_min + 0.5), 0.0, 255.0)  # std::round
    return scale, nudged - 128.0


def in_saved_model_trace():
    """Whether the model is being traced into a SavedModel, or a `.tflite` through one.

    `tf.lite.TFLiteConverter.from_keras_model`, `model.export` and
    `tf.saved_model.save` all trace the graph they write inside TensorFlow's
    save context (measured on TF 2.21): a layer can then leave out what only
    emulates an int8 kernel, which the kernel does by itself.
    """
    try:
        from tensorflow.python.saved_model import save_context
    except ImportError:  # a TensorFlow without it: always emulate
        return False
    return bool(save_context.in_save_context())


def average_pool_int8(pool, x, min_value, max_value):
    """What int8 AVERAGE_POOL_2D computes from `x`, a tensor on the grid of `[min, max]`.

    The kernel keeps its input's scale and zero point, sums the stored int8
    values of each window (padding excluded) and divides by the window's count
    rounding half away from zero: `sign(s) * ((|s| + n // 2) // n)`. A
    fake-quant of the float average rounds ties up instead, which below the
    zero point is a step apart.

    Args:
        pool: the Keras `AveragePooling1D` or `AveragePooling2D` layer.
        x: its input, on the grid.
        min_value: the grid's range minimum (a scalar tensor).
        max_value: its maximum.

    Returns:
        The pooled tensor, as the file's kernel would compute it (float).
    """
    scale, zero = nudged_grid(min_value, max_value)
    stored = tf.round(x / scale) + zero
    counts = _window_counts(pool, x)
    total = tf.round(pool(stored) * counts)  # exact: sums of at most a few hundred int8
    half = tf.floor(counts / 2.0)
    # + 0.5 keeps the integer quotient exact when the graph divides as multiply by a
    # reciprocal (Grappler does): the true quotient is never within 0.5 / n of the next.
    average = tf.sign(total) * tf.floor((tf.abs(total) + half + 0.5) / counts)
    return (tf.clip_by_value(average, -128.0, 127.0) - zero) * scale


def requantize_xnnpack(x, in_min, in_max, out_min, out_max):
    """`x` moved from the grid of `[in_min, in_max]` to `[out_min, out_max]`, as XNNPACK does.

    XNNPACK's int8 QUANTIZE (requantize) multiplies by the scale ratio in
    steps of 1/256 (`M = lrint(256 * in_scale / out_scale)`, then
    `(q * M + 128) >> 8`), so a ratio of 0.2504 is 0.25, and values land a
    step from where a fake-quant of `x` rounds them (6-7% of one NASNet
    Concatenate input's). Ratios outside [2**-8, 2**7] are
    left to LiteRT's builtin kernel, which a fake-quant matches: `x` is
    returned unchanged there.
    """
    in_scale = nudged_grid(in_min, in_max)[0]
    out_scale, out_zero = nudged_grid(out_min, out_max)
    ratio = in_scale / out_scale
    multiplier = tf.round(256.0 * ratio)  # lrintf: half to even, as tf.round
    stored = tf.round(x / in_scale)  # minus the input zero point
    # Exact in float32: |stored| <= 255 and multiplier <= 2**15.
    moved = tf.floor((stored * multiplier + 128.0) / 256.0) + out_zero
    y = (tf.clip_by_value(moved, -128.0, 127.0) - out_zero) * out_scale
    return tf.where((ratio >= 2.0**-8) & (ratio <= 2.0**7), y, x)


def _window_counts(pool, x):
    """How many input values each output of `pool` averages (padding excluded)."""
    rank = len(x.shape) - 2
    first = getattr(pool, "data_format", "channels_last") == "channels_first"
    spatial = tf.shape(x)[2:] if first else tf.shape(x)[1:-1]
    ones = tf.ones(tf.concat([[1], spatial, [1]], 0), x.dtype)
    window = tf.ones(list(pool.pool_size) + [1, 1], x.dtype)
    counts = tf.nn.convolution(
        ones, window, strides=list(pool.strides), padding=pool.padding.upper()
    )
    if first:
        counts = tf.transpose(counts, [0, rank + 1] + list(range(1, rank + 1)))
    return counts


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
