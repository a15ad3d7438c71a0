"""Questions about models: is it quantization-aware, are its ranges set."""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from tfcompress import _flavor
from tfcompress.quantize.errors import RangesNotSetError

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


def _tfmot_qat_layers(model):
    return [
        layer
        for layer in model.layers
        if type(layer).__module__.startswith("tensorflow_model_optimization")
        and type(layer).__name__ in ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")
    ]


def _our_qat_layers(model):
    from tfcompress.quantize.batchnorm import QuantizeBatchNorm
    from tfcompress.quantize.composite import QuantizeComposite
    from tfcompress.quantize.layers import (
        ActivationQuantizer,
        QuantizeAffine,
        QuantizeSeparableConv,
        QuantizeWrapper,
    )

    kinds = (
        ActivationQuantizer,
        QuantizeWrapper,
        QuantizeComposite,
        QuantizeBatchNorm,
        QuantizeSeparableConv,
        QuantizeAffine,
    )
    return [layer for layer in model.layers if isinstance(layer, kinds)]


def is_quantization_aware(model: Any) -> bool:
    """True when `model` carries fake-quant layers (ours or tfmot's).

    Such a model converts to full-int8 TFLite without representative data:
    its ranges are in the graph.

    Args:
        model: any Keras 3, keras-hub or tf_keras model.

    Returns:
        bool.

    Example:

    >>> is_quantization_aware(quantize_model(model))
    True
    """
    try:
        flavor = _flavor.flavor_of(model)
    except TypeError:
        return False
    layers = getattr(model, "layers", None)
    if layers is None:
        return False
    if flavor == _flavor.TF_KERAS:
        return bool(_tfmot_qat_layers(model))
    return bool(_our_qat_layers(model))


def check_ranges_set(model: keras.Model) -> None:
    """Raise `RangesNotSetError` if any activation range of a QAT model was never measured.

    A Keras 3 QAT model measures its ranges in `fit()` (training steps) or in
    `tfcompress.quantize.calibrate`. Exporting one that did neither would
    write an int8 file whose activations are all clipped to zero.

    Args:
        model: a model from `quantize_model`.

    Returns:
        `None`; raises when ranges are missing. tf_keras (tfmot) models are
        not checked.

    Example:

    >>> check_ranges_set(qat_model)  # after qat_model.fit(...)
    """
    from tfcompress.quantize.calibration import activation_quantizers

    if _flavor.flavor_of(model) == _flavor.TF_KERAS:
        return None
    unset = [path for path, q in activation_quantizers(model) if not q.is_range_set]
    if unset:
        shown = ", ".join(unset[:5]) + (f" and {len(unset) - 5} more" if len(unset) > 5 else "")
        raise RangesNotSetError(
            f"QAT model '{model.name}' has {len(unset)} activation range(s) that never saw data "
            f"({shown}). Train it with model.fit(...) for at least one step, or calibrate it: "
            "tfcompress.quantize.calibrate(model, x_sample) (or pass representative_data= to "
            "quantize_model) before exporting."
        )
    return None


def configure_converter(
    converter: tf.lite.TFLiteConverter, tf: ModuleType, int8_io: bool = False
) -> None:
    """Set up a `tf.lite.TFLiteConverter` for a QAT model: the ranges are in the graph.

    `optimizations=[DEFAULT]` alone: the converter reads the fake-quant ranges
    and needs no representative dataset. Restricting `supported_ops` to
    `TFLITE_BUILTINS_INT8` would make it demand one, and would refuse layers
    kept in float on purpose. Same signature as an `ExportMode.configure`.

    Args:
        converter: the converter.
        tf: the `tensorflow` module.
        int8_io: make the file's inputs and outputs int8 too.

    Example:

    >>> converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    >>> configure_converter(converter, tf)
    >>> data = converter.convert()
    """
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


def output_spread(model: keras.Model, data: Any, max_samples: int = 256) -> float:
    """How much a model's outputs vary across inputs, relative to their size.

    The mean over output units of the standard deviation across samples,
    divided by the largest absolute output. A collapsed QAT model (outputs
    constant across inputs, e.g. BatchNorm statistics frozen on an untrained
    deep network) scores near 0; agreement of its int8 file then proves nothing.

    Args:
        model: a Keras model (first output used when there are several).
        data: inputs the model accepts (an array, a dict of arrays, or
            `(inputs, labels)`).
        max_samples: most samples run.

    Returns:
        The relative spread, a float >= 0.

    Example:

    >>> spread = output_spread(qat_model, x_test[:128])  # about 0.2 for a trained CNN
    >>> spread > 1e-3  # far from collapsed
    True
    """
    if isinstance(data, tuple) and len(data) == 2:
        data = data[0]
    if isinstance(data, dict):
        data = {k: np.asarray(v)[:max_samples] for k, v in data.items()}
    else:
        data = np.asarray(data)[:max_samples]
    out = model.predict(data, verbose=0, batch_size=64)
    if isinstance(out, (list, tuple)):
        out = out[0]
    elif isinstance(out, dict):
        out = next(iter(out.values()))
    out = np.asarray(out, dtype="float64").reshape(len(out), -1)
    return float(out.std(axis=0).mean() / (np.abs(out).max() + 1e-12))


def check_collapse(model: keras.Model, data: Any, min_spread: float = 1e-3) -> float:
    """Warn (`CollapseWarning`) when a model's outputs barely vary across `data`.

    Args:
        model: a (QAT) Keras model.
        data: inputs, as for `output_spread`.
        min_spread: the relative spread below which the model is collapsed.

    Returns:
        The relative spread.

    Example:

    >>> check_collapse(qat_model, x_test[:128])  # warns if the outputs are constant
    """
    spread = output_spread(model, data)
    if spread < min_spread:
        warnings.warn(
            f"The outputs of model '{model.name}' barely vary across inputs (relative spread "
            f"{spread:.2g} < {min_spread:g}): the QAT model has collapsed, and agreement of "
            "its int8 file with it proves nothing. Lower the learning rate, keep "
            "BatchNormalization statistics updating longer (QuantizeConfig(freeze_bn_delay=...))"
            ", or train the float model first.",
            CollapseWarning,
            stacklevel=2,
        )
    return spread


class CollapseWarning(UserWarning):
    """A QAT model whose outputs stopped varying across inputs."""


def collapse_monitor(data: Any, min_spread: float = 1e-3) -> keras.callbacks.Callback:
    """A Keras callback that runs `check_collapse` on `data` after every epoch of QAT.

    Args:
        data: a few inputs (a hundred is plenty).
        min_spread: passed to `check_collapse`.

    Returns:
        A `keras.callbacks.Callback`; its `spreads` list holds one value per epoch.

    Example:

    >>> qat.fit(x, y, epochs=3, callbacks=[collapse_monitor(x[:128])])
    """
    import keras

    class CollapseMonitor(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.spreads = []

        def on_epoch_end(self, epoch, logs=None):
            self.spreads.append(check_collapse(self.model, data, min_spread))

    return CollapseMonitor()
