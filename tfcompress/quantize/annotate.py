"""Choosing which layers are quantized: `quantize_annotate_layer` (`quantize_apply` is in
`transform.py`, which reads the annotations)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tfcompress import _flavor

if TYPE_CHECKING:
    import keras

    from tfcompress.quantize.schemes import WeightScheme

_ATTR = "_tfcompress_quantize"


def quantize_annotate_layer(
    to_annotate: keras.layers.Layer,
    quantize_config: Any = None,
    *,
    weight_scheme: str | WeightScheme | None = None,
    quantize: bool = True,
) -> keras.layers.Layer:
    """Mark a layer: quantize it (optionally with its own scheme) or keep it in float.

    For Keras 3 layers the layer itself is returned, marked; build the model
    with it and call `quantize_apply` (only marked layers are quantized) or
    `quantize_model` (everything is, except layers marked `quantize=False`).
    For tf_keras layers this is tfmot's `quantize_annotate_layer`.

    Args:
        to_annotate: a Keras 3 or tf_keras layer.
        quantize_config: tf_keras only: a tfmot `QuantizeConfig`.
        weight_scheme: Keras 3 only: this layer's weight scheme (`"int4"`, ...).
        quantize: `False` keeps the layer in float.

    Returns:
        The annotated layer.

    Example:

    >>> head = quantize_annotate_layer(keras.layers.Dense(10), quantize=False)
    """
    if _flavor._is_from(to_annotate, "tf_keras"):
        if weight_scheme is not None or not quantize:
            raise ValueError(
                "weight_scheme= and quantize=False apply to Keras 3 layers; for "
                "tf_keras annotate the layers to quantize and call quantize_apply. "
                f"Received: weight_scheme={weight_scheme!r}, quantize={quantize!r}"
            )
        from tfcompress.quantize import _tfmot

        return _tfmot.tfmot_quantize().quantize_annotate_layer(to_annotate, quantize_config)
    if quantize_config is not None:
        if weight_scheme is not None or not quantize:
            raise ValueError(
                "Pass either a tfmot-style quantize_config or weight_scheme= / quantize=False, "
                f"not both. Received: quantize_config={quantize_config!r}, "
                f"weight_scheme={weight_scheme!r}, quantize={quantize!r}"
            )
        if not callable(getattr(quantize_config, "get_weights_and_quantizers", None)):
            raise ValueError(
                "quantize_config= takes a tfmot-style QuantizeConfig (with "
                "get_weights_and_quantizers, get_activations_and_quantizers and "
                "get_output_quantizers); for Keras 3 layers pass weight_scheme= (or "
                f"quantize=False) instead. Received: quantize_config={quantize_config!r}"
            )
        # Read when the layer is built (quantize_apply): its weights exist only then.
        setattr(to_annotate, _ATTR, {"tfmot_config": quantize_config})
        return to_annotate
    if weight_scheme is not None:
        from tfcompress.quantize.schemes import get_scheme

        weight_scheme = get_scheme(weight_scheme).name
    setattr(to_annotate, _ATTR, {"quantize": bool(quantize), "weight_scheme": weight_scheme})
    return to_annotate


def annotation_of(layer: keras.layers.Layer) -> dict[str, Any] | None:
    """The annotation dict of a layer, or `None`."""
    note = getattr(layer, _ATTR, None)
    if note is not None and "tfmot_config" in note:
        note = _from_tfmot_config(layer, note["tfmot_config"])
        setattr(layer, _ATTR, note)
    return note


_BITS_TO_SCHEME = {8: None, 4: "int4", 2: "int2"}


def _from_tfmot_config(layer, config):
    """Our annotation from a tfmot `QuantizeConfig` subclass on a Keras 3 layer.

    tfmot's configs name quantizers per weight and activation; our engine lays
    them out as the TFLite converter needs (per-channel conv kernels, EMA
    ranges), so only what changes the result is read: no quantizer at all
    keeps the layer in float (tfmot's `NoOpQuantizeConfig`), and the weight
    quantizers' `num_bits` picks the weight scheme.
    """

    def quantizers(method):
        pairs = getattr(config, method)(layer) or []
        return [pair[-1] if isinstance(pair, (tuple, list)) else pair for pair in pairs]

    what = f"quantize_config {type(config).__name__} of layer '{layer.name}'"
    try:
        weights = quantizers("get_weights_and_quantizers")
        activations = quantizers("get_activations_and_quantizers")
        outputs = list(config.get_output_quantizers(layer) or [])
    except AttributeError as e:
        raise ValueError(
            f"The {what} could not be read on the built layer ({e}). Its methods must take "
            "the layer and return (weight, quantizer) pairs. Received: "
            f"{type(layer).__name__}"
        ) from None
    if not weights and not activations and not outputs:
        return {"quantize": False, "weight_scheme": None}
    for q in weights + activations + outputs:
        if not _known_quantizer(q):
            raise ValueError(
                f"The {what} uses the custom quantizer {type(q).__name__}: tfcompress sets "
                "ranges itself (weights' min/max, activations' moving average), so a custom "
                "quantization algorithm would be ignored. Use tfmot's or "
                "tfcompress.quantize.quantizers' LastValueQuantizer / MovingAverageQuantizer / "
                f"AllValuesQuantizer. Received: {type(q).__module__}.{type(q).__name__}"
            )
    for q in activations + outputs:
        if getattr(q, "num_bits", 8) != 8:
            raise ValueError(
                f"The {what} quantizes activations to {q.num_bits} bits; tfcompress's int8 "
                "files keep 8-bit activations. Use 8-bit activation quantizers, or "
                "weight_scheme='int4' for low-bit weights. Received: "
                f"num_bits={q.num_bits}"
            )
    bits = {getattr(q, "num_bits", 8) for q in weights}
    if len(bits) > 1 or not bits <= set(_BITS_TO_SCHEME):
        raise ValueError(
            f"The {what} asks for {sorted(bits)}-bit weights; tfcompress has 8, 4 and 2 bit "
            "weight schemes, one per layer. Use quantize_annotate_layer(layer, "
            f"weight_scheme='int4') instead. Received: num_bits={sorted(bits)}"
        )
    return {"quantize": True, "weight_scheme": _BITS_TO_SCHEME[bits.pop()] if bits else None}


def _known_quantizer(q):
    """tfmot's built-in quantizers, or ours: the ones whose meaning is their bit width."""
    from tfcompress.quantize.quantizers import Quantizer

    if isinstance(q, Quantizer):
        return True
    if not type(q).__module__.startswith("tensorflow_model_optimization"):
        return False
    import tensorflow_model_optimization as tfmot

    known = tfmot.quantization.keras.quantizers
    return isinstance(
        q, (known.LastValueQuantizer, known.MovingAverageQuantizer, known.AllValuesQuantizer)
    )


def quantize_annotate_model(to_annotate: keras.Model) -> keras.Model:
    """Mark a whole model for `quantize_apply` (tfmot's `quantize_annotate_model`).

    `quantize_apply` then quantizes every layer it has a rule for, except
    layers annotated with `quantize_annotate_layer(layer, quantize=False)` (or
    a tfmot `NoOpQuantizeConfig`). For tf_keras models this is tfmot's
    function.

    Args:
        to_annotate: a built functional or Sequential model.

    Returns:
        The model, marked (Keras 3), or tfmot's annotated copy (tf_keras).

    Example:

    >>> fresh = keras.models.clone_model(model)
    >>> qat = quantize_apply(quantize_annotate_model(fresh))  # == quantize_model(fresh)
    """
    if _flavor.flavor_of(to_annotate) == _flavor.TF_KERAS:
        from tfcompress.quantize import _tfmot

        return _tfmot.tfmot_quantize().quantize_annotate_model(to_annotate)
    setattr(to_annotate, _MODEL_ATTR, True)
    return to_annotate


_MODEL_ATTR = "_tfcompress_quantize_all"


def is_annotated_model(model: keras.Model) -> bool:
    """Whether `quantize_annotate_model` marked `model`."""
    return bool(getattr(model, _MODEL_ATTR, False))


def config_from_scheme(scheme: Any) -> Any:
    """Our `QuantizeConfig` for a tfmot scheme object (`quantize_apply(model, scheme)`).

    `Default8BitQuantizeScheme` is the default; `Default8BitPrunePreserveQuantizeScheme`
    is `QuantizeConfig(preserve_sparsity=True)` (PQAT);
    `Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=...)` is
    `QuantizeConfig(preserve_clusters=True, ...)` (CQAT / PCQAT);
    `DefaultNBitQuantizeScheme(num_bits_weight=4)` is `weight_scheme="int4"`.
    """
    from tfcompress.quantize.config import QuantizeConfig

    if scheme is None or isinstance(scheme, QuantizeConfig):
        return scheme
    if not type(scheme).__module__.startswith("tensorflow_model_optimization"):
        raise TypeError(
            "The scheme must be a tfcompress.quantize.QuantizeConfig (or a tfmot quantize "
            "scheme such as Default8BitPrunePreserveQuantizeScheme()). "
            f"Received: {scheme!r}"
        )
    import tensorflow_model_optimization as tfmot

    combine = tfmot.experimental.combine
    n_bit = tfmot.quantization.keras.experimental.default_n_bit
    if isinstance(scheme, combine.Default8BitClusterPreserveQuantizeScheme):
        return QuantizeConfig(
            preserve_clusters=True,
            preserve_sparsity=bool(getattr(scheme, "preserve_sparsity", False)),
        )
    if isinstance(scheme, combine.Default8BitPrunePreserveQuantizeScheme):
        return QuantizeConfig(preserve_sparsity=True)
    if isinstance(scheme, n_bit.DefaultNBitQuantizeScheme):
        weight_bits = scheme._num_bits_weight
        activation_bits = scheme._num_bits_activation
        if activation_bits != 8 or weight_bits not in _BITS_TO_SCHEME:
            raise ValueError(
                "tfcompress quantizes activations to 8 bits and weights to 8, 4 or 2 bits. "
                "Use QuantizeConfig(weight_scheme='int4') for low-bit weights. Received: "
                f"num_bits_weight={weight_bits}, num_bits_activation={activation_bits}"
            )
        return QuantizeConfig(weight_scheme=_BITS_TO_SCHEME[weight_bits] or "int8")
    if isinstance(scheme, tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme):
        return QuantizeConfig()
    raise TypeError(
        f"The tfmot scheme {type(scheme).__name__} has no tfcompress counterpart: pass a "
        "tfcompress.quantize.QuantizeConfig (weight_scheme=, preserve_sparsity=, "
        f"preserve_clusters=). Received: {scheme!r}"
    )


@contextlib.contextmanager
def quantize_scope(*args: Any) -> Iterator[Any]:
    """tfmot's `quantize_scope` (to load tf_keras QAT models), plus our layers.

    Keras 3 QAT layers are registered serializables and need no scope; this
    is here for tf_keras code that loads tfmot models. Dicts of custom objects
    passed in (`quantize_scope({"MyLayer": MyLayer})`) are in scope for Keras 3
    loading too.
    """
    import keras

    from tfcompress.quantize import _tfmot

    for arg in args:
        if not isinstance(arg, dict):
            raise TypeError(
                "quantize_scope takes dicts of custom objects, e.g. "
                f"quantize_scope({{'MyLayer': MyLayer}}). Received: {arg!r}"
            )
    with _tfmot.tfmot_quantize().quantize_scope(*args) as scope:
        merged: dict[str, Any] = {}
        for arg in args:
            merged.update(arg)
        with keras.saving.CustomObjectScope(merged):
            yield scope
