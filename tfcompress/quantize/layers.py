"""The layers a QAT model is made of: `ActivationQuantizer` and `QuantizeWrapper`.

Both are registered Keras serializables (package "tfcompress"), so a QAT
model saves and loads as `.keras`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcompress._layers import Wrapper
from tfcompress.quantize import _ops
from tfcompress.quantize.schemes import WeightScheme, get_scheme

_GRANULARITIES = ("per_channel", "depthwise", "per_tensor")


@keras.saving.register_keras_serializable(package="tfcompress")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a tensor to int8 within a moving-average (EMA) range.

    The range is updated only when `training=True` (in `fit()`): the first
    batch sets it, later batches move it by `1 - ema_decay`. It always
    includes zero, as TFLite requires. `range_set` stays 0 until a training
    step or `tfcompress.quantize.calibrate` measured it.

    Args:
        num_bits: activation bits (8 for TFLite int8).
        ema_decay: weight of the old range in the moving average, in [0, 1).
        **kwargs: base `Layer` arguments (`name`, ...).

    Example:

    >>> q = ActivationQuantizer(name="input_quant")
    >>> y = q(x, training=True)   # sets the range from x
    """

    #: How `quantize.bias` recognises a quantizer without importing this module.
    _tfcompress_activation_quantizer = True

    def __init__(self, num_bits: int = 8, ema_decay: float = 0.99, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_bits != 8:
            raise ValueError(
                "Activations are quantized to 8 bits (TFLite int8). "
                f"Received: num_bits={num_bits!r}"
            )
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1). Received: ema_decay={ema_decay!r}")
        self.num_bits = int(num_bits)
        self.ema_decay = float(ema_decay)
        # Set by calibrate(): a list that receives float batches.
        self._collector: list[Any] | None = None

    def build(self, input_shape):
        # autocast=False: under a mixed policy the ranges stay float32 when read in
        # call() (the fake-quant op takes float32 min/max).
        kw = dict(
            shape=(), trainable=False, initializer="zeros", aggregation="mean", autocast=False
        )
        self.range_min = self.add_weight(name="range_min", **kw)
        self.range_max = self.add_weight(name="range_max", **kw)
        self.range_set = self.add_weight(name="range_set", **kw)

    def call(self, inputs, training=None):
        if self._collector is not None:  # calibration pass: float values, eager
            self._collector.append(keras.ops.convert_to_numpy(inputs))
            return inputs
        x = tf.cast(inputs, "float32")
        lo, hi = self.range_min, self.range_max
        if training:
            decay = self.ema_decay
            seen = self.range_set > 0
            # No gradient through the batch range (as tfmot and PyTorch observers):
            # backpropagating into reduce_min/max costs full passes over x per step.
            batch_lo = tf.stop_gradient(tf.reduce_min(x))
            batch_hi = tf.stop_gradient(tf.reduce_max(x))
            lo = tf.minimum(tf.where(seen, decay * lo + (1 - decay) * batch_lo, batch_lo), 0.0)
            hi = tf.maximum(tf.where(seen, decay * hi + (1 - decay) * batch_hi, batch_hi), 0.0)
            self.range_min.assign(lo)
            self.range_max.assign(hi)
            self.range_set.assign(1.0)
        return tf.cast(_ops.fake_quant_activation(x, lo, hi, self.num_bits), inputs.dtype)

    def set_range(self, min_value: float, max_value: float) -> None:
        """Set the range by hand (calibration); it is widened to include zero."""
        self.range_min.assign(min(float(min_value), 0.0))
        self.range_max.assign(max(float(max_value), 0.0))
        self.range_set.assign(1.0)

    @property
    def is_range_set(self) -> bool:
        return self.built and float(keras.ops.convert_to_numpy(self.range_set)) > 0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_bits=self.num_bits, ema_decay=self.ema_decay)
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeWrapper(Wrapper):
    """Runs a layer with a fake-quantized kernel and a fake-quantized output.

    The wrapped layer computes as usual through `stateless_call`, with its
    kernel replaced by the scheme's fake-quantized kernel, so any layer with
    a kernel works without re-implementing its math.

    Args:
        layer: the layer to wrap (built or not).
        weight_scheme: a `tfcompress.quantize.schemes` name (`"int8"`,
            `"int4"`, `"int2"`, `"binary"`), or `None` for no weights.
        granularity: `"per_channel"`, `"depthwise"` or `"per_tensor"`.
        kernel_attr: attribute of `layer` holding the kernel.
        quantize_output: add an `ActivationQuantizer` on the output.
        ema_decay: passed to the output quantizer.
        preserve_sparsity: keep the kernel's zeros (PQAT): the kernel is
            multiplied by a fixed 0/1 mask (`sparsity_mask`, set by
            `quantize_model` from the float kernel). Without a weight scheme
            (embedding tables), every trainable weight of rank >= 2 gets
            such a mask (`table_masks`), so pruned table entries stay zero.
        preserve_clusters: keep a clustered kernel's shared values (CQAT):
            the number of clusters, or 0. Weights of one cluster
            (`cluster_ids`) compute with their mean, so they stay one value.
            Without a weight scheme (embedding tables), every trainable
            weight of rank >= 2 gets such ids (`table_cluster_ids`; -1 for a
            table that is not clustered, which trains freely).
        **kwargs: base `Layer` arguments.

    Example:

    >>> w = QuantizeWrapper(keras.layers.Conv2D(8, 3), weight_scheme="int8",
    ...                     granularity="per_channel", name="quant_conv")
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        weight_scheme: str | WeightScheme | None = None,
        granularity: str | None = None,
        kernel_attr: str = "kernel",
        quantize_output: bool = True,
        ema_decay: float = 0.99,
        preserve_sparsity: bool = False,
        preserve_clusters: int = 0,
        **kwargs: Any,
    ) -> None:
        # The wrapper computes in the wrapped layer's dtype policy (a float32 head under
        # mixed precision stays float32).
        if "dtype" not in kwargs and getattr(layer, "dtype_policy", None) is not None:
            kwargs["dtype"] = layer.dtype_policy
        super().__init__(layer, **kwargs)
        if not isinstance(preserve_clusters, int) or preserve_clusters < 0:
            raise ValueError(
                "preserve_clusters is a number of clusters (0 for off). "
                f"Received: preserve_clusters={preserve_clusters!r}"
            )
        self.preserve_sparsity = bool(preserve_sparsity)
        self.preserve_clusters = int(preserve_clusters)
        if weight_scheme is not None:
            weight_scheme = get_scheme(weight_scheme).name
            if granularity not in _GRANULARITIES:
                raise ValueError(
                    f"granularity must be one of {_GRANULARITIES} when weights are "
                    f"quantized. Received: granularity={granularity!r}"
                )
        self.weight_scheme = weight_scheme
        self.granularity = granularity
        self.kernel_attr = kernel_attr
        self.quantize_output = bool(quantize_output)
        self.ema_decay = float(ema_decay)
        # Sigmoid / swish / tanh run as int8 LOGISTIC (+ MUL) / TANH, whose outputs sit
        # on a fixed grid: computed here on that grid, as the file computes them. A
        # sigmoid's or tanh's output range IS that grid (the converter drops any other).
        # Hard sigmoid (grid [0, 1]) and hard swish are computed as int8 ADD/MUL ops.
        self._fixed_grid = _fixed_grid_activation(layer)
        self.output_quantizer = (
            ActivationQuantizer(ema_decay=ema_decay, name="output_quant", dtype=self.dtype_policy)
            if quantize_output and self._fixed_grid not in _ops.FIXED_GRIDS
            else None
        )
        # keras-hub's ReversibleEmbedding also runs as the tied LM head (reverse=True):
        # logits get their own range, apart from the embedding lookups'.
        self.reverse_quantizer = (
            ActivationQuantizer(
                ema_decay=ema_decay, name="reverse_output_quant", dtype=self.dtype_policy
            )
            if quantize_output and "reverse" in _call_arguments(layer)
            else None
        )
        # Traced calls other than reverse=True: 0 when the model only runs the tied LM
        # head through this wrapper (keras-hub OPT looks tokens up inside its
        # TokenAndPositionEmbedding), whose output range then never sees data.
        self._forward_calls = 0

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.output_quantizer is not None and not self.output_quantizer.built:
            self.output_quantizer.build(None)
        if self.reverse_quantizer is not None and not self.reverse_quantizer.built:
            self.reverse_quantizer.build(None)
        self._masked = []
        if self.weight_scheme is None and self.preserve_sparsity:
            self._masked = [
                i for i, v in enumerate(self.layer.trainable_variables) if len(v.shape) >= 2
            ]
            self.table_masks = [
                self.add_weight(
                    name=f"{self.layer.trainable_variables[i].name}_sparsity_mask",
                    shape=tuple(self.layer.trainable_variables[i].shape),
                    initializer="ones",
                    trainable=False,
                )
                for i in self._masked
            ]
        self._tables = []
        if self.weight_scheme is None and self.preserve_clusters:
            self._tables = [
                i for i, v in enumerate(self.layer.trainable_variables) if len(v.shape) >= 2
            ]
            self.table_cluster_ids = [
                self.add_weight(
                    name=f"{self.layer.trainable_variables[i].name}_cluster_ids",
                    shape=tuple(self.layer.trainable_variables[i].shape),
                    dtype="int32",
                    initializer="zeros",
                    trainable=False,
                )
                for i in self._tables
            ]
        if self.weight_scheme is not None:
            shape = tuple(getattr(self.layer, self.kernel_attr).shape)
            if self.preserve_sparsity:
                self.sparsity_mask = self.add_weight(
                    name="sparsity_mask", shape=shape, initializer="ones", trainable=False
                )
            if self.preserve_clusters:
                self.cluster_ids = self.add_weight(
                    name="cluster_ids",
                    shape=shape,
                    dtype="int32",
                    initializer="zeros",
                    trainable=False,
                )
        self.built = True

    def quantized_kernel(self) -> tf.Tensor:
        """The kernel the layer computes with (fake-quantized, same shape)."""
        # Under a mixed precision policy, quantize the float32 kernel (the
        # fake-quant ops take float32); the layer casts the result when it runs.
        from keras.src.backend.common.variables import AutocastScope

        with AutocastScope(None):
            return self._quantized_kernel()

    def _quantized_kernel(self):
        return self.quantize_weight(tf.convert_to_tensor(getattr(self.layer, self.kernel_attr)))

    def quantize_weight(self, w: tf.Tensor) -> tf.Tensor:
        """Fake-quantize a tensor shaped like the kernel, the way this wrapper does its kernel."""
        if self.weight_scheme is None:
            raise ValueError(
                f"Layer '{self.name}' quantizes no weights, so it has no kernel to "
                "fake-quantize; wrap the layer with QuantizeWrapper(layer, weight_scheme=...). "
                "Received: weight_scheme=None"
            )
        scheme = get_scheme(self.weight_scheme)
        if self.preserve_sparsity:
            w = w * self.sparsity_mask
        if self.preserve_clusters:
            means = tf.math.unsorted_segment_mean(
                tf.reshape(w, [-1]), tf.reshape(self.cluster_ids, [-1]), self.preserve_clusters
            )
            w = tf.gather(means, self.cluster_ids)
        if self.granularity == "depthwise":  # (kh, kw, in, mult) -> channels in * mult
            shape = tf.shape(w)
            flat = tf.reshape(w, tf.concat([shape[:2], [-1]], 0))
            return tf.reshape(scheme.quantize(flat, per_channel=True), shape)
        return scheme.quantize(w, per_channel=self.granularity == "per_channel")

    def call(self, inputs, training=None, mask=None, **kwargs):
        if mask is not None and self.layer._call_has_mask_arg:
            kwargs["mask"] = mask
        if self.layer._call_has_training_arg:
            kwargs["training"] = training
        if not kwargs.get("reverse"):
            self._forward_calls += 1
        if self.weight_scheme is None:
            if kwargs.get("reverse") and self.reverse_quantizer is not None:
                return self.reverse_quantizer(self._call_masked(inputs, kwargs), training=training)
            if self._fixed_grid is not None:
                y = _ops.fixed_grid_activation(inputs, self._fixed_grid)
                return self.quantize_output_of(tf.cast(y, inputs.dtype), training)
            if self._requantizes_inputs and not training:
                inputs = _requantized_inputs(self, inputs)
            return self.quantize_output_of(self._call_masked(inputs, kwargs), training)
        kernel = getattr(self.layer, self.kernel_attr)
        with _ops.training_kernels(training):
            qkernel = self.quantized_kernel()
        return self.run_with(inputs, {id(kernel): qkernel}, training, call_kwargs=kwargs)

    def _call_masked(self, inputs, kwargs):
        if not self._masked and not self._tables:
            return self.layer(inputs, **kwargs)
        variables = self.layer.trainable_variables
        replace = {
            id(variables[i]): variables[i] * m
            for i, m in zip(self._masked, getattr(self, "table_masks", []), strict=True)
        }
        for i, ids in zip(self._tables, getattr(self, "table_cluster_ids", []), strict=True):
            w = replace.get(id(variables[i]), variables[i])
            replace[id(variables[i])] = _keep_table_clusters(w, ids, self.preserve_clusters)
        trainable = [replace.get(id(v), v) for v in variables]
        non_trainable = [v.value for v in self.layer.non_trainable_variables]
        outputs, _ = self.layer.stateless_call(trainable, non_trainable, inputs, **kwargs)
        return outputs

    def set_table_masks(self) -> None:
        """Set the table masks from the zeros the wrapped layer's tables hold now."""
        variables = self.layer.trainable_variables
        for i, mask in zip(
            getattr(self, "_masked", []), getattr(self, "table_masks", []), strict=True
        ):
            mask.assign((keras.ops.convert_to_numpy(variables[i]) != 0).astype("float32"))

    def set_table_cluster_ids(self) -> None:
        """Set the table cluster ids from the values the wrapped layer's tables hold now.

        A table with more distinct values than `preserve_clusters` is not
        clustered: its ids are -1 and it trains freely.
        """
        variables = self.layer.trainable_variables
        for i, ids in zip(
            getattr(self, "_tables", []), getattr(self, "table_cluster_ids", []), strict=True
        ):
            table = keras.ops.convert_to_numpy(variables[i])
            values, inverse = np.unique(table, return_inverse=True)
            inverse = inverse.reshape(table.shape).astype("int32")
            ids.assign(inverse if len(values) <= self.preserve_clusters else -np.ones_like(inverse))

    def quantize_output_of(self, outputs: Any, training: bool | None) -> Any:
        if self.output_quantizer is None:
            return outputs
        return self.output_quantizer(outputs, training=training)

    def run_with(
        self,
        inputs: Any,
        replace: dict[int, Any],
        training: bool | None = None,
        transform: Callable[[Any], Any] | None = None,
        call_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Run the wrapped layer with variables replaced, then the output fake-quant.

        Args:
            inputs: the layer's input.
            replace: `{id(variable): tensor}` to compute with instead.
            training: passed to the output quantizer.
            transform: optional function of the layer's outputs applied
                before the output fake-quant (the batch-statistics rescaling
                of a folded BatchNormalization).
            call_kwargs: call arguments of the wrapped layer.

        A `Dense` on an input of rank > 2 runs on the input flattened to 2-D,
        so the converter fuses its bias into one FULLY_CONNECTED (Keras'
        MatMul -> Reshape -> BiasAdd keeps the bias apart, in float); the
        output is reshaped back after its fake-quant.
        """
        from tfcompress.quantize import bias

        replace = bias.with_rounded_bias(self, replace, training)  # the file's int32 bias
        trainable = [replace.get(id(v), v) for v in self.layer.trainable_variables]
        non_trainable = [replace.get(id(v), v.value) for v in self.layer.non_trainable_variables]
        restore = None
        if (
            isinstance(self.layer, keras.layers.Dense)
            and not isinstance(inputs, (list, tuple))
            and len(inputs.shape) > 2
        ):
            restore = _flattened_output_shape(inputs, self.layer.units)
            inputs = tf.reshape(inputs, (-1, inputs.shape[-1]))
        outputs, _ = self.layer.stateless_call(
            trainable, non_trainable, inputs, **(call_kwargs or {})
        )
        if transform is not None:
            outputs = transform(outputs)
        outputs = self.quantize_output_of(outputs, training)
        return outputs if restore is None else tf.reshape(outputs, restore)

    @property
    def _requantizes_inputs(self) -> bool:
        # int8 CONCATENATION keeps one scale: the converter requantizes each input
        # that has a range of its own (a QUANTIZE op in the file).
        return isinstance(self.layer, keras.layers.Concatenate) and (
            self.output_quantizer is not None
        )

    def compute_output_spec(self, *args, **kwargs):
        if args and (self.weight_scheme is not None or self._requantizes_inputs):
            from tfcompress.quantize import bias

            if self._requantizes_inputs:
                bias.record_input_grids(self, args[0])
            else:
                bias.record_input_grid(self, args[0])
        kwargs.pop("training", None)
        if not self.layer._call_has_mask_arg:
            kwargs.pop("mask", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            weight_scheme=self.weight_scheme,
            granularity=self.granularity,
            kernel_attr=self.kernel_attr,
            quantize_output=self.quantize_output,
            ema_decay=self.ema_decay,
            preserve_sparsity=self.preserve_sparsity,
            preserve_clusters=self.preserve_clusters,
        )
        return config


def _requantized_inputs(wrapper, inputs):
    """Each input with a range of its own, moved onto the Concatenate's grid as the file does.

    The file's QUANTIZE op runs in XNNPACK, which rounds by its own rule
    (`_ops.requantize_xnnpack`); an input without a range of its own (its
    producer writes straight onto the Concatenate's grid) is rounded by the
    output fake-quant, as before. Left out where the graph is traced for the
    converter, which makes that QUANTIZE op itself.
    """
    from tfcompress.quantize import bias

    ranges = bias.input_ranges(wrapper)
    quantizer = wrapper.output_quantizer
    if (
        ranges is None
        or not isinstance(inputs, (list, tuple))
        or len(ranges) != len(inputs)
        or quantizer._collector is not None  # calibrating
        or _ops.in_saved_model_trace()
    ):
        return inputs
    lo = tf.cast(quantizer.range_min, "float32")
    hi = tf.cast(quantizer.range_max, "float32")
    moved = []
    for x, grid in zip(inputs, ranges):
        if grid is None:
            moved.append(x)
            continue
        xf = tf.cast(x, "float32")
        y = _ops.requantize_xnnpack(xf, grid[0], grid[1], lo, hi)
        # Ranges not measured yet (min == max == 0): unchanged.
        moved.append(tf.cast(tf.where((hi > lo) & (grid[1] > grid[0]), y, xf), x.dtype))
    return moved


def _keep_table_clusters(w, ids, n):
    """`w` with each cluster (`ids` >= 0) at its mean; entries with id -1 unchanged."""
    flat_ids = tf.reshape(ids, [-1])
    means = tf.math.unsorted_segment_mean(tf.reshape(w, [-1]), flat_ids, n)
    kept = tf.gather(means, tf.maximum(ids, 0))
    return tf.where(ids >= 0, tf.cast(kept, w.dtype), w)


def _fixed_grid_activation(layer):
    """The activation name of an `Activation` layer computed as the int8 file computes it.

    `"sigmoid"`, `"silu"` (swish), `"tanh"` or `"hard_sigmoid"` (on a fixed grid),
    `"hard_silu"` (hard swish, as int8 ADD/MUL ops); `None` for any other layer.
    """
    activation = keras.layers.Activation
    if not isinstance(layer, activation) or type(layer).call is not activation.call:
        return None
    name = keras.activations.serialize(layer.activation)
    aliases = {"swish": "silu", "hard_swish": "hard_silu"}
    name = aliases.get(name, name) if isinstance(name, str) else None
    fixed = ("sigmoid", "silu", "tanh", "hard_sigmoid", "hard_silu")
    return name if name in fixed else None


def _call_arguments(layer):
    import inspect

    try:
        return inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return {}


def _flattened_output_shape(inputs, units):
    """The shape a Dense output flattened to 2-D gets back: static where it is known."""
    dims = list(inputs.shape[:-1])
    if all(d is not None for d in dims[1:]):
        return [-1] + [int(d) for d in dims[1:]] + [int(units)]
    return tf.concat([tf.shape(inputs)[:-1], [int(units)]], 0)


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeSeparableConv(Wrapper):
    """A `SeparableConv1D/2D` as the two int8 ops the converter makes of it.

    The converter splits a separable convolution into a DEPTHWISE_CONV_2D and
    a 1x1 CONV_2D; the tensor between them needs its own range, or the pair
    stays float. This wrapper computes the same split: depthwise kernel
    fake-quantized per channel, the intermediate tensor fake-quantized
    (`intermediate_quantizer`), pointwise kernel fake-quantized per output
    channel, bias and a fusable activation, then the output range.

    Args:
        layer: a `keras.layers.SeparableConv1D` or `SeparableConv2D`
            (channels last; its activation linear, ReLU or ReLU6).
        weight_scheme: a `tfcompress.quantize.schemes` name.
        ema_decay: decay of the activation ranges.
        **kwargs: base `Layer` arguments.

    Example:

    >>> q = QuantizeSeparableConv(keras.layers.SeparableConv2D(16, 3), weight_scheme="int8")
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        weight_scheme: str | WeightScheme = "int8",
        ema_decay: float = 0.99,
        **kwargs: Any,
    ) -> None:
        super().__init__(layer, **kwargs)
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(
                f"QuantizeSeparableConv needs channels_last. Received: "
                f"data_format={layer.data_format!r} (layer '{layer.name}')"
            )
        self.weight_scheme = get_scheme(weight_scheme).name
        self.ema_decay = float(ema_decay)
        self.intermediate_quantizer = ActivationQuantizer(
            ema_decay=ema_decay, name="intermediate_quant"
        )
        self.output_quantizer = ActivationQuantizer(ema_decay=ema_decay, name="output_quant")
        self.quantize_output = True

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.intermediate_quantizer.build(None)
        self.output_quantizer.build(None)
        self.built = True

    def quantized_kernels(self) -> tuple[tf.Tensor, tf.Tensor]:
        """`(depthwise kernel, pointwise kernel)` as 2-D conv kernels, fake-quantized.

        A 1-D layer's kernels get a leading axis of 1 first: the converter
        runs it as a 2-D convolution, and the per-channel ranges must sit on
        the axis they will have there.
        """
        from keras.src.backend.common.variables import AutocastScope

        scheme = get_scheme(self.weight_scheme)
        with AutocastScope(None):
            dw = tf.convert_to_tensor(self.layer.depthwise_kernel)
            pw = tf.convert_to_tensor(self.layer.pointwise_kernel)
        if len(dw.shape) == 3:
            dw, pw = dw[None], pw[None]
        shape = tf.shape(dw)  # (kh, kw, in, mult) -> one channel per in * mult
        flat = tf.reshape(dw, tf.concat([shape[:2], [-1]], 0))
        dw = tf.reshape(scheme.quantize(flat, per_channel=True), shape)
        return dw, scheme.quantize(pw, per_channel=True)

    def call(self, inputs, training=None):
        layer = self.layer
        with _ops.training_kernels(training):
            dw, pw = self.quantized_kernels()
        dtype = layer.compute_dtype
        one_d = len(layer.depthwise_kernel.shape) == 3
        x = inputs[:, None] if one_d else inputs
        strides, dilation = tuple(layer.strides), tuple(layer.dilation_rate)
        if one_d:
            strides, dilation = (1,) + strides, (1,) + dilation
        x = keras.ops.depthwise_conv(
            x,
            keras.ops.cast(dw, dtype),
            strides=strides,
            padding=layer.padding,
            dilation_rate=dilation,
        )
        x = self.intermediate_quantizer(x, training=training)
        y = keras.ops.conv(x, keras.ops.cast(pw, dtype), strides=1, padding="valid")
        if layer.use_bias:
            b = layer.bias
            if not training:  # the int32 bias of the 1x1 CONV_2D (quantize/bias.py)
                from tfcompress.quantize import bias

                step = bias.quantizer_scale(self.intermediate_quantizer)
                # From the float kernel: a second reader of the FakeQuant keeps it float.
                pw_float = tf.convert_to_tensor(layer.pointwise_kernel)
                step = step * bias.weight_scales(pw_float, "per_channel")
                b = bias.round_onto_int32_grid(tf.convert_to_tensor(b), step)
            y = y + keras.ops.cast(b, dtype)
        if layer.activation is not None:
            y = layer.activation(y)
        y = self.output_quantizer(y, training=training)
        return y[:, 0] if one_d else y

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(weight_scheme=self.weight_scheme, ema_decay=self.ema_decay)
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeAffine(Wrapper):
    """`Rescaling` / `Normalization` as an int8 MUL and ADD with a range between them.

    Both compute `x * a + b`; the converter writes a MUL and an ADD, and
    without a range on the product both stay float. This wrapper computes
    the product, fake-quantizes it (`product_quantizer`), adds the shift and
    fake-quantizes the output.

    Args:
        layer: a `keras.layers.Rescaling` or `keras.layers.Normalization`
            (channels last).
        ema_decay: decay of the activation ranges.
        **kwargs: base `Layer` arguments.

    Example:

    >>> q = QuantizeAffine(keras.layers.Rescaling(1 / 127.5, offset=-1.0))
    """

    def __init__(self, layer: keras.layers.Layer, ema_decay: float = 0.99, **kwargs: Any) -> None:
        super().__init__(layer, **kwargs)
        if not isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            raise TypeError(
                f"QuantizeAffine wraps Rescaling or Normalization. Received: layer={layer!r}"
            )
        self.ema_decay = float(ema_decay)
        self.product_quantizer = ActivationQuantizer(ema_decay=ema_decay, name="product_quant")
        self.output_quantizer = ActivationQuantizer(ema_decay=ema_decay, name="output_quant")

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.product_quantizer.build(None)
        self.output_quantizer.build(None)
        self.built = True

    def scale_and_shift(self) -> tuple[tf.Tensor, tf.Tensor]:
        """`(a, b)` with `layer(x) == x * a + b`."""
        layer = self.layer
        if isinstance(layer, keras.layers.Rescaling):
            return (
                tf.cast(layer.scale, layer.compute_dtype),
                tf.cast(layer.offset, layer.compute_dtype),
            )
        mean = tf.cast(layer.mean, layer.compute_dtype)
        std = tf.maximum(
            tf.sqrt(tf.cast(layer.variance, layer.compute_dtype)), keras.backend.epsilon()
        )
        if layer.invert:
            return std, mean
        return 1.0 / std, -mean / std

    def call(self, inputs, training=None):
        scale, shift = self.scale_and_shift()
        x = tf.cast(inputs, self.layer.compute_dtype) * scale
        x = self.product_quantizer(x, training=training)
        return self.output_quantizer(x + shift, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(ema_decay=self.ema_decay)
        return config
