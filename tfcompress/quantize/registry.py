"""Which Keras layers the QAT transform knows, and what it does with each.

Roles:
    "weights": the kernel is fake-quantized (per-channel or per-tensor, the
        way the TFLite converter lays out that op) and the output too.
    "output": no weights to quantize; the output gets a moving-average range
        (Add, Concatenate, activations, average pooling, ...).
    "passthrough": the converter keeps the input scale (max pooling, Flatten,
        Reshape, Dropout, ...): nothing is added.
    "composite": a layer that builds Dense / EinsumDense / attention layers in
        its own code (keras-hub's `TransformerEncoder`): wrapped whole in a
        `QuantizeComposite`, which fake-quantizes the kernels inside it (per
        tensor) and the activations between them.

Lookup follows the class hierarchy, so a subclass of `Dense` is a `Dense`.
Register your own layer with `register_layer(MyLayer, LayerHandler(...))`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from tfcompress.quantize import bias

if TYPE_CHECKING:
    import keras

    from tfcompress.quantize.roles import Role


@dataclasses.dataclass(frozen=True)
class LayerHandler:
    """What the QAT transform does with one layer class.

    Attributes:
        role: `"weights"`, `"output"`, `"passthrough"` or `"composite"`.
        granularity: for `"weights"`: `"per_channel"` (last kernel axis),
            `"depthwise"` (per channel of `in * multiplier`) or `"per_tensor"`
            (Dense: the converter transposes its kernel, so per-channel along
            Keras' last axis would be the wrong axis).
        kernel_attr: attribute holding the kernel variable.

    The behaviour (which layer replaces the original, how its weights are
    copied) lives on the role object: `handler.behaviour` is the registered
    `tfcompress.quantize.roles.Role` named by `role`.
    """

    role: str
    granularity: str | None = None
    kernel_attr: str = "kernel"

    def __post_init__(self) -> None:
        from tfcompress.quantize import roles

        if self.role not in roles.role_names():
            raise ValueError(
                f"LayerHandler.role must be one of {roles.role_names()} (add one "
                "with tfcompress.quantize.roles.register_role). "
                f"Received: role={self.role!r}"
            )
        if self.role == "weights" and self.granularity not in (
            "per_channel",
            "depthwise",
            "per_tensor",
        ):
            raise ValueError(
                "A 'weights' handler needs granularity 'per_channel', 'depthwise' "
                f"or 'per_tensor'. Received: granularity={self.granularity!r}"
            )

    @property
    def behaviour(self) -> Role:
        """The `tfcompress.quantize.roles.Role` that carries out this handler."""
        from tfcompress.quantize import roles

        return roles.get_role(self.role)


_HANDLERS: list[tuple[type, LayerHandler]] = []  # (class, handler); later registrations win


def register_layer(layer_class: type[keras.layers.Layer], handler: LayerHandler) -> LayerHandler:
    """Tell the QAT transform how to treat `layer_class` (and its subclasses)."""
    _HANDLERS.insert(0, (layer_class, handler))
    return handler


def handler_for(layer: keras.layers.Layer) -> LayerHandler | None:
    """The `LayerHandler` for `layer`, or `None` when the layer is unknown."""
    if not _KERAS_HUB_REGISTERED and any(
        (k.__module__ or "").startswith(("keras_hub", "keras_nlp")) for k in type(layer).__mro__
    ):
        _register_keras_hub()
    for klass in type(layer).__mro__:
        for registered, handler in _HANDLERS:
            if klass is registered:
                return handler
    return None


def _register_defaults() -> None:
    import keras
    from keras.src.applications.convnext import LayerScale

    # Imported for the roles they register (BatchNorm, average pooling).
    from tfcompress.quantize import batchnorm, pooling  # noqa: F401

    L = keras.layers
    register_layer(L.Conv2D, LayerHandler("weights", "per_channel"))
    # TFLite runs CONV_3D in float (no int8 kernel): a per-tensor range converts, a
    # per-channel one on the 5-D kernel does not.
    register_layer(L.Conv3D, LayerHandler("weights", "per_tensor"))
    # Conv1D runs as a Conv2D on an expanded kernel: a per-channel range on the 3-D
    # kernel lands on the wrong axis after the reshape, and the converter refuses it.
    register_layer(L.Conv1D, LayerHandler("weights", "per_tensor"))
    # Transposed kernels are (..., out, in): per-channel on the last axis would be wrong.
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        register_layer(cls, LayerHandler("weights", "per_tensor"))
    register_layer(L.DepthwiseConv2D, LayerHandler("weights", "depthwise"))
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        register_layer(cls, LayerHandler("separable"))
    register_layer(L.Dense, LayerHandler("weights", "per_tensor"))
    register_layer(L.EinsumDense, LayerHandler("weights", "per_tensor"))
    # An output range: the converter stores the table at that scale (an int8 GATHER).
    register_layer(L.Embedding, LayerHandler("output"))
    register_layer(L.BatchNormalization, LayerHandler("batchnorm"))
    for cls in (L.Rescaling, L.Normalization):
        register_layer(cls, LayerHandler("affine"))
    register_layer(L.MultiHeadAttention, LayerHandler("composite"))
    # Its mean is an int8 MEAN in the file: QuantizeComposite gives it a range (composite.py).
    register_layer(L.LayerNormalization, LayerHandler("composite"))
    # Elementwise layers: an output range is all the converter needs.
    for cls in (
        L.Add,
        L.Subtract,
        L.Multiply,
        L.Average,
        L.Concatenate,
        L.Maximum,
        L.Minimum,
        L.ReLU,
        L.Activation,
        L.Softmax,
        L.LeakyReLU,
        L.PReLU,
        L.ELU,
        L.GlobalAveragePooling1D,
        L.GlobalAveragePooling2D,
        L.GlobalAveragePooling3D,
        L.AveragePooling3D,
        LayerScale,
    ):
        register_layer(cls, LayerHandler("output"))
    for cls in (
        L.InputLayer,
        L.MaxPooling1D,
        L.MaxPooling2D,
        L.MaxPooling3D,
        L.GlobalMaxPooling1D,
        L.GlobalMaxPooling2D,
        L.GlobalMaxPooling3D,
        L.Flatten,
        L.Reshape,
        L.Dropout,
        L.SpatialDropout1D,
        L.SpatialDropout2D,
        L.SpatialDropout3D,
        L.ZeroPadding1D,
        L.ZeroPadding2D,
        L.ZeroPadding3D,
        L.Cropping1D,
        L.Cropping2D,
        L.Cropping3D,
        L.Identity,
        L.Permute,
        L.UpSampling1D,
        L.UpSampling2D,
        L.UpSampling3D,
        L.GaussianNoise,
        L.GaussianDropout,
        L.ActivityRegularization,
        L.RepeatVector,
    ):
        register_layer(cls, LayerHandler("passthrough"))
    # TFLite's int8 AVERAGE_POOL_2D keeps its input scale, and rounds onto it (pooling.py).
    for cls in (L.AveragePooling1D, L.AveragePooling2D):
        register_layer(cls, LayerHandler("average_pooling"))


_KERAS_HUB_REGISTERED = False


def _register_keras_hub() -> None:
    """keras-hub's layers, registered the first time one is looked up (no import before)."""
    global _KERAS_HUB_REGISTERED
    _KERAS_HUB_REGISTERED = True
    try:
        import keras_hub
    except ImportError:
        return
    layers = keras_hub.layers
    register_layer(layers.TransformerEncoder, LayerHandler("composite"))
    register_layer(layers.TransformerDecoder, LayerHandler("composite"))
    try:  # ViT's whole encoder is one layer: its blocks' Dense and attention inside
        from keras_hub.src.models.vit.vit_layers import ViTEncoder, ViTPatchingAndEmbedding

        register_layer(ViTEncoder, LayerHandler("composite"))
        register_layer(ViTPatchingAndEmbedding, LayerHandler("composite"))  # its patch conv
    except ImportError:
        pass
    register_layer(layers.PositionEmbedding, LayerHandler("output"))
    # token + position tables summed: each table int8 over its own range (an int8
    # GATHER, an int8 constant: QuantizeComposite's "table" hook), the sum its own range.
    register_layer(layers.TokenAndPositionEmbedding, LayerHandler("composite"))


_register_defaults()
bias.set_passthrough_test(
    lambda layer: (handler := handler_for(layer)) is not None and handler.role == "passthrough"
)
