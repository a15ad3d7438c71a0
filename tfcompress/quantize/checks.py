"""Questions about models: is it quantization-aware, are its ranges set."""

from tfcompress import _flavor
from tfcompress.quantize.errors import RangesNotSetError


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
        QuantizeSeparableConv,
        QuantizeWrapper,
    )

    kinds = (
        ActivationQuantizer,
        QuantizeWrapper,
        QuantizeComposite,
        QuantizeBatchNorm,
        QuantizeSeparableConv,
    )
    return [layer for layer in model.layers if isinstance(layer, kinds)]


def is_quantization_aware(model):
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


def check_ranges_set(model):
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


def configure_converter(converter, tf, int8_io=False):
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
