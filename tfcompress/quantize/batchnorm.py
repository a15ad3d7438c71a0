"""BatchNormalization in QAT: folded into the conv before it, or on its own as an int8 op.

Two layers, and the planning that picks between them:

- `FoldedBatchNormWrapper`: a Conv / DepthwiseConv / Dense followed by the
  BatchNormalization that only it feeds. It computes with the folded kernel
  `fake_quant(W * gamma / sigma)` and bias `beta + (b - mean) * gamma / sigma`,
  which is exactly what the converter writes (one int8 CONV_2D /
  FULLY_CONNECTED). Until `freeze_bn_delay` training steps have passed, the
  batch statistics normalise the output (the folded conv's output rescaled
  by `sigma_moving / sigma_batch`, as in Jacob et al. 2018 / tfmot) and the
  moving statistics keep updating; after it they are frozen. The batch
  statistics come from that one folded convolution, divided back by
  `gamma / sigma_moving` per channel (PyTorch's QAT ConvBn does the same), so
  a training step runs each convolution once. Freezing at step 0 on an
  untrained network can make the QAT model's outputs constant.
- `QuantizeBatchNorm`: a BatchNormalization that cannot be folded (after a
  Concatenate or an Add, as in DenseNet's pre-activation blocks). At
  inference it is a 1x1 depthwise convolution with the per-channel scale
  `gamma / sigma` fake-quantized as its kernel and the shift as its bias:
  an int8 DEPTHWISE_CONV_2D in the file, where the converter would lower a
  plain BatchNormalization to a float MUL and ADD.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcompress._layers import Wrapper
from tfcompress.quantize import _ops, roles
from tfcompress.quantize.layers import ActivationQuantizer, QuantizeWrapper


def _foldable_classes():
    L = keras.layers
    return (L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.Dense)


def _not_foldable_classes():
    L = keras.layers
    return (
        L.Conv2DTranspose,
        L.Conv1DTranspose,
        L.Conv3DTranspose,
        L.SeparableConv1D,
        L.SeparableConv2D,
    )


def _bn_axis_is_last(bn):
    axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
    return axis is not None and axis in (-1, len(bn.input.shape) - 1)


def plan_folds(model, plans, inbound, producer, consumers, freeze_bn_delay):
    """Mark each foldable Conv/Dense -> BatchNormalization pair in `plans` (in place)."""
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        if plans[layer.name].action != "batchnorm":
            continue
        nodes = inbound(layer)
        if len(nodes) != 1 or len(nodes[0].input_tensors) != 1 or not _bn_axis_is_last(layer):
            continue
        conv = producer(nodes[0].input_tensors[0])
        p = plans.get(getattr(conv, "name", None))
        if (
            p is not None
            and p.action == "weights"
            and p.fold_bn is None
            and isinstance(conv, _foldable_classes())
            and not isinstance(conv, _not_foldable_classes())
            and getattr(conv, "groups", 1) == 1
            and p.split_activation is None
            and _activation_name(conv) == "linear"
            and consumers[id(conv)] == 1
            and len(inbound(conv)) == 1
            and getattr(conv, "data_format", "channels_last") == "channels_last"
        ):
            p.fold_bn = layer
            p.role = roles.get_role("folded_weights")
            plans[layer.name].role = roles.get_role("folded_bn")
            plans[layer.name].action = "folded_bn"


def _activation_name(layer):
    from tfcompress.quantize.composite import _activation_name as name

    return name(layer)


def fold(
    conv: keras.layers.Layer, bn: keras.layers.BatchNormalization
) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias (numpy) of `conv` followed by inference-mode `bn`, as one layer."""
    kernel = np.asarray(conv.kernel.numpy())
    channels = bn.moving_mean.shape[-1]
    bias = np.asarray(conv.bias.numpy()) if conv.use_bias else np.zeros(channels, "float32")
    gamma = np.asarray(bn.gamma.numpy()) if bn.scale else np.ones(channels, "float32")
    beta = np.asarray(bn.beta.numpy()) if bn.center else np.zeros(channels, "float32")
    factor = gamma / np.sqrt(np.asarray(bn.moving_variance.numpy()) + bn.epsilon)
    kernel = kernel * _factor_for_kernel(conv, factor, np)
    bias = (bias - np.asarray(bn.moving_mean.numpy())) * factor + beta
    return kernel.astype("float32"), bias.astype("float32")


