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
