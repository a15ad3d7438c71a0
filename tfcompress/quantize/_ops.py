"""Fake-quant primitives, written with TF ops the TFLite converter understands.

`tf.quantization.fake_quant_with_min_max_vars*` carry a straight-through
gradient (identity inside the range, zero outside) and are what the converter
reads to build an int8 graph without representative data.
"""

import tensorflow as tf

_EPS = 1e-8


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
    if per_channel:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            w, -m, m, num_bits=num_bits, narrow_range=True
        )
    return tf.quantization.fake_quant_with_min_max_vars(
        w, -m, m, num_bits=num_bits, narrow_range=True
    )


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
_FIXED_GRIDS = {"sigmoid": (0.0, 255.0 / 256.0), "tanh": (-1.0, 127.0 / 128.0)}


def fake_quant_fixed_grid(y, kind):
    """Fake-quantize a sigmoid (`kind="sigmoid"`) or tanh output onto TFLite's int8 grid."""
    lo, hi = _FIXED_GRIDS[kind]
    return tf.quantization.fake_quant_with_min_max_vars(
        y, tf.constant(lo), tf.constant(hi), num_bits=8, narrow_range=False
    )


def fixed_grid_activation(x, name):
    """`name` ("sigmoid", "silu"/"swish" or "tanh") of `x` as the int8 kernels compute it.

    Swish becomes LOGISTIC then MUL: `x * sigmoid(x)` with the sigmoid on its
    fixed grid (the product's range is the caller's output fake-quant).
    """
    x = tf.cast(x, "float32")
    if name == "tanh":
        return fake_quant_fixed_grid(tf.tanh(x), "tanh")
    gate = fake_quant_fixed_grid(tf.sigmoid(x), "sigmoid")
    return gate if name == "sigmoid" else x * gate
