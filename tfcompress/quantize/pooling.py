"""Average pooling in QAT: rounded onto its input's grid, as int8 AVERAGE_POOL_2D is.

TFLite's int8 AVERAGE_POOL_2D keeps its input's scale and zero point, and
rounds each average onto that grid. A float average of grid values is off
the grid by up to half a step; NASNet's cells average-pool and add, so that
half step reached the output on every cell. `QuantizeAveragePooling` computes
what the kernel computes, in the range that made its input (found as for
the int32 bias, `bias.record_input_grid`), so the QAT model rounds where the
file does, ties included: the kernel sums the stored int8 values (zero point
included) and rounds an exact half away from zero, so below the zero point a
window of 2, 4 or 6 values rounds down where a fake-quant of the float average
rounds up (up to 12% of one NASNet pooling's values, at borders).

Those ops exist only to emulate the kernel: traced into a SavedModel or a
`.tflite` (`_ops.in_saved_model_trace`), the layer is the plain pooling, which
the converter makes an int8 AVERAGE_POOL_2D on its input's grid. A fake-quant
there instead would add a requantize, or, on a tensor shared with a
MaxPooling2D and convs (InceptionV3), leave those convs in float.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tfcompress._layers import Wrapper
from tfcompress.quantize import _ops, bias, roles


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeAveragePooling(Wrapper):
    """An `AveragePooling1D/2D` whose output is rounded onto its input's int8 grid.

    Args:
        layer: the `keras.layers.AveragePooling1D` or `AveragePooling2D`.
        **kwargs: base `Layer` arguments.

    Example:

    >>> q = QuantizeAveragePooling(keras.layers.AveragePooling2D(3, strides=1, padding="same"))
    """

    #: The walk back to a range (`quantize.bias`) goes through it: its output is on
    #: its input's grid.
    _keeps_input_scale = True

    def __init__(self, layer: keras.layers.Layer, **kwargs: Any) -> None:
        super().__init__(layer, **kwargs)
        if not isinstance(layer, (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D)):
            raise TypeError(
                "QuantizeAveragePooling wraps AveragePooling1D or AveragePooling2D. "
                f"Received: layer={layer!r}"
            )

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        y = self.layer(inputs)
        grid = bias.input_range(self)
        if grid is None or _ops.in_saved_model_trace():
            return y
        lo, hi = grid
        x = tf.cast(inputs, "float32")
        exact = tf.cast(_ops.average_pool_int8(self.layer, x, lo, hi), y.dtype)
        rounded = y + tf.stop_gradient(exact - y)  # the float average's gradient
        # Before any range was measured (lo == hi == 0) the average passes unrounded.
        return tf.where(hi > lo, rounded, y)

    def compute_output_spec(self, *args, **kwargs):
        if args:
            bias.record_input_grid(self, args[0])
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


class AveragePoolingRole(roles.PassthroughRole):
    """Keeps its input's scale (outputs carry a range when the input does), rounded onto it."""

    name = "average_pooling"

    def build(self, layer: keras.layers.Layer, plan: Any, ctx: Any) -> keras.layers.Layer:
        return QuantizeAveragePooling(ctx.copy_layer(layer), name=ctx.unique(f"quant_{layer.name}"))

    def copy_weights(
        self, new: keras.layers.Layer, original: keras.layers.Layer, plan: Any
    ) -> None:
        pass  # no weights


roles.register_role(AveragePoolingRole())
