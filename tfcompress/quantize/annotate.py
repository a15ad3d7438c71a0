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
        raise ValueError(
            "quantize_config= is tfmot's per-layer config for tf_keras layers; "
            "for Keras 3 layers pass weight_scheme= (or quantize=False). "
            f"Received: quantize_config={quantize_config!r}"
        )
    if weight_scheme is not None:
        from tfcompress.quantize.schemes import get_scheme

        weight_scheme = get_scheme(weight_scheme).name
    setattr(to_annotate, _ATTR, {"quantize": bool(quantize), "weight_scheme": weight_scheme})
    return to_annotate


def annotation_of(layer: keras.layers.Layer) -> dict[str, Any] | None:
    """The annotation dict of a layer, or `None`."""
    return getattr(layer, _ATTR, None)


@contextlib.contextmanager
def quantize_scope(*args: Any) -> Iterator[Any]:
    """tfmot's `quantize_scope` (to load tf_keras QAT models), plus our layers.

    Keras 3 QAT layers are registered serializables and need no scope; this
    is here for tf_keras code that loads tfmot models.
    """
    from tfcompress.quantize import _tfmot

    with _tfmot.tfmot_quantize().quantize_scope(*args) as scope:
        yield scope