def _factor_for_kernel(conv, factor, xp):
    if isinstance(conv, keras.layers.DepthwiseConv2D):  # (kh, kw, in, mult)
        return xp.reshape(factor, (int(conv.kernel.shape[2]), int(conv.kernel.shape[3])))
    return factor


def _bn_terms(bn):
    """`(gamma, beta, moving mean, moving variance)` as float32 tensors."""
    channels = bn.moving_mean.shape[-1]
    gamma = tf.cast(bn.gamma, "float32") if bn.scale else tf.ones(channels)
    beta = tf.cast(bn.beta, "float32") if bn.center else tf.zeros(channels)
    return (gamma, beta, tf.cast(bn.moving_mean, "float32"), tf.cast(bn.moving_variance, "float32"))


# tf.nn.fused_batch_norm raises a smaller epsilon to this (cuDNN's minimum).
_FUSED_MIN_EPSILON = 1.001e-5


def batch_normalize(
    x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Training-mode batch normalisation over every axis but the last.

    One fused kernel (`FusedBatchNormV3`, forward and gradient), where Keras 3's
    BatchNormalization composes moments and arithmetic: the batch-statistics
    phase of QAT costs about what a plain BatchNormalization does.

    Args:
        x: the tensor, channels on the last axis (rank 2 to 4).
        gamma: per-channel scale (float32).
        beta: per-channel shift (float32).
        epsilon: added to the variance.

    Returns:
        `(normalised x in x's dtype, batch mean, biased batch variance)`, the
        statistics in float32, as `tf.nn.moments` gives them.

    Example:

    >>> y, mean, variance = batch_normalize(x, tf.ones(8), tf.zeros(8), 1e-3)
    """
    rank = len(x.shape)
    if epsilon < _FUSED_MIN_EPSILON or not 2 <= rank <= 4:
        axes = list(range(rank - 1))
        mean, variance = tf.nn.moments(tf.cast(x, "float32"), axes)
        out = tf.nn.batch_normalization(tf.cast(x, "float32"), mean, variance, beta, gamma, epsilon)
        return tf.cast(out, x.dtype), mean, variance
    shape = tf.shape(x)
    x4 = x if rank == 4 else tf.reshape(x, _as_4d(x))
    out, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x4, gamma, beta, epsilon=epsilon, is_training=True
    )
    # The op returns the Bessel-corrected variance; moments (and Keras) use the biased one.
    n = tf.cast(tf.size(x) // tf.shape(x)[-1], "float32")
    variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
    return (out if rank == 4 else tf.reshape(out, shape)), mean, variance


def _update_moving(bn, mean, variance):
    m = bn.momentum
    bn.moving_mean.assign(bn.moving_mean * m + tf.cast(mean, bn.moving_mean.dtype) * (1 - m))
    bn.moving_variance.assign(
        bn.moving_variance * m + tf.cast(variance, bn.moving_variance.dtype) * (1 - m)
    )


class _FreezeDelay:
    """Shared `bn_step` counter logic: batch statistics until `freeze_bn_delay` steps."""

    def _add_step(self):
        self.bn_step = self.add_weight(
            name="bn_step",
            shape=(),
            initializer="zeros",
            trainable=False,
            aggregation="mean",
            autocast=False,
        )

    def _run_frozen_or_not(self, training, batch_fn, frozen_fn):
        if not training or self.freeze_bn_delay == 0:
            return frozen_fn()
        step = self.bn_step
        self.bn_step.assign(step + 1.0)
        if self.freeze_bn_delay is None:
            return batch_fn()
        return tf.cond(step < float(self.freeze_bn_delay), batch_fn, frozen_fn)

    @property
    def batchnorm_frozen(self):
        """Whether training now uses the moving statistics (known after `build`)."""
        if self.freeze_bn_delay is None:
            return False
        return float(self.bn_step.numpy()) >= self.freeze_bn_delay


def _check_delay(freeze_bn_delay):
    if freeze_bn_delay is not None and (
        not isinstance(freeze_bn_delay, int)
        or isinstance(freeze_bn_delay, bool)
        or freeze_bn_delay < 0
    ):
        raise ValueError(
            "freeze_bn_delay is a number of training steps >= 0, or None (never "
            f"freeze). Received: freeze_bn_delay={freeze_bn_delay!r}"
        )


@keras.saving.register_keras_serializable(package="tfcompress")
class FoldedBatchNormWrapper(_FreezeDelay, QuantizeWrapper):
    """A Conv/Dense and the BatchNormalization after it, trained as the one int8 op they become.

    Args:
        layer: the Conv1D / Conv2D / DepthwiseConv2D / Dense (its activation
            must be linear; it gets a bias, as the folded op has one).
        batchnorm: the BatchNormalization that follows it (its statistics
            keep updating until `freeze_bn_delay` training steps).
        freeze_bn_delay: training steps before the statistics freeze; `None`
            never freezes, 0 freezes from the start.
        **kwargs: `QuantizeWrapper` arguments (`weight_scheme`, `granularity`, ...).

    Example:

    >>> w = FoldedBatchNormWrapper(keras.layers.Conv2D(8, 3, use_bias=True),
    ...                            keras.layers.BatchNormalization(), weight_scheme="int8",
    ...                            granularity="per_channel", freeze_bn_delay=1000)
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        batchnorm: keras.layers.BatchNormalization | dict[str, Any],
        freeze_bn_delay: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(layer, **kwargs)
        _check_delay(freeze_bn_delay)
        if isinstance(batchnorm, dict):
            batchnorm = keras.saving.deserialize_keras_object(batchnorm)
        if not isinstance(batchnorm, keras.layers.BatchNormalization):
            raise TypeError(
                "batchnorm must be a keras.layers.BatchNormalization. "
                f"Received: batchnorm={batchnorm!r}"
            )
        if self.weight_scheme is None:
            raise ValueError(
                "FoldedBatchNormWrapper needs a weight_scheme. Received: weight_scheme=None"
            )
        self.batchnorm = batchnorm
        self.freeze_bn_delay = freeze_bn_delay

    def build(self, input_shape=None):
        super().build(input_shape)
        if not self.batchnorm.built:
            self.batchnorm.build(self.layer.compute_output_shape(input_shape))
        self._add_step()
        self.built = True

    def folded(self) -> tuple[tf.Tensor, tf.Tensor]:
        """`(kernel, bias)` tensors of the folded op with the moving statistics (float)."""
        kernel, bias, _ = self._fold()
        return kernel, bias

    def _fold(self):
        """Folded kernel and bias, and the factor `gamma / sigma_moving` per channel."""
        gamma, beta, mean, var = _bn_terms(self.batchnorm)
        factor = gamma * tf.math.rsqrt(var + self.batchnorm.epsilon)
        kernel = tf.cast(self.layer.kernel, "float32")
        bias = tf.cast(self.layer.bias, "float32") if self.layer.use_bias else 0.0
        kernel = kernel * _factor_for_kernel(self.layer, factor, tf)
        return kernel, (bias - mean) * factor + beta, factor

    def call(self, inputs, training=None, mask=None, **kwargs):
        from keras.src.backend.common.variables import AutocastScope

        with AutocastScope(None), _ops.training_kernels(training):
            kernel, bias, factor = self._fold()
            qkernel = self.quantize_weight(kernel)
        kvar, bvar = self.layer.kernel, self.layer.bias

        def frozen():
            return self.run_with(inputs, {id(kvar): qkernel, id(bvar): bias}, training)

        def batch_stats():
            # One convolution, as PyTorch's QAT ConvBn (`_forward_approximate`):
            # y = conv(x, fake_quant(W * factor)) with the moving statistics'
            # factor = gamma / sigma_moving, so the weights quantize as at export.
            # The float conv's batch moments are those of y / factor (per
            # channel: mean / factor, variance / factor^2) and y is rescaled to
            # them. A channel with factor 0 (gamma 0) outputs beta whatever the
            # statistics, and keeps its moving statistics.
            return self.run_with(
                inputs,
                {id(kvar): qkernel, id(bvar): tf.zeros_like(bias)},
                training,
                transform=lambda y: self._normalise_with_batch_stats(y, factor),
            )

        return self._run_frozen_or_not(training, batch_stats, frozen)

    def _normalise_with_batch_stats(self, y, factor):
        """`y = conv(x, fake_quant(W * factor))` batch-normalised; moving statistics updated."""
        gamma, beta, moving_mean, moving_var = _bn_terms(self.batchnorm)
        # The float conv's output less its bias (which the batch mean cancels).
        z = y * tf.cast(tf.math.reciprocal_no_nan(factor), y.dtype)
        out, mean, variance = batch_normalize(z, gamma, beta, self.batchnorm.epsilon)
        live = tf.not_equal(factor, 0.0)
        conv_bias = tf.cast(self.layer.bias, "float32")
        _update_moving(
            self.batchnorm,
            tf.where(live, mean + conv_bias, moving_mean),
            tf.where(live, variance, moving_var),
        )
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            batchnorm=keras.saving.serialize_keras_object(self.batchnorm),
            freeze_bn_delay=self.freeze_bn_delay,
        )
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeBatchNorm(_FreezeDelay, Wrapper):
    """A BatchNormalization that cannot be folded, as an int8 1x1 depthwise convolution.

    Training before `freeze_bn_delay` steps runs the BatchNormalization
    itself (batch statistics, moving statistics updated); afterwards, and
    at inference, it computes `x * fake_quant(gamma / sigma) + shift` as a
    1x1 depthwise convolution (inputs of rank 2 and 3 are reshaped to 4-D
    around it). The output gets an EMA range.

    Args:
        layer: the `keras.layers.BatchNormalization` (channels on the last axis).
        freeze_bn_delay: training steps before the statistics freeze (`None`: never).
        ema_decay: decay of the output range.
        quantize_output: give the output a range; `False` when a ReLU the
            converter fuses into the DEPTHWISE_CONV_2D follows (its range is
            the op's output range).
        **kwargs: base `Layer` arguments.

    Example:

    >>> q = QuantizeBatchNorm(keras.layers.BatchNormalization(), freeze_bn_delay=1000)
    """

    def __init__(
        self,
        layer: keras.layers.BatchNormalization,
        freeze_bn_delay: int | None = None,
        ema_decay: float = 0.99,
        quantize_output: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(layer, **kwargs)
        _check_delay(freeze_bn_delay)
        self.freeze_bn_delay = freeze_bn_delay
        self.ema_decay = float(ema_decay)
        self.quantize_output = bool(quantize_output)
        self.output_quantizer = (
            ActivationQuantizer(ema_decay=ema_decay, name="output_quant")
            if self.quantize_output
            else None
        )

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.output_quantizer is not None:
            self.output_quantizer.build(None)
        self._add_step()
        self.built = True

    def scale_and_shift(self) -> tuple[tf.Tensor, tf.Tensor]:
        """`(scale, shift)` of the inference-mode BatchNormalization, per channel."""
        gamma, beta, mean, var = _bn_terms(self.layer)
        scale = gamma * tf.math.rsqrt(var + self.layer.epsilon)
        return scale, beta - mean * scale

    def call(self, inputs, training=None, mask=None):
        def batch_stats():
            # Statistics across replicas, or a frozen layer (Keras then uses the
            # moving statistics): Keras' own layer.
            if self.layer.synchronized or not self.layer.trainable:
                return self.layer(inputs, training=True)
            gamma, beta, _, _ = _bn_terms(self.layer)
            out, mean, variance = batch_normalize(inputs, gamma, beta, self.layer.epsilon)
            _update_moving(self.layer, mean, variance)
            return out

        def frozen():
            scale, shift = self.scale_and_shift()
            # Per channel, as DepthwiseConv2D's (1, 1, C, 1) kernel is quantized.
            flat = tf.reshape(scale, (1, 1, -1))
            kernel = tf.reshape(_ops.fake_quant_symmetric(flat, 8, True), (1, 1, -1, 1))
            shift = self._int32_shift(shift, scale, training)
            x = tf.cast(inputs, "float32")
            rank = len(x.shape)
            x4 = x if rank == 4 else tf.reshape(x, _as_4d(x))
            y = tf.nn.depthwise_conv2d(x4, kernel, (1, 1, 1, 1), "VALID") + shift
            y = y if rank == 4 else tf.reshape(y, tf.shape(x))
            return tf.cast(y, inputs.dtype)

        out = self._run_frozen_or_not(training, batch_stats, frozen)
        if self.output_quantizer is None:
            return out
        return self.output_quantizer(out, training=training)

    def _int32_shift(self, shift, scale, training):
        # The depthwise op's bias, rounded as the converter stores it (quantize/bias.py);
        # its weight scales from the float `scale` (a second reader of the FakeQuant
        # output would keep the op float).
        from tfcompress.quantize import bias

        input_scale = None if training else bias.input_scale(self)
        if input_scale is None:
            return shift
        return bias.round_onto_int32_grid(shift, input_scale * tf.abs(scale) / 127.0)

    def compute_output_spec(self, *args, **kwargs):
        from tfcompress.quantize import bias

        if args:
            bias.record_input_grid(self, args[0])
        return super().compute_output_spec(*args, **kwargs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            freeze_bn_delay=self.freeze_bn_delay,
            ema_decay=self.ema_decay,
            quantize_output=self.quantize_output,
        )
        return config


def _as_4d(x):
    shape = tf.shape(x)
    if len(x.shape) == 2:
        return tf.stack([shape[0], 1, 1, shape[1]])
    if len(x.shape) == 3:
        return tf.stack([shape[0], shape[1], 1, shape[2]])
    return tf.concat([shape[:1], [-1, 1], shape[-1:]], 0)


class FoldedWeightsRole(roles.WeightsRole):
    """A Conv/Dense with the BatchNormalization after it folded in."""

    name = "folded_weights"

    def build(self, layer, plan, ctx):
        if ctx.config.preserve_clusters:
            roles._count_clusters(layer, plan)  # raises: folding breaks clusters
        return FoldedBatchNormWrapper(
            ctx.copy_layer(layer, {"use_bias": True}, rebuild=True),
            ctx.copy_layer(plan.fold_bn, rebuild=True),
            freeze_bn_delay=ctx.config.freeze_bn_delay,
            weight_scheme=plan.scheme,
            granularity=plan.handler.granularity,
            kernel_attr=plan.handler.kernel_attr,
            quantize_output=plan.rounds_onto is None,
            ema_decay=ctx.config.ema_decay,
            preserve_sparsity=ctx.config.preserve_sparsity,
            name=ctx.unique(f"quant_{layer.name}"),
        )

    def copy_weights(self, new, original, plan):
        weights = original.get_weights()
        if not original.use_bias:
            weights = weights + [np.zeros(new.layer.bias.shape, "float32")]
        new.layer.set_weights(weights)
        new.batchnorm.set_weights(plan.fold_bn.get_weights())
        roles.init_kernel_state(new)


class FoldedBatchNormRole(roles.Role):
    """The BatchNormalization folded into the layer before it: an Identity in its place."""

    name = "folded_bn"
    keeps_scale = True

    def build(self, layer, plan, ctx):
        return keras.layers.Identity(name=layer.name)

    def copy_weights(self, new, original, plan):
        pass


class BatchNormRole(roles.Role):
    """A BatchNormalization that is not folded: `QuantizeBatchNorm` (or an output range)."""

    name = "batchnorm"
    quantized = True
    quantize_inputs = True
    marks_output = True

    def build(self, layer, plan, ctx):
        if not _bn_axis_is_last(layer):
            return roles.get_role("output").build(layer, plan, ctx)
        return QuantizeBatchNorm(
            ctx.copy_layer(layer, rebuild=True),
            freeze_bn_delay=ctx.config.freeze_bn_delay,
            ema_decay=ctx.config.ema_decay,
            quantize_output=plan.rounds_onto is None,
            name=ctx.unique(f"quant_{layer.name}"),
        )

    def copy_weights(self, new, original, plan):
        new.layer.set_weights(original.get_weights())


for _role in (FoldedWeightsRole(), FoldedBatchNormRole(), BatchNormRole()):
    roles.register_role(_role)
